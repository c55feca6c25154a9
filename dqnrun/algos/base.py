"""The algorithm seam: what the run lifecycle knows of an algorithm, and nothing more.

The lifecycle (`dqnrun.run.lifecycle`) prepares, builds, restores, trains and finishes a run; it owns the envs,
the counters, signals, evaluation, checkpoints, results.json and the loggers. An algorithm owns how it acts,
what it stores and how it learns. They meet here:

    algo = builders.build_algorithm(cfg, spec)      # the algorithm's own code gets built parts and plain values
    algo.train(session)                              # advance training until the session says stop
    algo.policy                                      # obs (B, *obs_shape) -> Q (B, A): eval, export, the API
    algo.state_dict() / algo.load_state_dict(s)      # everything but the policy's weights (last.pt)
    algo.data_state() / algo.load_data_state(s, step)  # its experience (replay, rollout): a file of its own
    algo.read_metrics(step)                          # scalars since the last read, for the loggers

A training loop reads top to bottom and leaves the shared chores to the `Session` it is given: stepping the
envs (autoreset, episode statistics, counting), and at each step's end logging, evaluating and checkpointing.
A new algorithm is a package under ``dqnrun/algos/`` (this class, a ``build`` module that turns the config into
its parts), a ``conf/algo/<name>.yaml`` whose ``_target_`` is the class, and one line in
``dqnrun/algos/__init__.py``'s registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from dqnrun.run.session import Session


class Algorithm(ABC):
    """An agent that trains in a `Session` and acts through ``policy``.

    Attributes every algorithm sets: ``policy`` (the network eval, export and the API use: obs
    ``(B, *obs_shape)`` -> Q-values ``(B, A)``), ``updates`` (optimizer steps so far) and ``device``.
    """

    policy: nn.Module
    device: torch.device

    @property
    @abstractmethod
    def updates(self) -> int:
        """Optimizer steps taken so far."""

    @abstractmethod
    def act(self, obs: np.ndarray, step: int, rng: np.random.Generator,
            mask: np.ndarray | None = None) -> np.ndarray:
        """Exploration actions (E,) int64 for observations (E, *obs_shape) at env step ``step``; ``mask`` (E, A)
        bool: the legal actions of each observation (``env.action_mask``), which every action must be among."""

    @abstractmethod
    def train(self, session: Session) -> None:
        """Step the envs and learn until ``session.running()`` is False or ``session.after_step`` says stop."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (the checkpoint loads with ``weights_only=True``): everything needed to
        continue exactly, except the policy's weights (saved beside it as ``policy``) and the experience
        (`data_state`)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`, after the policy's weights have been loaded."""

    def data_state(self) -> dict[str, Any] | None:
        """The experience the algorithm learns from (a replay buffer, a rollout), as tensors: written beside
        ``last.pt`` in a file of its own, since it can be large. None if the algorithm keeps none."""
        return None

    def load_data_state(self, state: dict[str, Any] | None, step: int) -> None:
        """Restore `data_state` at env step ``step``. ``None``: the experience was not saved or does not match
        the checkpoint; the algorithm must then gather new experience before it updates again, never learn from
        nothing."""
        return None

    @abstractmethod
    def read_metrics(self, step: int) -> dict[str, float]:
        """Scalars for the loggers since the last call (their names from `dqnrun.metrics`), for the env step the
        last action was taken at. Raises FloatingPointError if a loss or value went non-finite."""

    @abstractmethod
    def check_finite(self) -> None:
        """Raise FloatingPointError if a loss or value went non-finite since the last `read_metrics` (the
        lifecycle never checkpoints non-finite weights)."""

    def init_from(self, policy_state: dict[str, Any]) -> None:
        """Trained policy weights into a fresh run (``init_from=``): optimizer and counters stay fresh."""
        self.policy.load_state_dict(policy_state)
