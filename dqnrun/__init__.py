"""dqnrun: config-driven Deep Q-Network training and evaluation for Gymnasium environments.

Python API (the same code path as the CLI)::

    from dqnrun import train, load
    result = train(["env=cartpole", "seed=1"], run_dir="runs/cp1")   # the results dict (results.json)
    agent = load("runs/cp1/checkpoints/best.pt")
    agent.act(obs)                        # one observation -> an action; a batch (B, *obs_shape) -> (B,)
    agent.q_values(obs)                   # (A,) for one observation, (B, A) for a batch
    agent.evaluate(episodes=10)           # {"mean_return": ..., "returns": [...], ...}

Bad input raises ``dqnrun.UsageError`` with the one-line message the CLI prints.
"""

from __future__ import annotations

from typing import Any

from dqnrun.config.resolvers import register as _register_resolvers

__version__ = "0.3.0"
__all__ = ["Agent", "DqnrunError", "TrainingError", "UsageError", "__version__", "load", "train"]

_register_resolvers()  # before Hydra composes anything: ${dqnrun_uid:}, ${dqnrun_slug:...}, ${dqnrun_ale_id:...}


def __getattr__(name: str) -> Any:
    # The API imports torch and gymnasium; `import dqnrun` (the CLI's --help, --version) stays instant.
    if name in ("train", "load", "Agent"):
        from dqnrun import api

        return getattr(api, name)
    if name in ("UsageError", "TrainingError", "DqnrunError"):
        from dqnrun import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'dqnrun' has no attribute {name!r}")
