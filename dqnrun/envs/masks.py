"""Action masks: envs that say which actions are legal (``env.action_mask=true``).

Envs report legal actions in one of two habits: an ``info["action_mask"]`` entry (Gymnasium's toy-text envs, many
board games), or a Dict observation ``{"observation": ..., "action_mask": ...}`` (PettingZoo's classic envs).
`ActionMaskInfo` wraps each single env so that, whichever habit it has, the agent sees the plain observation
and ``info["action_mask"]`` holds the (A,) bool mask of the actions legal in it, at reset and after every step.
Gymnasium's vector envs batch that entry to (E, A); with NEXT_STEP autoreset, the info of an autoreset step
carries the mask of the new episode's first observation, so the mask of a vector step's info is always the mask
of the observation it returned. `vector_mask` reads it from there.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from dqnrun.errors import UsageError

MASK_KEY = "action_mask"


class ActionMaskInfo(gym.Wrapper):
    """The env's legal actions in ``info["action_mask"]`` ((A,) bool), from its info or its Dict observation
    (whose ``observation`` entry then becomes the observation). Raises UsageError if the env reports no mask,
    RuntimeError if it reports one of the wrong size or with no legal action."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.from_obs = isinstance(space, gym.spaces.Dict) and MASK_KEY in space.spaces
        if self.from_obs:
            if "observation" not in space.spaces:
                raise UsageError(f"the env's Dict observation holds an '{MASK_KEY}' entry but no 'observation' "
                                 f"entry beside it (it has {', '.join(space.spaces)}); name the observation "
                                 "'observation', or wrap the env (env.wrappers)")
            self.observation_space = space["observation"]
        self.n = int(env.action_space.n) if isinstance(env.action_space, gym.spaces.Discrete) else 0

    def _split(self, obs: Any, info: dict[str, Any], call: str) -> tuple[Any, dict[str, Any]]:
        if self.from_obs:
            mask, obs = obs[MASK_KEY], obs["observation"]
        else:
            mask = info.get(MASK_KEY)
            if mask is None:
                name = getattr(self.env.spec, "id", None) or "the env"
                raise UsageError(
                    f"env.action_mask=true, but {name}'s {call} reported no action mask (neither "
                    f"info['{MASK_KEY}'] nor a Dict observation with an '{MASK_KEY}' entry); set "
                    "env.action_mask=false, or report the legal actions in one of those places")
        mask = np.asarray(mask).astype(bool, copy=False).reshape(-1)
        if mask.shape != (self.n,):
            raise RuntimeError(f"{call} reported an action mask of {mask.size} entries for {self.n} actions")
        if not mask.any():
            raise RuntimeError(f"{call} reported an action mask with no legal action")
        info = dict(info)
        info[MASK_KEY] = mask
        return obs, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._split(obs, info, "reset()")

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs, info = self._split(obs, info, "step()")
        return obs, reward, terminated, truncated, info


def reports_mask(env: gym.Env) -> bool:
    """Whether an env, unwrapped by dqnrun, reports legal actions as a Dict observation's entry (the info habit
    shows only once it is reset)."""
    space = env.observation_space
    return isinstance(space, gym.spaces.Dict) and MASK_KEY in space.spaces


def vector_mask(info: dict[str, Any], n_envs: int) -> np.ndarray:
    """The (E, A) bool mask of a vector env's reset or step info (`ActionMaskInfo` put it there)."""
    mask = info.get(MASK_KEY)
    if mask is None:
        raise RuntimeError("the vector env's info holds no action mask")
    arr = np.asarray(mask)
    if arr.dtype == object:  # some env of the batch returned none (Gymnasium fills the gap with None)
        raise RuntimeError("an env of the vector env returned no action mask")
    return arr.astype(bool, copy=False).reshape(n_envs, -1)


def legal_sample(mask: np.ndarray, rng: np.random.Generator) -> int:
    """A uniformly random legal action of one (A,) mask."""
    return int(rng.choice(np.flatnonzero(mask)))
