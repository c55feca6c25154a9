"""ReplayBuffer: one storage, one accumulator and one sampler, chosen by the constructor's arguments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dqnrun.replay.batch import Batch
from dqnrun.replay.frames import FrameStorage
from dqnrun.replay.nstep import NStepAccumulator, OneStep
from dqnrun.replay.samplers import LatestSampler, PrioritizedSampler, UniformSampler, annealed_beta
from dqnrun.replay.storage import RowStorage
from dqnrun.replay.sumtree import SumTree

STORAGES = ("transitions", "frames")


def check_storage(storage: str, obs_shape: Sequence[int]) -> str:
    if storage not in STORAGES:
        raise ValueError(f"replay storage must be one of {STORAGES}, got {storage!r}")
    if storage == "frames" and (len(obs_shape) < 2 or int(obs_shape[0]) < 2):
        raise ValueError(f"replay storage='frames' needs stacked observations (k >= 2, *frame), got obs_shape="
                         f"{tuple(obs_shape)}; use storage='transitions'")
    return storage


def _storage_attr(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.store, name, None), doc=doc)


class ReplayBuffer:
    """Ring buffer of transitions, composed of three parts:

    * ``store``: ``RowStorage`` (obs and next_obs per row) or ``FrameStorage`` (each frame of a stacked
      observation stored once; rows hold frame serials), which also encodes a vector step's observations;
    * ``accumulator``: ``OneStep`` or ``NStepAccumulator``, which turns a vector step into rows;
    * ``sampler``: ``LatestSampler``, ``PrioritizedSampler`` (also ``priorities``, which every write and
      ``update_priorities`` reach) or ``UniformSampler``.

    The interface (``add`` a vector step, ``sample`` batches, ``update_priorities``) does not expose how
    observations are stored, so the frame storage replaces the per-row one without touching the loop.

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
        mask_actions: A > 0 keeps, per row, the (A,) bool legal actions of next_obs (``env.action_mask``), which
            ``add`` then takes as ``next_mask`` and batches carry as ``next_mask``; 0 keeps none.
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
        mask_actions: int = 0,
    ) -> None:
        self.capacity, self.batch_size = int(capacity), int(batch_size)
        self.device = torch.device(device)
        self.n_step, self.gamma = int(n_step), float(gamma)
        self.latest = bool(latest)
        self.alpha, self.beta0, self.beta_steps = float(alpha), float(beta), int(beta_steps)
        self.priority_eps = float(priority_eps)
        self.storage = check_storage(storage, obs_shape)  # the storage's name; the part itself is ``store``
        self.store: RowStorage | FrameStorage
        if self.storage == "transitions":
            self.store = RowStorage(self.capacity, obs_shape, obs_dtype, self.device, self.gamma, self.n_step > 1)
        else:
            self.store = FrameStorage(self.capacity, obs_shape, obs_dtype, self.device, self.gamma, self.n_step > 1,
                                      int(num_envs), self.n_step)
        self.accumulator = NStepAccumulator(self.n_step, self.gamma) if self.n_step > 1 else OneStep()
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.np_rng = np.random.default_rng([int(seed), 7])
        self.priorities = PrioritizedSampler(self.store, self.batch_size, self.np_rng, alpha, beta, beta_steps,
                                             priority_eps) if prioritized else None
        self.sampler: LatestSampler | PrioritizedSampler | UniformSampler
        if self.latest:
            self.sampler = LatestSampler(self.store)
        elif self.priorities is not None:
            self.sampler = self.priorities
        else:
            self.sampler = UniformSampler(self.store, self.batch_size, self.generator, self.np_rng)
        self._max_priority = 1.0  # carried through checkpoints when there are no priorities
        self._frames = self.storage == "frames"
        self._push, self._write = self.accumulator.push, self.store.write  # bound once: add runs every env step
        self.next_mask = (torch.zeros((self.capacity, int(mask_actions)), dtype=torch.bool, device=self.device)
                          if mask_actions else None)

    # --- sizes -------------------------------------------------------------------------------------------
    @staticmethod
    def frame_slots(capacity: int, stack: int, num_envs: int = 1, n_step: int = 1) -> int:
        """F, the frame ring's size: N rows + 1% for episode starts + what the envs' pending stacks hold."""
        return FrameStorage.frame_slots(capacity, stack, num_envs, n_step)

    @staticmethod
    def nbytes(capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype, storage: str = "transitions",
               num_envs: int = 1, n_step: int = 1) -> int:
        """Bytes the buffer allocates, for checking memory before allocating it.

        ``"transitions"``: N x (2 obs + 20 bytes). ``"frames"``: F frames (see ``frame_slots``), N x (2k serials
        + 20 bytes), and the E current observations.
        """
        if check_storage(storage, obs_shape) == "transitions":
            return RowStorage.nbytes(capacity, obs_shape, obs_dtype)
        return FrameStorage.nbytes(capacity, obs_shape, obs_dtype, num_envs, n_step)

    def __len__(self) -> int:
        return self.store.size

    @property
    def size(self) -> int:
        return self.store.size

    @property
    def pos(self) -> int:
        """The row the next add writes first."""
        return self.store.pos

    @property
    def frames_written(self) -> int:
        """Frames stored so far (``"frames"`` storage; 0 otherwise): one per env step within an episode."""
        return self.store.head if isinstance(self.store, FrameStorage) else 0

    @property
    def tree(self) -> SumTree | None:
        """The priorities' sum tree (prioritized replay), else None."""
        return None if self.priorities is None else self.priorities.tree

    # The storage's tensors, under the names they always had (None where the storage has no such column).
    obs = _storage_attr("obs", "(N, *obs_shape) observations (``transitions``)")
    next_obs = _storage_attr("next_obs", "(N, *obs_shape) next observations (``transitions``)")
    action = _storage_attr("action", "(N,) int64")
    reward = _storage_attr("reward", "(N,) float32: the reward, or the discounted n-step return")
    terminated = _storage_attr("terminated", "(N,) float32")
    discount = _storage_attr("discount", "(N,) float32: gamma^k of each row's window")
    frames = _storage_attr("frames", "(F, *frame) the frame ring (``frames``)")
    obs_refs = _storage_attr("obs_refs", "(N, k) int64 frame serials of obs (``frames``, host)")
    next_refs = _storage_attr("next_refs", "(N, k) int64 frame serials of next_obs (``frames``, host)")
    _cur = _storage_attr("_cur", "(E, k, *frame) host copy of each env's current observation (``frames``)")
    _views = _storage_attr("_views", "numpy views of the row columns; None on the torch-op path")
    _frame_view = _storage_attr("_frame_view", "numpy view of the frame ring; None on the torch-op path")

    def _use_torch_ops(self) -> None:
        """Write with torch ops, as on an accelerator, even on the CPU (so tests cover that path)."""
        self.store.use_torch_ops()

    # --- adding ------------------------------------------------------------------------------------------
    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        valid: np.ndarray | None = None,
        next_mask: np.ndarray | None = None,
    ) -> None:
        """Store one vector step. All arrays are (E, ...) for E envs; ``next_mask`` (E, A) bool, the legal
        actions of next_obs, when the buffer keeps masks (``mask_actions``).

        ``valid[e]`` is False for an env whose step was an autoreset (its ``obs`` was a final observation
        and ``next_obs`` a reset one); such rows are dropped. Truncation ends an n-step window but, unlike
        termination, still bootstraps. With ``storage="frames"`` the frames are stored first and the rows
        carry frame serials in place of obs and next_obs; everything after that is shared.
        """
        if self._frames:
            obs, next_obs = self.store.encode(obs, next_obs)
        if self.next_mask is not None:
            self._add_masked(obs, action, reward, next_obs, terminated, truncated, valid, next_mask)
            return
        rows = self._push(obs, action, reward, next_obs, terminated, truncated, valid)
        if rows is None:
            self.store.skip()
        elif self.priorities is None:
            self._write(*rows)
        else:
            self.priorities.on_write(*self._write(*rows))

    def _add_masked(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                    terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray | None,
                    next_mask: np.ndarray | None) -> None:
        """`add` with masks. A row's next_obs is always the next_obs of the add that completes it (for n-step
        windows too), so the accumulator is given env indices in its place, and each row takes the next_obs
        and the mask of its env."""
        if next_mask is None:
            raise ValueError("this replay keeps action masks (mask_actions > 0): add(..., next_mask=(E, A))")
        rows = self._push(obs, action, reward, np.arange(len(action)), terminated, truncated, valid)
        if rows is None:
            self.store.skip()
            return
        o, env, a, r, term, disc = rows
        start, k = self._write(o, next_obs[env], a, r, term, disc)
        at = torch.from_numpy((start + np.arange(k)) % self.capacity).to(self.device)
        self.next_mask[at] = torch.as_tensor(np.asarray(next_mask, dtype=bool)[env][-k:], device=self.device)
        if self.priorities is not None:
            self.priorities.on_write(start, k)

    # --- sampling ----------------------------------------------------------------------------------------
    def beta(self, step: int) -> float:
        return annealed_beta(self.beta0, self.beta_steps, step)

    def sample(self, n_batches: int | None = None, step: int = 0) -> Batch:
        """Sample (B,) leading dims, or (G, B) when n_batches=G is given. ``step`` anneals PER's beta."""
        rows, weights = self.sampler.draw(n_batches, step)
        batch = self._with_mask(self.store.gather(rows), rows)
        return batch if weights is None else batch._replace(weights=weights, indices=rows)

    def _with_mask(self, batch: Batch, rows: np.ndarray | torch.Tensor) -> Batch:
        if self.next_mask is None:
            return batch
        idx = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows))
        return batch._replace(next_mask=self.next_mask[idx.to(self.device)])

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """New priorities (|td| + eps)^alpha for the sampled rows (prioritized replay only)."""
        if self.priorities is not None:
            self.priorities.update(indices, td_abs)

    def valid_rows(self) -> np.ndarray:
        """(size,) bool: the stored rows that ``sample`` can return (all of them for ``"transitions"``)."""
        return self.store.valid(np.arange(self.store.size))

    def get_rows(self, rows: np.ndarray) -> Batch:
        """The stored rows ``rows`` (any shape, e.g. (B,) or (G, B)), as ``sample`` returns them, without
        weights. For inspection and tests; raises ValueError for a row whose frames have been overwritten."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.store.size):
            raise ValueError(f"replay rows must be in [0, {self.store.size})")
        if not self.store.valid(rows).all():
            raise ValueError("replay: some of these rows refer to overwritten frames")
        return self._with_mask(self.store.gather(rows), rows)

    # --- checkpointing: plain tensors and ints only, so it saves without pickle --------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: rows, RNG states, priorities, the n-step window and, for
        ``"frames"``, the filled part of the frame ring and the envs' current observations.

        On the CPU the frames are returned without a copy (a copy of a 7 GB ring would double peak memory
        just to be saved): save the dict before the next ``add``. Everything else is copied.
        """
        state = self.store.state_dict()
        prio = self.priorities
        state.update({
            "generator": self.generator.get_state(), "np_rng": self.np_rng.bit_generator.state,
            "max_priority": self._max_priority if prio is None else prio.max_priority,
        })
        if prio is not None:
            state.update(prio.state_dict())
        state.update(self.accumulator.state_dict())
        if self.next_mask is not None:
            state["next_mask"] = self.next_mask[:self.store.size].clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity changed ({state['capacity']} -> {self.capacity})")
        if state.get("storage", "transitions") != self.storage:
            raise ValueError(f"replay storage changed ({state.get('storage', 'transitions')} -> {self.storage})")
        self.store.load_state_dict(state)
        self.generator.set_state(state["generator"])
        if "np_rng" in state:
            self.np_rng.bit_generator.state = state["np_rng"]
        self._max_priority = float(state.get("max_priority", 1.0))
        if self.priorities is not None:
            self.priorities.load_state_dict(state)
        self.accumulator.load_state_dict(state)
        if self.next_mask is not None:
            saved = state.get("next_mask")
            if saved is None or saved.shape[1:] != self.next_mask.shape[1:]:
                raise ValueError("replay: the saved buffer holds no action masks of this env's size")
            self.next_mask[:len(saved)] = saved.to(self.device)
