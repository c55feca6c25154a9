"""Several runs' vector envs stepped as one: a population's members each keep their own envs (their seeds, RNG
streams, checkpoints: a solo run's), and one numpy computation steps all of them.

Gymnasium's own numpy CartPole (``CartPoleVectorEnv``) draws every env's resets from one generator, so it cannot
stand in for several runs' envs: each run's resets must come from its own envs' generators, as in its solo run.
`CartPoleTogether` leaves every member's ``SyncVectorEnv`` of ``CartPoleEnv`` in place and moves the physics of
all their envs into one set of array operations (CartPoleEnv's own float64 arithmetic, element for element), then
writes each env's new state, step count and flags back where ``SyncVectorEnv.step`` would have left them. What
an env does rarely goes through the env itself: an autoreset calls its ``reset()`` (its own generator draws the
new state), and an env outside the plain path (the checker's first step, a step after termination) takes its own
``step()``. So every member sees, and checkpoints, what its solo run would: ``tests/unit/test_together.py``
steps members both ways and compares every return and every captured env state (`dqnrun.envs.state`).

For 8 members of 4 CartPoles (the CartPole preset's population), one step of all 32 envs this way costs ~80 us
against ~340 us for the 8 ``SyncVectorEnv.step`` calls (bench/population_parts.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

Step = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]

# CartPole-v1's constants (CartPoleEnv and CartPoleVectorEnv alike); envs with others step on their own
_CONSTANTS = {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "total_mass": 1.1, "length": 0.5,
              "polemass_length": 0.05, "force_mag": 10.0, "tau": 0.02, "kinematics_integrator": "euler",
              "x_threshold": 2.4, "theta_threshold_radians": 12 * 2 * np.pi / 360, "render_mode": None,
              "_sutton_barto_reward": False}


# what SyncVectorEnv.step leaves behind for each env, one array each: `CartPoleTogether` keeps every member's as rows
_STEP_ARRAYS = ("_observations", "_rewards", "_terminations", "_truncations", "_autoreset_envs")


def cartpole_constants(env: Any) -> dict[str, Any]:
    """The constants of a CartPole env (``CartPoleEnv`` or ``CartPoleVectorEnv``) that its step reads."""
    return {name: getattr(env, name) for name in _CONSTANTS}


def _has_cartpole_constants(env: Any) -> bool:
    return all(getattr(env, k, object()) == v for k, v in _CONSTANTS.items())


def invalid_actions(actions: np.ndarray) -> bool:
    """Whether any action is not CartPole's 0 or 1 (what its envs' own step refuses)."""
    return bool(np.count_nonzero((actions != 0) & (actions != 1)))


class CartPoleTogether:
    """The members' ``SyncVectorEnv``s of ``CartPoleEnv`` (``fits``), stepped together by `step`."""

    def __init__(self, vector_envs: Sequence[gym.vector.VectorEnv]) -> None:
        self.vecs = list(vector_envs)
        self.c = cartpole_constants(self.vecs[0].envs[0].unwrapped)  # type: ignore[attr-defined]
        self.chains = [[_chain(env) for env in vec.envs] for vec in self.vecs]  # wrappers never change
        # each env's place in the numpy step: (member, i, CartPoleEnv, TimeLimit or None)
        self.rows = [[(m, i, c[0], c[1]) if c is not None else None for i, c in enumerate(chains)]
                     for m, chains in enumerate(self.chains)]
        # whether each env was seen on the plain path (`_plain`) and has only taken the numpy step since: it stays
        # there until its pole falls (its next step is then its own reset, after which it is checked again)
        self.plain = [[False] * vec.num_envs for vec in self.vecs]
        self.stepped_together = 0  # env steps taken by the numpy step (the others went through their env)
        # members with as many envs each keep their step arrays as rows of shared ones (`_adopt`)
        self.arrays: tuple[np.ndarray, ...] | None = None
        self._views: list[tuple[np.ndarray, ...]] = []
        if len({vec.num_envs for vec in self.vecs}) == 1:
            self._adopt()

    def _adopt(self) -> None:
        """Every member's step arrays (observations, rewards, terminations, truncations, autoresets) become rows of
        one ``(K, E, ...)`` array each, holding their values: one write and one copy then serve every member."""
        self.arrays = tuple(np.stack([getattr(vec, name) for vec in self.vecs]) for name in _STEP_ARRAYS)
        for m, vec in enumerate(self.vecs):
            for name, shared in zip(_STEP_ARRAYS, self.arrays, strict=True):
                setattr(vec, name, shared[m])
        self._views = [tuple(getattr(vec, name) for name in _STEP_ARRAYS) for vec in self.vecs]

    def _adopted(self) -> bool:
        """Whether every member's step arrays are still the rows `_adopt` made (its own ``reset`` or a restore
        replaces them: they are then adopted again, values and all)."""
        for vec, (o, r, t, u, a) in zip(self.vecs, self._views, strict=True):
            if (vec._observations is not o or vec._rewards is not r or vec._terminations is not t
                    or vec._truncations is not u or vec._autoreset_envs is not a):
                return False
        return True

    @staticmethod
    def fits(vector_envs: Sequence[gym.vector.VectorEnv]) -> bool:
        """Whether every one is a plain ``SyncVectorEnv`` (NEXT_STEP autoreset) of ``CartPoleEnv``s with CartPole-v1's
        constants, under no wrapper but the time limit, order enforcing and the env checker."""
        return bool(vector_envs) and all(
            type(vec) is SyncVectorEnv and vec.autoreset_mode == AutoresetMode.NEXT_STEP
            and all((chain := _chain(env)) is not None and _has_cartpole_constants(chain[0]) for env in vec.envs)
            for vec in vector_envs)

    def step(self, actions: Sequence[np.ndarray | None]) -> list[Step | Exception | None]:
        """``actions[m]`` (E_m,) for member ``m``'s envs, or None for a member that does not step now -> what each
        member's ``envs.step(actions[m])`` returns (None for the others), every env left as that call leaves it.
        A member whose envs raise (an invalid action, its env's own reset or step) gets the exception in place of
        its step, and the others step on: a failure stays its member's."""
        if self.arrays is not None and not self._adopted():
            self._adopt()
        plain: list[tuple[Any, ...]] = []  # (member, i, unwrapped, time limit) of the envs that take the numpy step
        plain_actions: list[np.ndarray] = []
        blocks: list[tuple[int, list[int] | None]] = []  # (member, its envs in ``plain``; None: all of them)
        infos: list[dict[str, Any]] = [{} for _ in self.vecs]
        failed: dict[int, Exception] = {}
        sent = [a for a in actions if a is not None]
        check = bool(sent) and invalid_actions(np.concatenate(sent))  # one check for all; whose it is, below
        for m, (vec, act, chains) in enumerate(zip(self.vecs, actions, self.chains, strict=True)):
            if act is None:
                continue
            try:
                if check and invalid_actions(act):  # what CartPoleEnv's own assert refuses
                    raise AssertionError(f"{act!r} holds an invalid action: CartPole's are 0 and 1")
                known = self.plain[m]
                if all(known) and not np.count_nonzero(vec._autoreset_envs):  # the common case: all of them
                    plain += self.rows[m]
                    plain_actions.append(act)
                    blocks.append((m, None))
                    continue
                mine: list[int] = []
                auto = vec._autoreset_envs.tolist()
                for i, (env, chain) in enumerate(zip(vec.envs, chains, strict=True)):
                    if auto[i]:  # NEXT_STEP: this step only resets (the env's own generator draws the new state)
                        known[i] = False
                        obs, env_info = env.reset()
                        _put(vec, i, obs, 0.0, False, False)
                    elif known[i] or (chain is not None and _plain(chain)):
                        known[i] = True
                        mine.append(i)
                        continue
                    else:  # outside the plain path: the env's own step
                        obs, reward, terminated, truncated, env_info = env.step(act[i])
                        _put(vec, i, obs, reward, terminated, truncated)
                    if env_info:
                        infos[m] = vec._add_info(infos[m], env_info, i)
            except Exception as exc:
                failed[m] = exc
                continue
            if mine:
                rows = self.rows[m]
                plain += [rows[i] for i in mine]
                plain_actions.append(np.asarray(act)[mine])
                blocks.append((m, mine))
        if plain:
            self.stepped_together += len(plain)
            self._physics(plain, np.concatenate(plain_actions), blocks)
        if self.arrays is not None:  # one autoreset update and one copy each for every member
            o, r, t, u, a = self.arrays
            moved = [m for m, act in enumerate(actions) if act is not None and m not in failed]
            if len(moved) == len(self.vecs):
                np.logical_or(t, u, out=a)
            else:  # the others' rows stay as their own last step left them
                a[moved] = t[moved] | u[moved]
            rc, tc, uc = r.copy(), t.copy(), u.copy()
            return [failed.get(m) if act is None or m in failed else
                    (np.copy(o[m]) if vec.copy else o[m], rc[m], tc[m], uc[m], infos[m])
                    for m, (vec, act) in enumerate(zip(self.vecs, actions, strict=True))]
        out: list[Step | Exception | None] = []
        for m, (vec, act) in enumerate(zip(self.vecs, actions, strict=True)):
            if act is None or m in failed:
                out.append(failed.get(m))
                continue
            np.logical_or(vec._terminations, vec._truncations, out=vec._autoreset_envs)
            obs = vec._observations
            out.append((np.copy(obs) if vec.copy else obs, np.copy(vec._rewards), np.copy(vec._terminations),
                        np.copy(vec._truncations), infos[m]))
        return out

    def _physics(self, envs: list[tuple[Any, ...]], actions: np.ndarray,
                 blocks: list[tuple[int, list[int] | None]]) -> None:
        """CartPoleEnv.step's arithmetic for every plain env at once (float64, in its order of operations); the
        results written where each member's ``SyncVectorEnv.step`` keeps them: into the shared step arrays in one
        write each (`_adopt`), else member by member, all of its envs at once where they all stepped here
        (``blocks``: each member's envs in ``envs``, in order)."""
        c = self.c
        state = np.array([u.state for _, _, u, _ in envs], dtype=np.float64)  # (n, 4)
        force = np.where(actions == 1, c["force_mag"], -c["force_mag"])  # CartPoleEnv's: one env, one action
        new = np.stack(euler_step(c, *state.T, force), axis=1)  # (n, 4): each row one env's next state
        terminated = fallen(c, new[:, 0], new[:, 2])
        obs = new.astype(np.float32)
        ends: list[bool] = []
        for (_, _, u, limit), row in zip(envs, new, strict=True):
            u.state = row
            if limit is not None:
                limit._elapsed_steps += 1
                ends.append(limit._elapsed_steps >= limit._max_episode_steps)
            else:
                ends.append(False)
        truncated = np.array(ends)
        if np.count_nonzero(terminated):
            for j in np.flatnonzero(terminated).tolist():
                m, i, u, _ = envs[j]
                u.steps_beyond_terminated = 0  # the pole just fell (reward 1.0, as CartPoleEnv gives it)
                self.plain[m][i] = False  # its next step is its reset
        if self.arrays is not None:  # into the shared step arrays: one write each for every member's rows
            o, r, te, tr, _ = self.arrays
            e = o.shape[1]
            if len(envs) == o.shape[0] * e:  # every env of every member, in order
                o[...] = obs.reshape(o.shape)
                r[...] = 1.0
                te[...] = terminated.reshape(te.shape)
                tr[...] = truncated.reshape(tr.shape)
            else:
                at = np.concatenate([np.arange(m * e, (m + 1) * e) if mine is None else m * e + np.asarray(mine)
                                     for m, mine in blocks])
                o.reshape(-1, *o.shape[2:])[at] = obs
                r.reshape(-1)[at] = 1.0
                te.reshape(-1)[at] = terminated
                tr.reshape(-1)[at] = truncated
        j = 0
        for m, mine in blocks:  # each env's own observation (SyncVectorEnv keeps them in a list too)
            vec = self.vecs[m]
            if mine is None:
                if self.arrays is None:
                    rows = slice(j, j + vec.num_envs)
                    vec._observations[:] = obs[rows]
                    vec._rewards[:] = 1.0
                    vec._terminations[:] = terminated[rows]
                    vec._truncations[:] = truncated[rows]
                vec._env_obs[:] = obs[j:j + vec.num_envs]
                j += vec.num_envs
                continue
            for i in mine:
                if self.arrays is None:
                    _put(vec, i, obs[j], 1.0, bool(terminated[j]), bool(truncated[j]))
                else:
                    vec._env_obs[i] = obs[j]
                j += 1


