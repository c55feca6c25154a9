"""Samplers: which stored rows a batch takes. Each ``draw(n_batches, step)`` returns rows of shape (B,), or
(G, B) for ``n_batches=G``, and their importance-sampling weights (same shape, float32 on the storage's
device) or None; the storage then gathers the rows.

A sampler reads the storage's ``size``, ``last``, ``device``, ``may_invalidate`` and ``valid(rows)``, so the
same samplers serve both storages: rows whose frames were overwritten (``FrameStorage``) are redrawn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dqnrun.replay.storage import RowRing
from dqnrun.replay.sumtree import SumTree


def annealed_beta(beta0: float, beta_steps: int, step: int) -> float:
    """PER's importance-sampling exponent at env step ``step`` (absolute, so a resume keeps the schedule):
    linear from beta0 to 1 over ``beta_steps``, then 1."""
    return beta0 + (1.0 - beta0) * min(1.0, step / max(beta_steps, 1))


def redraw_invalid(store: RowRing, rows: np.ndarray, draw: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace invalid rows in place with ``draw(invalid rows)`` until all are valid (rejection sampling)."""
    bad = ~store.valid(rows)
    for _ in range(10_000):
        if not bad.any():
            return
        redrawn = draw(rows[bad])
        rows[bad] = redrawn
        bad[bad] = ~store.valid(redrawn)
    raise RuntimeError("replay: no row with intact frames found; the frame ring is too small for these envs")


def _shape(batch_size: int, n_batches: int | None) -> tuple[int, ...]:
    return (batch_size,) if n_batches is None else (n_batches, batch_size)


def _check_not_empty(store: RowRing) -> None:
    if store.size == 0:
        raise ValueError("replay: cannot sample from an empty buffer")


class UniformSampler:
    """Rows uniformly among the stored ones. Where every row stays valid (``RowStorage``) they are drawn on the
    storage's device with the torch ``generator`` (no host round trip); otherwise on the host with ``np_rng``,
    where the frame serials live, redrawing invalid rows."""

    def __init__(self, store: RowRing, batch_size: int, generator: torch.Generator, np_rng: np.random.Generator):
        self.store, self.batch_size, self.generator, self.np_rng = store, int(batch_size), generator, np_rng

    def draw(self, n_batches: int | None = None, step: int = 0) -> tuple[np.ndarray | torch.Tensor, None]:
        store, shape = self.store, _shape(self.batch_size, n_batches)
        _check_not_empty(store)
        size = store.size
        if not store.may_invalidate:
            return torch.randint(0, size, shape, device=store.device, generator=self.generator), None
        rows = self.np_rng.integers(0, size, shape)
        redraw_invalid(store, rows, lambda invalid: self.np_rng.integers(0, size, len(invalid)))
        return rows, None


class LatestSampler:
    """Exactly the rows of the last add (online learning without history), (k,) or repeated to (G, k); k may be
    0. Their frames are always intact."""

    def __init__(self, store: RowRing) -> None:
        self.store = store

    def draw(self, n_batches: int | None = None, step: int = 0) -> tuple[np.ndarray, None]:
        start, k = self.store.last
        rows = (start + np.arange(k)) % self.store.capacity
        return (rows if n_batches is None else np.tile(rows, (n_batches, 1))), None


class PrioritizedSampler:
    """Proportional prioritized replay (Schaul et al. 2016) over a sum tree of the N rows' priorities.

    Stored priorities are (|td| + eps)^alpha; a new row enters with the highest priority seen so far. A batch
    takes one draw in each of B equal slices of the total mass (stratified), with weights
    (N P(i))^-beta / max_j (N P(j))^-beta, the max over every row of the buffer. Rows whose frames were
    overwritten leave the tree (priority 0; a new write restores it) and are redrawn over the whole mass.
    """

    def __init__(self, store: RowRing, batch_size: int, np_rng: np.random.Generator, alpha: float = 0.6,
                 beta: float = 0.4, beta_steps: int = 100_000, priority_eps: float = 1e-6) -> None:
        self.store, self.batch_size, self.np_rng = store, int(batch_size), np_rng
        self.alpha, self.beta0, self.beta_steps = float(alpha), float(beta), int(beta_steps)
        self.priority_eps = float(priority_eps)
        self.tree = SumTree(store.capacity)
        self.max_priority = 1.0

    def beta(self, step: int) -> float:
        return annealed_beta(self.beta0, self.beta_steps, step)

    def on_write(self, start: int, k: int) -> None:
        """Rows start .. start+k-1 (mod N) were just written: they enter with the highest priority."""
        written = np.arange(start, start + k) % self.store.capacity
        self.tree.update(written, np.full(k, self.max_priority ** self.alpha))

    def update(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """New priorities (|td| + eps)^alpha for rows ``indices`` (any shape; ``td_abs`` the same)."""
        p = np.abs(np.asarray(td_abs, dtype=np.float64)).ravel() + self.priority_eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(np.asarray(indices).ravel(), p ** self.alpha)

    def draw(self, n_batches: int | None = None, step: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        store, tree, shape = self.store, self.tree, _shape(self.batch_size, n_batches)
        _check_not_empty(store)
        size = store.size
        strata = (np.arange(self.batch_size) + self.np_rng.random(shape)) * (tree.total / self.batch_size)
        rows = np.minimum(tree.find(strata.ravel()), size - 1).reshape(shape)
        if store.may_invalidate:

            def draw(invalid: np.ndarray) -> np.ndarray:
                tree.update(invalid, np.zeros(len(invalid)))
                if tree.total <= 0:
                    raise RuntimeError("replay: no row with intact frames has priority left")
                return np.minimum(tree.find(self.np_rng.random(len(invalid)) * tree.total), size - 1)

            redraw_invalid(store, rows, draw)
        total = tree.total
        leaves = tree.leaf_values(size)
        probs = leaves[rows] / total
        low = leaves.min()
        if low <= 0:  # rows with priority 0 are out of the draw
            low = np.min(leaves, initial=np.inf, where=leaves > 0)
        weights = (probs / (low / total)) ** (-self.beta(step))  # (N P)^-beta / max_j (N P_j)^-beta
        return rows, torch.as_tensor(weights, dtype=torch.float32, device=store.device)

    def state_dict(self) -> dict:
        """Priorities of the stored rows (size,) float64 (a copy)."""
        return {"priorities": torch.from_numpy(self.tree.leaf_values(self.store.size).copy())}

    def load_state_dict(self, state: dict) -> None:
        self.max_priority = float(state.get("max_priority", 1.0))
        if "priorities" in state:
            n = int(state["size"])
            self.tree.update(np.arange(n), state["priorities"].numpy())
