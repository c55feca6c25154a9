"""The sum tree behind proportional prioritized sampling."""

from __future__ import annotations

import numpy as np


class SumTree:
    """Binary sum tree over ``capacity`` leaves, with vectorized batch updates and prefix-sum search.

    Leaves are padded to a power of two L; ``tree`` (2L,) float64 holds the root at 1 and leaf i at L + i.
    """

    def __init__(self, capacity: int) -> None:
        self.leaves = 1 << max(int(capacity) - 1, 1).bit_length()
        self.depth = self.leaves.bit_length() - 1  # levels below the root; every leaf sits at this depth
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def update(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``idx`` (k,) to ``values`` (k,) and recompute their ancestors, level by level."""
        pos = np.asarray(idx, dtype=np.int64) + self.leaves
        self.tree[pos] = values  # with repeated idx the last value wins, as in a sequential loop
        for _ in range(self.depth):
            pos = np.unique(pos // 2)
            self.tree[pos] = self.tree[2 * pos] + self.tree[2 * pos + 1]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index i (same shape as ``mass``) for each prefix mass u, such that
        sum(leaves[:i]) <= u < sum(leaves[:i+1])."""
        u = np.array(mass, dtype=np.float64)
        pos = np.ones(u.shape, dtype=np.int64)
        for _ in range(self.depth):
            left = self.tree[2 * pos]
            right = u >= left
            u -= left * right
            pos = 2 * pos + right
        return pos - self.leaves

    def leaf_values(self, n: int) -> np.ndarray:
        """The first n leaves (n,), a view."""
        return self.tree[self.leaves:self.leaves + n]
