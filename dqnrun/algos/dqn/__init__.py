"""DQN (Mnih et al. 2015) and the Rainbow family as switches: Double DQN, dueling and noisy heads (network
options), n-step returns and prioritized replay (replay options), C51, QR-DQN and IQN (``learner.distributional``),
Munchausen DQN (``learner.munchausen``); with ``env.action_mask`` it acts and bootstraps through legal actions only.

`DQN.train` is the whole training loop, in the order it happens (CleanRL's ``dqn.py`` reads the same way):
act -> step -> store -> (sync target) -> (update burst) -> log / evaluate / checkpoint. The parts are built by
`dqnrun.algos.dqn.build` from the config: the `Learner` (networks, optimizer, TD targets), the replay buffer
and the epsilon schedule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dqnrun.algos.dqn.learner import Learner
    from dqnrun.algos.dqn.loop import DQN

__all__ = ["DQN", "Learner"]


def __getattr__(name: str) -> Any:
    """`DQN` (``algo._target_``) and `Learner`, imported on first use: the package's `rules` (what the command line
    checks before any run starts) load no torch."""
    if name == "DQN":
        from dqnrun.algos.dqn.loop import DQN

        return DQN
    if name == "Learner":
        from dqnrun.algos.dqn.learner import Learner

        return Learner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
