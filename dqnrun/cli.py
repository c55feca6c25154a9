"""The `dqnrun` console script (also `python -m dqnrun`).

It picks the subcommand, checks the overrides and the composed config(s) before any run directory
exists (so bad input costs one clear line and exit code 2, and touches no files), then hands the
remaining arguments to that subcommand's Hydra app.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from dqnrun import __version__
from dqnrun.errors import UsageError

USAGE = f"""dqnrun {__version__}: train and evaluate DQN agents on Gymnasium environments

usage:
  dqnrun train [key=value ...]          train one run (Hydra overrides, e.g. env=acrobot seed=3)
  dqnrun train -m key=a,b [key=c,d ...] a sweep: one run per combination (Hydra multirun)
  dqnrun eval ckpt=PATH [episodes=N] [video=true] [render=human]
  dqnrun report DIR [--compare]         statistics of a sweep: IQM, bootstrap CIs, curves.png
  dqnrun export ckpt=PATH format=torchscript|onnx [out=PATH]
  dqnrun train --cfg job                print the composed config and exit
  dqnrun train --help                   config groups, options and the important keys

examples:
  dqnrun train env=cartpole seed=3 optimizer.lr=5e-4
  dqnrun train -m optimizer.lr=1e-3,3e-4 seed=0,1,2,3,4 hydra/launcher=joblib
  dqnrun report outputs/multirun/<date>/<time>-<id>
  dqnrun eval ckpt=outputs/<date>/<time>-<id>/checkpoints/best.pt episodes=100
