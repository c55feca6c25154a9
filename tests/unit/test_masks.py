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


# --- DQN's bootstrap through the legal actions of s' -----------------------------------------------------------


def test_td_target_maxes_over_the_legal_next_actions_only() -> None:
    from dqnrun.algos.dqn.targets import td_target

    r, term = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    next_q = torch.tensor([[5.0, 2.0, -1.0], [5.0, 2.0, -1.0], [5.0, 2.0, -1.0]])
    mask = torch.tensor([[False, True, True], [False, False, True], [False, False, False]])
    # row 0: max over {2, -1}; row 1: only -1 is legal; row 2: terminal with no legal action -> r, never NaN
    y = td_target(r, term, next_q, 0.5, next_mask=mask)
    assert torch.equal(y, torch.tensor([1.0 + 0.5 * 2.0, 1.0 + 0.5 * -1.0, 1.0]))
    assert torch.equal(td_target(r, term, next_q, 0.5), torch.tensor([3.5, 3.5, 1.0]))  # unmasked: 5 each
    # Double DQN: the online argmax is among the legal actions, the target net evaluates it
    online = torch.tensor([[9.0, 0.0, 3.0], [9.0, 8.0, 0.0], [9.0, 0.0, 0.0]])
    y = td_target(r, term, next_q, 0.5, online, mask)
    assert torch.equal(y, torch.tensor([1.0 + 0.5 * -1.0, 1.0 + 0.5 * -1.0, 1.0]))


def test_a_non_terminal_row_without_a_legal_action_bootstraps_nothing() -> None:
    from dqnrun.algos.dqn.targets import td_target

    y = td_target(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([[3.0, 4.0]]), 0.9,
                  next_mask=torch.tensor([[False, False]]))
    assert torch.equal(y, torch.tensor([0.5]))


def _learner(head: bool | str, double: bool = False) -> object:
    from dqnrun.algos.dqn.learner import Learner
    from dqnrun.networks import QNetwork

    torch.manual_seed(0)
    kw = {"head": "c51" if head is True else head} if head else {}
    if head is True:
        kw |= {"atoms": 11, "v_min": -5.0, "v_max": 5.0}
    if head == "qr":
        kw |= {"quantiles": 8}
    online = QNetwork((3,), 3, hidden=(16,), **kw)
    target = QNetwork((3,), 3, hidden=(16,), **kw)
    target.load_state_dict(online.state_dict())
    return Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.0), gamma=0.9, double=double,
                   distributional=head)


@pytest.mark.parametrize(("head", "double"), [(False, False), (False, True), (True, False), ("qr", False),
                                              ("qr", True)])
def test_every_head_bootstraps_from_a_legal_greedy_action(head: bool | str, double: bool) -> None:
    """The same batch, masked two ways: with only action k legal at s', the loss equals that of a target built from
    action k, whatever the nets prefer (checked by a mask that keeps each action in turn: the losses differ)."""
    from dqnrun.replay import Batch

    learner = _learner(head, double)
    g = torch.Generator().manual_seed(1)
    b = 32
    obs, next_obs = torch.randn(b, 3, generator=g), torch.randn(b, 3, generator=g)
    base = dict(obs=obs, action=torch.randint(0, 3, (b,), generator=g), reward=torch.randn(b, generator=g),
                next_obs=next_obs, terminated=torch.zeros(b))
    losses = []
    for k in range(3):
        only_k = torch.zeros(b, 3, dtype=torch.bool)
        only_k[:, k] = True
        y = None if learner.distributional else learner.targets(Batch(**{n: v[None] for n, v in base.items()},
                                                                      next_mask=only_k[None]))
        if double and not learner.distributional:  # per step: the online net picks a* (as `update` does)
            from dqnrun.algos.dqn.targets import td_target

            with torch.no_grad():
                y = td_target(base["reward"], base["terminated"], learner.target(next_obs), 0.9,
                              learner.online(next_obs), only_k)[None]
        if y is not None:
            # the burst target equals the hand target from action k
            with torch.no_grad():
                q_k = learner.target(next_obs)[:, k]
            assert torch.allclose(y[0], base["reward"] + 0.9 * q_k)
        loss, _, _ = learner._loss_terms(obs, base["action"], base["reward"], next_obs, base["terminated"], 0.9,
                                         None, None if y is None else y[0], None, only_k)
        losses.append(float(loss.detach()))
    assert len(set(losses)) == 3, losses  # each mask moved the target to its own action


def test_dqn_refuses_munchausen_with_action_masks_in_one_line() -> None:
    from dqnrun.config.compose import compose
    from dqnrun.config.rules import validate_train_config

    cfg, _ = compose("train", [f"env.id=tests.custom_envs:{INFO}", "env.action_mask=true",
                               "learner.munchausen=true"])
    with pytest.raises(UsageError, match="learner.munchausen=true does not act through action masks") as err:
        validate_train_config(cfg)
    assert "\n" not in str(err.value)
