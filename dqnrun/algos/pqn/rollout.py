"""PQN's experience: the current rollout of T vector steps from E envs, time first, on the host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class Rollout:
    """Preallocated (T, E) arrays: obs (T, E, *obs_shape) in the observation dtype, action int64, reward
    float32, terminated / ended / valid bool, value float32 (max_a Q(s_t, a) when acting). ``pos`` steps are
    filled; a checkpoint saves them (`state_dict`), so a resume continues mid-rollout exactly."""

    FIELDS = ("obs", "action", "reward", "terminated", "ended", "valid", "value")

    def __init__(self, num_steps: int, num_envs: int, obs_shape: Sequence[int], obs_dtype: np.dtype) -> None:
        T, E = int(num_steps), int(num_envs)
        self.obs = np.zeros((T, E, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros((T, E), np.int64)
        self.reward = np.zeros((T, E), np.float32)
        self.terminated = np.zeros((T, E), bool)
        self.ended = np.zeros((T, E), bool)
        self.valid = np.zeros((T, E), bool)
        self.value = np.zeros((T, E), np.float32)
        self.pos = 0

    @property
    def full(self) -> bool:
        return self.pos == len(self.action)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray, valid: np.ndarray, value: np.ndarray) -> None:
        """One vector step, (E,) leading dims."""
        t = self.pos
        self.obs[t] = obs
        self.action[t] = action
        self.reward[t] = reward
        self.terminated[t] = terminated
        self.ended[t] = terminated | truncated
        self.valid[t] = valid
        self.value[t] = value
        self.pos = t + 1

    def clear(self) -> None:
        self.pos = 0

    def state_dict(self) -> dict[str, Any]:
        n = self.pos
        return {"pos": n, **{f: torch.from_numpy(getattr(self, f)[:n].copy()) for f in self.FIELDS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["pos"])
        if n > len(self.action) or tuple(state["obs"].shape[1:]) != self.obs.shape[1:]:
            raise ValueError("the saved rollout does not fit this run's num_steps, num_envs or observations")
        for f in self.FIELDS:
            getattr(self, f)[:n] = state[f].numpy()
        self.pos = n
