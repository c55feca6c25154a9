"""dqnrun: config-driven Deep Q-Network training and evaluation for Gymnasium environments.

Python API (the same code path as the CLI)::

    from dqnrun import train, load
    result = train(["env=cartpole", "seed=1"], run_dir="runs/cp1")   # the results dict (results.json)
    agent = load("runs/cp1/checkpoints/best.pt")
    agent.act(obs)                        # one observation -> an action; a batch (B, *obs_shape) -> (B,)
    agent.evaluate(episodes=10)           # {"mean_return": ..., "returns": [...], ...}

Bad input raises ``dqnrun.UsageError`` with the one-line message the CLI prints.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from omegaconf import OmegaConf

__version__ = "0.2.0"
__all__ = ["Agent", "DqnrunError", "TrainingError", "UsageError", "__version__", "load", "train"]

# One short id per process, appended to run directory names so that jobs started in the same second
# (many sweep jobs, two shells) never share a directory. Hydra's ${now:} has one-second resolution.
_RUN_UID = f"{int(time.time_ns() // 1000) % 1_000_000:06d}{os.urandom(2).hex()}"


def _slug(name: Any = None, tags: Any = None) -> str:
    """``-<name>-<tag>-<tag>`` for a run directory's name ('' without a name or tags); filesystem-safe."""
    parts = [str(name)] if name not in (None, "") else []
    parts += [str(t) for t in (tags or [])]
    text = "-".join(re.sub(r"[^A-Za-z0-9_.=+-]+", "_", p).strip("_") for p in parts)
    return f"-{text[:100]}" if text else ""


def _ale_id(game: str) -> str:
    """``space_invaders`` -> ``ALE/SpaceInvaders-v5``: an Atari preset's env.id, derived from its game."""
    return f"ALE/{''.join(part.capitalize() for part in str(game).split('_'))}-v5"


if not OmegaConf.has_resolver("dqnrun_uid"):
    # use_cache: the value is stored in the config it first resolves in, so a config pickled to a launcher's
    # job process (submitit, joblib), or to its requeued run, resolves to the same run directory there.
    OmegaConf.register_new_resolver("dqnrun_uid", lambda: _RUN_UID, use_cache=True)
if not OmegaConf.has_resolver("dqnrun_slug"):
    OmegaConf.register_new_resolver("dqnrun_slug", _slug)
if not OmegaConf.has_resolver("dqnrun_ale_id"):
    OmegaConf.register_new_resolver("dqnrun_ale_id", _ale_id)


def __getattr__(name: str) -> Any:
    # The API imports torch and gymnasium; `import dqnrun` (the CLI's --help, --version) stays instant.
    if name in ("train", "load", "Agent"):
        from dqnrun import api

        return getattr(api, name)
    if name in ("UsageError", "TrainingError", "DqnrunError"):
        from dqnrun import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'dqnrun' has no attribute {name!r}")
