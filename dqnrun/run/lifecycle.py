"""One training run's lifecycle, shared by `dqnrun train` (the Hydra task) and `dqnrun.train(...)` (the API).

In the order it happens:

    Run.prepare   validate the config; resolve resume (merge the stored config) or init_from (nothing is
                  written yet, so bad input costs nothing)
    Run.build     seed, then the envs and the algorithm (`dqnrun.builders.build_algorithm`)
    Run.restore   resume: weights, algorithm state, counters, RNGs, experience and env state exactly as saved;
                  init_from: trained weights into an otherwise fresh run
    Run.train     the algorithm's loop in a `dqnrun.run.session.Session`, which calls back `evaluate` and `save`

The lifecycle knows nothing of replay buffers, target networks or TD targets: it talks to the algorithm through
`dqnrun.algos.base.Algorithm`.
    Run.finish    last.pt, results.json, the HParams record, the closing lines

`execute` runs them in that order and guarantees that a run directory ends with a results.json saying how
the run ended (`status`: completed | interrupted | failed, and `stop_reason`), also when it fails: a sweep
then records the failed job and goes on with the others.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import socket
import time
import traceback
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dqnrun import __version__, builders
from dqnrun import metrics as M
from dqnrun.acting import greedy_actor
from dqnrun.algos import name_of
from dqnrun.config.rules import algorithm_rules, validate_train_config
from dqnrun.envs import IN_TRAINING_EVAL_SEED_BASE, SEED_LIMIT, SEED_STRIDE, ActQuery, diagnose, drive, episode_rounds
from dqnrun.envs import state as env_state
from dqnrun.envs.masks import vector_mask
from dqnrun.errors import DqnrunError, EnvError, UsageError, WriteError, write_failure
from dqnrun.run import artifacts as A
from dqnrun.run import checkpoint as C
from dqnrun.run import faults
from dqnrun.run.artifacts import Job
from dqnrun.run.lock import RunDirBusy, RunLock, remove_stale_temp_files
from dqnrun.run.session import Cadence, EnvCursor, LoopState, Session, StopFlag
from dqnrun.sweep import SWEEP_ID_ENV

log = logging.getLogger("dqnrun.train")

# Changing these would make a resume meaningless (other env, other algorithm, other streams); each algorithm
# adds its own (`FROZEN_ON_RESUME` of its rules module: network shape, buffer size, ...).
FROZEN_ON_RESUME = ("algo._target_", "env.id", "env.kwargs", "env.num_envs", "env.wrappers", "seed")


@dataclass(frozen=True)
class EvalPlan:
    """One evaluation of a run: ``episodes`` episodes on its eval envs, reset from env seed ``seed`` on, acting with
    exploration ``epsilon`` drawn from ``rng``; ``masked``: its env has action masks."""

    episodes: int
    seed: int
    epsilon: float
    rng: np.random.Generator
    masked: bool


# --- pure helpers ----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global streams from ``seed``; cuDNN picks only deterministic convolution
    algorithms (CleanRL's ``torch_deterministic`` default): without it two identical Pong runs on an H200 ended
    150 updates apart by 9e-4 in their weights (bench/population_twin.py)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def settings_origin(cfg: DictConfig) -> str:
    """Where a run's settings come from, in one line: its env preset and the algorithm's tuning for it, or
    dqnrun's neutral defaults for an id without a preset (and where its solved score comes from)."""
    algo = name_of(cfg.algo._target_)
    preset = cfg.env.get("preset")
    if preset:
        return (f"{cfg.env.id}: settings of env={preset} (conf/env/{preset}.yaml, conf/tuned/{algo}/{preset}.yaml) "
                "and this run's overrides")
    score = cfg.env.get("solved_score")
    return (f"{cfg.env.id} has no preset: dqnrun's neutral defaults for algo={algo} (conf/tuned/{algo}/custom.yaml) "
            f"and this run's overrides; solved score: {'none' if score is None else score} (from its spec unless "
            "set with env.solved_score)")


