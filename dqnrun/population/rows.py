"""The members' replays with a member axis: one ``(K, N, ...)`` tensor per column, one gather for every member.

Each member keeps its own `dqnrun.replay.ReplayBuffer` (its accumulator, its sampler and its RNG streams, its
checkpoints: a solo run's), but the columns of its row storage become views of row k of shared tensors
(`RowStorage.home`). A batched update then draws each member's rows with its own sampler, as its solo run does,
and gathers all of them with one index per column (a member's rows offset by k N) instead of one gather per member
and a stack of the results: 336-340 us against 416-423 us for 8 CartPole members at batch 128 with full 50k-row
buffers (one core; most of either is fetching 1,024 random rows from memory).

It takes what a row storage holds: transitions (``replay.storage=transitions``) with uniform or prioritized
sampling; frames (the Atari presets), ``replay=latest`` (the Q-table's ragged batches) and action masks keep each
member's own gather (`dqnrun.population.engine.stack_batches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dqnrun.replay import Batch, ReplayBuffer, RowStorage
from dqnrun.replay.samplers import PrioritizedSampler, UniformSampler
from dqnrun.replay.storage import take_rows


class StackedRows:
    """The row storages of ``replays`` (same capacity, observation shape, dtype and device) homed in shared
    tensors; a member's storage stays at its row for good (members leaving do not move it)."""

    def __init__(self, replays: Sequence[ReplayBuffer]) -> None:
        stores = [r.store for r in replays]
        first = stores[0]
        self.capacity, self.device = first.capacity, first.device
        self.with_discount = first.with_discount
        self.flat: dict[str, torch.Tensor] = {}
        shared = {name: torch.empty((len(stores), *getattr(first, name).shape), dtype=getattr(first, name).dtype,
                                    device=self.device) for name in RowStorage.COLUMNS}
        for k, store in enumerate(stores):
            store.home({name: t[k] for name, t in shared.items()})  # type: ignore[union-attr]
        for name, t in shared.items():
            self.flat[name] = t.view(len(stores) * self.capacity, *t.shape[2:])
        self.row = {id(s): k for k, s in enumerate(stores)}

    @staticmethod
    def fits(replays: Sequence[ReplayBuffer]) -> bool:
        """Whether these replays can share columns: row storages alike, sampled uniformly or by priority."""
        if not replays:
            return False
        first = replays[0].store
        return all(type(r.store) is RowStorage and isinstance(r.sampler, UniformSampler | PrioritizedSampler)
                   and r.next_mask is None and r.store.capacity == first.capacity
                   and r.store.obs.shape == first.obs.shape and r.store.obs.dtype == first.obs.dtype
                   and r.store.device == first.device and r.store.with_discount == first.with_discount
                   for r in replays)

    def gather(self, draws: dict[int, tuple[Any, Any, ReplayBuffer]], k: int) -> Batch:
        """``{slot: (rows (G, B), weights or None, replay)}`` (each member's own sampler's draw) -> one
        ``(K, G, B, ...)`` batch; a slot without a draw gets row 0 of the first member's storage, and its update
        is masked out."""
        first = next(iter(draws.values()))[0]
        idx = torch.zeros((k, *first.shape), dtype=torch.int64, device=self.device)
        for slot, (rows, _, replay) in draws.items():
            torch.add(torch.as_tensor(rows, device=self.device), self.row[id(replay.store)] * self.capacity,
                      out=idx[slot])
        names = ("obs", "next_obs", "action", "reward", "terminated") + (("discount",) if self.with_discount else ())
        cols = {name: take_rows(self.flat[name], idx) for name in names}
        weights = None
        if any(w is not None for _, w, _ in draws.values()):
            ref = next(w for _, w, _ in draws.values() if w is not None)
            weights = torch.stack([torch.as_tensor(draws[s][1], device=self.device) if s in draws
                                   else torch.zeros_like(torch.as_tensor(ref, device=self.device)) for s in range(k)])
        return Batch(cols["obs"], cols["action"], cols["reward"], cols["next_obs"], cols["terminated"],
                     cols.get("discount"), weights)
