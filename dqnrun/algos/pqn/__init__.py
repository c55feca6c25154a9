"""PQN (Gallici et al., "Simplifying Deep Temporal Difference Learning", ICLR 2025): Q-learning without a replay
buffer or a target network. Many envs act for a short rollout, Q(lambda) targets are computed backward over it
from the online network's own values, then a few epochs of minibatch updates; a LayerNorm network keeps that
stable.

`PQN.train` is the whole loop: act (epsilon-greedy, recording max_a Q) -> step -> store -> at the rollout's end,
returns and updates -> log / evaluate / checkpoint. Built by `dqnrun.algos.pqn.build` from the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dqnrun.algos.pqn.loop import PQN
    from dqnrun.algos.pqn.returns import q_lambda_returns

__all__ = ["PQN", "q_lambda_returns"]


def __getattr__(name: str) -> Any:
    """`PQN` (``algo._target_``) and `q_lambda_returns`, imported on first use: the package's `rules` (what the
    command line checks before any run starts) load no torch."""
    if name == "PQN":
        from dqnrun.algos.pqn.loop import PQN

        return PQN
    if name == "q_lambda_returns":
        from dqnrun.algos.pqn.returns import q_lambda_returns

        return q_lambda_returns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
