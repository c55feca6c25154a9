"""The preflight: every job's config composed and checked before any run directory exists.

Bad input then costs one clear line and exit code 2, and touches no files. Checks: the overrides parse; each
job composes and validates; its env id resolves and its spaces suit the algorithm; its network fits the env;
its buffers fit in memory (the algorithm's ``preflight``); a resume names an existing checkpoint; an
``init_from`` checkpoint loads. Each job is checked against its own env.

All but the last three need no torch (`check_built` builds the network and loads checkpoints). A population
sweep's command line never trains, so it hands those to its workers, which import torch anyway, and checks the
rest itself while they do (`dqnrun.population.workers.check_early`): its populations then start ~0.6 s sooner.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dqnrun.config.compose import Composer, one_line
from dqnrun.errors import UsageError

MAX_PREFLIGHT_JOBS = 256


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Per-job override lists. Multirun: comma sweeps and ranges are expanded (their cartesian product, in
    Hydra's basic sweeper's order); other sweeps (e.g. Optuna's interval()) are left to the sweeper by dropping
    them from the preflight. Single run: a sweep is an error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(one_line(str(exc))) from None
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise UsageError(f"{sweeps[0]} is a sweep; add -m to run one job per value")
        return [overrides]
    axes: dict[str, list[str]] = {}  # by key: a later override of a key replaces it in place, as Hydra does
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
    return [list(job) for job in itertools.product(*axes.values())] or [[]]


@dataclass
class Checked:
    """What the preflight found: each checked job's config (validated), and extra overrides for Hydra (a single
    run that resumes continues in that run's directory)."""

    configs: list[DictConfig] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    run_dir: Path | None = None  # a single run's directory, resolved (the command line pins and locks it)
    built: list[tuple[DictConfig, Any]] = field(default_factory=list)  # `check_built`'s: (config, its env's spec)
    sweeper: str = ""  # a sweep's sweeper, and where its directory was to be
    sweep_dir: Path | None = None
    sweep_root: Path | None = None  # the innermost directory of it and its parents that existed
    sweep_record: bool = False  # whether it held a multirun.yaml

    def undo_sweep_dir(self, made: Path) -> None:
        """Remove what a sweep's start wrote in ``made`` (the sweep directory as the sweeper resolved it: a default
        one names the second it started) before a check it did not wait for failed: Hydra's multirun.yaml, where
        there was none, then each directory up to what existed before this command, while it is empty."""
        made = made.absolute()
        if made != self.sweep_dir or not self.sweep_record:
            (made / "multirun.yaml").unlink(missing_ok=True)
        root = self.sweep_root or made
        d = made
        while d != d.parent and not root.is_relative_to(d):
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): what is in it is not this command's
                return
            d = d.parent


def preflight(command: str, overrides: list[str], multirun: bool = False, build: bool = True) -> Checked:
    """Compose and check every job of ``dqnrun <command> [-m] overrides`` (already rewritten by
    `dqnrun.config.compose.rewrite`); raise UsageError for the first problem. ``build=False`` leaves the checks
    that build the network (``Checked.built``) to the caller: `check_built`, where torch is."""
    out = Checked()
    specs: dict[str, Any] = {}
    with Composer() as c:
        for job in expand(overrides, multirun)[:MAX_PREFLIGHT_JOBS]:
            cfg = c.task(command, job)
            check_added_keys(c, command, job, cfg)
            if command == "train":
                out.extra = _train_job(cfg, multirun, specs, out.built) or out.extra
            else:
                _eval_job(cfg)
            out.configs.append(cfg)
        if command == "train":
            _check_directories(c, overrides, out, multirun)
    if build:
        check_built(out.built)
    return out


