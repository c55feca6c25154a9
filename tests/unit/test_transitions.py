"""Stored transitions around NEXT_STEP autoresets, driven through the real training loop.

A scripted env makes every observation name itself: obs = TAG * tag + EP * episode + t, where tag identifies
the env copy, episode counts resets (1 for the first) and t is the step within the episode. With that, the
true successor of any observation is known, so every stored (obs, next_obs) pair can be checked exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import nn

from dqnrun.algos.dqn.learner import Learner
from dqnrun.envs import make_vector_env
from dqnrun.replay import ReplayBuffer
from dqnrun.run.session import LoopState
from tests.loop_helpers import run_dqn_loop

TAG, EP = 10_000, 100
SCRIPTED_ID = "DqnrunTest/Scripted-v0"
SCRIPTED_TL_ID = "DqnrunTest/ScriptedTimeLimit4-v0"


class ScriptedEnv(gym.Env):
    """Observation encodes (tag, episode, t); reward = 10 * t + action.

    ``terminate_at[(episode - 1) % len]`` is the step at which episode ``episode`` terminates (None: never; a
    TimeLimit may truncate it). ``tag`` defaults to the seed of the first seeded reset, so copies built from
    identical kwargs (as ``make_vec`` builds them) still name themselves apart (SyncVectorEnv seeds copy i
    with seed + i).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, terminate_at: Sequence[int | None] = (None,), tag: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1e6, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.terminate_at = list(terminate_at)
        self.tag = tag
        self.episode = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([TAG * self.tag + EP * self.episode + self.t], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if self.tag is None:
            assert seed is not None, "the first reset must be seeded when no tag is given"
            self.tag = seed
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self.t >= 0
        self.t += 1
        end = self.terminate_at[(self.episode - 1) % len(self.terminate_at)]
        return self._obs(), float(10 * self.t + int(action)), end is not None and self.t == end, False, {}


gym.register(SCRIPTED_ID, entry_point=ScriptedEnv, disable_env_checker=True)
gym.register(SCRIPTED_TL_ID, entry_point=ScriptedEnv, max_episode_steps=4, disable_env_checker=True)


def decode(x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.rint(np.asarray(x, dtype=np.float64).reshape(-1)).astype(np.int64)
    return v // TAG, (v % TAG) // EP, v % EP


class NoLearning(Learner):
    """A real Learner on a tiny network that fails the test if the loop ever updates or syncs it
    (learning_starts lies beyond total_steps)."""

    def __init__(self, obs_dim: int) -> None:
        online, target = nn.Linear(obs_dim, 2), nn.Linear(obs_dim, 2)
        super().__init__(online, target, torch.optim.SGD(online.parameters(), lr=0.1))

    def update(self, batch: Any) -> None:
        raise AssertionError("update called before learning_starts")

    def sync_target(self) -> None:
        raise AssertionError("sync_target called before learning_starts")


class ListLogger:
    def __init__(self) -> None:
        self.records: list[tuple[dict[str, float], int]] = []

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.records.append((dict(scalars), step))


def run_loop(envs: gym.vector.VectorEnv, total_steps: int, capacity: int = 10_000,
             obs_shape: tuple[int, ...] = (1,)) -> tuple[ReplayBuffer, LoopState, ListLogger]:
    replay = ReplayBuffer(capacity, batch_size=1, obs_shape=obs_shape, obs_dtype=torch.float32)
    logger = ListLogger()
    saved: list[str] = []
    state, status = run_dqn_loop(envs, NoLearning(obs_shape[0]), replay, total_steps, logger, saved.append)
    assert status == "completed" and saved == []
    return replay, state, logger


def stored(replay: ReplayBuffer) -> dict[str, np.ndarray]:
    n = replay.size
    return {
        "obs": replay.obs[:n].numpy().copy(), "next_obs": replay.next_obs[:n].numpy().copy(),
        "action": replay.action[:n].numpy().copy(), "reward": replay.reward[:n].numpy().copy(),
        "terminated": replay.terminated[:n].numpy().copy(),
    }


def assert_true_successors(rows: dict[str, np.ndarray]) -> None:
    """next_obs is the same env and episode, one step later; the reward names that step and the stored action."""
    tag, ep, t = decode(rows["obs"])
    ntag, nep, nt = decode(rows["next_obs"])
    assert np.array_equal(ntag, tag)
    assert np.array_equal(nep, ep), "a transition crosses an episode boundary (reset obs stored as next_obs)"
    assert np.array_equal(nt, t + 1)
    assert np.array_equal(rows["reward"], 10.0 * nt + rows["action"])
    assert set(rows["action"].tolist()) <= {0, 1}


def test_loop_stores_only_true_transitions_around_termination_and_truncation() -> None:
    # env 0 terminates every episode at t=3, env 1 is truncated by a TimeLimit at t=4, env 2 never ends.
    envs = SyncVectorEnv([
        lambda: gym.make(SCRIPTED_ID, terminate_at=[3], tag=0),
        lambda: gym.make(SCRIPTED_ID, max_episode_steps=4, tag=1),
        lambda: gym.make(SCRIPTED_ID, tag=2),
    ], autoreset_mode=AutoresetMode.NEXT_STEP)
    # 10 vector steps (30 env steps). Vector step k (1-based) per env:
    #   env 0: episode 1 at k=1..3 (terminal at 3), autoreset k=4, ep 2 at k=5..7 (terminal), autoreset k=8,
    #          ep 3 at k=9..10                                                      -> 8 transitions
    #   env 1: ep 1 at k=1..4 (truncated at 4), autoreset k=5, ep 2 at k=6..9 (truncated), autoreset k=10
    #                                                                               -> 8 transitions
    #   env 2: ep 1 at k=1..10                                                      -> 10 transitions
    replay, state, logger = run_loop(envs, total_steps=30)
    envs.close()
    assert state.step == 30
    assert replay.size == 26
    assert state.episodes == 4  # 2 terminated + 2 truncated episodes ended

    rows = stored(replay)
    assert_true_successors(rows)
    tag, ep, t = decode(rows["obs"])
    expected = (
        [(0, 1, s) for s in range(3)] + [(0, 2, s) for s in range(3)] + [(0, 3, s) for s in range(2)]
        + [(1, 1, s) for s in range(4)] + [(1, 2, s) for s in range(4)]
        + [(2, 1, s) for s in range(10)]
    )
    assert sorted(zip(tag.tolist(), ep.tolist(), t.tolist(), strict=True)) == sorted(expected)

    # no transition starts from a final observation (t=3 for env 0, t=4 for env 1)
    assert not np.any((tag == 0) & (t >= 3))
    assert not np.any((tag == 1) & (t >= 4))

    # terminated is 1 exactly on env 0's terminal steps, and 0 on env 1's truncated steps
    ntag, _, nt = decode(rows["next_obs"])
    is_terminal_step = (ntag == 0) & (nt == 3)
    assert is_terminal_step.sum() == 2
    assert np.array_equal(rows["terminated"], is_terminal_step.astype(np.float32))
    truncated_rows = (ntag == 1) & (nt == 4)
    assert truncated_rows.sum() == 2
    assert np.all(rows["terminated"][truncated_rows] == 0.0)

    # rows are written in step order: the first vector step stores (t=0 -> t=1) for envs 0, 1, 2
    assert decode(rows["obs"][:3])[0].tolist() == [0, 1, 2]
    assert decode(rows["obs"][:3])[2].tolist() == [0, 0, 0]

    # the episode statistics the loop logs count only real steps (autoreset rows excluded)
    lengths = sorted(int(s["charts/episodic_length"]) for s, _ in logger.records if "charts/episodic_length" in s)
    assert lengths == [3, 3, 4, 4]
    returns = sorted(s["charts/episodic_return"] for s, _ in logger.records if "charts/episodic_return" in s)
    # an episode of length L returns sum(10 * t + a_t) for t = 1..L, i.e. 60 + #ones (L=3) or 100 + #ones (L=4)
    assert [r // 10 for r in returns] == [6, 6, 10, 10]


def test_dqnrun_vector_env_gives_the_same_transition_invariants() -> None:
    # The same check through dqnrun.envs.make_vector_env ("sync"): each copy terminates at t=3 in odd
    # episodes and is truncated by the registered TimeLimit (4 steps) in even ones.
    envs = make_vector_env(SCRIPTED_TL_ID, 2, {"terminate_at": [3, None]}, "sync")
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    # Per env over 10 vector steps: ep 1 at k=1..3 (terminal), autoreset 4, ep 2 at k=5..8 (truncated),
    # autoreset 9, ep 3 at k=10 -> 3 + 4 + 1 = 8 transitions each, 16 in all.
    replay, state, _ = run_loop(envs, total_steps=20)
    envs.close()
    assert replay.size == 16
    rows = stored(replay)
    assert_true_successors(rows)
    tag, ep, t = decode(rows["obs"])
    assert sorted(set(tag.tolist())) == [0, 1]
    expected = sorted([(ep_, s) for ep_, n in ((1, 3), (2, 4), (3, 1)) for s in range(n)] * 2)
    assert sorted(zip(ep.tolist(), t.tolist(), strict=True)) == expected
    _, nep, nt = decode(rows["next_obs"])
    assert np.array_equal(rows["terminated"], ((nep == 1) & (nt == 3)).astype(np.float32))
    assert ((nep == 2) & (nt == 4)).sum() == 2  # both truncated steps stored, as non-terminal


class RecordDones(gym.vector.VectorWrapper):
    """Counts autoreset steps independently of the loop: env e autoresets on step k if it ended on step k-1."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.prev_done = np.zeros(env.num_envs, bool)
        self.autoreset_steps = 0
        self.env_steps = 0

    def step(self, actions: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.autoreset_steps += int(self.prev_done.sum())
        self.env_steps += len(actions)
        self.prev_done = np.asarray(terminated | truncated)
        return obs, reward, terminated, truncated, info


CARTPOLE_X_LIMIT = 2.4
CARTPOLE_THETA_LIMIT = 12 * 2 * np.pi / 360  # 0.2094 rad
CARTPOLE_TAU = 0.02


def test_cartpole_vector_env_stores_no_autoreset_rows() -> None:
    envs = RecordDones(gym.make_vec("CartPole-v1", 4, vectorization_mode="vector_entry_point"))
    total = 4 * 400
    replay, state, _ = run_loop(envs, total_steps=total, obs_shape=(4,))
    envs.close()
    assert envs.env_steps == total == state.step
    assert envs.autoreset_steps >= 20  # random play: episodes of ~20 steps, so plenty of autoresets
    assert replay.size == total - envs.autoreset_steps

    rows = stored(replay)
    obs, nxt, term = rows["obs"], rows["next_obs"], rows["terminated"]
    assert set(np.unique(term).tolist()) == {0.0, 1.0}
    # every terminal next_obs is past a CartPole threshold (float32 rounding tolerance on the boundary)
    beyond = (np.abs(nxt[:, 0]) > CARTPOLE_X_LIMIT - 1e-6) | (np.abs(nxt[:, 2]) > CARTPOLE_THETA_LIMIT - 1e-6)
    assert np.all(beyond[term == 1.0])
    assert not np.any(beyond[term == 0.0])  # random play never reaches 500 steps, so no truncations
    # every stored transition is one Euler step of the dynamics: x' = x + tau * x_dot, theta' = theta + tau *
    # theta_dot. A reset observation in next_obs would break this.
    np.testing.assert_allclose(nxt[:, 0], obs[:, 0] + CARTPOLE_TAU * obs[:, 1], atol=2e-5)
    np.testing.assert_allclose(nxt[:, 2], obs[:, 2] + CARTPOLE_TAU * obs[:, 3], atol=2e-5)
    # and no transition starts from a final observation
    start_beyond = (np.abs(obs[:, 0]) > CARTPOLE_X_LIMIT) | (np.abs(obs[:, 2]) > CARTPOLE_THETA_LIMIT)
    assert not np.any(start_beyond)
    assert int(term.sum()) == state.episodes


@pytest.mark.parametrize("n_envs", [1, 3])
def test_episode_count_matches_terminal_rows_for_terminating_env(n_envs: int) -> None:
    # Every episode of this env terminates at t=2; over 9 vector steps each env runs ep 1 (k=1,2), autoreset 3,
    # ep 2 (k=4,5), autoreset 6, ep 3 (k=7,8), autoreset 9 -> 6 transitions and 3 terminal rows per env.
    envs = SyncVectorEnv([lambda i=i: gym.make(SCRIPTED_ID, terminate_at=[2], tag=i) for i in range(n_envs)])
    replay, state, _ = run_loop(envs, total_steps=9 * n_envs)
    envs.close()
    assert replay.size == 6 * n_envs
    assert state.episodes == 3 * n_envs
    rows = stored(replay)
    assert_true_successors(rows)
    assert rows["terminated"].sum() == 3 * n_envs


@pytest.mark.parametrize(("env_id", "kwargs"), [
    ("CartPole-v1", {"max_episode_steps": 30}),  # terminations and time-limit truncations
    ("FrozenLake-v1", {}),  # Discrete observations
    (SCRIPTED_TL_ID, {"terminate_at": [3, None], "tag": 0}),
])
def test_single_env_adapter_steps_exactly_like_sync_vector_env(env_id: str, kwargs: dict) -> None:
    import pickle

    from dqnrun.envs import SingleVectorEnv

    ours = make_vector_env(env_id, 1, kwargs, "auto")
    assert isinstance(ours, SingleVectorEnv)
    ref = SyncVectorEnv([lambda: gym.make(env_id, **kwargs)], copy=False, autoreset_mode=AutoresetMode.NEXT_STEP)
    assert ours.observation_space == ref.observation_space and ours.action_space == ref.action_space
    rng = np.random.default_rng(0)
    n_actions = int(ref.single_action_space.n)
    np.testing.assert_array_equal(ours.reset(seed=7)[0], ref.reset(seed=7)[0])
    ends = 0
    for k in range(400):
        if k == 200:  # the env state pickled mid-run (as a checkpoint does) continues identically
            ours = pickle.loads(pickle.dumps(ours))
        actions = rng.integers(0, n_actions, size=1)
        a, b = ours.step(actions), ref.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
        ends += int(b[2][0] or b[3][0])
    assert ends >= 5  # the comparison crossed many autoresets
    ours.close()
    ref.close()
