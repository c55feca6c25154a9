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


class MaskedCorridor(gym.Env):
    """A corridor of ``size`` cells with walls that only a jump crosses, drawn anew each episode; reward 1 at the far
    end, -0.01 a step. Actions: 0 left, 1 right, 2 jump (two cells, over a wall), 3 wait. Which are legal depends
    on the cell and the walls, and the env says so: in ``info["action_mask"]`` (``habit="info"``), or as a Dict
    observation ``{"observation", "action_mask"}`` (``habit="dict"``). An illegal action ends the episode with
    -10. Every illegal action any instance sees is counted in ``MaskedCorridor.illegal`` (tests read it)."""

    illegal = 0

    def __init__(self, size: int = 8, habit: str = "info", render_mode: str | None = None) -> None:
        self.size, self.habit = int(size), habit
        obs_space = gym.spaces.Box(0.0, 1.0, (2 * self.size,), np.float32)  # position one-hot, then walls
        mask_space = gym.spaces.Box(0, 1, (4,), np.int8)
        self.observation_space = obs_space if habit == "info" else gym.spaces.Dict(
            {"observation": obs_space, "action_mask": mask_space})
        self.action_space = gym.spaces.Discrete(4)
        self.render_mode = render_mode
        self.pos = 0
        self.walls = np.zeros(self.size, bool)

    def _mask(self) -> np.ndarray:
        p, w, n = self.pos, self.walls, self.size
        return np.array([p > 0, p + 1 < n and not w[p + 1], p + 2 < n and w[p + 1] and not w[p + 2], True], np.int8)

    def _out(self) -> tuple[Any, dict]:
        obs = np.zeros(2 * self.size, np.float32)
        obs[self.pos] = 1.0
        obs[self.size:] = self.walls
        if self.habit == "info":
            return obs, {"action_mask": self._mask()}
        return {"observation": obs, "action_mask": self._mask()}, {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.pos = 0
        walls = self.np_random.random(self.size) < 0.35
        walls[[0, 1, -1]] = False
        walls[1:] &= ~walls[:-1]  # never two in a row: a jump crosses one
        self.walls = walls
        return self._out()

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        a = int(action)
        if not self._mask()[a]:
            MaskedCorridor.illegal += 1
            obs, info = self._out()
            return obs, -10.0, True, False, info
        self.pos += {0: -1, 1: 1, 2: 2, 3: 0}[a]
        done = self.pos == self.size - 1
        obs, info = self._out()
        return obs, 1.0 if done else -0.01, done, False, info


gym.register("DqnrunTest/MaskedCorridor-v0", entry_point=MaskedCorridor, max_episode_steps=40)
gym.register("DqnrunTest/MaskedCorridorDict-v0", entry_point=MaskedCorridor, max_episode_steps=40,
             kwargs={"habit": "dict"})
