"""Accumulators: turn a vector step of E transitions into the rows to store.

``OneStep`` is the identity (it only drops the autoreset rows). ``NStepAccumulator`` keeps each env's open
n-step window and emits a row when the window is full or the episode ends.

Rows come out as a tuple (obs (R, ...), next_obs (R, ...), action (R,), reward (R,), terminated (R,),
discount (R,) or None), ready for ``RowRing.write``, which casts each to its column's dtype; None when the
step emits no row. The arrays may be views of the accumulator's ring or of the arguments: write them
before the next push.
"""

from __future__ import annotations

import numpy as np
import torch

Rows = tuple  # (obs, next_obs, action, reward, terminated, discount | None)


class OneStep:
    """1-step transitions: the vector step's rows as given (no copy), without the envs whose ``valid`` is False
    (an autoreset step: its obs is a final observation and its next_obs a reset one)."""

    def push(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
             terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray | None = None) -> Rows | None:
        if valid is not None and np.count_nonzero(valid) < len(valid):
            keep = np.flatnonzero(valid)
            if keep.size == 0:
                return None
            return obs[keep], next_obs[keep], action[keep], reward[keep], terminated[keep], None
        return obs, next_obs, action, reward, terminated, None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NStepAccumulator:
    """n-step returns (n >= 2) across E vector envs with NEXT_STEP autoreset.

    The last n vector steps sit in a ring, step t in slot t % n: obs (n, E, ...) in the first obs's dtype and
    action (n, E) int64; rewards (E, 2n) float64 with slot s at columns s and s + n, so that every env's window,
    oldest step first, is one contiguous run of columns. Within an episode an env's steps are consecutive
    vector steps, so an env with k = ``length[e]`` steps of its current episode in the ring has them at slots
    t-k+1..t.

    * A full window (k == n) emits its oldest step: return sum_j gamma^j r_j, next_obs of the newest step,
      terminated 0, discount gamma^n.
    * A termination or truncation emits every pending step i of the env (oldest first) with the return of its
      k - i remaining steps, discount gamma^(k-i) and ``terminated`` of the ending step: a window never crosses
      an episode end, and only termination masks the bootstrap.
    * An env whose ``valid`` is False (the autoreset step) writes nothing and keeps its count.

    Rows come out full windows first (by env), then the ended envs' pending steps (by env, oldest first), with
    float64 returns (the storage casts every column to its dtype). Each return is a float64 BLAS product: the
    full windows' as one vector @ (n, F) matrix product with the window axis contiguous, an ended episode's as
    one dot per pending step. Other groupings or layouts (one product for all of an episode's pending steps, a
    row-major window matrix) run other BLAS kernels, which sum in another order and change the float64 bits
    and, now and then, a float32 return.
    """

    def __init__(self, n: int, gamma: float) -> None:
        if int(n) < 2:
            raise ValueError(f"NStepAccumulator needs n >= 2, got {n}; use OneStep")
        self.n, self.gamma = int(n), float(gamma)
        self._powers = self.gamma ** np.arange(self.n)  # gamma^0 .. gamma^(n-1)
        # float32 gamma^m for a window of m steps, m = 0..n (Python powers, as the discount column always had)
        self._discounts = np.array([self.gamma ** m for m in range(self.n + 1)]).astype(np.float32)
        self.obs: np.ndarray | None = None
        self.action = np.zeros((self.n, 0), dtype=np.int64)
        self._rew = np.zeros((0, 2 * self.n), dtype=np.float64)
        self.length = np.zeros(0, dtype=np.int64)  # (E,) steps of each env's current episode in the ring
        self.t = 0  # vector steps pushed
        self._all_full = False  # every env has n steps in the ring: the common case

    @property
    def reward(self) -> np.ndarray:
        """(n, E) float64 rewards by ring slot (a view)."""
        return self._rew[:, :self.n].T

    def _init(self, obs: np.ndarray, n_envs: int) -> None:
        n = self.n
        self.obs = np.zeros((n, n_envs, *obs.shape[1:]), dtype=obs.dtype)
        self.action = np.zeros((n, n_envs), dtype=np.int64)
        self._rew = np.zeros((n_envs, 2 * n), dtype=np.float64)
        self.length = np.zeros(n_envs, dtype=np.int64)
        self._constants(n_envs)

    def _constants(self, n_envs: int) -> None:
        """Derived state, rebuilt whenever the ring is (re)allocated."""
        n = self.n
        self._zeros = np.zeros(n_envs, dtype=np.float32)  # terminated of full windows
        self._full_discount = np.full(n_envs, self._discounts[n])
        self._all_full = bool(np.count_nonzero(self.length == n) == n_envs)
        self._by_age = (np.arange(n)[:, None] + 1 + np.arange(n)) % n  # [s]: slots oldest first, newest in s
        self._ending_discounts = self._discounts[n:0:-1].copy()  # gamma^n .. gamma^1: [n-k:] for k pending steps
        # Per slot s, views the common case needs (building them costs more than the copies): the slot's obs,
        # action and two reward columns (E, 2), the window that ends at s (n, E) with the window axis
        # contiguous, and the oldest step's obs and action, in slot s+1, which the next step overwrites.
        self._slot_views = [
            (self.obs[s], self.action[s], self._rew[:, s::n], self._rew[:, s + 1:s + 1 + n].T,
             self.obs[(s + 1) % n], self.action[(s + 1) % n])
            for s in range(n)
        ]

    def push(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
             terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray | None = None) -> Rows | None:
        """Add a vector step (all arrays (E, ...)); returns the rows it completes, or None. Returns come out
        float64 (the storage casts them to float32, as it does every column)."""
        if self.obs is None:
            self._init(obs, len(action))
        t = self.t
        slot = t % self.n
        self.t = t + 1
        # np.count_nonzero: ~0.2 us against ~1.5 us for ndarray.all()/.any() on a tiny array
        if (self._all_full and (valid is None or np.count_nonzero(valid) == len(valid))
                and not (np.count_nonzero(terminated) or np.count_nonzero(truncated))):
            # Common case, a few copies: every env's window is full and goes on, so each emits its oldest step.
            obs_s, action_s, reward_s, window, obs_old, action_old = self._slot_views[slot]
            obs_s[...] = obs
            action_s[...] = action
            reward_s[...] = reward[:, None]
            return obs_old, next_obs, action_old, self._powers @ window, self._zeros, self._full_discount
        return self._push_masked(obs, action, reward, next_obs, terminated, truncated, valid, slot)

    def _push_masked(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                     terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray | None, slot: int) -> Rows | None:
        """Any step: some env autoreset, ended, or has fewer than n steps in its window."""
        n, n_envs, length = self.n, len(action), self.length
        obs_s, action_s, reward_s, window, obs_old, action_old = self._slot_views[slot]
        ended = np.asarray(terminated) | np.asarray(truncated)
        if valid is None or np.count_nonzero(valid) == n_envs:
            obs_s[...] = obs
            action_s[...] = action
            reward_s[...] = reward[:, None]
            length += 1
            np.minimum(length, n, out=length)
            full = length == n
        else:
            ok = np.asarray(valid, dtype=bool)
            obs_s[ok], action_s[ok], reward_s[ok] = obs[ok], action[ok], reward[ok, None]
            length += ok
            np.minimum(length, n, out=length)
            ended &= ok
            full = (length == n) & ok
        n_ended = np.count_nonzero(ended)
        if n_ended:
            full &= ~ended
        n_full = np.count_nonzero(full)
        self._all_full = n_full == n_envs
        parts = []
        if n_full == n_envs:  # all envs: the fast path's product, as the same (n, E) layout gives the same bits
            parts.append((obs_old, next_obs, action_old, self._powers @ window, self._zeros, self._full_discount))
        elif n_full:
            f = np.flatnonzero(full)
            ret = self._powers @ self._rew[f, slot + 1:slot + 1 + n].T  # (n, F), the window axis contiguous
            parts.append((obs_old[f], next_obs[f], action_old[f], ret, self._zeros[:n_full],
                          self._full_discount[:n_full]))
        if n_ended:
            envs = np.flatnonzero(ended)
            parts += self._flush(envs, next_obs, terminated, slot)
            length[envs] = 0
        if len(parts) < 2:
            return parts[0] if parts else None
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(6))

    def _flush(self, envs: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray, slot: int) -> list[Rows]:
        """Rows of every pending step of the ended ``envs`` (D,): one part per env, oldest step first; ``slot``
        holds the step just written."""
        n = self.n
        # In the doubled reward ring an env's k pending rewards are columns end-k .. end-1, oldest first.
        end = slot + n + 1
        by_age = self._by_age[slot]  # (n,) ring slots of the last n steps, oldest first
        parts = []
        for e in envs.tolist():  # usually one env; each is vectorized over its k pending steps
            k = int(self.length[e])
            window = self._rew[e, end - k:end]
            # One BLAS dot per step, as these returns always were: one product over all k steps would sum in
            # another order and round differently.
            ret = np.array([self._powers[:m] @ window[k - m:] for m in range(k, 0, -1)])
            rows = by_age[n - k:]
            parts.append((self.obs[rows, e], next_obs[[e] * k], self.action[rows, e], ret,
                          np.full(k, terminated[e], dtype=np.float32), self._ending_discounts[n - k:]))
        return parts

    def state_dict(self) -> dict:
        """The open windows as ``{"window": {obs, action, reward (n, E), length, t}}`` (copies); empty before the
        first push."""
        if self.obs is None:
            return {}
        arrays = {"obs": self.obs, "action": self.action, "reward": self.reward, "length": self.length,
                  "t": np.array(self.t, dtype=np.int64)}
        return {"window": {name: torch.from_numpy(np.array(a, order="C")) for name, a in arrays.items()}}

    def load_state_dict(self, state: dict) -> None:
        w = state.get("window")
        if w is None:
            return
        self.obs, self.action = w["obs"].numpy().copy(), w["action"].numpy().copy()
        reward = w["reward"].numpy()  # (n, E)
        self._rew = np.concatenate([reward.T, reward.T], axis=1)
        self.length = w["length"].numpy().copy()
        self.t = int(w["t"])
        self._constants(len(self.length))
