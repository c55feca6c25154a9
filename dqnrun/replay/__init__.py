"""Replay: preallocated storage on the replay device, sampled without Python loops, built from parts.

``ReplayBuffer`` (buffer.py) composes one of each:

* storage (storage.py, frames.py): ``RowStorage`` keeps obs and next_obs per row; ``FrameStorage`` keeps every
  frame of stacked observations once and rows hold frame serials (its module docstring has the design and
  the exactness invariants). Both share the ring of rows ``RowRing``.
* accumulator (nstep.py): ``OneStep`` (the identity) or ``NStepAccumulator`` (n-step returns across vector
  envs and autoreset).
* sampler (samplers.py): ``UniformSampler``, ``PrioritizedSampler`` (proportional, over a ``SumTree``,
  sumtree.py) or ``LatestSampler`` (the rows of the last add, for online tabular Q-learning).
"""

from dqnrun.replay.batch import Batch
from dqnrun.replay.buffer import STORAGES, ReplayBuffer
from dqnrun.replay.frames import FrameStorage
from dqnrun.replay.nstep import NStepAccumulator, OneStep
from dqnrun.replay.samplers import LatestSampler, PrioritizedSampler, UniformSampler
from dqnrun.replay.storage import RowRing, RowStorage
from dqnrun.replay.sumtree import SumTree

__all__ = [
    "STORAGES", "Batch", "FrameStorage", "LatestSampler", "NStepAccumulator", "OneStep", "PrioritizedSampler",
    "ReplayBuffer", "RowRing", "RowStorage", "SumTree", "UniformSampler",
]
