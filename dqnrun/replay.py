"""Replay storage: preallocated tensors on the replay device, sampled without Python loops.

One class covers the variants as options: uniform or proportional prioritized sampling (``prioritized``),
1-step or n-step transitions (``n_step``), ``latest`` (the rows of the last vector step only: online
tabular Q-learning needs no history), and how observations are stored (``storage``).

``storage="transitions"`` keeps obs and next_obs per row: simple and fast, but 2 x 28 KB per row for stacked
Atari frames (4, 84, 84), i.e. 56 GB for 1M rows.

``storage="frames"`` stores every frame of a stacked observation (k, *frame) once:

* A ring of F uint8 frames (F, *frame), shared by all envs, holds the pixels. Frames get monotonic int64
  serials; serial s lives in slot s % F, so slot s % F still holds s exactly while s >= head - F.
* A row keeps k serials for its obs and k for its next_obs (2k int64 = 64 bytes for k = 4) instead of pixels;
  the n-step window keeps serials too, so it costs nothing per env.
* Per env the buffer keeps the serials of the env's current observation and a host copy of it (E, k, *frame).
  ``add`` checks, by value, (1) that ``obs[e]`` equals that current observation (it does in a vector-env loop,
  where obs is the previous next_obs; where it does not, e.g. on the first add or after a resume with new
  envs, obs[e] is stored as a new stack), and (2) whether ``next_obs[e][:-1] == obs[e][1:]``: then only the
  newest frame is written, which holds within an episode and across a life loss. Otherwise (an episode
  start after an autoreset, whatever its padding) all k frames are written, except that a frame equal to
  the next one in the same stack shares its serial, so zero or repeated-reset-frame padding costs 1-2 frames.
  Both checks compare bytes, never trust the env's padding, and make every sampled obs/next_obs exactly the
  array the env returned. They cost about 2 x E x k frame compares per vector step, done as uint64 words.
* A row is valid while its oldest serial is >= head - F. The check is exact, so no F can make a sample wrong;
  F only decides how many rows are lost. ``sample`` rejects invalid rows and redraws them (prioritized: their
  priority is set to 0 and they are redrawn), ``valid_rows()`` lists them.

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

from collections.abc import Callable, Sequence
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


class SumTree:
    """Binary sum tree over ``capacity`` leaves, with vectorized batch updates and prefix-sum search."""

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
        """Leaf index i for each prefix mass u, such that sum(leaves[:i]) <= u < sum(leaves[:i+1])."""
        u = np.array(mass, dtype=np.float64)
        pos = np.ones(u.shape, dtype=np.int64)
        for _ in range(self.depth):
            left = self.tree[2 * pos]
            right = u >= left
            u -= left * right
            pos = 2 * pos + right
        return pos - self.leaves

    def leaf_values(self, n: int) -> np.ndarray:
        return self.tree[self.leaves:self.leaves + n]


STORAGES = ("transitions", "frames")


def _words_dtype(nbytes: int) -> np.dtype:
    """Widest unsigned integer that tiles ``nbytes`` exactly: equality over uint64 words is ~8x faster."""
    for dt in (np.uint64, np.uint32, np.uint16):
        if nbytes % np.dtype(dt).itemsize == 0:
            return np.dtype(dt)
    return np.dtype(np.uint8)


class ReplayBuffer:
    """Ring buffer of transitions.

    The interface (``add`` a vector step, ``sample`` batches, ``update_priorities``) does not expose how
    observations are stored, so the frame-deduplicating pixel storage (``storage="frames"``, see the module
    docstring) replaces the per-row one without touching the loop.

    Args:
        capacity: N, the number of transitions kept; the oldest are overwritten first.
        batch_size: B, transitions per sampled batch.
        obs_shape: shape of one observation; (k, *frame) with k >= 2 stacked frames for ``storage="frames"``.
        obs_dtype: storage dtype (uint8 observations stay uint8).
        device: where the tensors live; batches come out on this device.
        seed: seed of the sampling generators (their states are checkpointed for exact resume).
        n_step: length n of the return windows; a window never crosses an episode boundary, and one cut
            after k < n steps by termination or truncation is stored with discount gamma^k.
        gamma: discount, used for n-step returns.
        prioritized: proportional prioritized replay (Schaul et al. 2016) with a sum tree.
        alpha: priority exponent; stored priorities are (|td| + eps)^alpha.
        beta: initial importance-sampling exponent, annealed linearly to 1 over ``beta_steps`` env steps.
        beta_steps: env steps (absolute, so a resume does not change the schedule).
        priority_eps: added to |td| so no transition gets zero probability.
        latest: ``sample`` returns exactly the rows of the last ``add`` (online learning without history).
        storage: ``"transitions"`` (obs and next_obs per row) or ``"frames"`` (each frame of a stacked
            observation stored once; rows hold frame serials).
        num_envs: E, the vector envs that will ``add``; sizes the frame ring's slack (``"frames"`` only). More
            envs still work, but the oldest rows may then be invalid sooner.
    """

    def __init__(
        self,
        capacity: int,
        batch_size: int,
        obs_shape: Sequence[int],
        obs_dtype: torch.dtype,
        device: str | torch.device = "cpu",
        seed: int = 0,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_steps: int = 100_000,
        priority_eps: float = 1e-6,
        latest: bool = False,
        storage: str = "transitions",
        num_envs: int = 1,
    ) -> None:
        self.capacity, self.batch_size = int(capacity), int(batch_size)
        self.device = torch.device(device)
        self.n_step, self.gamma = int(n_step), float(gamma)
        self.latest = bool(latest)
        self._powers = self.gamma ** np.arange(self.n_step)  # gamma^0 .. gamma^(n-1), for n-step returns
        self.alpha, self.beta0, self.beta_steps, self.priority_eps = float(alpha), float(beta), int(beta_steps), \
            float(priority_eps)
        self.storage = self._check_storage(storage, obs_shape)
        self.frames: torch.Tensor | None = None
        if self.storage == "transitions":
            shape = (self.capacity, *obs_shape)
            self.obs: torch.Tensor | None = torch.zeros(shape, dtype=obs_dtype, device=self.device)
            self.next_obs: torch.Tensor | None = torch.zeros(shape, dtype=obs_dtype, device=self.device)
        else:
            self.obs = self.next_obs = None
            self._init_frames(obs_shape, obs_dtype, int(num_envs))
        self.action = torch.zeros(self.capacity, dtype=torch.int64, device=self.device)
        self.reward = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.discount = torch.full((self.capacity,), self.gamma, dtype=torch.float32, device=self.device)
        self.pos = 0
        self.size = 0
        self._last = (0, 0)  # (start, count) of the rows written by the last add
        # With frames, obs/next_obs of a row are its frame serials (k,) int64; they stay on the host, where
        # sampling checks them, so the rows' write code is the same for both storages.
        first = (self.obs, self.next_obs) if self.frames is None else (self.obs_refs, self.next_refs)
        self._stores = (*first, self.action, self.reward, self.terminated, self.discount)
        # On the CPU, numpy views of the same memory take a vector step's rows ~5x cheaper than torch indexing.
        self._views = [t.numpy() for t in self._stores] if self.device.type == "cpu" else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.np_rng = np.random.default_rng([int(seed), 7])
        self.tree = SumTree(self.capacity) if prioritized else None
        self.max_priority = 1.0
        self._window: dict[str, np.ndarray] | None = None  # per-env pending n-step windows

    # --- frame storage: setup -----------------------------------------------------------------------
    @staticmethod
    def _check_storage(storage: str, obs_shape: Sequence[int]) -> str:
        if storage not in STORAGES:
            raise ValueError(f"replay storage must be one of {STORAGES}, got {storage!r}")
        if storage == "frames" and (len(obs_shape) < 2 or int(obs_shape[0]) < 2):
            raise ValueError(f"replay storage='frames' needs stacked observations (k >= 2, *frame), got obs_shape="
                             f"{tuple(obs_shape)}; use storage='transitions'")
        return storage

    @staticmethod
    def frame_slots(capacity: int, stack: int, num_envs: int = 1, n_step: int = 1) -> int:
        """F, the frame ring's size: N rows + 1% for episode starts + what the envs' pending stacks hold."""
        return int(capacity) + int(capacity) // 100 + 2 * int(stack) * int(num_envs) * (int(n_step) + int(stack))

    def _init_frames(self, obs_shape: Sequence[int], obs_dtype: torch.dtype, num_envs: int) -> None:
        k, frame = int(obs_shape[0]), tuple(int(d) for d in obs_shape[1:])
        self._k, self._frame = k, frame
        self._slots = self.frame_slots(self.capacity, k, num_envs, self.n_step)
        self.frames = torch.zeros((self._slots, *frame), dtype=obs_dtype, device=self.device)
        self._frame_view = self.frames.numpy() if self.device.type == "cpu" else None
        self._np_dtype = torch.empty((), dtype=obs_dtype).numpy().dtype
        frame_bytes = int(np.prod(frame, dtype=np.int64)) * self._np_dtype.itemsize
        self._word = _words_dtype(frame_bytes)
        self._fw = frame_bytes // self._word.itemsize  # words per frame
        self._head = 0  # serial of the next frame written
        self.obs_refs = torch.zeros((self.capacity, k), dtype=torch.int64)  # host, see _stores
        self.next_refs = torch.zeros((self.capacity, k), dtype=torch.int64)
        self._refs_np = (self.obs_refs.numpy(), self.next_refs.numpy())
        # Per env, set on the first add: serials of its current obs and a host copy of it.
        self._cur_refs: np.ndarray | None = None
        self._cur: np.ndarray | None = None

    def _use_torch_ops(self) -> None:
        """Write with torch ops, as on an accelerator, even on the CPU (so tests cover that path)."""
        self._views = None
        if self.frames is not None:
            self._frame_view = None

    def _init_envs(self, n_envs: int) -> None:
        self._cur_refs = np.zeros((n_envs, self._k), dtype=np.int64)
        self._cur = np.zeros((n_envs, self._k, *self._frame), dtype=self._np_dtype)
        self._cur_words = self._words(self._cur)
        self._eq = np.empty(self._cur_words.shape, dtype=bool)

    def _words(self, x: np.ndarray) -> np.ndarray:
        """(m, ...) as (m, words) machine words, a view where x is contiguous: (E, k, *frame) for a vector step's
        stacks, (k, *frame) for one stack's frames."""
        return np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8).view(self._word)

    @staticmethod
    def nbytes(capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype, storage: str = "transitions",
               num_envs: int = 1, n_step: int = 1) -> int:
        """Bytes the buffer allocates, for checking memory before allocating it.

        ``"transitions"``: N x (2 obs + 20 bytes). ``"frames"``: F frames (see ``frame_slots``), N x (2k serials
        + 20 bytes), and the E current observations.
        """
        ReplayBuffer._check_storage(storage, obs_shape)
        itemsize = torch.empty((), dtype=obs_dtype).element_size()
        scalars = 8 + 4 + 4 + 4  # action, reward, terminated, discount
        if storage == "transitions":
            per_obs = int(np.prod(obs_shape, dtype=np.int64)) * itemsize
            return int(capacity) * (2 * per_obs + scalars)
        k = int(obs_shape[0])
        per_frame = int(np.prod(obs_shape[1:], dtype=np.int64)) * itemsize
        slots = ReplayBuffer.frame_slots(capacity, k, num_envs, n_step)
        return slots * per_frame + int(capacity) * (2 * k * 8 + scalars) + int(num_envs) * k * per_frame

    def __len__(self) -> int:
        return self.size

    @property
    def frames_written(self) -> int:
        """Frames stored so far (``"frames"`` storage; 0 otherwise): one per env step within an episode."""
        return self._head if self.frames is not None else 0

    # --- adding ------------------------------------------------------------------------------------
    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        valid: np.ndarray | None = None,
    ) -> None:
        """Store one vector step. All arrays are (E, ...) for E envs.

        ``valid[e]`` is False for an env whose step was an autoreset (its ``obs`` was a final observation
        and ``next_obs`` a reset one); such rows are dropped. Truncation ends an n-step window but, unlike
        termination, still bootstraps. With ``storage="frames"`` the frames are stored first and the rows
        carry frame serials in place of obs and next_obs; everything after that is shared.
        """
        if self.frames is not None:
            obs, next_obs = self._add_frames(obs, next_obs)
        if self.n_step > 1:
            self._add_n_step(obs, action, reward, next_obs, terminated, truncated, valid)
            return
        if valid is not None and np.count_nonzero(valid) < len(valid):
            keep = np.flatnonzero(valid)
            if keep.size == 0:
                self._last = (self.pos, 0)
                return
            obs, action, reward, next_obs, terminated = (
                obs[keep], action[keep], reward[keep], next_obs[keep], terminated[keep]
            )
        self._write(obs, next_obs, action, reward, terminated, None)

    def _put_frames(self, frames: np.ndarray) -> int:
        """Write frames (m, *frame) at the next m serials; returns the first."""
        m, s0 = len(frames), self._head
        a = s0 % self._slots
        slots: slice | np.ndarray = slice(a, a + m) if a + m <= self._slots else np.arange(s0, s0 + m) % self._slots
        if self._frame_view is not None:
            self._frame_view[slots] = frames
        else:
            idx = slots if isinstance(slots, slice) else torch.from_numpy(slots).to(self.device)
            self.frames[idx] = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        self._head = s0 + m
        return s0

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

    def _add_frames(self, obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store the new frames of a vector step (E, k, *frame); returns the serials (E, k) of obs and next_obs."""
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

    def _write(self, obs, next_obs, action, reward, terminated, discount) -> None:  # noqa: ANN001
        if len(action) > self.capacity:  # more rows than slots: only the newest survive anyway
            obs, next_obs, action, reward, terminated = (
                x[-self.capacity:] for x in (obs, next_obs, action, reward, terminated)
            )
            discount = None if discount is None else discount[-self.capacity:]
        k = len(action)
        if self.pos + k <= self.capacity:
            rows: slice | np.ndarray = slice(self.pos, self.pos + k)
        else:
            rows = np.arange(self.pos, self.pos + k) % self.capacity
        if self._views is not None:
            v = self._views
            v[0][rows], v[1][rows], v[2][rows], v[3][rows], v[4][rows] = obs, next_obs, action, reward, terminated
            if discount is not None:
                v[5][rows] = discount
        else:
            if self.frames is not None:  # frame serials live on the host
                self._refs_np[0][rows], self._refs_np[1][rows] = obs, next_obs
                obs = next_obs = None
            idx = rows if isinstance(rows, slice) else torch.from_numpy(rows).to(self.device)
            values = (obs, next_obs, action, reward, terminated, discount)
            for store, value in zip(self._stores, values, strict=True):
                if value is not None:
                    store[idx] = torch.as_tensor(value, device=self.device).to(store.dtype)
        if self.tree is not None:
            written = np.arange(self.pos, self.pos + k) % self.capacity
            self.tree.update(written, np.full(k, self.max_priority ** self.alpha))
        self._last = (self.pos, k)
        self.pos = (self.pos + k) % self.capacity
        self.size = min(self.size + k, self.capacity)

    def _add_n_step(self, obs, action, reward, next_obs, terminated, truncated, valid) -> None:  # noqa: ANN001
        """n-step windows over a ring of the last n vector steps. Within an episode an env's steps are
        consecutive vector steps, so an env with k steps in its current episode has its window at ring
        positions t-k+1..t. A full window (k == n) emits its oldest step with the n-step return; an episode
        end emits every pending step with its shortened return and discount gamma^(steps left)."""
        n, n_envs = self.n_step, len(action)
        if self._window is None:
            self._window = {
                "obs": np.zeros((n, n_envs, *obs.shape[1:]), dtype=obs.dtype),
                "action": np.zeros((n, n_envs), dtype=np.int64),
                "reward": np.zeros((n, n_envs), dtype=np.float64),
                "length": np.zeros(n_envs, dtype=np.int64),  # steps of the current episode in the ring
                "t": np.zeros((), dtype=np.int64),
            }
        w = self._window
        t = int(w["t"])
        slot = t % n
        ok = np.ones(n_envs, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        w["obs"][slot, ok] = obs[ok]
        w["action"][slot, ok] = action[ok]
        w["reward"][slot, ok] = reward[ok]
        w["length"][ok] = np.minimum(w["length"][ok] + 1, n)
        w["t"] = np.array(t + 1, dtype=np.int64)
        done = ok & (np.asarray(terminated) | np.asarray(truncated))
        full = ok & ~done & (w["length"] == n)
        rows: list[tuple] = []
        powers = self._powers
        if full.any():
            pos = (t - n + 1 + np.arange(n)) % n  # oldest .. newest
            ret = powers @ w["reward"][pos][:, full]
            f = np.flatnonzero(full)
            rows.append((w["obs"][pos[0], f], next_obs[f], w["action"][pos[0], f], ret, np.zeros(len(f)),
                         np.full(len(f), self.gamma ** n)))
        for e in np.flatnonzero(done):
            k = int(w["length"][e])
            pos = (t - k + 1 + np.arange(k)) % n
            rew = w["reward"][pos, e]
            for i in range(k):
                m = k - i
                rows.append((w["obs"][pos[i], e][None], next_obs[e][None], w["action"][pos[i], e][None],
                             np.array([float(powers[:m] @ rew[i:])]), np.array([float(terminated[e])]),
                             np.array([self.gamma ** m])))
            w["length"][e] = 0
        if not rows:
            self._last = (self.pos, 0)
            return
        cols = [np.concatenate([r[j] for r in rows]) for j in range(6)]
        self._write(cols[0], cols[1], cols[2], cols[3].astype(np.float32), cols[4].astype(np.float32),
                    cols[5].astype(np.float32))

    # --- sampling ----------------------------------------------------------------------------------
    def beta(self, step: int) -> float:
        return self.beta0 + (1.0 - self.beta0) * min(1.0, step / max(self.beta_steps, 1))

    def sample(self, n_batches: int | None = None, step: int = 0) -> Batch:
        """Sample (B,) leading dims, or (G, B) when n_batches=G is given. ``step`` anneals PER's beta."""
        if self.frames is not None:
            return self._sample_frames(n_batches, step)
        if self.latest:
            start, k = self._last
            rows = torch.arange(start, start + k, device=self.device) % self.capacity
            idx = rows if n_batches is None else rows.expand(n_batches, k)
            return self._gather(idx)
        shape = (self.batch_size,) if n_batches is None else (n_batches, self.batch_size)
        if self.tree is None:
            idx = torch.randint(0, self.size, shape, device=self.device, generator=self.generator)
            return self._gather(idx)
        rows, weights = self._draw_prioritized(shape, step)
        return self._gather(torch.from_numpy(rows).to(self.device))._replace(weights=weights, indices=rows)

    def _draw_prioritized(self, shape: tuple[int, ...], step: int) -> tuple[np.ndarray, torch.Tensor]:
        """Rows (``shape``) and their importance-sampling weights, by stratified proportional sampling: one
        draw in each of B equal slices of the total priority mass. With frames, rows whose frames were
        overwritten leave the tree (priority 0; a new write restores it) and are redrawn over the whole mass."""
        tree, size = self.tree, self.size
        assert tree is not None
        strata = (np.arange(self.batch_size) + self.np_rng.random(shape)) * (tree.total / self.batch_size)
        rows = np.minimum(tree.find(strata.ravel()), size - 1).reshape(shape)
        if self.frames is not None:

            def draw(invalid: np.ndarray) -> np.ndarray:
                tree.update(invalid, np.zeros(len(invalid)))
                if tree.total <= 0:
                    raise RuntimeError("replay: no row with intact frames has priority left")
                return np.minimum(tree.find(self.np_rng.random(len(invalid)) * tree.total), size - 1)

            self._redraw(rows, draw)
        total = tree.total
        leaves = tree.leaf_values(size)
        probs = leaves[rows] / total
        low = leaves.min()
        if low <= 0:  # rows with priority 0 are out of the draw
            low = np.min(leaves, initial=np.inf, where=leaves > 0)
        weights = (probs / (low / total)) ** (-self.beta(step))  # (N P)^-beta / max_j (N P_j)^-beta
        return rows, torch.as_tensor(weights, dtype=torch.float32, device=self.device)

    def _gather(self, idx: torch.Tensor) -> Batch:
        obs, next_obs = self.obs, self.next_obs
        assert obs is not None and next_obs is not None
        if obs.stride(0) * obs.element_size() > 4096:  # big rows (pixels): index_select is ~15x faster
            flat = idx.reshape(-1)
            o = obs.index_select(0, flat).view(*idx.shape, *obs.shape[1:])
            no = next_obs.index_select(0, flat).view(*idx.shape, *obs.shape[1:])
        else:  # small rows: plain indexing has less overhead
            o, no = obs[idx], next_obs[idx]
        return Batch(o, self.action[idx], self.reward[idx], no, self.terminated[idx],
                     self.discount[idx] if self.n_step > 1 else None)

    # --- frame storage: validity and sampling ---------------------------------------------------------
    def _rows_valid(self, rows: np.ndarray) -> np.ndarray:
        """Whether every frame of rows (any shape) is still in the ring; same shape, bool."""
        oldest = self._head - self._slots  # serials below this have been overwritten
        if oldest <= 0:
            return np.ones(np.shape(rows), dtype=bool)
        o, nx = self._refs_np
        return np.minimum(o[rows].min(axis=-1), nx[rows].min(axis=-1)) >= oldest

    def valid_rows(self) -> np.ndarray:
        """(len,) bool: the stored rows that ``sample`` can return (all of them for ``"transitions"``)."""
        if self.frames is None:
            return np.ones(self.size, dtype=bool)
        return self._rows_valid(np.arange(self.size))

    def get_rows(self, rows: np.ndarray) -> Batch:
        """The stored rows ``rows`` (any shape, e.g. (B,) or (G, B)), as ``sample`` returns them, without
        weights. For inspection and tests; raises ValueError for a row whose frames have been overwritten."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.size):
            raise ValueError(f"replay rows must be in [0, {self.size})")
        if self.frames is None:
            return self._gather(torch.from_numpy(rows).to(self.device))
        if not self._rows_valid(rows).all():
            raise ValueError("replay: some of these rows refer to overwritten frames")
        return self._gather_frames(rows)

    def _gather_frames(self, rows: np.ndarray) -> Batch:
        """Batch of valid rows (...,): obs and next_obs (..., k, *frame) gathered from the ring by serial."""
        o, nx = self._refs_np
        idx = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
        return Batch(
            self._frames_at(o[rows]), self.action[idx], self.reward[idx], self._frames_at(nx[rows]),
            self.terminated[idx], self.discount[idx] if self.n_step > 1 else None,
        )

    def _frames_at(self, serials: np.ndarray) -> torch.Tensor:
        """Frames (..., *frame) for serials (...): index_select, which on the CPU is ~15x faster than
        advanced indexing for rows this large."""
        slots = torch.from_numpy((serials % self._slots).ravel()).to(self.device)
        return self.frames.index_select(0, slots).view(*serials.shape, *self._frame)

    def _redraw(self, rows: np.ndarray, draw: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace invalid rows in place with ``draw(invalid rows)`` until all are valid (rejection sampling)."""
        bad = ~self._rows_valid(rows)
        for _ in range(10_000):
            if not bad.any():
                return
            redrawn = draw(rows[bad])
            rows[bad] = redrawn
            bad[bad] = ~self._rows_valid(redrawn)
        raise RuntimeError("replay: no row with intact frames found; the frame ring is too small for these envs")

    def _sample_frames(self, n_batches: int | None, step: int) -> Batch:
        """Sampling for ``storage="frames"``: rows are drawn on the host with ``np_rng`` (their serials live
        there), rows whose frames were overwritten are redrawn, then frames are gathered on the device."""
        if self.latest:  # the rows just written: their frames are always intact
            start, k = self._last
            rows = (start + np.arange(k)) % self.capacity
            return self._gather_frames(rows if n_batches is None else np.broadcast_to(rows, (n_batches, k)))
        if self.size == 0:
            raise ValueError("replay: cannot sample from an empty buffer")
        shape = (self.batch_size,) if n_batches is None else (n_batches, self.batch_size)
        if self.tree is None:
            rows = self.np_rng.integers(0, self.size, shape)
            self._redraw(rows, lambda invalid: self.np_rng.integers(0, self.size, len(invalid)))
            return self._gather_frames(rows)
        rows, weights = self._draw_prioritized(shape, step)
        return self._gather_frames(rows)._replace(weights=weights, indices=rows)

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """New priorities (|td| + eps)^alpha for the sampled rows (prioritized replay only)."""
        if self.tree is None:
            return
        p = np.abs(np.asarray(td_abs, dtype=np.float64)).ravel() + self.priority_eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(np.asarray(indices).ravel(), p ** self.alpha)

    # --- checkpointing: plain tensors and ints only, so it saves without pickle ---------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: rows, RNG states, priorities, the n-step window and, for
        ``"frames"``, the filled part of the frame ring and the envs' current observations.

        On the CPU the frames are returned without a copy (a copy of a 7 GB ring would double peak memory
        just to be saved): save the dict before the next ``add``. Everything else is copied.
        """
        n = self.size
        state = {
            "action": self.action[:n].clone(), "reward": self.reward[:n].clone(),
            "terminated": self.terminated[:n].clone(), "discount": self.discount[:n].clone(),
            "pos": self.pos, "size": self.size, "capacity": self.capacity, "last": list(self._last),
            "generator": self.generator.get_state(), "np_rng": self.np_rng.bit_generator.state,
            "max_priority": self.max_priority,
        }
        if self.frames is None:
            state["obs"], state["next_obs"] = self.obs[:n].clone(), self.next_obs[:n].clone()
        else:
            m = min(self._head, self._slots)
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
        if self.tree is not None:
            state["priorities"] = torch.from_numpy(self.tree.leaf_values(n).copy())
        if self._window is not None:
            state["window"] = {k: torch.from_numpy(v.copy()) for k, v in self._window.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity changed ({state['capacity']} -> {self.capacity})")
        if state.get("storage", "transitions") != self.storage:
            raise ValueError(f"replay storage changed ({state.get('storage', 'transitions')} -> {self.storage})")
        n = int(state["size"])
        if self.frames is not None:
            if int(state["frame_slots"]) != self._slots:
                raise ValueError(f"replay frame ring size changed ({state['frame_slots']} -> {self._slots}): "
                                 "num_envs and n_step must match the saved buffer")
            frames = state["frames"]
            self.frames[:len(frames)] = frames.to(self.device)
            self._head = int(state["frame_head"])
            self.obs_refs[:n], self.next_refs[:n] = state["obs_refs"], state["next_refs"]
            if "cur_refs" in state:
                self._init_envs(len(state["cur_refs"]))
                self._cur_refs[:] = state["cur_refs"].numpy()
                self._cur[:] = state["cur_obs"].numpy()
            else:
                self._cur_refs = self._cur = None
        for name in ("obs", "next_obs", "action", "reward", "terminated", "discount"):
            if name in state:
                getattr(self, name)[:n] = state[name].to(self.device)
        self.pos, self.size = int(state["pos"]), n
        self._last = tuple(state.get("last", (0, 0)))  # type: ignore[assignment]
        self.generator.set_state(state["generator"])
        if "np_rng" in state:
            self.np_rng.bit_generator.state = state["np_rng"]
        self.max_priority = float(state.get("max_priority", 1.0))
        if self.tree is not None and "priorities" in state:
            self.tree.update(np.arange(n), state["priorities"].numpy())
        if "window" in state:
            self._window = {k: v.numpy().copy() for k, v in state["window"].items()}
