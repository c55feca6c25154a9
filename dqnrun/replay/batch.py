"""The sampled batch, the one type every part of the replay hands to the learner."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A sampled batch. Leading dims are (B,) or, for a burst of G gradient steps, (G, B)."""

    obs: torch.Tensor  # (..., *obs_shape), observation dtype
    action: torch.Tensor  # (...,) int64
    reward: torch.Tensor  # (...,) float32; the discounted n-step return for n_step > 1
    next_obs: torch.Tensor  # (..., *obs_shape)
    terminated: torch.Tensor  # (...,) float32, 1.0 where the episode ended in a terminal state
    discount: torch.Tensor | None = None  # (...,) gamma^k for n-step windows of k steps; None = gamma
    weights: torch.Tensor | None = None  # (...,) importance-sampling weights (prioritized replay)
    indices: np.ndarray | None = None  # (...,) storage rows, to update their priorities
    next_mask: torch.Tensor | None = None  # (..., A) bool legal actions of next_obs (env.action_mask); None = all