"""

COMMANDS = ("train", "eval", "report", "export")
# Flags that make Hydra print something instead of running: skip the preflight for them.
_INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc",
               "--resolve", "--package", "-p", "--version"}
_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
MAX_PREFLIGHT_JOBS = 256


def one_line(message: str, known_keys: list[str] | None = None) -> str:
    """Turn a multi-line Hydra/OmegaConf message into one line that says what to do."""
    text = str(message)
    m = re.search(r"Could not override '([^']+)'", text)
    if m and "To append to your config" in text:
        key = m.group(1)
        close = difflib.get_close_matches(key, known_keys or [], n=1, cutoff=0.7)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return (f"unknown config key '{key}'{hint}; run `dqnrun train --cfg job` to list the keys, "
                f"or add a new key with +{key}=...")
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        listed = f"; choose one of: {', '.join(options)}" if options else ""
        return f"unknown {m.group(1)} preset '{m.group(2)}'{listed}"
    keep = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("full_key:", "object_type", "reference_type", "Set the environment")):
            continue
        keep.append(line.rstrip("."))
    return "; ".join(keep)


def _flat_keys(cfg: object, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg:
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _flat_keys(cfg._get_node(k), full + ".")
    return keys


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Per-job override lists. Multirun: comma sweeps and ranges are expanded; other sweeps (e.g. Optuna's
    interval()) are left to the sweeper by dropping them from the preflight. Single run: a sweep is an error."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise UsageError(f"{sweeps[0]} is a sweep; add -m to run one job per value")
        return [overrides]
    expandable = []
    for o in parsed:
        if o.is_sweep_override() and not (o.is_choice_sweep() or o.is_range_sweep()):
            continue
        expandable.append(o)
    batches = BasicSweeper.split_arguments(expandable, max_batch_size=None)
    return [job for batch in batches for job in batch] or [[]]


def open_dict_overrides(args: list[str]) -> list[str]:
    """``env.kwargs.NAME=v`` -> ``++env.kwargs.NAME=v``: env.kwargs is an open mapping of gymnasium.make
    arguments, so a key works whether or not the preset already sets it (Hydra would refuse a new key)."""
    return [f"++{a}" if a.startswith("env.kwargs.") and "=" in a else a for a in args]


def sweep_dir_of(resume: str) -> Path | None:
    """The sweep directory that ``resume=DIR`` names in a multirun (it holds multirun.yaml or optuna.db)."""
    path = Path(resume).expanduser()
    if path.is_dir() and ((path / "multirun.yaml").exists() or (path / "optuna.db").exists()):
        return path
    return None


def continue_sweep(args: list[str]) -> list[str]:
    """In a multirun, ``resume=SWEEP_DIR`` continues that sweep in place: ``hydra.sweep.dir=SWEEP_DIR`` and
    ``resume=auto``, so every job resumes its own run (a finished one has nothing left to do) and the Optuna
    sweeper reopens the study in SWEEP_DIR/optuna.db."""
    out = []
    for a in args:
        sweep = sweep_dir_of(a.split("=", 1)[1]) if a.startswith("resume=") else None
        out += [f'hydra.sweep.dir="{_quote(sweep.resolve())}"', "resume=auto"] if sweep is not None else [a]
    return out


def preflight(command: str, args: list[str]) -> list[str]:
    """Compose and validate every job's config; raise UsageError for the first problem.

    Returns extra overrides for Hydra: a resume of an existing run continues in that run's directory; in a
    multirun, ``resume=`` must be ``auto`` (`continue_sweep` has turned a sweep directory into that).
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dqnrun.sweep import ensure_plugins

    ensure_plugins()
    overrides = [a for a in args if not a.startswith("-")]
    multirun = any(a in ("-m", "--multirun") for a in args)
    try:
        jobs = _jobs(overrides, multirun)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(one_line(str(exc))) from None
    seen_envs: set[str] = set()
    extra: list[str] = []
    with initialize_config_module(config_module="dqnrun.conf", version_base=None):
        for job in jobs[:MAX_PREFLIGHT_JOBS]:
            try:
                cfg = compose(config_name=command, overrides=job)
                if command == "train":
                    from dqnrun.builders import build_env_spec, build_network, check_replay_memory
                    from dqnrun.validate import validate_train_config

                    if multirun and cfg.resume not in (None, "", "auto"):
                        raise UsageError(f"resume={cfg.resume}: in a sweep (-m), resume names a sweep "
                                         "directory (one with multirun.yaml or optuna.db), or is auto")
                    validate_train_config(cfg)
                    if cfg.resume not in (None, "", "auto") and not multirun:
                        from dqnrun.lifecycle import resolve_resume

                        ckpt = resolve_resume(cfg.resume, Path("."))
                        run_dir = _quote(ckpt.parent.parent.resolve())
                        extra = [f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=.hydra/resume-${now:%Y%m%d-%H%M%S}"]
                    if cfg.get("init_from"):
                        from dqnrun.checkpoint import load_checkpoint
                        from dqnrun.lifecycle import resolve_init_from

                        load_checkpoint(resolve_init_from(cfg.init_from))
                    key = repr((cfg.env.id, cfg.env.get("kwargs"), cfg.env.get("wrappers"), cfg.env.get("atari")))
                    if key not in seen_envs:
                        seen_envs.add(key)
                        spec = build_env_spec(cfg.env)
                    check_replay_memory(cfg.replay, spec, cfg.env.num_envs)
                    build_network(cfg.network, spec, cfg.learner)  # a network that does not fit the env
                else:
                    from dqnrun.evaluate import load_policy
                    from dqnrun.validate import validate_eval_config

                    validate_eval_config(cfg)
                    if cfg.get("render") == "human":
                        from dqnrun.evaluate import check_display

                        check_display()
                    load_policy(cfg.ckpt)
            except (HydraException, OmegaConfBaseException) as exc:
                known = _flat_keys(compose(config_name=command)) if command == "train" else []
                raise UsageError(one_line(str(exc), known)) from None
    return extra


def print_sweep_configs(command: str, args: list[str]) -> int:
    """``-m ... --cfg job``: validate every job of the sweep as a real one would be, print each job's config."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    overrides = [a for a in args if not a.startswith("-") and a not in ("job", "hydra", "all")]
    try:
        preflight(command, ["-m", *overrides])
        jobs = _jobs(overrides, True)
    except UsageError as exc:
        print(f"dqnrun {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    with initialize_config_module(config_module="dqnrun.conf", version_base=None):
        for i, job in enumerate(jobs):
            print(f"# job {i}: {' '.join(job)}")
            print(OmegaConf.to_yaml(compose(config_name=command, overrides=job)))
    return 0


def _quote(path: Path) -> str:
    """A path as a double-quoted Hydra override value."""
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


def _app(command: str) -> Callable[[], object]:
    if command == "train":
        from dqnrun.train_task import main as app
    else:
        from dqnrun.evaluate import main as app
    return app


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"dqnrun {__version__}")
        sys.exit(0)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"dqnrun: error: unknown command {command!r}{hint}; use one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    if command == "report":
        from dqnrun.report import main as report_main

        sys.exit(report_main(rest))
    if command == "export":
        from dqnrun.export import main as export_main

        sys.exit(export_main(rest))
    # Hydra rejects overrides on both sides of -m; let users put it anywhere.
    flags = [a for a in rest if a in ("-m", "--multirun")]
    rest = flags[:1] + open_dict_overrides([a for a in rest if a not in ("-m", "--multirun")])
    if flags and command == "train":
        rest = continue_sweep(rest)
    info = [a for a in rest if a.split("=")[0] in _INFO_FLAGS]
    if flags and info and info[0] in ("--cfg", "-c"):
        # Hydra cannot combine -m with --cfg; print every job's config instead (nothing runs, no directory).
        sys.exit(print_sweep_configs(command, rest))
    if not any(a.split("=")[0] in _INFO_FLAGS | _CONFIG_FLAGS for a in rest):
        try:
            rest += preflight(command, rest)
        except UsageError as exc:
            print(f"dqnrun {command}: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
    if "COMP_LINE" in os.environ:  # shell completion: hide the subcommand from Hydra
        os.environ["COMP_LINE"] = os.environ["COMP_LINE"].replace(f" {command}", "", 1)
    sys.argv = [sys.argv[0], *rest]
    _app(command)()
    from dqnrun.sweep import LAST_SWEEP

    if LAST_SWEEP.get("failed"):  # the summary (N of M jobs failed) is printed; Hydra itself returns normally
        sys.exit(1)
