"""Drive DQN's real training loop on hand-built parts (no config, no run directory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from dqnrun.algos.dqn import DQN, Learner
from dqnrun.replay import ReplayBuffer
from dqnrun.run.session import Cadence, EnvCursor, LoopState, Session


def run_dqn_loop(envs: gym.vector.VectorEnv, learner: Learner, replay: ReplayBuffer, total_steps: int,
                 logger: Any, checkpoint: Callable[[str], None] = lambda kind: None,
                 schedule: Callable[[int], float] = lambda step: 1.0, learning_starts: int | None = None,
                 train_freq: int = 1, target_update_interval: int = 1) -> tuple[LoopState, str]:
    """Train with DQN's loop until ``total_steps`` (no evaluation, logging only at the end); (state, reason).
    By default learning never starts (``learning_starts`` beyond ``total_steps``)."""
    algo = DQN(learner, replay, schedule, int(envs.single_action_space.n), train_freq=train_freq,
               learning_starts=total_steps + 1 if learning_starts is None else learning_starts,
               target_update_interval=target_update_interval)
    cadence = Cadence(total_steps=total_steps, eval_every=0, log_every=10**9, checkpoint_every=0, progress=False)
    session = Session(envs, EnvCursor.start(envs.reset(seed=0)[0]), LoopState(), cadence,
                      np.random.default_rng(0), algo, logger, None, checkpoint)
    algo.train(session)
    return session.finish()