def euler_step(c: dict[str, Any], x: np.ndarray, x_dot: np.ndarray, theta: np.ndarray, theta_dot: np.ndarray,
               force: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CartPole's Euler step for arrays of envs: the expressions of ``CartPoleEnv.step`` and ``CartPoleVectorEnv.step``
    (the same in both), term for term in their order, so every element rounds as it would there."""
    costheta = np.cos(theta)
    sintheta = np.sin(theta)
    temp = (force + c["polemass_length"] * np.square(theta_dot) * sintheta) / c["total_mass"]
    thetaacc = (c["gravity"] * sintheta - costheta * temp) / (
        c["length"] * (4.0 / 3.0 - c["masspole"] * np.square(costheta) / c["total_mass"]))
    xacc = temp - c["polemass_length"] * thetaacc * costheta / c["total_mass"]
    tau = c["tau"]
    return x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc


def fallen(c: dict[str, Any], x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Whether each cart left the track or its pole tipped past the limit (CartPole's termination)."""
    xt, tt = c["x_threshold"], c["theta_threshold_radians"]
    return (x < -xt) | (x > xt) | (theta < -tt) | (theta > tt)


def _chain(env: gym.Env) -> tuple[Any, Any, Any, Any] | None:
    """An env's (CartPoleEnv, TimeLimit or None, OrderEnforcing or None, PassiveEnvChecker or None); None for
    anything else under or around it."""
    found: dict[type, Any] = {}
    link = env
    while isinstance(link, gym.Wrapper):
        found[type(link)] = link
        link = link.env
    if type(link) is not CartPoleEnv or not set(found) <= {TimeLimit, OrderEnforcing, PassiveEnvChecker}:
        return None
    return link, found.get(TimeLimit), found.get(OrderEnforcing), found.get(PassiveEnvChecker)


def _put(vec: SyncVectorEnv, i: int, obs: np.ndarray, reward: float, terminated: bool, truncated: bool) -> None:
    """Env ``i``'s step results where ``SyncVectorEnv.step`` keeps them (its observation row written in place, as
    its ``concatenate`` writes it)."""
    vec._env_obs[i] = obs
    vec._observations[i] = obs
    vec._rewards[i] = reward
    vec._terminations[i] = terminated
    vec._truncations[i] = truncated


def _plain(chain: tuple[Any, ...]) -> bool:
    """Whether the env's next step is CartPoleEnv's plain step: reset, its checker's first steps done, the pole not
    already down."""
    u, _, order, checker = chain
    # checked_data_reuse: Gymnasium 1.4's second check; earlier versions have none
    return ((order is None or order._has_reset) and (checker is None or (
        checker.checked_step and getattr(checker, "checked_data_reuse", True)))
            and u.steps_beyond_terminated is None and u.state is not None)


class CartPoleVectorTogether:
    """Members' own ``CartPoleVectorEnv``s (Gymnasium's numpy CartPole: what an evaluation's many envs are) stepped
    as one: the physics over every member's envs in one set of array operations, then each member's step count,
    truncations and autoresets as its ``step`` does them, its resets drawn from its own generator. Each env is
    left, and each call returns, what ``envs.step(actions)`` would (``tests/unit/test_together.py``)."""

    def __init__(self, vector_envs: Sequence[gym.vector.VectorEnv]) -> None:
        self.vecs = list(vector_envs)
        self.c = cartpole_constants(self.vecs[0])

    @staticmethod
    def fits(vector_envs: Sequence[gym.vector.VectorEnv], reset: bool = True) -> bool:
        """Whether every one is a bare ``CartPoleVectorEnv`` with CartPole-v1's constants (and its own ``step``),
        reset at least once (with ``reset``: a caller that resets them first needs no state yet)."""
        return bool(vector_envs) and all(
            type(v) is CartPoleVectorEnv and (v.state is not None or not reset) and "step" not in vars(v)
            and _has_cartpole_constants(v) for v in vector_envs)

    def step(self, actions: Sequence[np.ndarray | None]) -> list[Step | None]:
        """``actions[m]`` (E_m,) for member ``m``'s envs, or None for a member that does not step now -> what each
        member's ``envs.step(actions[m])`` returns (None for the others). Raises before any env moves where an action
        is not CartPole's (its caller then steps each member's envs on their own)."""
        live = [(v, np.asarray(a)) for v, a in zip(self.vecs, actions, strict=True) if a is not None]
        if not live:
            return [None] * len(self.vecs)
        obs, reward, terminated, truncated = self.step_rows([v for v, _ in live], np.concatenate([a for _, a in live]))
        results: list[Step] = []
        at = 0
        for v, _ in live:
            n = v.num_envs
            results.append((obs[at:at + n], reward[at:at + n], terminated[at:at + n], truncated[at:at + n], {}))
            at += n
        stepped = iter(results)  # in the order of the members that stepped
        return [None if a is None else next(stepped) for a in actions]

    def step_rows(self, vecs: Sequence[CartPoleVectorEnv], action: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``vecs`` (some of this stepper's envs, in any order) stepped on ``action``, their actions one after
        another: their observations ``(n, 4)`` float32, rewards, terminations and truncations ``(n,)``, row for row
        what each one's ``step`` returns, each env left as its ``step`` leaves it. Raises before any env moves where
        an action is not CartPole's."""
        if invalid_actions(action):  # nothing stepped: each env's own step,
            raise ValueError("an action outside CartPole's 0 and 1")  # its own assert, says whose it was
        c = self.c
        state = np.concatenate([v.state for v in vecs], axis=1)  # (4, n): CartPoleVectorEnv's own layout
        force = np.sign(action - 0.5) * c["force_mag"]  # CartPoleVectorEnv's
        new = np.stack(euler_step(c, *state, force))  # (4, n), as CartPoleVectorEnv keeps it
        terminated = fallen(c, new[0], new[2])
        steps = np.concatenate([v.steps for v in vecs])
        steps += 1
        limits = {v.max_episode_steps for v in vecs}
        limit = limits.pop() if len(limits) == 1 else np.concatenate(
            [np.full(v.num_envs, v.max_episode_steps) for v in vecs])
        truncated = steps >= limit
        reward = np.ones_like(terminated, dtype=np.float32)
        done = np.concatenate([v.prev_done for v in vecs])  # last step's ends: this step resets them
        if done.any():
            at = 0
            for v in vecs:  # each env's new states from its own generator, as its step draws them
                n = v.num_envs
                mine = done[at:at + n]
                if mine.any():
                    rows = new[:, at:at + n]
                    rows[:, mine] = v.np_random.uniform(low=v.low, high=v.high, size=(4, int(mine.sum())))
                at += n
            steps[done] = 0
            reward[done] = 0.0
            terminated[done] = False
            truncated[done] = False
        prev_done = np.logical_or(terminated, truncated)
        at = 0
        for v in vecs:
            n = v.num_envs
            v.state = new[:, at:at + n].copy()
            v.steps = steps[at:at + n].copy()
            v.prev_done = prev_done[at:at + n].copy()
            at += n
        return new.T.astype(np.float32), reward, terminated, truncated
