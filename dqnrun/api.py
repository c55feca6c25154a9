"""The Python API: `train` and `load`, on the same code path as the CLI (compose, validation, lifecycle).

    from dqnrun import train, load
    result = train(["env=cartpole", "seed=1"], run_dir="runs/cp1")
    agent = load("runs/cp1/checkpoints/best.pt")
    action = agent.act(obs)                 # one observation -> int; a batch (B, *obs_shape) -> (B,) int64
    agent.evaluate(episodes=10)             # like `dqnrun eval`: mean_return, std_return, returns, ...

Bad input raises `dqnrun.UsageError` whose message is the line the CLI prints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from dqnrun.errors import UsageError

__all__ = ["Agent", "load", "train"]


def compose_train(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """(task config, hydra config) composed from the package's conf/ with these overrides."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dqnrun.cli import one_line

    try:
        with initialize_config_module(config_module="dqnrun.conf", version_base=None):
            full = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(one_line(str(exc))) from None
    hydra_cfg = full.hydra
    with open_dict(full):
        del full["hydra"]
    return full, hydra_cfg


def train(overrides: list[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one run, exactly as ``dqnrun train OVERRIDES`` would, and return its results (results.json).

    ``run_dir`` defaults to the CLI's ``outputs/<date>/<time>-<id>``; the directory gets the same files as a CLI
    run (.hydra/config.yaml and overrides.yaml, train.log, tb/, checkpoints/, results.json), so ``dqnrun eval``,
    ``dqnrun report`` and ``resume=`` work on it. ``resume=RUN_DIR`` continues that run in its own directory.
    Raises UsageError for bad input (before any file is written) and TrainingError if training fails.
    """
    from dqnrun.cli import open_dict_overrides, preflight
    from dqnrun.lifecycle import Job, execute, resolve_resume

    overrides = open_dict_overrides([str(o) for o in (overrides or [])])
    if any(o.startswith("-") for o in overrides):
        raise UsageError(f"{next(o for o in overrides if o.startswith('-'))}: train() takes overrides only "
                         "(key=value); flags such as -m belong to the CLI")
    preflight("train", overrides)
    cfg, hydra_cfg = compose_train(overrides)
    if cfg.get("resume") not in (None, "", "auto"):
        run_dir = resolve_resume(cfg.resume, Path(".")).parent.parent  # type: ignore[union-attr]
    elif run_dir is None:
        run_dir = hydra_cfg.run.dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("resume") in (None, "", "auto"):  # a resumed run keeps the files it was started with
        hydra_dir = run_dir / ".hydra"
        hydra_dir.mkdir(exist_ok=True)
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("dqnrun")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        return execute(cfg, Job(run_dir, overrides))
    finally:
        logger.removeHandler(handler)
        handler.close()


class Agent:
    """A trained Q-network with the env config it was trained on (from a checkpoint)."""

    def __init__(self, net: torch.nn.Module, config: DictConfig, ckpt_path: Path, step: int) -> None:
        self.net, self.config, self.ckpt_path, self.step = net, config, ckpt_path, step
        from dqnrun import builders
        from dqnrun.envs import obs_dtype_and_shape

        spec = builders.build_env_spec(config.env)
        self.obs_dtype, self.obs_shape, _ = obs_dtype_and_shape(spec.observation_space)
        self.n_actions = spec.n_actions
        self.device = next(net.parameters()).device

    def __repr__(self) -> str:
        return (f"Agent({self.config.env.id}, step {self.step}, obs {self.obs_shape}, "
                f"{self.n_actions} actions, from {self.ckpt_path})")

    def _batch(self, obs: Any) -> tuple[np.ndarray, bool]:
        x = np.asarray(obs)
        if x.shape == tuple(self.obs_shape):
            return x[None], True
        if x.ndim == len(self.obs_shape) + 1 and x.shape[1:] == tuple(self.obs_shape):
            return x, False
        raise UsageError(f"obs of shape {x.shape} fits neither one observation {tuple(self.obs_shape)} nor a "
                         f"batch (B, {', '.join(map(str, self.obs_shape))}) of {self.config.env.id}")

    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values: (A,) for one observation, (B, A) for a batch (expected values for C51)."""
        x, single = self._batch(obs)
        with torch.inference_mode():
            q = self.net(torch.as_tensor(x.astype(self.obs_dtype, copy=False), device=self.device)).cpu().numpy()
        return q[0] if single else q

    def act(self, obs: Any, epsilon: float = 0.0, rng: np.random.Generator | None = None) -> Any:
        """Greedy action (or epsilon-greedy): an int for one observation, (B,) int64 for a batch."""
        q = self.q_values(obs)
        a = np.asarray(q.argmax(-1))
        if epsilon > 0.0:
            rng = rng if rng is not None else np.random.default_rng()
            explore = rng.random(a.shape) < epsilon
            a = np.where(explore, rng.integers(0, self.n_actions, a.shape), a)
        return int(a) if a.ndim == 0 else a.astype(np.int64)

    def evaluate(self, episodes: int = 10, epsilon: float | None = None, seed: int = 0) -> dict[str, Any]:
        """Like ``dqnrun eval``: ``episodes`` whole episodes at the stored eval epsilon (or ``epsilon``) on
        seeds disjoint from training's; returns mean_return, std_return, returns, episodes, epsilon."""
        from dqnrun.evaluate import evaluate_policy, stored_epsilon

        if int(episodes) < 1:
            raise UsageError(f"episodes={episodes} must be at least 1")
        eps = stored_epsilon(self.config) if epsilon is None else float(epsilon)
        returns = evaluate_policy(self.net, self.config.env, int(episodes), eps, int(seed))
        return {"env_id": self.config.env.id, "step": self.step, "episodes": int(episodes), "epsilon": eps,
                "mean_return": float(returns.mean()), "std_return": float(returns.std()),
                "returns": [float(r) for r in returns]}


def load(ckpt: str | Path, device: str = "cpu") -> Agent:
    """Load a checkpoint (a .pt file, or a run directory: its best.pt, else last.pt) safely
    (``weights_only=True``) and rebuild its network from the config stored inside it."""
    from dqnrun.evaluate import load_policy
    from dqnrun.lifecycle import resolve_init_from

    path = resolve_init_from(str(ckpt)) if Path(ckpt).is_dir() else Path(ckpt)
    net, cfg, payload = load_policy(path, device)
    return Agent(net, cfg, path, int(payload["step"]))
