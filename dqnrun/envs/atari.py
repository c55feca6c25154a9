"""Atari 2600 through ale_py's C++ vector env, with DQN's preprocessing and life-loss semantics.

``ale_py.vector_env.AtariVectorEnv`` steps the emulators in C++ threads and does the standard preprocessing
itself (Mnih et al. 2015; Machado et al. 2018): no-op starts, frame skip with max-pooling over the last two
frames, 84x84 grayscale, a 4-frame stack (zeros before the first frame of a game), FIRE on reset for games that
need it. It runs ~2x faster here than Gymnasium's ``AtariPreprocessing`` + ``FrameStackObservation`` in a
``SyncVectorEnv`` (docs/benchmarks.md).

Life loss. DQN cuts the bootstrap when a life is lost but plays on; the game resets only at game over. With
``life_loss_info=True`` the vector env sets ``terminated`` at every lost life and autoresets only after the last
one (or a truncation), which is exactly that; ``episodic_life=True`` (and ``AtariPreprocessing``'s
``terminal_on_life_loss``) would reset the whole game at every lost life instead. `GameOverInfo` adds the
``GAME_OVER`` mask the loop follows for autoresets and episode statistics, so logged returns are whole games.

Rewards are never clipped here: the learner clips (``learner.reward_clip``), while logs and evaluation report
raw game scores. Evaluation envs end episodes only at game over.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import gymnasium as gym
import numpy as np

from dqnrun.envs import GAME_OVER, Wrapper
from dqnrun.errors import UsageError

DEFAULTS: dict[str, Any] = {
    "game": "pong",  # any ALE ROM, snake_case (ale_py.roms.get_all_rom_ids())
    "frame_skip": 4,
    "noop_max": 30,
    "repeat_action_probability": 0.0,  # sticky actions; Machado et al. recommend 0.25
    "max_episode_frames": 108_000,  # 30 minutes of play at 60 Hz: truncation, which bootstraps
    "full_action_space": False,
    "life_loss": True,  # terminated at every lost life for the learner; games go on
    "fire_reset": True,
    "stack": 4,
    "size": 84,
}


def options(atari: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(atari) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"env.atari.{unknown[0]} is not an Atari option; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **atari}


def camel(game: str) -> str:
    """``space_invaders`` -> ``SpaceInvaders`` (the spelling of ALE's Gymnasium ids)."""
    return "".join(part.capitalize() for part in game.split("_"))


def gym_id(game: str) -> str:
    return f"ALE/{camel(game)}-v5"


def check_game(game: str) -> None:
    try:
        import ale_py.roms
    except ImportError:
        raise UsageError("Atari presets need ale-py: pip install 'dqnrun[atari]' (make install does)") from None
    games = list(ale_py.roms.get_all_rom_ids())
    if game not in games:
        close = difflib.get_close_matches(str(game), games, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"env.atari.game={game!r} is not an ALE game.{hint} ale-py bundles {len(games)} "
                         "games, e.g. pong, breakout, space_invaders, seaquest (snake_case)")


def _no_wrappers(wrapper: Wrapper | None) -> None:
    if wrapper is not None:
        raise UsageError("env.wrappers cannot wrap Atari's C++ vector env (its games run inside ale_py's "
                         "threads, not as Gymnasium envs); remove env.wrappers or use a plain env.id=ALE/... "
                         "with your own preprocessing wrappers")


def make_vector_env(atari: dict[str, Any], num_envs: int, wrapper: Wrapper | None = None,
                    threads: int | None = None, evaluation: bool = False) -> gym.vector.VectorEnv:
    """``num_envs`` games on ale_py's C++ threads (``threads`` caps them to this job's share of the cores).
    Training: life-loss terminations plus the GAME_OVER mask. ``evaluation``: whole games only."""
    from ale_py.vector_env import AtariVectorEnv

    o = options(atari)
    check_game(o["game"])
    _no_wrappers(wrapper)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    life_loss = bool(o["life_loss"]) and not evaluation
    envs = AtariVectorEnv(
        o["game"], num_envs, num_threads=max(1, min(num_envs, threads or cores)),
        frameskip=o["frame_skip"], noop_max=o["noop_max"], repeat_action_probability=o["repeat_action_probability"],
        max_num_frames_per_episode=o["max_episode_frames"], full_action_space=o["full_action_space"],
        img_height=o["size"], img_width=o["size"], stack_num=o["stack"], grayscale=True, maxpool=True,
        use_fire_reset=o["fire_reset"], episodic_life=False, life_loss_info=life_loss, reward_clipping=False,
    )
    return GameOverInfo(envs) if life_loss else envs


class GameOverInfo(gym.vector.VectorWrapper):
    """Adds ``info[GAME_OVER]``: a game ends at a truncation, or at a termination that took the last life
    (``lives == 0``; games without lives, such as Pong, always report 0, so their terminations end games)."""

    STEPS_IN_TWO_HALVES = True  # `dqnrun.envs.steps_in_two_halves`: send, then recv, as the C++ env does

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        self.env.send(actions)  # type: ignore[attr-defined]

    def recv(self) -> tuple[Any, ...]:
        obs, reward, terminated, truncated, info = self.env.recv()  # type: ignore[attr-defined]
        info[GAME_OVER] = truncated | (terminated & (info["lives"] == 0))
        return obs, reward, terminated, truncated, info


def probe_spaces(atari: dict[str, Any], wrapper: Wrapper | None = None) -> tuple[gym.Space, gym.Space]:
    envs = make_vector_env(atari, 1, wrapper, threads=1)
    try:
        return envs.single_observation_space, envs.single_action_space
    finally:
        envs.close()


class FireReset(gym.Wrapper):
    """Press FIRE after a reset, as the C++ vector env does (``use_fire_reset``), for games that need it."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        if "FIRE" in self.env.unwrapped.get_action_meanings():
            obs, _, terminated, truncated, info = self.env.step(1)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_render_env(atari: dict[str, Any], render_mode: str = "rgb_array") -> gym.Env:
    """One game for videos and watching: the same preprocessing from Gymnasium's wrappers (a single env that
    renders full-size colour frames), whole games, raw scores. Its observations match the vector env's up to
    the resize interpolation."""
    import ale_py

    gym.register_envs(ale_py)
    o = options(atari)
    check_game(o["game"])
    env = gym.make(gym_id(o["game"]), frameskip=1, repeat_action_probability=o["repeat_action_probability"],
                   full_action_space=o["full_action_space"], max_num_frames_per_episode=o["max_episode_frames"],
                   render_mode=render_mode)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=o["noop_max"], frame_skip=o["frame_skip"],
                                          screen_size=o["size"], terminal_on_life_loss=False, grayscale_obs=True)
    if o["fire_reset"]:
        env = FireReset(env)
    return gym.wrappers.FrameStackObservation(env, o["stack"], padding_type="zero")
