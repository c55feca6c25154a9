"""The members' replays with a member axis: one shared tensor for every member's rows, one gather for all.

Each member keeps its own `dqnrun.replay.ReplayBuffer` (its accumulator, its sampler and its RNG streams, its
checkpoints: a solo run's), but the columns of its row storage become views of member k's slice of one packed
``(K, N, W)`` byte tensor (`RowStorage.home`, `StackedRows`). A batched update then draws each member's rows with
its own sampler, as its solo run does, and gathers all of them with one row fetch (a member's rows offset by k N:
numpy's ``take`` on the CPU, ``index_select`` on an accelerator) instead of one gather per member and column and a
stack of the results (`StackedRows` says what it measured).

It takes what a row storage holds: transitions (``replay.storage=transitions``) with uniform or prioritized
sampling. `StackedFrames` does the same for frame rings (the Atari presets): the members' rings are rows of one
``(K, F, *frame)`` tensor, on an accelerator the frames every member stored since the last read cross to the
device in one copy (`FrameWriter`), and one index gathers every member's stacks. ``replay=latest`` (the Q-table's ragged
batches) and action masks keep each member's own gather (`dqnrun.population.engine.stack_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dqnrun.replay import Batch, FrameStorage, ReplayBuffer, RowStorage
from dqnrun.replay.samplers import PrioritizedSampler, UniformSampler

log = logging.getLogger("dqnrun.population")


def alike(replays: Sequence[ReplayBuffer], kind: type, same: Callable[[Any, Any], bool]) -> bool:
    """Whether ``replays`` can share tensors: storages of type ``kind`` with one capacity, device and discount
    column, ``same`` as the first in what ``kind`` stores, sampled uniformly or by priority, without action masks."""
    if not replays:
        return False
    first = replays[0].store
    return all(type(r.store) is kind and isinstance(r.sampler, UniformSampler | PrioritizedSampler)
               and r.next_mask is None and r.store.capacity == first.capacity and r.store.device == first.device
               and r.store.with_discount == first.with_discount and same(r.store, first) for r in replays)


def stacked_weights(draws: dict[int, tuple[Any, Any, ReplayBuffer]], k: int, device: torch.device,
                    ) -> torch.Tensor | None:
    """Prioritized replay's importance weights of the members' draws as ``(K, G, B)`` (zeros for a slot without a
    draw), or None for uniform sampling."""
    if all(w is None for _, w, _ in draws.values()):
        return None
    ref = torch.as_tensor(next(w for _, w, _ in draws.values() if w is not None), device=device)
    return torch.stack([torch.as_tensor(draws[s][1], device=device) if s in draws else torch.zeros_like(ref)
                        for s in range(k)])


class StackedRows:
    """The row storages of ``replays`` (same capacity, observation shape, dtype and device) homed in one shared
    ``(K, N, W)`` byte tensor: row i of member k holds all of that row's columns side by side (action, reward,
    terminated, discount, obs, next_obs, each at an offset aligned to its dtype), and each of the member's columns
    is a strided view of its slice. A member's storage stays at its row for good (members leaving do not move it).

    One row, one place: a batch draws K x B random rows from K x N, and with every column in its own tensor each
    drawn row cost six cache misses; packed, it costs one or two (a CartPole row is 56 bytes). For 8 CartPole members
    at batch 128 with 50k-row buffers, caches cold as they are between two updates of a run: 104 us against 495 us.
    """

    def __init__(self, replays: Sequence[ReplayBuffer]) -> None:
        stores = [r.store for r in replays]
        first = stores[0]
        self.capacity, self.device = first.capacity, first.device
        self.with_discount = first.with_discount
        k, n = len(stores), self.capacity
        self.layout, self.width = packed_layout({name: getattr(first, name) for name in RowStorage.COLUMNS})
        packed = torch.zeros((k, n, self.width), dtype=torch.uint8, device=self.device)
        for m, store in enumerate(stores):
            store.home({name: column_view(packed[m], *spec) for name, spec in self.layout.items()})  # type: ignore[union-attr]
        self.packed = packed.view(k * n, self.width)
        self.row = {id(s): m for m, s in enumerate(stores)}
        names = ("obs", "next_obs", "action", "reward", "terminated") + (("discount",) if self.with_discount else ())
        # what a batch reads of each column, worked out once: (name, first byte, end byte, dtype, shape of a row)
        self._reads = [(name, *column_span(*self.layout[name]), *self.layout[name][1:]) for name in names]
        if self.device.type == "cpu":  # the same, for numpy's gather
            self._packed_np = self.packed.numpy()
            self._np_reads = [(name, start, end, torch.empty((), dtype=dtype).numpy().dtype, shape)
                              for name, start, end, dtype, shape in self._reads]

    @staticmethod
    def fits(replays: Sequence[ReplayBuffer]) -> bool:
        """Whether these replays can share columns: row storages alike, sampled uniformly or by priority."""
        return alike(replays, RowStorage, lambda a, b: a.obs.shape == b.obs.shape and a.obs.dtype == b.obs.dtype)

    def gather(self, draws: dict[int, tuple[Any, Any, ReplayBuffer]], k: int) -> Batch:
        """``{slot: (rows (G, B), weights or None, replay)}`` (each member's own sampler's draw) -> one
        ``(K, G, B, ...)`` batch; a slot without a draw gets row 0 of the first member's storage, and its update
        is masked out."""
        first = next(iter(draws.values()))[0]
        if self.device.type == "cpu":  # numpy's calls cost a fifth of torch's on these tiny index arrays
            at = np.zeros((k, *first.shape), dtype=np.int64)
            for slot, (rows, _, replay) in draws.items():  # a uniform draw is a CPU tensor: its numpy view, directly
                rows = rows.numpy() if isinstance(rows, torch.Tensor) else rows  # (np.asarray's goes through Python)
                np.add(rows, self.row[id(replay.store)] * self.capacity, out=at[slot])
            # numpy's take and views, then torch views of them: 13 us for 8 members x 128 rows against 30 us for
            # index_select and torch's 18 view calls (the same values and strides)
            got = np.take(self._packed_np, at.reshape(-1), axis=0)  # (K*G*B, W): one row fetch per drawn row
            cols = {name: torch.from_numpy(got[:, start:end].view(np_dtype).reshape(*at.shape, *shape))
                    for name, start, end, np_dtype, shape in self._np_reads}
        else:
            idx = torch.zeros((k, *first.shape), dtype=torch.int64, device=self.device)
            for slot, (rows, _, replay) in draws.items():
                torch.add(torch.as_tensor(rows, device=self.device), self.row[id(replay.store)] * self.capacity,
                          out=idx[slot])
            picked = self.packed.index_select(0, idx.view(-1))  # (K*G*B, W): one row fetch per drawn row
            cols = {name: picked[:, start:end].view(dtype).view(*idx.shape, *shape)
                    for name, start, end, dtype, shape in self._reads}
        weights = stacked_weights(draws, k, self.device)
        return Batch(cols["obs"], cols["action"], cols["reward"], cols["next_obs"], cols["terminated"],
                     cols.get("discount"), weights)


def packed_layout(columns: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[int, torch.dtype, tuple[int, ...]]], int]:
    """Where each column ``(N, *shape)`` sits in a packed row, ``{name: (byte offset, dtype, shape)}``, widest
    elements first so that every offset is a multiple of its element size, and the row's width in bytes (a
    multiple of the widest element, so every row starts aligned too)."""
    out: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
    off, widest = 0, 1
    for name, t in sorted(columns.items(), key=lambda kv: -kv[1].element_size()):
        size = t.element_size()
        widest = max(widest, size)
        off = -(-off // size) * size
        out[name] = (off, t.dtype, tuple(t.shape[1:]))
        off += size * int(np.prod(t.shape[1:], dtype=np.int64))
    return out, -(-off // widest) * widest


def column_span(offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[int, int]:
    """The bytes ``[start, end)`` of a packed row that the column at ``offset`` takes."""
    return offset, offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64))


def column_view(rows: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The column at ``offset`` of packed byte rows ``(N, W)``: a strided ``(N, *shape)`` view of ``dtype``."""
    start, end = column_span(offset, dtype, shape)
    return rows[:, start:end].view(dtype).view(rows.shape[0], *shape)