def resume_seed(seed: int, step: int) -> int:
    """Reset seed for envs a resume cannot restore exactly: derived from (seed, step), so a resume is repeatable,
    and below the in-training eval range (`IN_TRAINING_EVAL_SEED_BASE`), so it never replays evaluation's games."""
    h = int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])
    return SEED_LIMIT + h % (IN_TRAINING_EVAL_SEED_BASE - 2 * SEED_LIMIT)


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` -> this run dir's last.pt if present; a run dir -> its
    last.pt; a file -> itself."""
    if resume in (None, ""):
        return None
    if resume == "auto":
        path = run_dir / A.CHECKPOINTS / A.LAST
        return path if path.exists() else None
    path = A.resolve_checkpoint(str(resume), prefer=(A.LAST,))
    if not path.exists():
        raise UsageError(f"resume={resume}: no checkpoint found at {path}; pass a run directory that has "
                         "checkpoints/last.pt, a .pt file, or resume=auto")
    return path


def resolve_init_from(init_from: str) -> Path:
    """A run directory (its best.pt, else last.pt) or a checkpoint file."""
    path = A.resolve_checkpoint(str(init_from))
    if not path.exists():
        raise UsageError(f"init_from={init_from}: no checkpoint found at {path}; pass a .pt file written by "
                         "`dqnrun train` or a run directory that has checkpoints/best.pt")
    return path


def merge_resume_config(stored: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The stored config with the keys named in this invocation's overrides taken from ``cfg``."""
    merged = OmegaConf.create(stored)
    for override in overrides:
        o = A.parse_override(override)
        key = o.canonical
        if key == "resume" or o.is_hydra:
            continue
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    merged.resume = cfg.resume
    original = OmegaConf.create(stored)
    for key in (*FROZEN_ON_RESUME, *algorithm_rules(original).FROZEN_ON_RESUME):
        old, new = OmegaConf.select(original, key), OmegaConf.select(merged, key)
        if old != new:
            raise UsageError(f"resume: {key} cannot change on resume ({_show(old)} -> {_show(new)}); "
                             "start a new run instead")
    return merged


def _show(value: Any) -> str:
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def sweep_objective(results: dict[str, Any], name: str) -> float:
    """The number a sweeper maximizes, from a run's results (``objective=`` picks it):

    - ``auc``: the mean eval return over the run, i.e. the area under the eval curve per evaluation. A run
      that solves and then collapses keeps the credit for the time it was good (the default).
    - ``best_eval``: the best greedy eval return.
    - ``final_eval``: the last one (a poor tuning target on its own: one unlucky collapse scores ~0).
    - ``steps_to_solve``: minus the env steps at the first eval reaching ``env.solved_score``, negated so that
      every objective is maximized; a run that never solves scores ``-(steps + 1)``, below every solved run.

    Finite for every finished run: without any evaluation the eval-based objectives fall back to the mean
    return of the last training episodes, and to 0 without those.
    """
    history = [r for _, r in results.get("eval_history") or []]
    if name == "steps_to_solve":
        solved = results.get("solved_at_step")
        return -float(solved) if solved is not None else -float(results.get("steps", 0) + 1)
    if history:
        value = {"auc": float(np.mean(history)), "best_eval": max(history), "final_eval": history[-1]}[name]
        return float(value)
    fallback = results.get("recent_train_return")
    return float(fallback) if fallback is not None else 0.0


def run_label(cfg: DictConfig, job: Job) -> str:
    """What a run is, for TensorBoard's run list: env, name, seed, and the overrides that make it differ (env=...
    and env.id are said by the env already)."""
    label = A.describe_run(cfg.env.id, cfg.get("name"), cfg.seed, job.overrides)
    return "".join(ch if ch.isalnum() or ch in "._=+-,[]" else "-" for ch in label)[:200]


def hparams_record(cfg: DictConfig, job: Job) -> dict[str, Any]:
    """The hyperparameters of a run for TensorBoard's HParams tab: env, seed, and every key this job overrode
    (a sweep's swept keys, so the tab's columns are what differs between jobs). A config-group override
    (``network=dueling_mlp``) records the option's name. Values are plain numbers, booleans or strings."""
    out: dict[str, Any] = {"env.id": str(cfg.env.id), "seed": int(cfg.seed)}
    if cfg.get("name"):
        out["name"] = str(cfg.name)
    for override in A.defining_overrides(job.overrides):
        key = A.parse_override(override).canonical
        if key in out:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_dict(value):  # a group choice: the option's name, not its contents
            value = override.split("=", 1)[1]
        elif OmegaConf.is_config(value):
            value = json.dumps(OmegaConf.to_container(value, resolve=True))
        out[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


def _rel(path: Path) -> str:
    """A path as the user would type it from the current directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- the lifecycle -----------------------------------------------------------------------------------
class Run:
    """One run, from a validated config to its results. Use `execute` (or the steps in its order)."""

    def __init__(self, cfg: DictConfig, job: Job, ckpt: dict[str, Any] | None = None,
                 init: tuple[Path, dict[str, Any]] | None = None) -> None:
        self.cfg, self.job, self.ckpt, self.init = cfg, job, ckpt, init
        self.run_dir = job.run_dir
        self.ckpt_dir = self.run_dir / A.CHECKPOINTS
        self.state = LoopState()
        self.resumed_from: int | None = None
        self.envs: Any = None
        self.eval_envs: Any = None
        self.logger: Any = None
        self.algo: Any = None
        self.stop: StopFlag | None = None
        self.started = time.time()
        self.restored = ckpt is None  # a resumed run's record is its own again once its restore succeeded
        self.session: Session | None = None
        self.population_members: int | None = None  # set when the run trains as a member of a population

    # 1. prepare ---------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: DictConfig, job: Job, validated: bool = False) -> Run:
        """Validate (unless the caller has, ``validated``) and resolve what the run continues from; raises
        UsageError before any file is written. A resume validates the stored config merged with the new keys."""
        if not validated:
            validate_train_config(cfg)
        resume_path = resolve_resume(cfg.get("resume"), job.run_dir)
        if resume_path is not None:
            ckpt = C.load_checkpoint(resume_path)
            if "algo_state" not in ckpt:
                raise UsageError(f"resume={resume_path}: this checkpoint holds the policy only (best.pt); resume "
                                 f"from {resume_path.parent / A.LAST}")
            cfg = merge_resume_config(ckpt["config"], cfg, job.overrides)
            validate_train_config(cfg)
            return cls(cfg, replace(job, run_dir=A.run_dir_of(resume_path)), ckpt=ckpt)  # its own directory
        if cfg.get("init_from"):
            path = resolve_init_from(cfg.init_from)
            return cls(cfg, job, init=(path, C.load_checkpoint(path)))
        return cls(cfg, job)

    # 2. build -----------------------------------------------------------------------------------------
    def build(self) -> None:
        cfg, share = self.cfg, self.job.cpu_share
        log.info("%s", settings_origin(cfg))
        torch.set_num_threads(cfg.torch_threads if share is None else max(1, min(cfg.torch_threads, share)))
        seed_everything(cfg.seed)
        self.spec = builders.build_env_spec(cfg.env)
        self.algo = builders.build_algorithm(cfg, self.spec)
        self.envs = builders.build_vector_env(cfg.env, threads=share)
        n_eval = min(cfg.eval.episodes, cfg.eval.max_envs)
        if cfg.eval.every > 0:
            self.eval_envs = builders.build_vector_env(cfg.env, num_envs=n_eval, threads=share, evaluation=True)
        self.rng = np.random.default_rng(cfg.seed)
        self.envs.action_space.seed(cfg.seed)
        try:
            self.cursor = self._start(*self.envs.reset(seed=cfg.seed))
        except Exception as exc:
            raise EnvError(f"reset() raised {type(exc).__name__}: {exc}", "reset", exc) from exc

    # 3. restore ---------------------------------------------------------------------------------------
    def restore(self) -> None:
        if self.ckpt is not None:
            self._resume(self.ckpt)
        elif self.init is not None:
            self._init_from(*self.init)

    def _resume(self, ckpt: dict[str, Any]) -> None:
        self.state = LoopState.from_state_dict(ckpt["loop"])
        self.algo.policy.load_state_dict(ckpt["policy"])
        self.algo.load_state_dict(ckpt["algo_state"])
        self._restore_envs(C.load_env_state(self.ckpt_dir, self.state.step))
        self.algo.load_data_state(C.load_replay_state(self.ckpt_dir, self.state.step), self.state.step)
        rngs = ckpt["rng"]
        random.setstate(_to_tuple(rngs["python"]))
        _set_np_global_state(rngs["numpy_global"])
        self.rng.bit_generator.state = rngs["numpy"]
        torch.set_rng_state(rngs["torch"])
        self.resumed_from = self.state.step
        self.restored = True
        log.info("resuming %s from step %d", self.run_dir, self.state.step)

    def _restore_envs(self, saved: dict[str, Any] | None) -> None:
        """The envs exactly where they were (`dqnrun.envs.state`); where that cannot be captured, new episodes from
        the envs' saved RNG state, else from seeds derived from the run's seed and step. Says which in one line."""
        if saved is not None and saved.get("envs") is not None:
            try:
                env_state.restore(self.envs, saved["envs"])
                self.cursor = EnvCursor(**env_state.decode(saved["cursor"]))
                return
            except ValueError as exc:
                why = f"its saved state does not fit ({exc})"
        else:
            why = saved.get("why", "unknown") if saved is not None else "no env state was saved with this checkpoint"
        rngs = saved.get("rngs") if saved is not None else None
        if rngs and env_state.restore_rngs(self.envs, rngs):
            (obs, info), source = self.envs.reset(), "its saved RNG state"
        else:
            seed = resume_seed(self.cfg.seed, self.state.step)
            (obs, info), source = self.envs.reset(seed=seed), f"seeds derived from the run's seed and step ({seed})"
        self.cursor = self._start(obs, info)
        log.warning("resume: %s is not restored exactly (%s); it starts new episodes from %s. Weights, optimizer, "
                    "experience, counters and RNGs are exact", self.cfg.env.id, why, source)

    def _start(self, obs: np.ndarray, info: dict[str, Any]) -> EnvCursor:
        """The cursor of freshly reset envs (with the legal actions of their observations, env.action_mask)."""
        masked = bool(self.cfg.env.get("action_mask", False))
        return EnvCursor.start(obs, vector_mask(info, len(obs)) if masked else None)

    def _init_from(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Trained weights into the algorithm; optimizer, counters, experience and exploration start fresh."""
        try:
            self.algo.init_from(ckpt["policy"])
        except (RuntimeError, KeyError) as exc:
            stored = ckpt["config"].get("network", {})
            first = str(exc).strip().splitlines()[0][:160]
            raise UsageError(f"init_from={path}: its weights do not fit this run's network ({first}); the "
                             f"checkpoint's network was {stored} on {ckpt['config']['env']['id']}") from None
        log.info("initialized the policy from %s (step %d)", path, int(ckpt["step"]))

    # 4. train -----------------------------------------------------------------------------------------
    def train(self) -> str:
        """Run the algorithm's loop; returns its stop reason (completed | solved | interrupted)."""
        cfg = self.cfg
        cadence = Cadence(
            total_steps=cfg.total_steps,
            eval_every=cfg.eval.every,
            log_every=cfg.log.every,
            checkpoint_every=cfg.checkpoint.every,
            solved_score=cfg.env.get("solved_score"),
            # jobs running side by side (joblib, submitit, Ray) would draw their bars over one another: they log lines
            progress=bool(cfg.log.progress) and self.job.cpu_share is None,
            stop_when_solved=bool(cfg.get("stop_when_solved", False)),
            label=f"job {self.run_dir.name}" if self.job.multirun else None,
        )
        # On resume, drop events the interrupted run wrote after its checkpoint: no duplicated points.
        purge = self.state.step + 1 if self.ckpt is not None else None
        label = run_label(cfg, self.job)
        earlier = sorted(p.name for p in (self.run_dir / "tb").glob("*") if p.is_dir()) if self.ckpt else []
        if earlier:  # a resumed run continues its own TensorBoard run (its label came from its first overrides)
            label = earlier[0]
        self.logger = builders.build_logger(cfg, self.run_dir, label, purge)
        log.info("training in %s (pid %d)", self.run_dir, os.getpid())
        self.session = Session(self.envs, self.cursor, self.state, cadence, self.rng, self.algo, self.logger,
                               self.evaluate if self.eval_envs is not None else None, self.save, self.stop,
                               env_id=str(cfg.env.id), masked=bool(cfg.env.get("action_mask", False)))
        try:
            self.algo.train(self.session)
        finally:
            self.state, reason = self.session.finish()  # books the time; never writes to the terminal
        self.save("last")
        self.session.close_display()  # the progress bar, after last.pt is safe (a closed pipe cannot lose it)
        return reason

    def evaluate(self) -> float:
        """Greedy (``eval.epsilon``) mean return over ``eval.episodes`` episodes on the eval envs. Its own env
        and RNG, seeded from (seed, step): evaluating never perturbs the training streams."""
        cfg = self.cfg
        rounds, eval_rng = self.eval_rounds()
        policy = self.algo.policy
        act = greedy_actor(policy, cfg.eval.epsilon, eval_rng, self.spec.n_actions)
        policy.eval()  # NoisyNet layers act on their mean weights when evaluated
        faults.point("evaluate")
        try:
            return float(drive(rounds, act, masked=bool(cfg.env.get("action_mask", False))).mean())
        finally:
            policy.train()

    def eval_rounds(self) -> tuple[Generator[ActQuery, np.ndarray, np.ndarray], np.random.Generator]:
        """This step's evaluation, not yet run: its episodes (`dqnrun.envs.episode_rounds` on the eval envs, their
        seeds this run's) and the generator of its epsilon draws. `evaluate` drives it with this run's policy; a
        population drives its members' side by side (`dqnrun.population.engine`)."""
        plan = self.eval_plan()
        rounds = episode_rounds(self.eval_envs, plan.episodes, plan.seed, masked=plan.masked)
        return rounds, plan.rng

    def eval_plan(self) -> EvalPlan:
        """What this step's evaluation is: how many episodes, from which env seed, its epsilon and the generator of
        its epsilon draws (seeded from the run's seed and this step)."""
        cfg = self.cfg
        return EvalPlan(int(cfg.eval.episodes), IN_TRAINING_EVAL_SEED_BASE + cfg.seed * SEED_STRIDE,
                        float(cfg.eval.epsilon), np.random.default_rng([cfg.seed, self.state.step]),
                        bool(cfg.env.get("action_mask", False)))

    def save(self, kind: str) -> None:
        """``best`` -> best.pt; ``progress`` -> a results.json with status running; ``periodic`` and ``last``
        -> experience and env state, then step_*.pt (periodic) and last.pt, the commit point, written last."""
        if kind == "progress":
            self.write_results(self.results("running", None))
            return
        payload = self.checkpoint_payload()
        if kind == "best":  # what eval, export and init_from need: no optimizer, target network or RNGs
            policy_only = {k: payload[k] for k in ("format_version", "dqnrun_version", "algo", "config", "policy",
                                                   "step", "loop")}
            C.atomic_torch_save(policy_only, self.ckpt_dir / A.BEST)
            return
        cfg = self.cfg
        if cfg.checkpoint.save_replay:
            C.save_replay_state(self.ckpt_dir, self.state.step, self.algo.data_state(), cfg.checkpoint.replay_max_gb)
        C.save_env_state(self.ckpt_dir, self.state.step, self.envs, self.cursor)
        if kind == "periodic":
            C.atomic_torch_save(payload, self.ckpt_dir / f"step_{self.state.step:010d}.pt")
            periodic = sorted(self.ckpt_dir.glob("step_*.pt"))
            for old in periodic[: max(len(periodic) - cfg.checkpoint.keep_last, 0)]:
                old.unlink(missing_ok=True)  # only after the new one is safely on disk
        C.atomic_torch_save(payload, self.ckpt_dir / A.LAST)

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "format_version": C.FORMAT_VERSION,
            "dqnrun_version": __version__,
            "algo": name_of(self.cfg.algo._target_),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "policy": self.algo.policy.state_dict(),
            "algo_state": self.algo.state_dict(),
            "step": self.state.step,
            "loop": self.state.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy_global": _np_global_state(),
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
            },
        }

    # 5. finish ----------------------------------------------------------------------------------------
    def results(self, status: str, stop_reason: str | None, error: str | None = None) -> dict[str, Any]:
        return results_record(self, status, stop_reason, error)

    def write_results(self, results: dict[str, Any]) -> None:
        try:
            A.write_results(self.run_dir, results)
        except OSError as exc:
            raise WriteError(write_failure(A.results_path(self.run_dir), exc)) from None

    def finish(self, stop_reason: str, error: str | None = None) -> dict[str, Any]:
        """Write results.json and the HParams record, close everything, say where things are."""
        results = self.results(A.STATUS_OF_REASON.get(stop_reason, A.FAILED), stop_reason, error)
        if self.restored:
            try:
                self.write_results(results)
            except WriteError as exc:  # the disk that failed the run may fail its record too: say so, go on
                if stop_reason != "failed":
                    raise
                log.error("%s", exc)
        else:  # a resume that failed before its restore: the record of the run it continues stays as it is
            log.error("resume failed before it restored the run; %s keeps the record of the run it continues",
                      A.results_path(self.run_dir))
        if self.logger is not None:
            try:
                self.logger.log_hparams(hparams_record(self.cfg, self.job), {
                    M.HP_BEST_EVAL: _num(results["best_eval_return"]),
                    M.HP_FINAL_EVAL: _num(results["final_eval_return"]),
                    M.HP_OBJECTIVE: _num(results["objective"]["value"]),
                    M.HP_SOLVED_AT: _num(results["solved_at_step"]),
                    M.HP_SPS: _num(results["sps"]),
                }, self.state.step)
            except Exception as exc:  # the record is a convenience; never lose results over it
                log.warning("could not write the HParams record: %s", exc)
        self.close()
        closing_lines(self, results)
        if stop_reason == "interrupted" and self.stop is not None and self.stop.signum is not None:
            # Checkpoint and results are on disk: let a launcher's own handler act now (submitit requeues the
            # job, which lands in this run dir again and continues with resume=auto). Else exit 128+signum.
            if self.stop.signum == signal.SIGUSR2 and self.stop.chain():
                return results
            results["exit_code"] = 128 + self.stop.signum
        return results

    def left_as_it_was(self) -> dict[str, Any]:
        """A resume interrupted before it trained: nothing written, the run's record and checkpoints untouched."""
        self.close()
        signum = self.stop.signum if self.stop is not None and self.stop.signum is not None else signal.SIGINT
        log.warning("resume interrupted while starting (%s); %s is left as it was", signal.Signals(signum).name,
                    self.run_dir)
        return {**(A.read_results(self.run_dir) or {}), "run_dir": str(self.run_dir), "exit_code": 128 + signum}

    def abort(self, exc: BaseException) -> None:
        """A second Ctrl-C (or one while starting): record the run as interrupted (its last checkpoint is where a
        resume continues), close everything, leave at once."""
        if self.restored and isinstance(exc, KeyboardInterrupt):
            self.write_results(self.results(A.INTERRUPTED, "interrupted", "aborted (Ctrl-C) before saving; "
                                            "a resume continues from the last checkpoint"))
        self.close()

    def close(self) -> None:
        """Close the logger and envs (idempotent; also after a failure)."""
        for name in ("logger", "envs", "eval_envs"):
            obj = getattr(self, name)
            setattr(self, name, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception as exc:
                    log.warning("closing %s failed: %s", name, exc)



def results_record(run: Run, status: str, stop_reason: str | None, error: str | None = None) -> dict[str, Any]:
    """The run's results.json (fields: `dqnrun.run.artifacts.RESULT_FIELDS`)."""
    cfg, st = run.cfg, run.state
    results: dict[str, Any] = {
        "status": status,
        "stop_reason": stop_reason,
        "error": error,
        "algo": name_of(cfg.algo._target_),
        "env_id": cfg.env.id,
        "seed": cfg.seed,
        "name": cfg.get("name"),
        "tags": list(cfg.get("tags") or []),
        "overrides": list(run.job.overrides),
        "steps": st.step,
        "total_steps": cfg.total_steps,
        "updates": run.algo.updates if run.algo is not None else 0,
        "episodes": st.episodes,
        "train_seconds": st.train_seconds,
        "sps": st.step / st.train_seconds if st.train_seconds > 0 else None,
        "final_eval_return": st.last_eval_return,
        "best_eval_return": st.best_eval_return,
        "solved_score": cfg.env.get("solved_score"),
        "solved_at_step": st.solved_at_step,
        "solved_at_seconds": st.solved_at_seconds,
        "recent_train_return": st.recent_train_return,
        "resumed_from_step": run.resumed_from,
        "init_from": str(run.init[0]) if run.init is not None else None,
        "eval_history": [list(x) for x in st.eval_history],
        "run_dir": str(run.run_dir),
        "device": str(run.algo.device) if run.algo is not None else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_share": run.job.cpu_share,
        "population_members": run.population_members,
        "dqnrun_version": __version__,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "sweep_id": os.environ.get(SWEEP_ID_ENV) if run.job.multirun else None,
        "updated_at": A.now_stamp(),
    }
    name = cfg.get("objective", "auc")
    value = sweep_objective(results, name) if status != A.FAILED else None
    results["objective"] = {"name": name, "value": value}
    return results


def closing_lines(run: Run, r: dict[str, Any]) -> None:
    """What a run says last: how it ended, where it is, what to run next."""
    solved = ("not solved" if r["solved_score"] is not None else "no solved score") if r["solved_at_step"] is None \
        else f"solved at step {r['solved_at_step']}"
    log.info("%s: %d steps, %d updates in %.1fs (%.0f steps/s); final eval %s, best %s, %s", r["stop_reason"],
             r["steps"], r["updates"], r["train_seconds"], r["sps"] or 0, _fmt(r["final_eval_return"]),
             _fmt(r["best_eval_return"]), solved)
    where = _rel(run.run_dir)
    log.info("run directory: %s", where)
    best = run.ckpt_dir / A.BEST
    if best.exists():
        log.info("evaluate it:   %s eval ckpt=%s", A.runnable("dqnrun"), _rel(best))
    if r["status"] == A.INTERRUPTED:
        log.info("continue it:   %s train resume=%s", A.runnable("dqnrun"), where)
    log.info("watch it:      %s --logdir %s", A.runnable("tensorboard"), _rel(run.run_dir / "tb"))

def _num(x: Any) -> float:
    return float(x) if x is not None else math.nan


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def owned_dir(cfg: DictConfig, job: Job) -> Path:
    """The directory a run writes into: a resumed run's own directory, else the job's."""
    path = resolve_resume(cfg.get("resume"), job.run_dir)
    return A.run_dir_of(path) if path is not None else job.run_dir


def execute(cfg: DictConfig, job: Job, validated: bool = False) -> dict[str, Any]:
    """Prepare, build, restore, train and finish one run; return its results (also in results.json).

    The run directory is locked first (`dqnrun.run.lock`): a second process gets one line and writes nothing;
    a fresh run into a directory that holds a run is refused (``resume=`` is the way in). A failure (a
    non-finite loss, an env that crashes, bad input found late) leaves a results.json with ``"status":
    "failed"``, the error in one line and the traceback in train.log, then re-raises; so does an interrupt,
    as ``interrupted``. The record of a resumed run is kept until its restore has succeeded: a resume that fails
    or is interrupted while starting never overwrites the results of the run it continues.
    """
    run_dir = owned_dir(cfg, job)
    try:
        lock = RunLock(run_dir).acquire()
    except RunDirBusy as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(write_failure(run_dir / ".lock", exc) + "; train somewhere writable") from None
    try:
        removed = remove_stale_temp_files(lock.run_dir)
        if removed:
            log.info("removed %d temp file(s) of an interrupted save: %s", len(removed), ", ".join(map(str, removed)))
        return _execute(cfg, job, validated)
    finally:
        lock.release()


def _execute(cfg: DictConfig, job: Job, validated: bool) -> dict[str, Any]:
    try:
        run = Run.prepare(cfg, job, validated)
    except Exception as exc:
        message = _log_failure(exc)
        if job.run_dir.exists() and not A.results_path(job.run_dir).exists():
            A.write_results(job.run_dir, {
                "status": "failed", "stop_reason": "failed", "error": message, "overrides": list(job.overrides),
                "seed": OmegaConf.select(cfg, "seed", default=None), "run_dir": str(job.run_dir),
                "eval_history": [], "objective": {"name": cfg.get("objective", "auc"), "value": None},
                "dqnrun_version": __version__, "pid": os.getpid(), "host": socket.gethostname(),
                "sweep_id": os.environ.get(SWEEP_ID_ENV) if job.multirun else None})
        raise
    stop = run.stop = StopFlag().install()  # a signal while starting is an interrupt too
    try:
        if run.ckpt is None:
            run.write_results(run.results(A.RUNNING, None))  # a started job is visible at once (report, sweeps)
        faults.point("build")
        run.build()
        faults.point("restore")
        run.restore()
        if run.ckpt is not None:
            if stop.requested:  # interrupted while starting: the run is left exactly as it was
                return run.left_as_it_was()
            run.write_results(run.results(A.RUNNING, None))
        reason = run.train()
    except EnvError as exc:  # name the env and what it did; the full traceback goes to train.log
        log.error("the env failed:\n%s", "".join(traceback.format_exception(exc.cause or exc)))
        error = EnvError(env_failure(cfg, exc), exc.where)
        run.finish("failed", error=_log_failure(error))
        raise error from None
    except Exception as exc:
        run.finish("failed", error=_log_failure(exc))
        raise
    except BaseException as exc:  # KeyboardInterrupt (a second Ctrl-C, or one while starting): leave at once
        run.abort(exc)
        raise
    finally:
        stop.uninstall()
    return run.finish(reason)


def env_failure(cfg: DictConfig, exc: EnvError) -> str:
    """One line for an env that raised or returned something wrong: its id, what it did, what was expected."""
    what = None
    if cfg.env.get("atari") is None:
        try:
            what = diagnose(cfg.env.id, builders.env_kwargs(cfg.env), builders.env_wrapper(cfg.env))
        except Exception:  # the diagnosis is a courtesy
            what = None
    return (f"env.id={cfg.env.id}: {what or str(exc)}; the full traceback is in train.log")


def _log_failure(exc: BaseException) -> str:
    """Log a failure (with its traceback if it is not one of ours) and return it as one line."""
    if isinstance(exc, DqnrunError):
        message = str(exc)
        log.error("run failed: %s", message)
    else:
        message = f"{type(exc).__name__}: {exc}"
        log.error("run failed:\n%s", traceback.format_exc())
    return (message.strip().splitlines() or [type(exc).__name__])[0]


def _np_global_state() -> dict[str, Any]:
    """NumPy's legacy global RNG state as tensors and ints (a checkpoint must load with weights_only)."""
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_np_global_state(d: dict[str, Any]) -> None:
    np.random.set_state((d["name"], d["key"].numpy().astype(np.uint32), d["pos"], d["has_gauss"],
                         d["cached_gaussian"]))


def _to_tuple(x: Any) -> Any:
    """random.setstate needs tuples; a checkpoint round trip may give lists."""
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train one composed config into ``run_dir`` in this process (tests, benchmarks); see `execute`."""
    return execute(cfg, Job(Path(run_dir), list(overrides or [])))
