"""Replay storage: preallocated tensors on the replay device, sampled without Python loops.

One class covers the variants as options: uniform or proportional prioritized sampling (``prioritized``),
1-step or n-step transitions (``n_step``), and ``latest`` (the rows of the last vector step only: online
tabular Q-learning needs no history).
"""

from __future__ import annotations

from collections.abc import Sequence
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


class ReplayBuffer:
    """Ring buffer of transitions.

    The interface (``add`` a vector step, ``sample`` batches, ``update_priorities``) does not expose how
    observations are stored, so a frame-deduplicating pixel buffer can replace it without touching the loop.

    Args:
        capacity: N, the number of transitions kept; the oldest are overwritten first.
        batch_size: B, transitions per sampled batch.
        obs_shape: shape of one observation.
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
    ) -> None:
        self.capacity, self.batch_size = int(capacity), int(batch_size)
        self.device = torch.device(device)
        self.n_step, self.gamma = int(n_step), float(gamma)
        self.latest = bool(latest)
        self._powers = self.gamma ** np.arange(self.n_step)  # gamma^0 .. gamma^(n-1), for n-step returns
        self.alpha, self.beta0, self.beta_steps, self.priority_eps = float(alpha), float(beta), int(beta_steps), \
            float(priority_eps)
        shape = (self.capacity, *obs_shape)
        self.obs = torch.zeros(shape, dtype=obs_dtype, device=self.device)
        self.next_obs = torch.zeros(shape, dtype=obs_dtype, device=self.device)
        self.action = torch.zeros(self.capacity, dtype=torch.int64, device=self.device)
        self.reward = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.discount = torch.full((self.capacity,), self.gamma, dtype=torch.float32, device=self.device)
        self.pos = 0
        self.size = 0
        self._last = (0, 0)  # (start, count) of the rows written by the last add
        self._stores = (self.obs, self.next_obs, self.action, self.reward, self.terminated, self.discount)
        # On the CPU, numpy views of the same memory take a vector step's rows ~5x cheaper than torch indexing.
        self._views = [t.numpy() for t in self._stores] if self.device.type == "cpu" else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.np_rng = np.random.default_rng([int(seed), 7])
        self.tree = SumTree(self.capacity) if prioritized else None
        self.max_priority = 1.0
        self._window: dict[str, np.ndarray] | None = None  # per-env pending n-step windows

    @staticmethod
    def nbytes(capacity: int, obs_shape: Sequence[int], obs_dtype: torch.dtype) -> int:
        """Bytes the buffer allocates, for checking memory before allocating it."""
        per_obs = int(np.prod(obs_shape, dtype=np.int64)) * torch.empty((), dtype=obs_dtype).element_size()
        return int(capacity) * (2 * per_obs + 8 + 4 + 4 + 4)

    def __len__(self) -> int:
        return self.size

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
        termination, still bootstraps.
        """
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
        if self.latest:
            start, k = self._last
            rows = torch.arange(start, start + k, device=self.device) % self.capacity
            idx = rows if n_batches is None else rows.expand(n_batches, k)
            return self._gather(idx)
        shape = (self.batch_size,) if n_batches is None else (n_batches, self.batch_size)
        if self.tree is None:
            idx = torch.randint(0, self.size, shape, device=self.device, generator=self.generator)
            return self._gather(idx)
        # Stratified proportional sampling: one draw in each of B equal slices of the total priority mass.
        total = self.tree.total
        g = 1 if n_batches is None else n_batches
        strata = (np.arange(self.batch_size) + self.np_rng.random((g, self.batch_size))) * (total / self.batch_size)
        rows_np = np.minimum(self.tree.find(strata.ravel()), self.size - 1).reshape(g, self.batch_size)
        leaves = self.tree.leaf_values(self.size)
        probs = leaves[rows_np] / total
        beta = self.beta(step)
        min_prob = leaves.min() / total
        weights = (probs / min_prob) ** (-beta)  # (N P)^-beta / max_j (N P_j)^-beta
        if n_batches is None:
            rows_np, weights = rows_np[0], weights[0]
        idx = torch.from_numpy(rows_np).to(self.device)
        return self._gather(idx)._replace(
            weights=torch.as_tensor(weights, dtype=torch.float32, device=self.device), indices=rows_np
        )

    def _gather(self, idx: torch.Tensor) -> Batch:
        return Batch(
            self.obs[idx], self.action[idx], self.reward[idx], self.next_obs[idx], self.terminated[idx],
            self.discount[idx] if self.n_step > 1 else None,
        )

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """New priorities (|td| + eps)^alpha for the sampled rows (prioritized replay only)."""
        if self.tree is None:
            return
        p = np.abs(np.asarray(td_abs, dtype=np.float64)).ravel() + self.priority_eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(np.asarray(indices).ravel(), p ** self.alpha)

    # --- checkpointing: plain tensors and ints only, so it saves without pickle ---------------------
    def state_dict(self) -> dict:
        n = self.size
        state = {
            "obs": self.obs[:n].clone(), "next_obs": self.next_obs[:n].clone(),
            "action": self.action[:n].clone(), "reward": self.reward[:n].clone(),
            "terminated": self.terminated[:n].clone(), "discount": self.discount[:n].clone(),
            "pos": self.pos, "size": self.size, "capacity": self.capacity, "last": list(self._last),
            "generator": self.generator.get_state(), "np_rng": self.np_rng.bit_generator.state,
            "max_priority": self.max_priority,
        }
        if self.tree is not None:
            state["priorities"] = torch.from_numpy(self.tree.leaf_values(n).copy())
        if self._window is not None:
            state["window"] = {k: torch.from_numpy(v.copy()) for k, v in self._window.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity changed ({state['capacity']} -> {self.capacity})")
        n = int(state["size"])
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
