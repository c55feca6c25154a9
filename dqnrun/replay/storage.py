"""Row storage: the preallocated ring of N rows that every replay writes into and gathers batches from.

A row is (obs, next_obs, action int64, reward float32, terminated float32, discount float32). ``RowStorage``
keeps obs and next_obs (N, *obs_shape) themselves; ``FrameStorage`` (frames.py) keeps k frame serials (N, k)
in their place. Both share the ring (``RowRing``): the scalar columns, the write position and the rows of the
last write.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dqnrun.replay.batch import Batch

SCALAR_BYTES = 8 + 4 + 4 + 4  # action, reward, terminated, discount


def take_rows(column: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (any shape) of a column ``(N, ...)`` -> ``(*idx.shape, ...)``."""
    if column.stride(0) * column.element_size() > 4096:  # big rows (pixels): index_select is ~15x faster
        return column.index_select(0, idx.reshape(-1)).view(*idx.shape, *column.shape[1:])
    return column[idx]  # small rows: plain indexing has less overhead


class RowRing:
    """Ring of N rows: two obs columns given by the storage, then action (N,) int64, reward, terminated and
    discount (N,) float32 on ``device``. The oldest rows are overwritten first.

    ``host_obs``: every column stays on the host whatever the device (frame serials, which sampling reads there,
    and the scalars beside them): a vector step's rows are written with numpy, no device copy, and a batch's
    scalars cross to the device once per sample (`FrameStorage`, whose frames are on the device).
    ``with_discount``: batches carry the discount column (n-step returns; 1-step rows use gamma).
    """

    may_invalidate = False  # whether a stored row can become unsampleable (frames whose slots were reused)

    def __init__(self, capacity: int, device: torch.device, obs_columns: tuple[torch.Tensor, torch.Tensor],
                 gamma: float, with_discount: bool, host_obs: bool) -> None:
        self.capacity, self.device, self.with_discount = int(capacity), device, bool(with_discount)
        rows_at = torch.device("cpu") if host_obs else device
        self.action = torch.zeros(self.capacity, dtype=torch.int64, device=rows_at)
        self.reward = torch.zeros(self.capacity, dtype=torch.float32, device=rows_at)
        self.terminated = torch.zeros(self.capacity, dtype=torch.float32, device=rows_at)
        self.discount = torch.full((self.capacity,), float(gamma), dtype=torch.float32, device=rows_at)
        self.pos = 0
        self.size = 0
        self.last = (0, 0)  # (start, count) of the rows written by the last add
        self._host_obs = host_obs
        self._cross = rows_at != self.device  # the columns live on the host, batches on the device
        # On the CPU, numpy views of the same memory take a vector step's rows ~5x cheaper than torch indexing.
        self._views: list[np.ndarray] | None = [] if rows_at.type == "cpu" else None
        self._bind(obs_columns)

    def _bind(self, obs_columns: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._stores = (*obs_columns, self.action, self.reward, self.terminated, self.discount)
        if self._views is not None:  # None: torch ops write (an accelerator, or `use_torch_ops`)
            self._views = [t.numpy() for t in self._stores]

    def use_torch_ops(self) -> None:
        """Write with torch ops, as on an accelerator, even on the CPU (so tests cover that path)."""
        self._views = None

    def write(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
              terminated: np.ndarray, discount: np.ndarray | None = None) -> tuple[int, int]:
        """Store R rows at the write position: obs, next_obs (R, ...) as the storage keeps them, the rest (R,),
        cast to the column dtypes. ``discount`` None leaves the column at gamma. Returns (first row, R)."""
        if len(action) > self.capacity:  # more rows than slots: only the newest survive anyway
            obs, next_obs, action, reward, terminated = (
                x[-self.capacity:] for x in (obs, next_obs, action, reward, terminated)
            )
            discount = None if discount is None else discount[-self.capacity:]
        k, pos = len(action), self.pos
        rows: slice | np.ndarray = slice(pos, pos + k) if pos + k <= self.capacity else \
            np.arange(pos, pos + k) % self.capacity
        v = self._views
        if v is not None:
            v[0][rows], v[1][rows], v[2][rows], v[3][rows], v[4][rows] = obs, next_obs, action, reward, terminated
            if discount is not None:
                v[5][rows] = discount
        else:
            self._write_torch(rows, (obs, next_obs, action, reward, terminated, discount))
        self.last = (pos, k)
        self.pos = (pos + k) % self.capacity
        self.size = min(self.size + k, self.capacity)
        return pos, k

    def _write_torch(self, rows: slice | np.ndarray, values: tuple) -> None:
        stores = self._stores
        if self._host_obs:  # the obs columns are host tensors: numpy writes, whatever the device
            stores[0].numpy()[rows], stores[1].numpy()[rows] = values[0], values[1]
            values = (None, None, *values[2:])
        at = stores[2].device
        idx = rows if isinstance(rows, slice) else torch.from_numpy(rows).to(at)
        for store, value in zip(stores, values, strict=True):
            if value is not None:
                store[idx] = torch.as_tensor(value, device=at).to(store.dtype)

    def skip(self) -> None:
        """Record an add that stored no row (all envs autoreset, or every n-step window still open)."""
        self.last = (self.pos, 0)

    def _scalars(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """action, reward, terminated and (n-step only) discount of rows ``idx`` (any shape, where the columns
        are), on the device."""
        a, r, t = self.action[idx], self.reward[idx], self.terminated[idx]
        d = self.discount[idx] if self.with_discount else None
        if self._cross:  # host columns, device batches: one copy each
            dev = self.device
            a, r, t, d = a.to(dev), r.to(dev), t.to(dev), None if d is None else d.to(dev)
        return a, r, t, d

    def valid(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of ``rows`` (any shape) can be sampled; same shape, bool. Every row can, here."""
        return np.ones(np.shape(rows), dtype=bool)

    def state_dict(self) -> dict:
        """The filled rows' scalar columns (copies) and the ring position."""
        n = self.size
        return {
            "action": self.action[:n].clone(), "reward": self.reward[:n].clone(),
            "terminated": self.terminated[:n].clone(), "discount": self.discount[:n].clone(),
            "pos": self.pos, "size": self.size, "capacity": self.capacity, "last": list(self.last),
        }

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        for name in ("action", "reward", "terminated", "discount"):
            column = getattr(self, name)
            column[:n] = state[name].to(column.device)
        self.pos, self.size = int(state["pos"]), n
        self.last = tuple(state.get("last", (0, 0)))  # type: ignore[assignment]


class RowStorage(RowRing):
    """Rows with their observations: obs and next_obs (N, *obs_shape) in ``obs_dtype`` on ``device``.

    Simple and fast, but 2 x 28 KB per row for stacked Atari frames (4, 84, 84), i.e. 56 GB for 1M rows
    (``FrameStorage`` stores each frame once).
    """

    kind = "transitions"

    def __init__(self, capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype, device: torch.device,
                 gamma: float = 0.99, with_discount: bool = False) -> None:
        shape = (int(capacity), *obs_shape)
        self.obs = torch.zeros(shape, dtype=obs_dtype, device=device)
        self.next_obs = torch.zeros(shape, dtype=obs_dtype, device=device)
        super().__init__(capacity, device, (self.obs, self.next_obs), gamma, with_discount, host_obs=False)

    COLUMNS = ("obs", "next_obs", "action", "reward", "terminated", "discount")

    def home(self, columns: dict[str, torch.Tensor]) -> None:
        """Keep the columns (`COLUMNS`) in the given tensors from now on, their contents copied there (same shapes,
        dtypes and device): a population's replay with a member axis makes every member's columns views of one
        tensor (`dqnrun.population.rows`). Writing, sampling and checkpoints are unchanged."""
        for name in self.COLUMNS:
            columns[name].copy_(getattr(self, name))
            setattr(self, name, columns[name])
        self._bind((self.obs, self.next_obs))

    @staticmethod
    def nbytes(capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype) -> int:
        """N x (2 obs + 20 bytes)."""
        per_obs = int(np.prod(obs_shape, dtype=np.int64)) * torch.empty((), dtype=obs_dtype).element_size()
        return int(capacity) * (2 * per_obs + SCALAR_BYTES)

    def encode(self, obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What a row keeps of a vector step's observations (E, *obs_shape): the observations themselves."""
        return obs, next_obs

    def gather(self, rows: np.ndarray | torch.Tensor) -> Batch:
        """Batch of rows (any shape, e.g. (B,) or (G, B)); host rows are moved to the device first."""
        idx = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
        action, reward, terminated, discount = self._scalars(idx)
        return Batch(take_rows(self.obs, idx), action, reward, take_rows(self.next_obs, idx), terminated, discount)

    def state_dict(self) -> dict:
        state = super().state_dict()
        n = self.size
        state["obs"], state["next_obs"] = self.obs[:n].clone(), self.next_obs[:n].clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        self.obs[:n], self.next_obs[:n] = state["obs"].to(self.device), state["next_obs"].to(self.device)
        super().load_state_dict(state)
