"""A tiny env of the kind users bring: importing this module registers it (env.id=tests.custom_envs:...)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk right along a corridor of ``size`` cells; reward 1 at the far end. Observation: a one-hot position."""

    def __init__(self, size: int = 5, render_mode: str | None = None) -> None:
        self.size = int(size)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.size,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode = render_mode
        self.pos = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.size, np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.pos = min(self.size - 1, self.pos + 1) if int(action) == 1 else max(0, self.pos - 1)
        done = self.pos == self.size - 1
        return self._obs(), float(done), done, False, {}


def times(reward: float, k: float = 1.0) -> float:
    """A reward transform for TransformReward (used through env.wrappers)."""
    return reward * k


gym.register("DqnrunTest/Corridor-v0", entry_point=Corridor, max_episode_steps=40)


class Broken(Corridor):
    """A corridor with one bug, chosen by ``bug``: ``raise_step`` (step raises after ``after`` steps),
    ``reset_shape`` / ``step_shape`` (an observation one element short), ``nan_obs`` (NaN observations after
    ``after`` steps)."""

    def __init__(self, bug: str, after: int = 50, size: int = 5, render_mode: str | None = None) -> None:
        super().__init__(size, render_mode)
        self.bug, self.after, self.steps = bug, int(after), 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        obs, info = super().reset(seed=seed)
        return (obs[:-1] if self.bug == "reset_shape" else obs), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        late = self.steps > self.after
        if self.bug == "raise_step" and late:
            raise RuntimeError("the simulator lost its connection")
        if self.bug == "step_shape" and late:
            obs = obs[:-1]
        if self.bug == "nan_obs" and late:
            obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


gym.register("DqnrunTest/Broken-v0", entry_point=Broken, max_episode_steps=40, disable_env_checker=True)