def check_built(built: list[tuple[DictConfig, Any]]) -> None:
    """The checks of each job that need torch: the algorithm's ``preflight`` (its network fits the env, its buffers
    fit in memory) and an ``init_from`` checkpoint's weights against that network; raise UsageError for the first
    problem. Jobs that differ only in their seed are checked once."""
    from omegaconf import OmegaConf

    from dqnrun.config.rules import algorithm_module

    seen = set()
    for cfg, spec in built:
        key = repr((spec.env_id, {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "seed"}))
        if key in seen:
            continue
        seen.add(key)
        algorithm_module(cfg).preflight(cfg, spec)
        if cfg.get("init_from"):
            _check_init_from(cfg, spec)


def _check_directories(c: Composer, overrides: list[str], out: Checked, multirun: bool) -> None:
    """Where the run(s) will write, checked before anything is written there: a fresh run never goes into a
    directory that holds a run, a fresh sweep never into a sweep directory that holds runs (``resume=`` is
    the way in); a single run's directory is resolved, so that the command line can pin and lock it."""
    from omegaconf import OmegaConf

    from dqnrun.run.lock import holds_run

    full = c.full("train", expand(overrides, multirun)[0], hydra=True)  # the sweep dir is every job's
    resume = out.configs[0].get("resume") if out.configs else None
    if multirun:
        sweep = Path(str(OmegaConf.select(full, "hydra.sweep.dir"))).expanduser()
        sweeper = str(OmegaConf.select(full, "hydra.sweeper._target_", default=""))
        out.sweeper, out.sweep_dir, out.sweep_root = sweeper, sweep.absolute(), sweep.absolute()
        while not out.sweep_root.exists() and out.sweep_root != out.sweep_root.parent:
            out.sweep_root = out.sweep_root.parent
        out.sweep_record = (sweep / "multirun.yaml").exists()
        jobs = [d for d in sweep.iterdir() if d.is_dir() and holds_run(d)] if sweep.is_dir() else []
        if jobs and resume in (None, "") and "dqnrun_sweeper" not in sweeper:
            raise UsageError(f"hydra.sweep.dir={sweep} already holds the runs of a sweep ({len(jobs)}); continue "
                             f"it with resume={sweep}, or sweep into another directory")
        return
    if out.extra:  # a resume: the run's own directory
        out.run_dir = Path(out.extra[0].split("=", 1)[1].strip('"'))
        return
    run_dir = Path(str(OmegaConf.select(full, "hydra.run.dir"))).expanduser().resolve()
    if not any(o.split("=", 1)[0] == "hydra.run.dir" for o in overrides):
        run_dir = default_run_dir(out.configs[0], overrides)
    if resume in (None, "") and holds_run(run_dir):
        raise UsageError(f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir}, or "
                         "train into another directory")
    if resume == "auto" and (run_dir / "checkpoints" / "last.pt").exists():  # keep the record it started with
        out.extra = [f'hydra.run.dir="{quote(run_dir)}"', "hydra.output_subdir=.hydra/resume-${now:%Y%m%d-%H%M%S}"]
    out.run_dir = run_dir


# Keys a user may add with +key=value: Hydra's own, and the open mapping of gymnasium.make arguments.
OPEN_KEYS = ("hydra.", "env.kwargs.")


