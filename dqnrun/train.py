"""`dqnrun train`: the Hydra task that seeds, builds, trains and writes results.json."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dqnrun import __version__, builders
from dqnrun import metrics as M
from dqnrun.checkpoint import FORMAT_VERSION, atomic_torch_save
from dqnrun.envs import IN_TRAINING_EVAL_SEED_BASE, SEED_STRIDE, run_episodes
from dqnrun.errors import TrainingError, UsageError
from dqnrun.loop import EnvCursor, LoopSettings, LoopState, StopFlag, train_loop
from dqnrun.networks import greedy_actor
from dqnrun.validate import validate_train_config

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its results (also written to results.json)."""
    validate_train_config(cfg)
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    spec = builders.build_env_spec(cfg.env)
    learner, device = builders.build_learner(cfg, spec)
    replay = builders.build_replay(cfg.replay, spec, device, seed=cfg.seed)
    schedule = builders.build_schedule(cfg.schedule)
    envs = builders.build_vector_env(cfg.env)
    n_eval = min(cfg.eval.episodes, cfg.eval.max_envs)
    eval_envs = builders.build_vector_env(cfg.env, num_envs=n_eval) if cfg.eval.every > 0 else None
    rng = np.random.default_rng(cfg.seed)
    envs.action_space.seed(cfg.seed)
    cursor = EnvCursor.start(envs.reset(seed=cfg.seed)[0])
    state = LoopState()

    ckpt_dir = run_dir / "checkpoints"
    config_container = OmegaConf.to_container(cfg, resolve=True)

    def checkpoint_payload() -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "dqnrun_version": __version__,
            "config": config_container,
            **learner.state_dict(),
            "step": state.step,
            "loop": state.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy_global": np.random.get_state(legacy=False),
                "numpy": rng.bit_generator.state,
                "torch": torch.get_rng_state(),
            },
        }

    def save_checkpoint(kind: str) -> None:
        payload = checkpoint_payload()
        if kind == "best":
            atomic_torch_save(payload, ckpt_dir / "best.pt")
            return
        if kind == "periodic":
            atomic_torch_save(payload, ckpt_dir / f"step_{state.step:010d}.pt")
            periodic = sorted(ckpt_dir.glob("step_*.pt"))
            for old in periodic[: max(len(periodic) - cfg.checkpoint.keep_last, 0)]:
                old.unlink(missing_ok=True)
        atomic_torch_save(payload, ckpt_dir / "last.pt")

    def evaluate() -> float:
        eval_rng = np.random.default_rng([cfg.seed, state.step])
        act = greedy_actor(learner.online, cfg.eval.epsilon, eval_rng, spec.n_actions)
        seed = IN_TRAINING_EVAL_SEED_BASE + cfg.seed * SEED_STRIDE
        return float(run_episodes(eval_envs, act, cfg.eval.episodes, seed).mean())

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
    logger = M.ScalarLogger(run_dir / "tb")
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
        "eval_history": [list(x) for x in state.eval_history],
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
        results["exit_code"] = 128 + stop.signum
    return results


@hydra.main(config_path="pkg://dqnrun.conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. Returns the sweep objective: the final greedy eval return."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except (UsageError, TrainingError) as exc:
        print(f"dqnrun train: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if "exit_code" in results:
        print(f"dqnrun train: stopped by signal; checkpoint saved to {run_dir / 'checkpoints' / 'last.pt'}",
              file=sys.stderr)
        sys.exit(results["exit_code"])
    return results["final_eval_return"]
