"""`dqnrun train`: the Hydra task that seeds, builds, trains (or resumes) and writes results.json."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dqnrun import __version__, builders
from dqnrun import checkpoint as C
from dqnrun import metrics as M
from dqnrun.envs import IN_TRAINING_EVAL_SEED_BASE, SEED_STRIDE, run_episodes
from dqnrun.errors import TrainingError, UsageError
from dqnrun.loop import EnvCursor, LoopSettings, LoopState, StopFlag, train_loop
from dqnrun.networks import greedy_actor
from dqnrun.validate import validate_train_config

log = logging.getLogger(__name__)

# Changing these would make a resume meaningless (other env, other network shape, other streams).
FROZEN_ON_RESUME = ("env.id", "env.kwargs", "env.num_envs", "network", "replay.capacity", "seed")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` -> this run dir's last.pt if present; a run dir -> its
    last.pt; a file -> itself."""
    if resume in (None, ""):
        return None
    if resume == "auto":
        path = run_dir / "checkpoints" / "last.pt"
        return path if path.exists() else None
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.exists():
        raise UsageError(f"resume={resume}: no checkpoint found at {path}; pass a run directory that has "
                         "checkpoints/last.pt, a .pt file, or resume=auto")
    return path


def merge_resume_config(stored: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The stored config with the keys named in this invocation's overrides taken from ``cfg``."""
    merged = OmegaConf.create(stored)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra"):
            continue
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    merged.resume = cfg.resume
    original = OmegaConf.create(stored)
    for key in FROZEN_ON_RESUME:
        old, new = OmegaConf.select(original, key), OmegaConf.select(merged, key)
        if old != new:
            raise UsageError(f"resume: {key} cannot change on resume ({_show(old)} -> {_show(new)}); "
                             "start a new run instead")
    return merged


def _show(value: Any) -> str:
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train one run into ``run_dir`` (or resume one) and return its results (also in results.json)."""
    validate_train_config(cfg)
    resume_path = resolve_resume(cfg.get("resume"), run_dir)
    ckpt: dict[str, Any] | None = None
    if resume_path is not None:
        ckpt = C.load_checkpoint(resume_path)
        cfg = merge_resume_config(ckpt["config"], cfg, overrides or [])
        validate_train_config(cfg)
        run_dir = resume_path.parent.parent  # continue in the run's own directory
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    spec = builders.build_env_spec(cfg.env)
    learner, device = builders.build_learner(cfg, spec)
    replay = builders.build_replay(cfg.replay, spec, device, seed=cfg.seed, gamma=cfg.learner.gamma)
    schedule = builders.build_schedule(cfg.schedule)
    envs = builders.build_vector_env(cfg.env)
    n_eval = min(cfg.eval.episodes, cfg.eval.max_envs)
    eval_envs = builders.build_vector_env(cfg.env, num_envs=n_eval) if cfg.eval.every > 0 else None
    rng = np.random.default_rng(cfg.seed)
    envs.action_space.seed(cfg.seed)
    cursor = EnvCursor.start(envs.reset(seed=cfg.seed)[0])
    state = LoopState()
    ckpt_dir = run_dir / "checkpoints"

    if ckpt is not None:
        state = LoopState.from_state_dict(ckpt["loop"])
        learner.load_state_dict(ckpt)
        env_state = C.load_env_state(ckpt_dir, state.step)
        if env_state is not None:
            envs.close()
            envs, cursor = env_state["envs"], env_state["cursor"]
        else:
            log.warning("resume: no env state for step %d; the envs start new episodes", state.step)
        replay_state = C.load_replay_state(ckpt_dir, state.step)
        if replay_state is not None:
            replay.load_state_dict(replay_state)
        else:
            log.warning("resume: no saved replay buffer for step %d; resuming with an empty buffer",
                        state.step)
        rngs = ckpt["rng"]
        random.setstate(_to_tuple(rngs["python"]))
        _set_np_global_state(rngs["numpy_global"])
        rng.bit_generator.state = rngs["numpy"]
        torch.set_rng_state(rngs["torch"])
        log.info("resuming %s from step %d", run_dir, state.step)
    resumed_from = state.step if ckpt is not None else None

    config_container = OmegaConf.to_container(cfg, resolve=True)

    def checkpoint_payload() -> dict[str, Any]:
        return {
            "format_version": C.FORMAT_VERSION,
            "dqnrun_version": __version__,
            "config": config_container,
            **learner.state_dict(),
            "step": state.step,
            "loop": state.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy_global": _np_global_state(),
                "numpy": rng.bit_generator.state,
                "torch": torch.get_rng_state(),
            },
        }

    def save_checkpoint(kind: str) -> None:
        payload = checkpoint_payload()
        if kind == "best":
            C.atomic_torch_save(payload, ckpt_dir / "best.pt")
            return
        if cfg.checkpoint.save_replay:
            C.save_replay_state(ckpt_dir, state.step, replay, cfg.checkpoint.replay_max_gb)
        C.save_env_state(ckpt_dir, state.step, envs, cursor)
        if kind == "periodic":
            C.atomic_torch_save(payload, ckpt_dir / f"step_{state.step:010d}.pt")
            periodic = sorted(ckpt_dir.glob("step_*.pt"))
            for old in periodic[: max(len(periodic) - cfg.checkpoint.keep_last, 0)]:
                old.unlink(missing_ok=True)  # only after the new one is safely on disk
        C.atomic_torch_save(payload, ckpt_dir / "last.pt")  # the commit point, written last

    def evaluate() -> float:
        # Its own env and RNG, seeded from (seed, step): never perturbs the training streams.
        eval_rng = np.random.default_rng([cfg.seed, state.step])
        act = greedy_actor(learner.online, cfg.eval.epsilon, eval_rng, spec.n_actions)
        seed = IN_TRAINING_EVAL_SEED_BASE + cfg.seed * SEED_STRIDE
        learner.online.eval()  # NoisyNet layers act on their mean weights when evaluated
        try:
            return float(run_episodes(eval_envs, act, cfg.eval.episodes, seed).mean())
        finally:
            learner.online.train()

    if os.environ.get("DQNRUN_TEST_SIGNAL_AT_STEP"):  # test hook: a real signal at a chosen env step
        schedule = _signal_at_step(schedule, int(os.environ["DQNRUN_TEST_SIGNAL_AT_STEP"]),
                                   int(os.environ.get("DQNRUN_TEST_SIGNAL", signal.SIGTERM)))
    settings = LoopSettings(
        total_steps=cfg.total_steps,
        train_freq=cfg.learner.train_freq,
        gradient_steps=cfg.learner.gradient_steps,
        learning_starts=cfg.learner.learning_starts,
        target_update_interval=cfg.learner.target_update_interval,
        eval_every=cfg.eval.every,
        log_every=cfg.log.every,
        checkpoint_every=cfg.checkpoint.every,
        solved_score=cfg.env.get("solved_score"),
        progress=cfg.log.progress,
    )
    # On resume, drop events the interrupted run wrote after its checkpoint: no duplicated points.
    logger = M.ScalarLogger(run_dir / "tb", purge_step=state.step + 1 if ckpt is not None else None)
    log.info("training in %s (pid %d)", run_dir, os.getpid())
    stop = StopFlag().install()
    try:
        state, status = train_loop(
            envs, learner, replay, schedule, settings, state, rng, logger,
            evaluate if eval_envs is not None else None, save_checkpoint, cursor, stop,
        )
        save_checkpoint("last")
    finally:
        stop.uninstall()
        logger.close()
        envs.close()
        if eval_envs is not None:
            eval_envs.close()

    results = {
        "status": status,
        "env_id": cfg.env.id,
        "seed": cfg.seed,
        "steps": state.step,
        "updates": learner.updates,
        "episodes": state.episodes,
        "train_seconds": state.train_seconds,
        "sps": state.step / state.train_seconds if state.train_seconds > 0 else None,
        "final_eval_return": state.last_eval_return,
        "best_eval_return": state.best_eval_return,
        "solved_score": settings.solved_score,
        "solved_at_step": state.solved_at_step,
        "solved_at_seconds": state.solved_at_seconds,
        "resumed_from_step": resumed_from,
        "eval_history": [list(x) for x in state.eval_history],
        "run_dir": str(run_dir),
        "device": str(device),
        "dqnrun_version": __version__,
    }
    tmp = run_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(run_dir / "results.json")
    log.info(
        "%s: %d steps, %d updates in %.1fs (%.0f steps/s); final eval %s, best %s, solved at %s",
        status, state.step, learner.updates, state.train_seconds, results["sps"] or 0,
        results["final_eval_return"], results["best_eval_return"], results["solved_at_step"],
    )
    if status == "interrupted" and stop.signum is not None:
        # Checkpoint and results are on disk: let a launcher's own handler act now (submitit requeues the
        # job, which lands in this run dir again and continues with resume=auto). Else exit 128+signum.
        if stop.signum == signal.SIGUSR2 and stop.chain():
            return results
        results["exit_code"] = 128 + stop.signum
    return results


def _signal_at_step(schedule: Any, at_step: int, signum: int) -> Any:
    """Wrap the schedule (called once per loop iteration) to send this process ``signum`` once."""
    sent = False

    def wrapped(step: int) -> float:
        nonlocal sent
        if not sent and step >= at_step:
            sent = True
            os.kill(os.getpid(), signum)
        return schedule(step)

    return wrapped


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


@hydra.main(config_path="pkg://dqnrun.conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. Returns the sweep objective: the final greedy eval return."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        results = run(cfg, run_dir, list(hc.overrides.task))
    except (UsageError, TrainingError) as exc:
        print(f"dqnrun train: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if "exit_code" in results:
        print(f"dqnrun train: stopped by signal; saved {Path(results['run_dir']) / 'checkpoints' / 'last.pt'}"
              f" (continue with resume={results['run_dir']})", file=sys.stderr)
        sys.exit(results["exit_code"])
    return results["final_eval_return"]