def check_added_keys(c: Composer, command: str, job: list[str], cfg: DictConfig) -> None:
    """``+key=value`` for a key no config defines is a key no code reads: refused (Hydra would accept it and the
    run would silently ignore it). ``+group=option`` (a config group) and the open keys stay free."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    from dqnrun.config.compose import CONFIG_MODULE, flat_keys

    added = []
    for o in job:
        if not o.startswith("+"):
            continue
        key = o.lstrip("+").split("=", 1)[0]
        if key.startswith(OPEN_KEYS) or key == "hydra" or "/" in key or files(CONFIG_MODULE).joinpath(key).is_dir():
            continue
        added.append((o, key))
    if not added:
        return
    base = c.full(command, [o for o in job if o not in {a for a, _ in added}])
    for _, key in added:
        if OmegaConf.select(base, key, default="__absent__") == "__absent__":
            import difflib

            close = difflib.get_close_matches(key, flat_keys(base), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"+{key}: no part of dqnrun reads {key}{hint}; run `dqnrun {command} --cfg job` to list "
                             f"the keys (env.kwargs.NAME and hydra.* take new keys)")


def _train_job(cfg: DictConfig, multirun: bool, specs: dict[str, Any], built: list[tuple[DictConfig, Any]],
               ) -> list[str] | None:
    from dqnrun import builders
    from dqnrun.config.rules import validate_train_config
    from dqnrun.run.artifacts import run_dir_of

    if multirun and cfg.resume not in (None, "", "auto"):
        raise UsageError(f"resume={cfg.resume}: in a sweep (-m), resume names a sweep "
                         "directory (one with multirun.yaml or optuna.db), or is auto")
    validate_train_config(cfg)
    extra = None
    if cfg.resume not in (None, "", "auto") and not multirun:
        from dqnrun.run.lifecycle import resolve_resume

        ckpt = resolve_resume(cfg.resume, Path("."))
        run_dir = quote(run_dir_of(ckpt).resolve())  # type: ignore[arg-type]
        extra = [f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=.hydra/resume-${now:%Y%m%d-%H%M%S}"]
    key = repr((cfg.env.id, cfg.env.get("kwargs"), cfg.env.get("wrappers"), cfg.env.get("atari")))
    if key not in specs:  # one probe per distinct env; each job is checked against its own
        specs[key] = builders.build_env_spec(cfg.env)
    built.append((cfg, specs[key]))
    return extra


def _check_init_from(cfg: DictConfig, spec: Any) -> None:
    """The checkpoint loads and its policy's weights fit this run's network, layer by layer."""
    from dqnrun.config.rules import algorithm_module
    from dqnrun.run.checkpoint import load_checkpoint
    from dqnrun.run.lifecycle import resolve_init_from

    path = resolve_init_from(cfg.init_from)
    ckpt = load_checkpoint(path)
    here = algorithm_module(cfg).build_policy(cfg, spec).state_dict()
    there = ckpt["policy"]
    problems = [f"{k} is {tuple(there[k].shape)} there and {tuple(v.shape)} here" for k, v in here.items()
                if k in there and tuple(there[k].shape) != tuple(v.shape)]
    problems += [f"{k} is missing there" for k in here if k not in there]
    problems += [f"{k} is not in this network" for k in there if k not in here]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        stored = ckpt["config"]
        raise UsageError(f"init_from={path}: its weights do not fit this run's network ({shown}); it was trained "
                         f"on {stored['env']['id']} with network {stored.get('network')}")


def default_run_dir(cfg: DictConfig, overrides: list[str]) -> Path:
    """``outputs/<date>/<what the run is>/<time>-<id>``: runs of one configuration side by side, and TensorBoard's
    run names (paths under ``outputs``) lead with what each run is rather than with when it started."""
    import time

    from dqnrun.config.keys import as_typed
    from dqnrun.config.resolvers import RUN_UID
    from dqnrun.run.artifacts import describe_run, safe_name

    what = describe_run(cfg.env.id, cfg.get("name"), cfg.seed, as_typed(overrides, {}), cfg.get("tags") or [],
                        with_seed=False)
    return (Path("outputs") / time.strftime("%Y-%m-%d") / safe_name(what) /
            f"{time.strftime('%H-%M-%S')}-{RUN_UID}-seed{cfg.seed}").resolve()


def _eval_job(cfg: DictConfig) -> None:
    from dqnrun.config.rules import validate_eval_config
    from dqnrun.evaluate import check_display
    from dqnrun.policy import load_policy

    validate_eval_config(cfg)
    if cfg.get("render") == "human":
        check_display()
    load_policy(cfg.ckpt)


def quote(path: Path) -> str:
    """A path as a double-quoted Hydra override value."""
    return str(path).replace("\\", "\\\\").replace('"', '\\"')
