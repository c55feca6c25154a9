"""Frame storage (``storage="frames"``): every frame of a stacked observation (k, *frame) stored once.

* A ring of F uint8 frames (F, *frame), shared by all envs, holds the pixels. Frames get monotonic int64
  serials; serial s lives in slot s % F, so slot s % F still holds s exactly while s >= head - F.
* A row keeps k serials for its obs and k for its next_obs (2k int64 = 64 bytes for k = 4) instead of pixels;
  the n-step window keeps serials too, so it costs nothing per env.
* Per env the storage keeps the serials of the env's current observation and a host copy of it (E, k, *frame).
  ``encode`` checks, by value, (1) that ``obs[e]`` equals that current observation (it does in a vector-env
  loop, where obs is the previous next_obs; where it does not, e.g. on the first add or after a resume with new
  envs, obs[e] is stored as a new stack), and (2) whether ``next_obs[e][:-1] == obs[e][1:]``: then only the
  newest frame is written, which holds within an episode and across a life loss. Otherwise (an episode
  start after an autoreset, whatever its padding) all k frames are written, except that a frame equal to
  the next one in the same stack shares its serial, so zero or repeated-reset-frame padding costs 1-2 frames.
  Both checks compare bytes, never trust the env's padding, and make every sampled obs/next_obs exactly the
  array the env returned. They cost about 2 x E x k frame compares per vector step, done as uint64 words.
* A row is valid while its oldest serial is >= head - F. The check is exact, so no F can make a sample wrong;
  F only decides how many rows are lost. Samplers reject invalid rows and redraw them (prioritized: their
  priority is set to 0 and they are redrawn), ``valid`` tells them which.

Sizing: F = N + N // 100 + 2 k E (n + k) for N rows, E envs, n-step n. The last term covers the frames still
referenced by the current observations and the pending n-step windows (each vector step writes at most 2k
frames per env), so every row is valid when it is written. Each row of an episode costs one frame; an episode
start costs u more (u = 1 for repeated-frame padding, 2 for zero padding, at most k for arbitrary padding),
written at the autoreset step, which adds no row. So the N rows in the buffer span N (1 + u / L) frames for
episodes of L steps, and the N // 100 term keeps every row while u / L <= 1% (L >= 200 steps with zero
padding; 5-life Atari episodes are longer even for a random policy). Beyond that, the oldest
N (u / L - 1%) rows at most are invalid: 1% of the rows for L = 100 with zero padding. Worst case (1-step
episodes, arbitrary padding) k/(k+1) of the rows are lost. For N = 1M, (4, 84, 84) uint8 and E = 8, n = 3 that
is 7.13 GB of frames plus 84 MB of per-row data.

Design choice: one shared ring with k explicit serials per stack (not a per-env ring of consecutive frames,
which would need only one serial per stack): the shared ring's slack is shared by all envs, so an env with
short episodes cannot lose rows while others have room; the 48 extra bytes per row are 0.7% of a frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from dqnrun.replay.batch import Batch
from dqnrun.replay.storage import SCALAR_BYTES, RowRing


def words_dtype(nbytes: int) -> np.dtype:
    """Widest unsigned integer that tiles ``nbytes`` exactly: equality over uint64 words is ~8x faster."""
    for dt in (np.uint64, np.uint32, np.uint16):
        if nbytes % np.dtype(dt).itemsize == 0:
            return np.dtype(dt)
    return np.dtype(np.uint8)


class FrameWriter(Protocol):
    """Writes the waiting frames of several rings at once (a population's: `dqnrun.population.rows`)."""

    def flush(self) -> None: ...


class FrameStorage(RowRing):
    """Rows of frame serials over a shared ring of frames (see the module docstring).

    frames (F, *frame) on ``device``; obs_refs, next_refs (N, k) int64 on the host; per env, set by the first
    ``encode``: the current observation's serials (E, k) and a host copy of it (E, k, *frame).
    """

    kind = "frames"
    may_invalidate = True

    def __init__(self, capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype, device: torch.device,
                 gamma: float = 0.99, with_discount: bool = False, num_envs: int = 1, n_step: int = 1) -> None:
        k, frame = int(obs_shape[0]), tuple(int(d) for d in obs_shape[1:])
        self._k, self._frame = k, frame
        self._slots = self.frame_slots(capacity, k, num_envs, n_step)
        self._ring = torch.zeros((self._slots, *frame), dtype=obs_dtype, device=device)
        self._frame_view = self._ring.numpy() if device.type == "cpu" else None
        # On an accelerator, frames wait on the host until something reads the ring (a sample, a checkpoint) and
        # then cross in one copy: one per burst instead of one per env step. At most half a ring waits, so no two
        # waiting frames share a slot. ``writer``: a population's, which writes every member's at once.
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._flush_at = max(1, min(1024, self._slots // 2))
        self.writer: FrameWriter | None = None
        self._np_dtype = torch.empty((), dtype=obs_dtype).numpy().dtype
        frame_bytes = int(np.prod(frame, dtype=np.int64)) * self._np_dtype.itemsize
        self._word = words_dtype(frame_bytes)
        self._fw = frame_bytes // self._word.itemsize  # words per frame
        self._head = 0  # serial of the next frame written
        self.obs_refs = torch.zeros((int(capacity), k), dtype=torch.int64)  # host: samplers check serials there
        self.next_refs = torch.zeros((int(capacity), k), dtype=torch.int64)
        self._refs_np = (self.obs_refs.numpy(), self.next_refs.numpy())
        self._cur_refs: np.ndarray | None = None
        self._cur: np.ndarray | None = None
        super().__init__(capacity, device, (self.obs_refs, self.next_refs), gamma, with_discount, host_obs=True)

    @staticmethod
    def frame_slots(capacity: int, stack: int, num_envs: int = 1, n_step: int = 1) -> int:
        """F, the frame ring's size: N rows + 1% for episode starts + what the envs' pending stacks hold."""
        return int(capacity) + int(capacity) // 100 + 2 * int(stack) * int(num_envs) * (int(n_step) + int(stack))

    @staticmethod
    def nbytes(capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype, num_envs: int = 1,
               n_step: int = 1) -> int:
        """F frames (see ``frame_slots``), N x (2k serials + 20 bytes), and the E current observations."""
        k = int(obs_shape[0])
        per_frame = int(np.prod(obs_shape[1:], dtype=np.int64)) * torch.empty((), dtype=obs_dtype).element_size()
        slots = FrameStorage.frame_slots(capacity, k, num_envs, n_step)
        return slots * per_frame + int(capacity) * (2 * k * 8 + SCALAR_BYTES) + int(num_envs) * k * per_frame

    @property
    def frames(self) -> torch.Tensor:
        """The ring (F, *frame), every waiting frame written."""
        self.flush()
        return self._ring

    @property
    def head(self) -> int:
        """Frames stored so far: the serial of the next frame."""
        return self._head

    def use_torch_ops(self) -> None:
        super().use_torch_ops()
        self._frame_view = None

    # --- writing frames -----------------------------------------------------------------------------------
    def _init_envs(self, n_envs: int) -> None:
        self._cur_refs = np.zeros((n_envs, self._k), dtype=np.int64)
        self._cur = np.zeros((n_envs, self._k, *self._frame), dtype=self._np_dtype)
        self._cur_words = self._words(self._cur)
        self._eq = np.empty(self._cur_words.shape, dtype=bool)

    def _words(self, x: np.ndarray) -> np.ndarray:
        """(m, ...) as (m, words) machine words, a view where x is contiguous: (E, k, *frame) for a vector step's
        stacks, (k, *frame) for one stack's frames."""
        return np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8).view(self._word)

    def _put_frames(self, frames: np.ndarray) -> int:
        """Write frames (m, *frame) at the next m serials; returns the first."""
        m, s0 = len(frames), self._head
        a = s0 % self._slots
        slots: slice | np.ndarray = slice(a, a + m) if a + m <= self._slots else np.arange(s0, s0 + m) % self._slots
        if self._frame_view is not None:
            self._frame_view[slots] = frames
        else:  # a copy: the env may reuse the array it returned
            at = np.arange(a, a + m) if isinstance(slots, slice) else slots
            self._pending.append((at, np.array(frames, dtype=self._np_dtype, copy=True)))
            self._pending_n += m
            if self._pending_n >= self._flush_at:
                self.flush()
        self._head = s0 + m
        return s0

    def flush(self) -> None:
        """Write the frames waiting on the host into the ring (see ``__init__``); every read of the ring calls it."""
        if not self._pending:
            return
        if self.writer is not None:
            self.writer.flush()
            return
        slots, frames = self.take_pending()
        self._ring.index_copy_(0, torch.from_numpy(slots).to(self.device), torch.from_numpy(frames).to(self.device))

    def take_pending(self) -> tuple[np.ndarray, np.ndarray]:
        """The waiting frames' slots (m,) and frames (m, *frame), oldest first; none wait after it."""
        slots = np.concatenate([s for s, _ in self._pending])
        frames = np.concatenate([f for _, f in self._pending])
        self._pending.clear()
        self._pending_n = 0
        return slots, frames

    def home(self, frames: torch.Tensor) -> None:
        """Keep the ring in ``frames`` from now on (same shape, dtype and device), its written slots copied there
        (the others are never read): a population's members' rings become rows of one tensor
        (`dqnrun.population.rows.StackedFrames`). On the CPU a fresh ring's untouched pages stay unallocated."""
        m = min(self._head, self._slots)
        frames[:m].copy_(self.frames[:m])
        self._ring = frames
        self._frame_view = frames.numpy() if frames.device.type == "cpu" and self._frame_view is not None else None

    def _put_stack(self, stack: np.ndarray) -> np.ndarray:
        """Write a whole stack (k, *frame); returns its serials (k,). A frame equal to the next one shares its
        serial, so zero or repeated-frame padding at an episode start costs 1-2 frames, not k."""
        w = self._words(stack)
        keep = np.ones(self._k, dtype=bool)
        keep[:-1] = (w[:-1] != w[1:]).any(axis=1)
        kept = np.flatnonzero(keep)
        s0 = self._put_frames(stack[kept])
        # frame j takes the serial of the first kept frame at or after it: serials ascend from oldest to newest
        return s0 + np.searchsorted(kept, np.arange(self._k))

    def encode(self, obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store the new frames of a vector step (E, k, *frame); returns the serials (E, k) of obs and next_obs,
        which rows and n-step windows keep in place of the observations."""
        obs = np.asarray(obs, dtype=self._np_dtype)
        next_obs = np.asarray(next_obs, dtype=self._np_dtype)
        n_envs, fw = len(obs), self._fw
        if obs.shape[1:] != (self._k, *self._frame) or next_obs.shape != obs.shape:
            raise ValueError(f"replay: observations {obs.shape}/{next_obs.shape} do not match "
                             f"(E, {self._k}, {', '.join(map(str, self._frame))})")
        ow, nw = self._words(obs), self._words(next_obs)
        if self._cur_refs is None:  # first add: no env has a current observation yet
            self._init_envs(n_envs)
            same = np.zeros(n_envs, dtype=bool)
        elif len(self._cur_refs) != n_envs:
            raise ValueError(f"replay: {n_envs} envs in this add, {len(self._cur_refs)} before")
        else:  # (1) obs must be the env's current observation (the previous next_obs) to reuse its serials
            same = np.equal(ow, self._cur_words, out=self._eq).all(axis=1)
        cur, new = self._cur_refs, np.empty_like(self._cur_refs)
        eq = self._eq  # (E, k * words) bool, reused: ufuncs with out= allocate nothing
        if np.count_nonzero(same) < n_envs:
            for e in np.flatnonzero(~same):
                cur[e] = self._put_stack(obs[e])
        # (2) next_obs continues the stack (next_obs[e][:-1] == obs[e][1:]): only its newest frame is new.
        # Compared as one flat run shifted by a frame (2.5x faster than the strided 2-D slices); the pairs that
        # straddle two envs land in each env's last frame of eq, which is not read.
        np.equal(nw.ravel()[:-fw], ow.ravel()[fw:], out=eq.ravel()[:-fw])
        cont = eq[:, :-fw].all(axis=1)
        new[:, :-1] = cur[:, 1:]
        if np.count_nonzero(cont) == n_envs:
            new[:, -1] = self._put_frames(next_obs[:, -1]) + np.arange(n_envs)
        else:
            c = np.flatnonzero(cont)
            if c.size:
                new[c, -1] = self._put_frames(next_obs[c, -1]) + np.arange(c.size)
            for e in np.flatnonzero(~cont):
                new[e] = self._put_stack(next_obs[e])
        np.copyto(self._cur, next_obs)
        self._cur_refs = new
        return cur, new

    # --- reading rows -------------------------------------------------------------------------------------
    def valid(self, rows: np.ndarray) -> np.ndarray:
        """Whether every frame of rows (any shape) is still in the ring; same shape, bool."""
        oldest = self._head - self._slots  # serials below this have been overwritten
        if oldest <= 0:
            return np.ones(np.shape(rows), dtype=bool)
        o, nx = self._refs_np
        return np.minimum(o[rows].min(axis=-1), nx[rows].min(axis=-1)) >= oldest

    def gather(self, rows: np.ndarray) -> Batch:
        """Batch of valid rows (any shape): obs and next_obs (..., k, *frame) gathered from the ring by serial."""
        o, nx = self._refs_np
        action, reward, terminated, discount = self._scalars(torch.from_numpy(np.ascontiguousarray(rows)))
        return Batch(self._frames_at(o[rows]), action, reward, self._frames_at(nx[rows]), terminated, discount)

    def _frames_at(self, serials: np.ndarray) -> torch.Tensor:
        """Frames (..., *frame) for serials (...): index_select, which on the CPU is ~15x faster than
        advanced indexing for rows this large."""
        slots = torch.from_numpy((serials % self._slots).ravel()).to(self.device)
        return self.frames.index_select(0, slots).view(*serials.shape, *self._frame)

    # --- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The rows, the filled part of the frame ring and the envs' current observations. On the CPU the
        frames are returned without a copy (a copy of a 7 GB ring would double peak memory just to be saved):
        save the dict before the next add. Everything else is copied (``frames`` writes the waiting frames first)."""
        state = super().state_dict()
        n, m = self.size, min(self._head, self._slots)
        # from_numpy of the filled slice shares memory but has storage of its own size, so torch.save writes
        # m frames, not the whole ring
        frames = torch.from_numpy(self.frames.numpy()[:m]) if self.device.type == "cpu" else self.frames[:m].clone()
        state.update({
            "storage": "frames", "frames": frames, "frame_head": self._head, "frame_slots": self._slots,
            "obs_refs": self.obs_refs[:n].clone(), "next_refs": self.next_refs[:n].clone(),
        })
        if self._cur_refs is not None:
            state["cur_refs"] = torch.from_numpy(self._cur_refs.copy())
            state["cur_obs"] = torch.from_numpy(self._cur.copy())
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["frame_slots"]) != self._slots:
            raise ValueError(f"replay frame ring size changed ({state['frame_slots']} -> {self._slots}): "
                             "num_envs and n_step must match the saved buffer")
        n = int(state["size"])
        frames = state["frames"]
        self._pending.clear()  # what waited belongs to the state being replaced
        self._pending_n = 0
        self.frames[:len(frames)] = frames.to(self.device)
        self._head = int(state["frame_head"])
        self.obs_refs[:n], self.next_refs[:n] = state["obs_refs"], state["next_refs"]
        if "cur_refs" in state:
            self._init_envs(len(state["cur_refs"]))
            self._cur_refs[:] = state["cur_refs"].numpy()
            self._cur[:] = state["cur_obs"].numpy()
        else:
            self._cur_refs = self._cur = None
        super().load_state_dict(state)
