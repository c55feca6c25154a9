"""TD targets and the Learner: hand-computed targets, one SGD step by hand, burst targets, target sync."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dqnrun.algos.dqn.learner import Learner
from dqnrun.algos.dqn.targets import td_target
from dqnrun.networks import MLP
from dqnrun.replay import Batch


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def assert_params(param: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(param.detach(), t(expected), rtol=0, atol=1e-6)


# --- td_target ---------------------------------------------------------------------------------------


def test_td_target_does_not_bootstrap_on_termination() -> None:
    y = td_target(reward=t([1.0, -2.0]), terminated=t([1.0, 1.0]), next_q_target=t([[3.0, 5.0], [7.0, 4.0]]),
                  gamma=0.9)
    assert y.tolist() == [1.0, -2.0]


def test_td_target_bootstraps_through_truncation() -> None:
    # A time-limit truncation is stored with terminated=0: y = r + gamma * max_a Q_target(s', a).
    y = td_target(reward=t([1.0, -2.0]), terminated=t([0.0, 0.0]), next_q_target=t([[3.0, 5.0], [7.0, 4.0]]),
                  gamma=0.5)
    assert y.tolist() == [1.0 + 0.5 * 5.0, -2.0 + 0.5 * 7.0]


def test_td_target_masks_only_the_terminated_rows() -> None:
    y = td_target(reward=t([1.0, 2.0, 0.0]), terminated=t([1.0, 0.0, 0.0]),
                  next_q_target=t([[3.0, 5.0], [4.0, 2.0], [-1.0, -3.0]]), gamma=0.5)
    assert y.tolist() == [1.0, 2.0 + 0.5 * 4.0, 0.0 + 0.5 * -1.0]


@pytest.mark.parametrize(("gamma", "expected"), [(0.0, [1.0]), (1.0, [6.0]), (0.25, [2.25])])
def test_td_target_scales_bootstrap_by_gamma(gamma: float, expected: list[float]) -> None:
    y = td_target(t([1.0]), t([0.0]), t([[5.0, -1.0]]), gamma)
    assert y.tolist() == expected


def test_td_target_carries_no_gradient() -> None:
    q = t([[1.0, 2.0]]).requires_grad_(True)
    y = td_target(t([0.0]), t([0.0]), q, 0.9, next_q_online=q * 2)
    assert not y.requires_grad
    y2 = td_target(t([0.0]), t([0.0]), q, 0.9)
    assert not y2.requires_grad


# Double DQN case: rows 0 and 2 have argmax_online != argmax_target, rows 1 and 3 agree.
NEXT_Q_TARGET = [[10.0, 20.0, 0.0], [30.0, 40.0, 0.0], [5.0, 1.0, 9.0], [2.0, 8.0, 3.0]]
NEXT_Q_ONLINE = [[1.0, 0.0, 0.5], [0.0, 1.0, -1.0], [0.0, 3.0, 2.0], [-5.0, 0.0, -1.0]]
# argmax target: [1, 1, 2, 1]; argmax online: [0, 1, 1, 1]
# DQN with r=1, gamma=0.5, not terminated:    1 + 0.5 * max_a Q_t       = [11, 21, 5.5, 5]
# Double DQN:                                  1 + 0.5 * Q_t[a*_online] = [ 6, 21, 1.5, 5]


def test_double_dqn_evaluates_online_argmax_with_target_network() -> None:
    r, d = t([1.0] * 4), t([0.0] * 4)
    y_double = td_target(r, d, t(NEXT_Q_TARGET), 0.5, next_q_online=t(NEXT_Q_ONLINE))
    y_dqn = td_target(r, d, t(NEXT_Q_TARGET), 0.5)
    assert y_dqn.tolist() == [11.0, 21.0, 5.5, 5.0]
    assert y_double.tolist() == [6.0, 21.0, 1.5, 5.0]


def test_double_dqn_differs_from_dqn_exactly_where_argmaxes_differ() -> None:
    q_t, q_o = t(NEXT_Q_TARGET), t(NEXT_Q_ONLINE)
    r, d = t([1.0] * 4), t([0.0] * 4)
    differs = td_target(r, d, q_t, 0.5, next_q_online=q_o) != td_target(r, d, q_t, 0.5)
    assert differs.tolist() == [True, False, True, False]
    assert torch.equal(differs, q_t.argmax(-1) != q_o.argmax(-1))


def test_double_dqn_when_argmaxes_agree_equals_dqn() -> None:
    q_t = t([[1.0, 4.0], [9.0, 2.0]])
    q_o = t([[-3.0, 0.0], [0.5, 0.1]])  # same argmaxes as q_t, different values
    r, d = t([0.5, -0.5]), t([0.0, 1.0])
    y_double = td_target(r, d, q_t, 0.9, next_q_online=q_o)
    assert torch.equal(y_double, td_target(r, d, q_t, 0.9))
    assert y_double.tolist() == pytest.approx([0.5 + 0.9 * 4.0, -0.5])


def test_double_dqn_target_is_masked_by_termination() -> None:
    y = td_target(t([2.0]), t([1.0]), t([[100.0, -100.0]]), 0.99, next_q_online=t([[0.0, 1.0]]))
    assert y.tolist() == [2.0]


def test_td_target_works_on_g_by_b_leading_dims() -> None:
    q_t = t(NEXT_Q_TARGET).view(2, 2, 3)
    q_o = t(NEXT_Q_ONLINE).view(2, 2, 3)
    r, d = t([[1.0, 1.0], [1.0, 1.0]]), t([[0.0, 0.0], [0.0, 1.0]])
    assert td_target(r, d, q_t, 0.5).tolist() == [[11.0, 21.0], [5.5, 1.0]]
    assert td_target(r, d, q_t, 0.5, next_q_online=q_o).tolist() == [[6.0, 21.0], [1.5, 1.0]]


# --- Learner with hand-set weights ---------------------------------------------------------------------
#
# Q(s) = W s + b with 2-d states and 2 actions.
#   online: W = [[1, 2], [0, -1]], b = [0.5, 0]       target: W = [[0, 1], [1, 0]], b = [0, 1]
# Batch (B=2), gamma = 0.5:
#   row 0: s=[1, 0], a=0, r=1, s'=[2, 1], terminated=0
#   row 1: s=[0, 1], a=1, r=0, s'=[1, 3], terminated=1
# Online Q(s0) = [1.5, 0] -> Q(s0, 0) = 1.5;  Online Q(s1) = [2.5, -1] -> Q(s1, 1) = -1
# Target Q(s0') = [1, 3] -> y0 = 1 + 0.5 * 3 = 2.5;  row 1 terminal -> y1 = 0
# MSE loss = ((1.5 - 2.5)^2 + (-1 - 0)^2) / 2 = 1;  dL/dq_i = (q_i - y_i) = [-1, -1]
# dL/dW[0] = -1 * s0 = [-1, 0], dL/dW[1] = -1 * s1 = [0, -1], dL/db = [-1, -1]
# SGD lr=0.1: W = [[1.1, 2], [0, -0.9]], b = [0.6, 0.1]

ONLINE_W, ONLINE_B = [[1.0, 2.0], [0.0, -1.0]], [0.5, 0.0]
TARGET_W, TARGET_B = [[0.0, 1.0], [1.0, 0.0]], [0.0, 1.0]


def linear(w: list[list[float]], b: list[float]) -> nn.Linear:
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(t(w))
        net.bias.copy_(t(b))
    return net


def hand_learner(double: bool = False, lr: float = 0.1) -> Learner:
    online, target = linear(ONLINE_W, ONLINE_B), linear(TARGET_W, TARGET_B)
    opt = torch.optim.SGD(online.parameters(), lr=lr)
    return Learner(online, target, opt, gamma=0.5, loss="mse", max_grad_norm=None, tau=1.0, double=double)


def hand_batch(g: int = 1) -> Batch:
    one = Batch(
        obs=t([[1.0, 0.0], [0.0, 1.0]]),
        action=torch.tensor([0, 1]),
        reward=t([1.0, 0.0]),
        next_obs=t([[2.0, 1.0], [1.0, 3.0]]),
        terminated=t([0.0, 1.0]),
    )
    return Batch(*(None if x is None else x.unsqueeze(0).expand(g, *x.shape).contiguous() for x in one))


def test_learner_targets_match_hand_computation() -> None:
    learner = hand_learner()
    assert learner.targets(hand_batch()).tolist() == [[2.5, 0.0]]


def test_learner_update_takes_the_hand_computed_sgd_step() -> None:
    learner = hand_learner()
    learner.update(hand_batch(g=1))
    assert_params(learner.online.weight, [[1.1, 2.0], [0.0, -0.9]])
    assert_params(learner.online.bias, [0.6, 0.1])
    assert learner.updates == 1
    metrics = learner.read_metrics()
    assert metrics == {"td_loss": pytest.approx(1.0), "q_values": pytest.approx(0.25)}  # mean(1.5, -1)
    assert learner.read_metrics() is None  # reading resets the running sums
    # the target network is untouched by an update
    assert learner.target.weight.tolist() == TARGET_W and learner.target.bias.tolist() == TARGET_B


def test_learner_burst_keeps_target_frozen_and_steps_online_twice() -> None:
    # Second step (same batch, same targets y = [2.5, 0]) from W = [[1.1, 2], [0, -0.9]], b = [0.6, 0.1]:
    # Q(s0, 0) = 1.7, Q(s1, 1) = -0.8; dL/dq = [-0.8, -0.8]; loss = (0.64 + 0.64) / 2 = 0.64
    # W = [[1.18, 2], [0, -0.82]], b = [0.68, 0.18]
    learner = hand_learner()
    learner.update(hand_batch(g=2))
    assert_params(learner.online.weight, [[1.18, 2.0], [0.0, -0.82]])
    assert_params(learner.online.bias, [0.68, 0.18])
    assert learner.updates == 2
    metrics = learner.read_metrics()
    assert metrics is not None
    assert metrics["td_loss"] == pytest.approx((1.0 + 0.64) / 2)
    assert metrics["q_values"] == pytest.approx((0.25 + 0.45) / 2)  # mean(1.7, -0.8) = 0.45


def test_learner_double_dqn_update_selects_with_online_and_does_not_backprop_through_selection() -> None:
    # Online Q(s0') = [2 + 2 + 0.5, -1] = [4.5, -1] -> a* = 0; Target Q(s0', 0) = 1 -> y0 = 1 + 0.5 * 1 = 1.5
    # Row 1 terminal -> y1 = 0. Errors: q - y = [1.5 - 1.5, -1 - 0] = [0, -1]; loss = 0.5
    # Gradients only from row 1: dW[1] = -1 * s1 = [0, -1], db[1] = -1; row 0 of W and b[0] stay put.
    learner = hand_learner(double=True)
    assert learner.targets(hand_batch()) is None
    learner.update(hand_batch(g=1))
    assert_params(learner.online.weight, [[1.0, 2.0], [0.0, -0.9]])
    assert_params(learner.online.bias, [0.5, 0.1])
    assert learner.read_metrics() == {"td_loss": pytest.approx(0.5), "q_values": pytest.approx(0.25)}


def test_learner_freezes_target_parameters() -> None:
    learner = hand_learner()
    assert all(not p.requires_grad for p in learner.target.parameters())
    assert all(p.requires_grad for p in learner.online.parameters())


def test_learner_huber_loss_is_linear_beyond_one() -> None:
    # Huber (smooth L1, beta=1): 0.5 e^2 for |e| < 1, |e| - 0.5 beyond. With r0=3: y0 = 3 + 0.5 * 3 = 4.5,
    # error 1.5 - 4.5 = -3 -> 2.5; row 1 error -1 -> 0.5. Mean 1.5 (MSE would give (9 + 1) / 2 = 5).
    online, target = linear(ONLINE_W, ONLINE_B), linear(TARGET_W, TARGET_B)
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.0), gamma=0.5, loss="huber",
                      max_grad_norm=None)
    b = hand_batch()
    learner.update(b._replace(reward=t([[3.0, 0.0]])))
    assert learner.read_metrics()["td_loss"] == pytest.approx((2.5 + 0.5) / 2)


def random_batch(g: int, b: int, obs_shape: tuple[int, ...], seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(g, b, *obs_shape, generator=gen),
        action=torch.randint(0, 3, (g, b), generator=gen),
        reward=torch.randn(g, b, generator=gen),
        next_obs=torch.randn(g, b, *obs_shape, generator=gen),
        terminated=(torch.rand(g, b, generator=gen) < 0.3).float(),
    )


@pytest.mark.parametrize("obs_shape", [(4,), (2, 3)])
def test_burst_targets_equal_per_batch_targets(obs_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    online = MLP(obs_shape, n_actions=3, hidden=(16, 16))
    target = MLP(obs_shape, n_actions=3, hidden=(16, 16))  # different init from online
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.1), gamma=0.9)
    g, b = 4, 7
    batch = random_batch(g, b, obs_shape)
    y_burst = learner.targets(batch)
    assert y_burst.shape == (g, b)
    assert batch.terminated.sum() > 0 and (1 - batch.terminated).sum() > 0
    for i in range(g):
        # straightforward route: one target forward per batch, per-row max, mask by termination
        with torch.no_grad():
            q_next = target(batch.next_obs[i])
        expected = batch.reward[i] + 0.9 * (1 - batch.terminated[i]) * q_next.max(dim=1).values
        torch.testing.assert_close(y_burst[i], expected)
        # and it is the target network, not the online one, that produced it
        with torch.no_grad():
            q_online = online(batch.next_obs[i])
        wrong = batch.reward[i] + 0.9 * (1 - batch.terminated[i]) * q_online.max(dim=1).values
        assert not torch.allclose(y_burst[i], wrong)


def test_burst_update_equals_sequential_single_batch_updates() -> None:
    # A (G, B) burst must do what G separate (1, B) updates do with a frozen target.
    torch.manual_seed(1)
    net = MLP((4,), n_actions=3, hidden=(8,))
    a_on, a_tg = copy.deepcopy(net), copy.deepcopy(net)
    b_on, b_tg = copy.deepcopy(net), copy.deepcopy(net)
    with torch.no_grad():
        for p in list(a_tg.parameters()) + list(b_tg.parameters()):
            p.mul_(0.5)
    la = Learner(a_on, a_tg, torch.optim.SGD(a_on.parameters(), lr=0.05), gamma=0.9, loss="mse", max_grad_norm=None)
    lb = Learner(b_on, b_tg, torch.optim.SGD(b_on.parameters(), lr=0.05), gamma=0.9, loss="mse", max_grad_norm=None)
    batch = random_batch(3, 5, (4,), seed=2)
    la.update(batch)
    for i in range(3):
        lb.update(Batch(*(None if x is None else x[i : i + 1] for x in batch)))
    for pa, pb in zip(a_on.parameters(), b_on.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert la.updates == lb.updates == 3


# --- target sync ---------------------------------------------------------------------------------------


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("stat", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.stat


def pair(tau: float) -> tuple[Learner, WithBuffer, WithBuffer]:
    torch.manual_seed(0)
    online, target = WithBuffer(), WithBuffer()
    with torch.no_grad():
        online.stat.copy_(t([1.0, -2.0]))
        target.lin.weight.fill_(10.0)
        target.lin.bias.fill_(-10.0)
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.1), tau=tau)
    return learner, online, target


def test_hard_sync_copies_online_into_target_exactly() -> None:
    learner, online, target = pair(tau=1.0)
    learner.sync_target()
    for po, pt in zip(online.parameters(), target.parameters(), strict=True):
        assert torch.equal(po, pt)
    assert torch.equal(target.stat, t([1.0, -2.0]))
    # a copy, not an alias: later online changes do not leak into the target
    with torch.no_grad():
        online.lin.weight.add_(1.0)
    assert not torch.equal(online.lin.weight, target.lin.weight)
    assert all(not p.requires_grad for p in target.parameters())


def test_polyak_sync_moves_target_a_tau_fraction_towards_online() -> None:
    learner, online, target = pair(tau=0.1)
    old = [p.detach().clone() for p in target.parameters()]
    learner.sync_target()
    for po, pt, p_old in zip(online.parameters(), target.parameters(), old, strict=True):
        torch.testing.assert_close(pt, 0.1 * po.detach() + 0.9 * p_old, rtol=1e-6, atol=1e-6)
    # concretely, for the filled target weights: 0.1 * w_online + 0.9 * 10
    torch.testing.assert_close(target.lin.weight, 0.1 * online.lin.weight.detach() + 9.0)
    # two syncs compound: the old target keeps a 0.9^2 = 0.81 share, online gets 1 - 0.81 = 0.19
    learner.sync_target()
    torch.testing.assert_close(target.lin.bias, 0.19 * online.lin.bias.detach() + 0.81 * -10.0)


def test_polyak_sync_leaves_online_unchanged() -> None:
    learner, online, _ = pair(tau=0.1)
    before = [p.detach().clone() for p in online.parameters()]
    learner.sync_target()
    for p, b in zip(online.parameters(), before, strict=True):
        assert torch.equal(p, b)
