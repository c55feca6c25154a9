"""OmegaConf resolvers the configs use: registered when `dqnrun` is imported, before Hydra composes anything."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from omegaconf import OmegaConf

# One short id per process, appended to run directory names so that jobs started in the same second
# (many sweep jobs, two shells) never share a directory. Hydra's ${now:} has one-second resolution.
RUN_UID = f"{int(time.time_ns() // 1000) % 1_000_000:06d}{os.urandom(2).hex()}"


def slug(name: Any = None, tags: Any = None) -> str:
    """``-<name>-<tag>-<tag>`` for a run directory's name ('' without a name or tags); filesystem-safe."""
    parts = [str(name)] if name not in (None, "") else []
    parts += [str(t) for t in (tags or [])]
    text = "-".join(re.sub(r"[^A-Za-z0-9_.=+-]+", "_", p).strip("_") for p in parts)
    return f"-{text[:100]}" if text else ""


def ale_id(game: str) -> str:
    """``space_invaders`` -> ``ALE/SpaceInvaders-v5``: an Atari preset's env.id, derived from its game."""
    return f"ALE/{''.join(part.capitalize() for part in str(game).split('_'))}-v5"


def reward_threshold(env_id: str) -> float | None:
    """The solved score an env's own spec declares (``reward_threshold``), or None: the default of env=custom. An
    id that cannot be resolved gives None here; validation says what is wrong with it."""
    import gymnasium as gym

    from dqnrun.envs import resolve_env_id
    from dqnrun.errors import UsageError

    try:
        return gym.spec(resolve_env_id(str(env_id))).reward_threshold
    except UsageError:
        return None


def register() -> None:
    if not OmegaConf.has_resolver("dqnrun_uid"):
        # use_cache: the value is stored in the config it first resolves in, so a config pickled to a launcher's
        # job process (submitit, joblib), or to its requeued run, resolves to the same run directory there.
        OmegaConf.register_new_resolver("dqnrun_uid", lambda: RUN_UID, use_cache=True)
    if not OmegaConf.has_resolver("dqnrun_slug"):
        OmegaConf.register_new_resolver("dqnrun_slug", slug)
    if not OmegaConf.has_resolver("dqnrun_ale_id"):
        OmegaConf.register_new_resolver("dqnrun_ale_id", ale_id)
    if not OmegaConf.has_resolver("dqnrun_reward_threshold"):
        OmegaConf.register_new_resolver("dqnrun_reward_threshold", reward_threshold)
