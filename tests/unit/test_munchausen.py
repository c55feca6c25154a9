"""Munchausen DQN and M-IQN (``learner.munchausen=true``) against hand-computed expectations.

The log-policy bonus and the soft bootstrap with the log-softmax worked out by hand, the limits the paper names
(tau -> 0 is DQN's target for the greedy action), n-step discounts, the Learner's burst targets on the hand-set
linear nets of test_td_target (on the fast path and through autograd alike), M-IQN's target quantiles, and the
validation of the combinations that make no sense.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dqnrun import builders
from dqnrun.algos.dqn.learner import Learner
from dqnrun.algos.dqn.quantile import quantile_huber_loss
from dqnrun.algos.dqn.targets import munchausen_target, scaled_log_policy
from dqnrun.config.rules import validate_train_config
from dqnrun.errors import UsageError
from dqnrun.networks import MLP
from dqnrun.replay import Batch
from tests.conftest import compose_train


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def close(a: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(a, t(expected), rtol=0, atol=1e-5)


# --- the target -------------------------------------------------------------------------------------------
#
# Temperature tau = 1, alpha = 0.9, l0 = -1, gamma = 0.5, reward 1, not terminal.
# q(s) = [0, ln 3]: pi(.|s) = softmax = [1/4, 3/4]; tau log pi = [ln 1/4, ln 3/4] = [-1.3863, -0.2877]
#   action 0: clip(-1.3863, -1, 0) = -1           -> bonus 0.9 * -1 = -0.9
#   action 1: clip(-0.2877, -1, 0) = ln 3/4       -> bonus 0.9 ln(3/4)
# q(s') = [0, ln 3]: sum_a' pi(a'|s') [q(s', a') - log pi(a'|s')] = 1/4 (0 + ln 4) + 3/4 (ln 3 - ln 3/4) = ln 4
# y(action 0) = 1 - 0.9 + 0.5 ln 4;  y(action 1) = 1 + 0.9 ln(3/4) + 0.5 ln 4

LN3 = math.log(3.0)


def test_scaled_log_policy_by_hand() -> None:
    close(scaled_log_policy(t([[0.0, LN3]]), 1.0), [[math.log(0.25), math.log(0.75)]])
    close(scaled_log_policy(t([[0.0, LN3]]), 0.5), [[0.5 * -math.log(1 + 9), 0.5 * math.log(9 / 10)]])


def test_munchausen_target_by_hand() -> None:
    q = t([[0.0, LN3], [0.0, LN3]])
    y = munchausen_target(t([1.0, 1.0]), t([0.0, 0.0]), 0.5, q, torch.tensor([0, 1]), q, alpha=0.9, tau=1.0,
                          clip=-1.0)
    close(y, [1 - 0.9 + 0.5 * math.log(4), 1 + 0.9 * math.log(0.75) + 0.5 * math.log(4)])


def test_munchausen_target_terminal_rows_keep_the_bonus_but_do_not_bootstrap() -> None:
    q = t([[0.0, LN3]])
    y = munchausen_target(t([2.0]), t([1.0]), 0.99, q, torch.tensor([1]), t([[100.0, -100.0]]), 0.9, 1.0, -1.0)
    close(y, [2 + 0.9 * math.log(0.75)])


def test_munchausen_target_takes_per_sample_discounts() -> None:
    # n-step rows: the discount gamma^k of each row scales its soft bootstrap (ln 4 here)
    q = t([[0.0, LN3]] * 2)
    y = munchausen_target(t([1.0, 1.0]), t([0.0, 0.0]), t([0.5, 0.125]), q, torch.tensor([1, 1]), q, 0.9, 1.0, -1.0)
    close(y, [1 + 0.9 * math.log(0.75) + 0.5 * math.log(4), 1 + 0.9 * math.log(0.75) + 0.125 * math.log(4)])


def test_with_the_papers_temperature_the_greedy_action_gets_dqns_target() -> None:
    # tau = 0.03 and a Q gap of 2: pi is one-hot to 1e-29; the greedy action's bonus vanishes, the soft value is
    # the max (DQN's bootstrap); the other action's tau log pi = -2 is clipped to l0 = -1: bonus -0.9
    q = t([[0.0, 2.0], [0.0, 2.0]])
    y = munchausen_target(t([1.0, 1.0]), t([0.0, 0.0]), 0.5, q, torch.tensor([1, 0]), t([[3.0, 1.0]] * 2), 0.9,
                          0.03, -1.0)
    close(y, [1 + 0.5 * 3.0, 1 - 0.9 + 0.5 * 3.0])


def test_munchausen_target_is_finite_for_large_q_and_small_temperatures() -> None:
    q = t([[1000.0, 0.0, -1000.0]])
    y = munchausen_target(t([0.0]), t([0.0]), 0.99, q, torch.tensor([2]), q, 0.9, 0.03, -1.0)
    assert torch.isfinite(y).all()
    close(y, [-0.9 + 0.99 * 1000.0])


def test_munchausen_quantile_target_by_hand() -> None:
    # M-IQN: each target quantile j is r + bonus + gamma sum_a' pi(a'|s') [z_j(s', a') - tau log pi(a'|s')],
    # pi from the Q-values. tau = 1, next Z = [[0, 2], [1, 5]] with Q = [1, 3]: pi = [1, e^2] / (1 + e^2).
    e2 = math.exp(2.0)
    pi = [1 / (1 + e2), e2 / (1 + e2)]
    log_pi = [math.log(p) for p in pi]
    soft = [sum(pi[a] * (z[a] - log_pi[a]) for a in range(2)) for z in ([0.0, 1.0], [2.0, 5.0])]  # per quantile j
    q = t([[0.0, LN3]])  # at s, for the bonus of action 1: 0.9 ln(3/4)
    y = munchausen_target(t([1.0]), t([0.0]), 0.5, q, torch.tensor([1]), t([[1.0, 3.0]]), 0.9, 1.0, -1.0,
                          next_z=t([[[0.0, 2.0], [1.0, 5.0]]]))
    close(y, [[1 + 0.9 * math.log(0.75) + 0.5 * soft[0], 1 + 0.9 * math.log(0.75) + 0.5 * soft[1]]])
    # the quantiles' mean target is the scalar target of their mean Q
    scalar = munchausen_target(t([1.0]), t([0.0]), 0.5, q, torch.tensor([1]), t([[1.0, 3.0]]), 0.9, 1.0, -1.0)
    torch.testing.assert_close(y.mean(-1), scalar)


# --- the Learner ---------------------------------------------------------------------------------------
#
# The hand-set linear nets of test_td_target: target Q(s) = [[0, 1], [1, 0]] s + [0, 1]. tau = 1, gamma = 0.5.
#   row 0: s = [1, 0], a = 0, r = 1, s' = [2, 1], not terminal
#     target Q(s) = [0, 2]: log pi(0) = -ln(1 + e^2) = -2.1269 -> clipped to -1 -> bonus -0.9
#     target Q(s') = [1, 3]: soft value = logsumexp = 3 + ln(1 + e^-2)
#     y0 = 1 - 0.9 + 0.5 (3 + ln(1 + e^-2))
#   row 1: s = [0, 1], a = 1, r = 0, terminal
#     target Q(s) = [1, 1]: log pi(1) = ln 1/2 -> bonus 0.9 ln(1/2);  y1 = 0.9 ln(1/2)

Y0 = 1 - 0.9 + 0.5 * (3 + math.log(1 + math.exp(-2)))
Y1 = 0.9 * math.log(0.5)


def linear(w: list, b: list) -> nn.Linear:
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(t(w))
        net.bias.copy_(t(b))
    return net


def hand_batch() -> Batch:
    return Batch(obs=t([[[1.0, 0.0], [0.0, 1.0]]]), action=torch.tensor([[0, 1]]), reward=t([[1.0, 0.0]]),
                 next_obs=t([[[2.0, 1.0], [1.0, 3.0]]]), terminated=t([[0.0, 1.0]]))


def test_learner_burst_targets_are_munchausens_by_hand() -> None:
    online, target = linear([[1.0, 2.0], [0.0, -1.0]], [0.5, 0.0]), linear([[0.0, 1.0], [1.0, 0.0]], [0.0, 1.0])
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.1), gamma=0.5, loss="mse",
                      max_grad_norm=None, munchausen=True, munchausen_tau=1.0)
    close(learner.targets(hand_batch()), [[Y0, Y1]])
    # one SGD step on MSE: online Q(s0, 0) = 1.5, Q(s1, 1) = -1; dL/dq = q - y
    learner.update(hand_batch())
    close(learner.online.bias.detach(), [0.5 - 0.1 * (1.5 - Y0), 0.0 - 0.1 * (-1.0 - Y1)])


def test_munchausen_takes_the_fast_path_on_a_plain_mlp_and_matches_autograd() -> None:
    torch.manual_seed(0)
    net = MLP((4,), n_actions=3, hidden=(8, 8))
    gen = torch.Generator().manual_seed(3)
    g, b = 3, 6
    batch = Batch(obs=torch.randn(g, b, 4, generator=gen), action=torch.randint(0, 3, (g, b), generator=gen),
                  reward=torch.randn(g, b, generator=gen), next_obs=torch.randn(g, b, 4, generator=gen),
                  terminated=(torch.rand(g, b, generator=gen) < 0.3).float(), discount=torch.full((g, b), 0.729),
                  weights=0.5 + torch.rand(g, b, generator=gen), indices=np.arange(g * b).reshape(g, b))
    learners = []
    for fast in (True, False):
        online, target = copy.deepcopy(net), copy.deepcopy(net)
        with torch.no_grad():
            for p in target.parameters():
                p.mul_(0.5)
        learner = Learner(online, target, torch.optim.Adam(online.parameters(), lr=1e-2), gamma=0.99,
                          fast_mlp=fast, munchausen=True)
        assert (learner.manual is not None) == fast
        learner.update(batch)
        learners.append(learner)
    for pf, ps in zip(learners[0].online.parameters(), learners[1].online.parameters(), strict=True):
        torch.testing.assert_close(pf, ps, rtol=1e-5, atol=1e-6)


def test_m_iqn_learner_bootstraps_from_munchausens_quantile_target() -> None:
    torch.manual_seed(1)
    online = MLP((4,), n_actions=3, hidden=(16, 16), head="iqn", quantile_embedding=8, iqn_k=4)
    target = copy.deepcopy(online)
    learner = Learner(online, target, torch.optim.Adam(online.parameters()), gamma=0.9, distributional="iqn",
                      munchausen=True, iqn_n=6, iqn_n_prime=5)
    gen = torch.Generator().manual_seed(4)
    obs, next_obs = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    action, reward = torch.randint(0, 3, (8,), generator=gen), torch.randn(8, generator=gen)
    terminated = t([0, 1, 0, 0, 0, 1, 0, 0])
    taus = learner._sample_taus(8)
    per_sample, _, _ = learner._quantile_loss(obs, action, reward, next_obs, terminated, 0.9, taus)
    with torch.no_grad():
        y = munchausen_target(reward, terminated, 0.9, target(obs), action, target(next_obs), 0.9, 0.03, -1.0,
                              next_z=target.quantiles(next_obs, taus[1]))
    z = online.quantiles(obs, taus[0])[torch.arange(8), action]
    torch.testing.assert_close(per_sample, quantile_huber_loss(z, y, taus[0]))


def test_learner_refuses_munchausen_with_double_or_c51() -> None:
    net = nn.Linear(2, 2)
    for kw in ({"double": True}, {"distributional": True}):
        with pytest.raises(ValueError, match="Munchausen"):
            Learner(net, copy.deepcopy(net), torch.optim.SGD(net.parameters(), lr=0.1), munchausen=True, **kw)


# --- config ---------------------------------------------------------------------------------------------


def test_munchausen_keys_build_the_learner() -> None:
    cfg = compose_train(["learner.munchausen=true", "learner.munchausen_alpha=0.5", "learner.munchausen_tau=0.1",
                         "learner.munchausen_clip=-2", "device=cpu"])
    validate_train_config(cfg)
    learner = builders.build_algorithm(cfg, builders.build_env_spec(cfg.env)).learner
    assert learner.munchausen == (0.5, 0.1, -2.0) and learner.tau == 1.0  # polyak's tau is untouched
    assert learner.manual is not None  # the preset's plain MLP keeps the fast path
    default = compose_train([])
    assert (default.learner.munchausen, default.learner.munchausen_alpha, default.learner.munchausen_tau,
            default.learner.munchausen_clip) == (False, 0.9, 0.03, -1.0)


@pytest.mark.parametrize(("overrides", "message"), [
    (["learner.munchausen=true", "learner.double=true"], "learner.munchausen=true and learner.double=true exclude"),
    (["learner.munchausen=true", "learner.distributional=true"], "learner.munchausen=true does not apply to C51"),
    (["learner.munchausen=true", "experiment=rainbow"], "does not apply to C51"),
    (["learner.munchausen=1"], "learner.munchausen=1 is not a boolean"),
    (["learner.munchausen_tau=0"], "learner.munchausen_tau=0 is out of range"),
    (["learner.munchausen_clip=0.5"], "learner.munchausen_clip=0.5 is out of range"),
    (["learner.munchausen_alpha=1.5"], "learner.munchausen_alpha=1.5 is out of range"),
])
def test_bad_munchausen_configs_get_one_usage_error(overrides: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        validate_train_config(compose_train(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
