"""The Python API: `train`, and `load` / `Agent` (from `dqnrun.policy`), on the same code path as the CLI.

    from dqnrun import train, load
    result = train(["env=cartpole", "seed=1"], run_dir="runs/cp1")
    agent = load("runs/cp1/checkpoints/best.pt")
    action = agent.act(obs)                 # one observation -> int; a batch (B, *obs_shape) -> (B,) int64
    agent.q_values(obs)                     # (A,) or (B, A)
    agent.evaluate(episodes=10)             # like `dqnrun eval`: mean_return, std_return, returns, ...

Bad input raises `dqnrun.UsageError` whose message is the line the CLI prints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from dqnrun.errors import UsageError
from dqnrun.policy import Agent, load

__all__ = ["Agent", "load", "train"]


def train(overrides: list[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one run, exactly as ``dqnrun train OVERRIDES`` would, and return its results (results.json).

    ``run_dir`` defaults to the CLI's ``outputs/<date>/<time>-<id>``; the directory gets the same files as a CLI
    run (.hydra/config.yaml and overrides.yaml, train.log, tb/, checkpoints/, results.json), so ``dqnrun eval``,
    ``dqnrun report`` and ``resume=`` work on it. ``resume=RUN_DIR`` continues that run in its own directory.
    Old key spellings (``learner.train_freq``) work as on the command line. Raises UsageError for bad input
    (before any file is written) and TrainingError if training fails.
    """
    from dqnrun.config.compose import remember_typed, rewrite
    from dqnrun.config.preflight import preflight
    from dqnrun.run.lock import RunDirBusy, RunLock, holds_run

    typed = [str(o) for o in (overrides or [])]
    if any(o.startswith("-") for o in typed):
        raise UsageError(f"{next(o for o in typed if o.startswith('-'))}: train() takes overrides only "
                         "(key=value); flags such as -m belong to the CLI")
    hydra_overrides, spellings = rewrite(typed)
    remember_typed(spellings)
    checked = preflight("train", hydra_overrides)
    cfg = checked.configs[0]
    resume = cfg.get("resume")
    if resume not in (None, "", "auto") or run_dir is None:
        run_dir = checked.run_dir  # a resumed run's own directory, or the CLI's outputs/<date>/<time>-<id>
    elif resume in (None, "") and holds_run(run_dir):
        raise UsageError(f"run_dir={run_dir} already holds a run; continue it with resume={run_dir}, or train "
                         "into another directory")
    run_dir = Path(run_dir)  # type: ignore[arg-type]
    try:
        lock = RunLock(run_dir).acquire()  # before anything is written there
    except RunDirBusy as exc:
        raise UsageError(str(exc)) from None
    try:
        return _train_in(run_dir, cfg, typed, resume)
    finally:
        lock.release()


def _train_in(run_dir: Path, cfg: Any, typed: list[str], resume: Any) -> dict[str, Any]:
    from dqnrun.run.lifecycle import Job, execute

    if resume in (None, "") or (resume == "auto" and not (run_dir / "checkpoints" / "last.pt").exists()):
        # a fresh run records its config; a resumed run keeps the files it was started with
        hydra_dir = run_dir / ".hydra"
        hydra_dir.mkdir(exist_ok=True)
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(typed))
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("dqnrun")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        return execute(cfg, Job(run_dir, typed), validated=True)
    finally:
        logger.removeHandler(handler)
        handler.close()
