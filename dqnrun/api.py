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
    from dqnrun.config.compose import compose, remember_typed, rewrite
    from dqnrun.config.preflight import preflight
    from dqnrun.run.artifacts import run_dir_of
    from dqnrun.run.lifecycle import Job, execute, resolve_resume

    typed = [str(o) for o in (overrides or [])]
    if any(o.startswith("-") for o in typed):
        raise UsageError(f"{next(o for o in typed if o.startswith('-'))}: train() takes overrides only "
                         "(key=value); flags such as -m belong to the CLI")
    hydra_overrides, spellings = rewrite(typed)
    remember_typed(spellings)
    checked = preflight("train", hydra_overrides)
    cfg = checked.configs[0]
    if cfg.get("resume") not in (None, "", "auto"):
        run_dir = run_dir_of(resolve_resume(cfg.resume, Path(".")))  # type: ignore[arg-type]
    elif run_dir is None:
        run_dir = compose("train", hydra_overrides, hydra=True)[1].run.dir  # type: ignore[union-attr]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("resume") in (None, "", "auto"):  # a resumed run keeps the files it was started with
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