class StackedFrames:
    """The frame rings of ``replays`` (same capacity, frame shape, dtype, stack, ring size and device) as rows of one
    ``(K, F, *frame)`` tensor; the members' row columns (frame serials and scalars) stay on the host, each its own.

    It is every member's ring's `FrameWriter`: a member's frames wait on the host (`FrameStorage.flush`) until any
    ring is read, and then every member's waiting frames cross in one copy and one ``index_copy_``. A member's
    storage stays at its row for good (members leaving do not move it).
    """

    def __init__(self, replays: Sequence[ReplayBuffer]) -> None:
        stores: list[FrameStorage] = [r.store for r in replays]  # type: ignore[misc]
        first = stores[0]
        self.device, self.slots, self.frame = first.device, first._slots, first._frame
        self.scalars = ("action", "reward", "terminated") + (("discount",) if first.with_discount else ())
        # zeros: on the CPU, pages nobody writes are never allocated (a member's ring fills as it trains)
        shared = torch.zeros((len(stores), *first._ring.shape), dtype=first._ring.dtype, device=self.device)
        for k, store in enumerate(stores):
            store.home(shared[k])
            store.writer = self
        self.stores = stores
        self.flat = shared.view(len(stores) * self.slots, *self.frame)
        self.row = {id(s): k for k, s in enumerate(stores)}

    @classmethod
    def share(cls, replays: Sequence[ReplayBuffer]) -> StackedFrames | None:
        """The shared rings, or None where the device cannot hold them beside the members' own for the moment it
        takes to copy them over (1M-frame rings of 16 Pong members are 115 GB): then each member keeps its own ring
        and gathers from it, as it would alone."""
        try:
            return cls(replays)
        except torch.OutOfMemoryError:
            log.info("the members' frame rings stay apart: %s cannot hold a shared copy beside them",
                     replays[0].store.device)
            return None

    @staticmethod
    def fits(replays: Sequence[ReplayBuffer]) -> bool:
        """Whether these replays can share one frame tensor: frame rings alike, sampled uniformly or by priority."""
        return alike(replays, FrameStorage, lambda a, b: a._slots == b._slots and a._k == b._k
                     and a._ring.shape == b._ring.shape and a._ring.dtype == b._ring.dtype)

    def flush(self) -> None:
        """Every member's waiting frames into the shared tensor: one host-to-device copy, one ``index_copy_``."""
        slots, frames = [], []
        for k, store in enumerate(self.stores):
            if store._pending:
                at, f = store.take_pending()
                slots.append(at + k * self.slots)
                frames.append(f)
        if slots:
            self.flat.index_copy_(0, torch.from_numpy(np.concatenate(slots)).to(self.device),
                                  torch.from_numpy(np.concatenate(frames)).to(self.device))

    def gather(self, draws: dict[int, tuple[Any, Any, ReplayBuffer]], k: int) -> Batch:
        """As `StackedRows.gather`: ``{slot: (rows (G, B), weights or None, replay)}`` -> one ``(K, G, B, ...)``
        batch, each member's stacks and scalars those its own ``FrameStorage.gather`` returns."""
        self.flush()
        first = next(iter(draws.values()))[0]
        shape, stack = tuple(first.shape), self.stores[0]._k
        serials = np.zeros((2, k, *shape, stack), dtype=np.int64)  # obs, next_obs: slots in the shared tensor
        scalars = {name: np.zeros((k, *shape), dtype=np.int64 if name == "action" else np.float32)
                   for name in self.scalars}
        for slot, (rows, _, replay) in draws.items():
            store: FrameStorage = replay.store  # type: ignore[assignment]
            base = self.row[id(store)] * self.slots
            o, nx = store._refs_np
            np.add(o[rows] % self.slots, base, out=serials[0, slot])
            np.add(nx[rows] % self.slots, base, out=serials[1, slot])
            for name, out in scalars.items():
                out[slot] = getattr(store, name).numpy()[rows]  # host columns
        frames = self.flat.index_select(0, torch.from_numpy(serials.reshape(-1)).to(self.device))
        frames = frames.view(2, k, *shape, stack, *self.frame)
        dev = {name: torch.from_numpy(v).to(self.device) for name, v in scalars.items()}
        weights = stacked_weights(draws, k, self.device)
        return Batch(frames[0], dev["action"], dev["reward"], frames[1], dev["terminated"], dev.get("discount"),
                     weights)
