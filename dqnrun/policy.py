"""A checkpoint -> its policy network -> an `Agent`: the one loading path that eval, export and the API use.

The network is rebuilt from the config stored in the checkpoint by the algorithm the checkpoint names
(``build_policy`` of `dqnrun.algos`), so a checkpoint of any algorithm (and of older dqnrun versions, migrated on
load) evaluates, exports and acts the same way. Loading never executes code from the file
(``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dqnrun.errors import UsageError

__all__ = ["Agent", "Policy", "load", "load_policy"]


class Policy:
    """A loaded checkpoint: the policy network (in eval mode), the stored config, the env's spec and the
    checkpoint's contents."""

    def __init__(self, net: torch.nn.Module, config: DictConfig, spec: Any, path: Path, payload: dict[str, Any]):
        self.net, self.config, self.spec, self.path, self.payload = net, config, spec, path, payload

    @property
    def step(self) -> int:
        return int(self.payload["step"])


def load_policy(ckpt: str | Path, device: str = "cpu") -> Policy:
    """Load a checkpoint (a .pt file, or a run directory: its best.pt, else last.pt) and rebuild its policy."""
    from dqnrun import builders
    from dqnrun.algos import build_module
    from dqnrun.run.artifacts import resolve_checkpoint
    from dqnrun.run.checkpoint import load_checkpoint

    path = resolve_checkpoint(ckpt)
    if Path(ckpt).expanduser().is_dir() and not path.exists():
        raise UsageError(f"ckpt={ckpt} is a directory with no checkpoint in it (no checkpoints/best.pt or last.pt); "
                         "pass a .pt file or a run directory")
    payload = load_checkpoint(path, map_location=device)
    cfg = OmegaConf.create(payload["config"])
    spec = builders.build_env_spec(cfg.env)
    try:
        module = build_module(str(payload["algo"]))
    except KeyError:
        raise UsageError(f"ckpt={path} was written by algorithm {payload['algo']!r}, which this dqnrun does not "
                         "have; evaluate it with the dqnrun version that wrote it") from None
    net = module.build_policy(cfg, spec).to(device)
    try:
        net.load_state_dict(payload["policy"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"ckpt={path}: weights do not match the stored network config ({first})") from None
    net.eval()
    return Policy(net, cfg, spec, path, payload)


class Agent:
    """A trained Q-network with the env config it was trained on (from a checkpoint): `load` returns one.

    - ``act(obs, epsilon=0.0, rng=None)``: greedy (or epsilon-greedy) actions: an int for one observation,
      ``(B,)`` int64 for a batch ``(B, *obs_shape)``.
    - ``q_values(obs)``: Q-values, ``(A,)`` for one observation, ``(B, A)`` for a batch (C51: expected values).
    - ``evaluate(episodes=10, epsilon=None, seed=0)``: whole episodes like ``dqnrun eval``.
    - ``step``: the env step the checkpoint was written at.
    """

    def __init__(self, policy: Policy) -> None:
        from dqnrun.envs import obs_dtype_and_shape

        self.net, self.config, self.ckpt_path, self.step = policy.net, policy.config, policy.path, policy.step
        self.obs_dtype, self.obs_shape, _ = obs_dtype_and_shape(policy.spec.observation_space)
        self.n_actions = policy.spec.n_actions
        self.device = next(self.net.parameters()).device

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

    def _q(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.as_tensor(x.astype(self.obs_dtype, copy=False), device=self.device)).cpu().numpy()

    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values: (A,) for one observation, (B, A) for a batch (expected values for C51)."""
        x, single = self._batch(obs)
        q = self._q(x)
        return q[0] if single else q

    def act(self, obs: Any, epsilon: float = 0.0, rng: np.random.Generator | None = None,
            mask: Any = None) -> Any:
        """Greedy action (or epsilon-greedy): an int for one observation, (B,) int64 for a batch. ``mask``: the
        legal actions, (A,) or (B, A) of bools (or 0/1), for an env that reports them: greedy and random actions
        are then legal ones."""
        from dqnrun.acting import epsilon_greedy, masked_argmax

        x, single = self._batch(obs)
        m = None
        if mask is not None:
            m = np.asarray(mask).astype(bool)
            m = m[None] if m.ndim == 1 else m
            if m.shape != (len(x), self.n_actions):
                raise UsageError(f"mask of shape {np.shape(mask)} fits neither ({self.n_actions},) nor "
                                 f"({len(x)}, {self.n_actions}) for these observations")
            if not m.any(axis=1).all():
                raise UsageError("mask: every observation needs at least one legal action")

        def greedy(o: np.ndarray, legal: np.ndarray | None = None) -> np.ndarray:
            return masked_argmax(self._q(o), legal).astype(np.int64)

        if epsilon > 0.0:
            a = epsilon_greedy(x, greedy, float(epsilon), rng if rng is not None else np.random.default_rng(),
                               self.n_actions, m)
        else:
            a = greedy(x, m)
        return int(a[0]) if single else a

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
    return Agent(load_policy(ckpt, device))
