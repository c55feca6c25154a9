"""Action masks, part by part: legal random and greedy actions, the env wrapper for both habits (info entry, Dict
observation), the vector envs' masks across autoresets, the replay's per-row next masks (1-step and n-step, saved
and restored), the API's act(mask=) and an env check that never steps an illegal action."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import tests.custom_envs as C
from dqnrun.acting import epsilon_greedy, legal_random, masked_argmax
from dqnrun.envs import SingleVectorEnv, diagnose, make_vector_env
from dqnrun.envs.masks import ActionMaskInfo, vector_mask
from dqnrun.errors import UsageError
from dqnrun.replay import ReplayBuffer

INFO, DICT = "DqnrunTest/MaskedCorridor-v0", "DqnrunTest/MaskedCorridorDict-v0"


def test_random_actions_are_uniform_over_the_legal_ones_and_agree_without_a_mask() -> None:
    rng = np.random.default_rng(0)
    mask = np.array([[False, True, False, True, True]] * 30_000)
    picked = legal_random(rng.random(len(mask)), mask)
    assert set(np.unique(picked)) == {1, 3, 4}
    np.testing.assert_allclose(np.bincount(picked, minlength=5)[[1, 3, 4]] / len(picked), [1 / 3] * 3, atol=0.01)
    u = np.random.default_rng(1).random(1000)
    np.testing.assert_array_equal(legal_random(u, np.ones((1000, 5), bool)), (u * 5).astype(np.int64))


def test_epsilon_greedy_acts_only_through_legal_actions() -> None:
    rng = np.random.default_rng(0)
    q = np.array([[9.0, 1.0, 2.0], [0.0, 5.0, 7.0]])
    mask = np.array([[False, True, True], [True, True, False]])
    np.testing.assert_array_equal(masked_argmax(q, mask), [2, 1])
    seen = []
    for eps in (0.0, 0.5, 1.0):
        for _ in range(200):
            a = epsilon_greedy(np.zeros((2, 1)), lambda o, m: masked_argmax(q, m), eps, rng, 3, mask)
            assert mask[[0, 1], a].all()
            seen.append(a)
    assert {tuple(x) for x in seen} >= {(2, 1), (1, 0)}


@pytest.mark.parametrize("env_id", [INFO, DICT])
def test_the_wrapper_puts_the_mask_in_info_and_gives_the_plain_observation(env_id: str) -> None:
    env = ActionMaskInfo(gym.make(env_id))
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (16,), np.float32)
    obs, info = env.reset(seed=3)
    assert obs.shape == (16,) and info["action_mask"].dtype == bool
    np.testing.assert_array_equal(info["action_mask"], env.unwrapped._mask().astype(bool))
    obs, _, _, _, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
    np.testing.assert_array_equal(info["action_mask"], env.unwrapped._mask().astype(bool))


def test_an_env_without_a_mask_or_with_a_bad_one_is_named() -> None:
    with pytest.raises(UsageError, match="CartPole-v1's reset\\(\\) reported no action mask"):
        ActionMaskInfo(gym.make("CartPole-v1")).reset(seed=0)

    class Bad(C.MaskedCorridor):
        def _mask(self) -> np.ndarray:
            return np.zeros(4, np.int8)

    with pytest.raises(RuntimeError, match="no legal action"):
        ActionMaskInfo(Bad()).reset(seed=0)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_a_vector_steps_mask_is_that_of_the_observation_it_returned_across_autoresets(num_envs: int) -> None:
    C.MaskedCorridor.illegal = 0
    envs = make_vector_env(INFO, num_envs, wrapper=ActionMaskInfo)
    assert isinstance(envs, SingleVectorEnv) == (num_envs == 1)
    obs, info = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(300):
        mask = vector_mask(info, num_envs)
        singles = [envs.env] if num_envs == 1 else envs.envs
        for e, env in enumerate(singles):  # the env's own legal actions for the observation the agent holds
            np.testing.assert_array_equal(mask[e], env.unwrapped._mask().astype(bool))
            assert obs[e, env.unwrapped.pos] == 1.0
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in mask])
        obs, _, term, trunc, info = envs.step(actions)
        resets += int((term | trunc).sum())
    assert resets > 5 and C.MaskedCorridor.illegal == 0


def _masked_replay(n_step: int) -> ReplayBuffer:
    return ReplayBuffer(capacity=16, batch_size=4, obs_shape=(1,), obs_dtype=torch.float32, n_step=n_step,
                        num_envs=2, mask_actions=3)


@pytest.mark.parametrize("n_step", [1, 3])
def test_each_replay_row_keeps_the_mask_of_its_own_next_observation(n_step: int) -> None:
    r = _masked_replay(n_step)
    # env e at step t observes 10 t + e; its next observation's mask marks action (t + 1 + e) % 3 illegal
    for t in range(9):
        obs = np.array([[10 * t], [10 * t + 1]], np.float32)
        nxt = obs + 10
        mask = np.ones((2, 3), bool)
        mask[[0, 1], [(t + 1) % 3, (t + 2) % 3]] = False
        ended = np.array([t == 4, False])
        r.add(obs, np.zeros(2, np.int64), np.ones(2), nxt, ended, np.zeros(2, bool), next_mask=mask)
    b = r.get_rows(np.arange(r.size))
    for next_obs, next_mask in zip(b.next_obs[:, 0].tolist(), b.next_mask.numpy(), strict=True):
        t, e = divmod(int(next_obs) - 10, 10)
        want = np.ones(3, bool)
        want[(t + 1 + e) % 3] = False
        np.testing.assert_array_equal(next_mask, want, err_msg=f"row with next_obs {next_obs}")
    assert r.sample().next_mask.shape == (4, 3)
    back = _masked_replay(n_step)
    back.load_state_dict(r.state_dict())
    assert torch.equal(back.get_rows(np.arange(r.size)).next_mask, b.next_mask)
    with pytest.raises(ValueError, match="next_mask"):
        r.add(obs, np.zeros(2, np.int64), np.ones(2), nxt, ended, np.zeros(2, bool))


def test_the_api_acts_through_a_mask() -> None:
    from dqnrun.policy import Agent

    agent = Agent.__new__(Agent)
    agent.obs_dtype, agent.obs_shape, agent.n_actions = np.dtype(np.float32), (2,), 3
    agent._q = lambda x: np.tile([[5.0, 1.0, 3.0]], (len(x), 1))  # type: ignore[method-assign]
    assert agent.act(np.zeros(2)) == 0
    assert agent.act(np.zeros(2), mask=[0, 1, 1]) == 2
    np.testing.assert_array_equal(agent.act(np.zeros((2, 2)), mask=[[0, 1, 0], [1, 0, 0]]), [1, 0])
    rng = np.random.default_rng(0)
    assert all(agent.act(np.zeros(2), epsilon=1.0, rng=rng, mask=[0, 0, 1]) == 2 for _ in range(50))
    with pytest.raises(UsageError, match="mask of shape"):
        agent.act(np.zeros(2), mask=[1, 1])
    with pytest.raises(UsageError, match="at least one legal action"):
        agent.act(np.zeros(2), mask=[0, 0, 0])


def test_the_env_check_never_steps_an_illegal_action() -> None:
    C.MaskedCorridor.illegal = 0
    assert diagnose(INFO, {}, ActionMaskInfo) is None
    assert diagnose(DICT, {}, ActionMaskInfo) is None
    assert C.MaskedCorridor.illegal == 0
