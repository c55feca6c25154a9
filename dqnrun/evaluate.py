"""Evaluating a policy: whole episodes on eval envs, videos, a window. `dqnrun eval` (`dqnrun.cli.eval`) and the
API's `Agent.evaluate` use it; it evaluates a checkpoint using only what the checkpoint file holds.

The env (id, kwargs, wrappers, Atari preprocessing) and the network are rebuilt from the config stored in the
checkpoint, through `dqnrun.builders`, as training built them. Episodes use the eval epsilon the run was
trained with (``eval.epsilon``: 0.05 for Atari presets) unless ``epsilon=`` is given.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dqnrun import builders
from dqnrun.acting import greedy_actor
from dqnrun.envs import EVAL_SEED_BASE, SEED_STRIDE, run_episodes
from dqnrun.errors import UsageError

log = logging.getLogger(__name__)


def stored_epsilon(train_cfg: DictConfig) -> float:
    """The eval epsilon the run was trained with (0 for checkpoints written before it was stored)."""
    return float(OmegaConf.select(train_cfg, "eval.epsilon", default=0.0) or 0.0)


def evaluate_policy(net: torch.nn.Module, env_cfg: DictConfig, episodes: int, epsilon: float, seed: int,
                    max_envs: int = 128) -> np.ndarray:
    """Returns of ``episodes`` whole episodes (raw game scores for Atari), (episodes,), on vectorized eval envs
    seeded ``EVAL_SEED_BASE + seed * SEED_STRIDE + i``: disjoint from training's and in-training eval's."""
    envs = builders.build_vector_env(env_cfg, num_envs=min(episodes, max_envs), evaluation=True)
    rng = np.random.default_rng([seed, 2])
    try:
        act = greedy_actor(net, epsilon, rng, int(envs.single_action_space.n))
        return run_episodes(envs, act, episodes, EVAL_SEED_BASE + seed * SEED_STRIDE,
                            masked=bool(env_cfg.get("action_mask", False)))
    finally:
        envs.close()


def play(net: torch.nn.Module, env: Any, n_episodes: int, seed: int, epsilon: float) -> list[float]:
    """Play episodes one by one in a single env; returns their returns."""
    rng = np.random.default_rng(seed)
    act = greedy_actor(net, epsilon, rng, int(env.action_space.n))
    returns = []
    for i in range(n_episodes):
        obs, info = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            mask = info.get("action_mask")  # the legal actions (env.action_mask: ActionMaskInfo puts them there)
            x = np.asarray(obs)[None]
            action = act(x) if mask is None else act(x, np.asarray(mask, bool)[None])
            obs, reward, terminated, truncated, info = env.step(int(action[0]))
            ret += float(reward)
            done = terminated or truncated
        returns.append(ret)
    return returns


def record_videos(net: torch.nn.Module, env_cfg: DictConfig, n_episodes: int, seed: int, epsilon: float,
                  video_dir: Path) -> list[str]:
    """Play episodes in an rgb_array env wrapped in RecordVideo; return the mp4 paths."""
    import gymnasium as gym

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise UsageError("video=true needs moviepy: pip install 'dqnrun[video]' (make install does)") from None
    env = gym.wrappers.RecordVideo(builders.build_render_env(env_cfg, "rgb_array"), str(video_dir),
                                   episode_trigger=lambda _: True, disable_logger=True)
    try:
        play(net, env, n_episodes, seed, epsilon)
    finally:
        env.close()
    return sorted(str(p) for p in video_dir.glob("*.mp4"))


def check_display() -> None:
    """render=human needs a screen: say why not in one line instead of a pygame/SDL traceback."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("render=human needs a display, and this session has none (DISPLAY and WAYLAND_DISPLAY "
                         "are unset, e.g. over ssh or in a container); record mp4s instead with video=true")


def watch(net: torch.nn.Module, env_cfg: DictConfig, n_episodes: int, seed: int, epsilon: float) -> list[float]:
    """Play episodes in a window (render_mode=human)."""
    check_display()
    try:
        env = builders.build_render_env(env_cfg, "human")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"render=human: cannot open a window for {env_cfg.id} ({exc}); "
                         "record mp4s instead with video=true") from None
    try:
        return play(net, env, n_episodes, seed, epsilon)
    finally:
        env.close()
