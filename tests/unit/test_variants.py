"""The DQN variants against hand-computed expectations, plus a CLI smoke run of every option.

n-step windows, the sum tree and prioritized replay (frequencies, IS weights, beta annealing), the dueling
head, C51's categorical projection, the tabular Q-learning step and the `latest` replay, NoisyNet layers,
and finally each option composed, built and trained for a few hundred steps through `dqnrun train`.
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
from dqnrun.algos.dqn.targets import categorical_projection
from dqnrun.networks import MLP, NoisyLinear, QTable
from dqnrun.replay import Batch, ReplayBuffer, SumTree
from tests.conftest import compose_train


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# --- n-step returns ------------------------------------------------------------------------------------
#
# Two vector envs, n = 3, gamma = 0.5. Observations name themselves (env 0: 0, 1, 2 then 10, 11, ...;
# env 1: 100, ... then 110, ...). NEXT_STEP autoreset: the step after an episode end is a reset step,
# passed with valid=False (its obs is the final obs, its next_obs the reset obs, reward 0).
#
#  t | env 0: obs a  r  next  term trunc valid     | env 1: obs a  r  next  term trunc valid
#  0 |         0  0  1    1                         |        100 1  1  101
#  1 |         1  1  2    2    T   (episode A: 2 steps < n)   101 2  2  102
#  2 |         2  3  0   10             F  (reset)  |        102 3  4  103
#  3 |        10  2  4   11                         |        103 0  8  104        T   (episode C: 4 steps)
#  4 |        11  3  8   12                         |        104 2  0  110             F  (reset)
#  5 |        12  0 16   13                         |        110 1 16  111
#  6 |        13  1 32   14                         |        111 0 32  112
#
# Rows, by hand (ret = sum_j 0.5^j r_j over the window; discount = 0.5^k for a window of k steps):
#  t=1 env 0 terminates, flushing its 2 pending steps with terminated=1:
#     obs 0:   a 0, ret 1 + 0.5*2 = 2,   next 2,   term 1, discount 0.25
#     obs 1:   a 1, ret 2,               next 2,   term 1, discount 0.5
#  t=2 env 1's window [100, 101, 102] is full:
#     obs 100: a 1, ret 1 + 0.5*2 + 0.25*4 = 3, next 103, term 0, discount 0.125
#  t=3 env 1 is truncated: flush [101, 102, 103], bootstrapping (term 0) from the final obs 104:
#     obs 101: a 2, ret 2 + 0.5*4 + 0.25*8 = 6, next 104, term 0, discount 0.125
#     obs 102: a 3, ret 4 + 0.5*8 = 8,          next 104, term 0, discount 0.25
#     obs 103: a 0, ret 8,                      next 104, term 0, discount 0.5
#  t=5 env 0's window [10, 11, 12] is full:
#     obs 10:  a 2, ret 4 + 0.5*8 + 0.25*16 = 12, next 13, term 0, discount 0.125
#  t=6 env 0's window [11, 12, 13] is full:
#     obs 11:  a 3, ret 8 + 0.5*16 + 0.25*32 = 24, next 14, term 0, discount 0.125
#  Still pending at the end (not stored): env 0's [12, 13], env 1's [110, 111].

N_STEP_SCRIPT = [
    # (obs, action, reward, next_obs, terminated, truncated, valid), one tuple per env
    ((0, 0, 1, 1, 0, 0, 1), (100, 1, 1, 101, 0, 0, 1)),
    ((1, 1, 2, 2, 1, 0, 1), (101, 2, 2, 102, 0, 0, 1)),
    ((2, 3, 0, 10, 0, 0, 0), (102, 3, 4, 103, 0, 0, 1)),
    ((10, 2, 4, 11, 0, 0, 1), (103, 0, 8, 104, 0, 1, 1)),
    ((11, 3, 8, 12, 0, 0, 1), (104, 2, 0, 110, 0, 0, 0)),
    ((12, 0, 16, 13, 0, 0, 1), (110, 1, 16, 111, 0, 0, 1)),
    ((13, 1, 32, 14, 0, 0, 1), (111, 0, 32, 112, 0, 0, 1)),
]
# (obs, action, n-step return, next_obs, terminated, discount)
N_STEP_ROWS_BY_STEP = [
    [],
    [(0, 0, 2.0, 2, 1.0, 0.25), (1, 1, 2.0, 2, 1.0, 0.5)],
    [(100, 1, 3.0, 103, 0.0, 0.125)],
    [(101, 2, 6.0, 104, 0.0, 0.125), (102, 3, 8.0, 104, 0.0, 0.25), (103, 0, 8.0, 104, 0.0, 0.5)],
    [],
    [(10, 2, 12.0, 13, 0.0, 0.125)],
    [(11, 3, 24.0, 14, 0.0, 0.125)],
]
# which episode each observation belongs to (the final obs of an episode belongs to it)
EPISODE_OF = {**dict.fromkeys([0, 1, 2], "A"), **dict.fromkeys(range(10, 15), "B"),
              **dict.fromkeys(range(100, 105), "C"), **dict.fromkeys(range(110, 113), "D")}


def n_step_buffer(**kw) -> ReplayBuffer:
    return ReplayBuffer(capacity=1000, batch_size=4, obs_shape=(1,), obs_dtype=torch.float32, n_step=3, gamma=0.5,
                        **kw)


def add_script_step(buf: ReplayBuffer, step: tuple) -> None:
    cols = list(zip(*step, strict=True))
    buf.add(
        obs=np.array(cols[0], dtype=np.float32)[:, None],
        action=np.array(cols[1], dtype=np.int64),
        reward=np.array(cols[2], dtype=np.float32),
        next_obs=np.array(cols[3], dtype=np.float32)[:, None],
        terminated=np.array(cols[4], dtype=bool),
        truncated=np.array(cols[5], dtype=bool),
        valid=np.array(cols[6], dtype=bool),
    )


def stored_rows(buf: ReplayBuffer, start: int = 0, stop: int | None = None) -> list[tuple]:
    stop = len(buf) if stop is None else stop
    return [
        (int(buf.obs[i, 0]), int(buf.action[i]), float(buf.reward[i]), int(buf.next_obs[i, 0]),
         float(buf.terminated[i]), float(buf.discount[i]))
        for i in range(start, stop)
    ]


def test_n_step_rows_match_the_hand_table_step_by_step() -> None:
    buf = n_step_buffer()
    for step, expected in zip(N_STEP_SCRIPT, N_STEP_ROWS_BY_STEP, strict=True):
        before = len(buf)
        add_script_step(buf, step)
        assert sorted(stored_rows(buf, before)) == sorted(expected), step
    assert len(buf) == 8 == sum(map(len, N_STEP_ROWS_BY_STEP))
    assert sorted(stored_rows(buf)) == sorted(row for rows in N_STEP_ROWS_BY_STEP for row in rows)


def test_n_step_windows_never_cross_an_episode_boundary() -> None:
    buf = n_step_buffer()
    for step in N_STEP_SCRIPT:
        add_script_step(buf, step)
    for obs, _, _, next_obs, _, discount in stored_rows(buf):
        assert EPISODE_OF[obs] == EPISODE_OF[next_obs], (obs, next_obs)
        # the window length k (from the discount) is the distance from obs to next_obs within the episode
        k = round(math.log(discount, 0.5))
        assert next_obs - obs == k, (obs, next_obs, discount)
        assert 1 <= k <= 3
    # only rows of the terminated episode A carry terminated=1; the truncated episode C bootstraps
    assert {EPISODE_OF[r[0]] for r in stored_rows(buf) if r[4] == 1.0} == {"A"}


def test_n_step_sample_returns_the_discount_and_learner_bootstraps_with_it() -> None:
    buf = n_step_buffer(seed=3)
    for step in N_STEP_SCRIPT:
        add_script_step(buf, step)
    batch = buf.sample(n_batches=2)
    assert batch.discount is not None and batch.discount.shape == (2, 4)
    by_obs = {r[0]: r for r in stored_rows(buf)}
    for o, d in zip(batch.obs[..., 0].flatten().tolist(), batch.discount.flatten().tolist(), strict=True):
        assert d == by_obs[int(o)][5]
    # Q(s) = [s, -s] for both nets: y = R + discount * (1 - terminated) * next_obs (for next_obs >= 0)
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(t([[1.0], [-1.0]]))
    learner = Learner(net, copy.deepcopy(net), torch.optim.SGD(net.parameters(), lr=0.0), gamma=0.99)
    y = learner.targets(batch)
    expected = [[r[2] + r[5] * (1 - r[4]) * r[3] for r in (by_obs[int(o)] for o in row)]
                for row in batch.obs[..., 0].tolist()]
    torch.testing.assert_close(y, t(expected))


def test_one_step_buffer_has_no_discount_column_in_its_batches() -> None:
    buf = ReplayBuffer(capacity=10, batch_size=2, obs_shape=(1,), obs_dtype=torch.float32, n_step=1, gamma=0.5)
    add_script_step(buf, N_STEP_SCRIPT[0])
    assert buf.sample().discount is None


# --- sum tree and prioritized replay --------------------------------------------------------------------


def test_sum_tree_total_and_prefix_search_on_a_hand_example() -> None:
    tree = SumTree(4)
    tree.update(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    assert tree.total == 10.0
    # prefix sums: [0, 1) -> 0, [1, 3) -> 1, [3, 6) -> 2, [6, 10) -> 3
    masses = np.array([0.0, 0.99, 1.0, 2.5, 3.0, 5.99, 6.0, 9.99])
    assert tree.find(masses).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    tree.update(np.array([1]), np.array([0.0]))  # a zero leaf is skipped by every mass
    assert tree.total == 8.0
    assert tree.find(np.array([0.5, 1.0, 3.9, 4.0, 7.99])).tolist() == [0, 2, 2, 3, 3]


def test_sum_tree_with_non_power_of_two_capacity_and_repeated_updates() -> None:
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 1.0, 1.0, 1.0, 2.0]))
    assert tree.total == 6.0
    assert tree.find(np.array([0.0, 3.5, 4.0, 5.999])).tolist() == [0, 3, 4, 4]
    tree.update(np.array([2, 2]), np.array([5.0, 0.5]))  # the last value for a repeated index wins
    assert tree.leaf_values(5).tolist() == [1.0, 1.0, 0.5, 1.0, 2.0]
    assert tree.total == 5.5


PRIORITIES = np.arange(1.0, 9.0)  # rows 0..7 get priorities 1..8; total 36


def per_buffer(alpha: float = 1.0, beta: float = 0.4, beta_steps: int = 1000, batch_size: int = 32,
               seed: int = 0, priorities: np.ndarray | None = PRIORITIES) -> ReplayBuffer:
    """8 rows whose obs is the row index, with priorities set exactly (priority_eps=0)."""
    buf = ReplayBuffer(capacity=8, batch_size=batch_size, obs_shape=(1,), obs_dtype=torch.float32, seed=seed,
                       prioritized=True, alpha=alpha, beta=beta, beta_steps=beta_steps, priority_eps=0.0)
    ids = np.arange(8)
    buf.add(ids[:, None].astype(np.float32), ids % 2, np.zeros(8, np.float32), ids[:, None].astype(np.float32),
            np.zeros(8, bool), np.zeros(8, bool))
    if priorities is not None:
        buf.update_priorities(ids, priorities)
    return buf


def test_prioritized_sampling_frequencies_are_proportional_to_priority() -> None:
    buf = per_buffer(batch_size=32)
    batch = buf.sample(n_batches=625)  # 20,000 rows
    rows = batch.indices.ravel()
    assert np.array_equal(batch.obs[..., 0].numpy().ravel(), rows)  # indices name the rows returned
    n = rows.size
    freq = np.bincount(rows, minlength=8) / n
    p = PRIORITIES / PRIORITIES.sum()
    # Stratified sampling is unbiased with no more variance than i.i.d. draws; 5 binomial standard errors
    # (at most 0.015 here) is a bound a correct sampler essentially never exceeds.
    tol = 5 * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) < tol), (freq, p, tol)


def test_is_weights_with_beta_one_are_normalised_inverse_probabilities() -> None:
    buf = per_buffer(beta=0.4, beta_steps=1000)
    batch = buf.sample(n_batches=4, step=1000)  # step >= beta_steps: beta = 1
    # N P(i) = 8 p_i / 36; (N P(i))^-1 / max_j (N P(j))^-1 = p_min / p_i = 1 / p_i (p_min = 1)
    expected = 1.0 / PRIORITIES[batch.indices]
    np.testing.assert_allclose(batch.weights.numpy(), expected, rtol=1e-6)
    assert batch.weights.dtype == torch.float32 and batch.weights.shape == (4, 32)
    assert batch.weights.max() <= 1.0


def test_is_weights_use_the_annealed_beta() -> None:
    buf = per_buffer(beta=0.4, beta_steps=1000)
    batch = buf.sample(step=0)  # beta = 0.4: w_i = (1 / p_i)^0.4
    np.testing.assert_allclose(batch.weights.numpy(), (1.0 / PRIORITIES[batch.indices]) ** 0.4, rtol=1e-6)
    batch = buf.sample(step=500)  # beta = 0.7
    np.testing.assert_allclose(batch.weights.numpy(), (1.0 / PRIORITIES[batch.indices]) ** 0.7, rtol=1e-6)


def test_is_weights_normalise_by_the_least_likely_row_of_the_whole_buffer() -> None:
    # Row 0 has priority 1e-3 and is (almost) never drawn, yet it sets max_j (N P(j))^-beta:
    # w_i = (p_min / p_i)^beta, so every drawn row weighs well under 1 (not 1 for the batch's rarest row).
    prios = np.array([1e-3, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    buf = per_buffer(priorities=prios)
    batch = buf.sample(n_batches=2, step=500)  # beta = 0.7
    assert 0 not in batch.indices
    np.testing.assert_allclose(batch.weights.numpy(), (1e-3 / prios[batch.indices]) ** 0.7, rtol=1e-5)
    assert batch.weights.max() < 0.02


def test_beta_anneals_linearly_to_one_and_stays_there() -> None:
    buf = per_buffer(beta=0.4, beta_steps=1000, priorities=None)
    assert [buf.beta(s) for s in (0, 500, 1000, 2000)] == pytest.approx([0.4, 0.7, 1.0, 1.0])


def test_alpha_flattens_priorities_into_probabilities() -> None:
    # alpha = 0.5: stored priority = |td|^0.5, so tds [1, 4, 9, 16, ...] give leaves [1, 2, 3, 4, ...]
    buf = per_buffer(alpha=0.5, priorities=PRIORITIES**2)
    np.testing.assert_allclose(buf.tree.leaf_values(8), PRIORITIES)
    batch = buf.sample(step=10**6)
    np.testing.assert_allclose(batch.weights.numpy(), 1.0 / PRIORITIES[batch.indices], rtol=1e-6)


def test_update_priorities_changes_later_sampling() -> None:
    buf = per_buffer(priorities=np.ones(8))
    assert 3 in buf.sample(n_batches=50).indices
    buf.update_priorities(np.array([3]), np.array([1e-9]))
    rows = buf.sample(n_batches=625).indices  # P(row 3) ~ 1.4e-10 per draw
    assert 3 not in rows
    assert set(np.unique(rows)) == {0, 1, 2, 4, 5, 6, 7}
    buf.update_priorities(np.array([3]), np.array([93.0]))  # now 93 / 100 of the mass
    freq3 = np.mean(buf.sample(n_batches=100).indices == 3)
    assert abs(freq3 - 0.93) < 5 * math.sqrt(0.93 * 0.07 / 3200)


def test_new_rows_enter_with_the_highest_priority_seen() -> None:
    buf = ReplayBuffer(capacity=8, batch_size=2, obs_shape=(1,), obs_dtype=torch.float32, prioritized=True,
                       alpha=0.5, priority_eps=0.0)
    one = (np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros((1, 1), np.float32),
           np.zeros(1, bool), np.zeros(1, bool))
    buf.add(*one)
    assert buf.tree.leaf_values(1).tolist() == [1.0]  # max priority starts at 1
    buf.update_priorities(np.array([0]), np.array([16.0]))
    assert buf.tree.leaf_values(1).tolist() == [4.0]  # 16^0.5
    buf.add(*one)
    assert buf.tree.leaf_values(2).tolist() == [4.0, 4.0]


def test_learner_scales_each_sample_loss_by_its_is_weight_and_reports_td_errors() -> None:
    # The hand-set linear net of test_td_target: errors q - y = [1.5 - 2.5, -1 - 0] = [-1, -1].
    # With weights [1, 0] only row 0 moves the weights: MSE mean gives dL/dq0 = 2 * (-1) * 1 / 2 = -1,
    # so W[0] += 0.1 * s0 = [1.1, 2], b[0] += 0.1; row 1 of W and b stay put.
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        online.weight.copy_(t([[1.0, 2.0], [0.0, -1.0]]))
        online.bias.copy_(t([0.5, 0.0]))
        target.weight.copy_(t([[0.0, 1.0], [1.0, 0.0]]))
        target.bias.copy_(t([0.0, 1.0]))
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.1), gamma=0.5, loss="mse",
                      max_grad_norm=None)
    batch = Batch(obs=t([[[1.0, 0.0], [0.0, 1.0]]]), action=torch.tensor([[0, 1]]), reward=t([[1.0, 0.0]]),
                  next_obs=t([[[2.0, 1.0], [1.0, 3.0]]]), terminated=t([[0.0, 1.0]]), weights=t([[1.0, 0.0]]),
                  indices=np.array([[5, 2]]))
    (prio,) = learner.update(batch)
    assert prio[0].tolist() == [5, 2]
    np.testing.assert_allclose(prio[1], [1.0, 1.0])
    torch.testing.assert_close(online.weight.detach(), t([[1.1, 2.0], [0.0, -1.0]]))
    torch.testing.assert_close(online.bias.detach(), t([0.6, 0.0]))
    assert learner.read_metrics()["td_loss"] == pytest.approx(0.5)  # mean(1 * 1, 0 * 1)


def c51_net(action_logits: list[list[float]]) -> MLP:
    """A C51 net whose return distributions ignore the observation: logits (A, 5) on the support 0..4."""
    net = MLP((1,), n_actions=len(action_logits), hidden=(), head="c51", atoms=5, v_min=0.0, v_max=4.0)
    (layer,) = net.net
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(t(action_logits).flatten())
    return net


@pytest.mark.parametrize("double", [False, True])
def test_c51_learner_bootstraps_from_the_greedy_action_of_the_right_network(double: bool) -> None:
    # Target net: Z(s', 0) = delta at 0, Z(s', 1) = delta at 2 -> its greedy action is 1.
    # Online net: Z(., 0) has P(z_k) = (k + 1) / 15, mean 40/15 = 2.67 > Z(., 1) uniform, mean 2 -> greedy 0.
    # r = 1, gamma = 1: DQN bootstraps from Z_target(s', 1) -> target delta at 3;
    #                   Double from Z_target(s', a* = 0) -> target delta at 1.
    # The loss is the cross-entropy to the online Z(s, 0): -log P(z_3) = -log(4/15), or -log(2/15).
    big = -1e4
    online = c51_net([[math.log(k) for k in range(1, 6)], [0.0] * 5])
    target = c51_net([[0.0, big, big, big, big], [big, big, 0.0, big, big]])
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.0), gamma=1.0, double=double,
                      distributional=True)
    batch = Batch(obs=t([[[0.0]]]), action=torch.tensor([[0]]), reward=t([[1.0]]), next_obs=t([[[0.0]]]),
                  terminated=t([[0.0]]), weights=t([[1.0]]), indices=np.array([[0]]))
    ((rows, td_abs),) = learner.update(batch)
    expected = -math.log((2 if double else 4) / 15)
    assert learner.read_metrics()["td_loss"] == pytest.approx(expected, rel=1e-5)
    assert rows.tolist() == [0] and td_abs.tolist() == [pytest.approx(expected, rel=1e-5)]


def test_prioritized_weights_take_the_same_steps_on_the_fast_mlp_path_as_with_autograd() -> None:
    # Regression: IS weights on a plain MLP once went through autograd while the lean fused-Adam step read the
    # hand-written backward's stale gradient buffers. Both paths must now take identical steps.
    torch.manual_seed(0)
    net = MLP((4,), n_actions=3, hidden=(8, 8))
    gen = torch.Generator().manual_seed(5)
    g, b = 3, 6
    batch = Batch(obs=torch.randn(g, b, 4, generator=gen), action=torch.randint(0, 3, (g, b), generator=gen),
                  reward=3 * torch.randn(g, b, generator=gen), next_obs=torch.randn(g, b, 4, generator=gen),
                  terminated=(torch.rand(g, b, generator=gen) < 0.3).float(),
                  weights=0.1 + 0.9 * torch.rand(g, b, generator=gen), indices=np.arange(g * b).reshape(g, b))
    learners, priorities = [], []
    for fast in (True, False):
        online, target = copy.deepcopy(net), copy.deepcopy(net)
        with torch.no_grad():
            for p in target.parameters():
                p.mul_(0.5)
        opt = torch.optim.Adam(online.parameters(), lr=1e-2, fused=True)
        learner = Learner(online, target, opt, gamma=0.9, loss="huber", max_grad_norm=10.0, fast_mlp=fast)
        assert (learner.manual is not None) == fast
        priorities.append(learner.update(batch))
        learners.append(learner)
    fast_l, slow_l = learners
    for pf, ps in zip(fast_l.online.parameters(), slow_l.online.parameters(), strict=True):
        torch.testing.assert_close(pf, ps, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(next(fast_l.online.parameters()), next(net.parameters()))
    for (rows_f, td_f), (rows_s, td_s) in zip(*priorities, strict=True):
        assert np.array_equal(rows_f, rows_s)
        np.testing.assert_allclose(td_f, td_s, rtol=1e-5, atol=1e-6)
    assert fast_l.read_metrics()["td_loss"] == pytest.approx(slow_l.read_metrics()["td_loss"], rel=1e-5)


# --- dueling head ---------------------------------------------------------------------------------------


def set_linear(layer: nn.Module, w: list, b: list) -> None:
    with torch.no_grad():
        layer.weight.copy_(t(w))
        layer.bias.copy_(t(b))


def hand_dueling() -> MLP:
    # body: Linear(2, 2) = identity, ReLU; V: [1, 1] h + 0.5; A: [[1, 0], [0, 1], [1, 1]] h + [0, 1, 2]
    net = MLP((2,), n_actions=3, hidden=(2,), dueling=True)
    set_linear(net.body[0], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_linear(net.value, [[1.0, 1.0]], [0.5])
    set_linear(net.advantage, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 1.0, 2.0])
    return net


def test_dueling_q_is_value_plus_advantage_minus_mean_advantage_by_hand() -> None:
    # s = [1, 2]:  h = [1, 2]; V = 3.5; A = [1, 3, 5], mean 3 -> Q = [1.5, 3.5, 5.5]
    # s = [-1, 3]: h = [0, 3]; V = 3.5; A = [0, 4, 5], mean 3 -> Q = [0.5, 4.5, 5.5]
    q = hand_dueling()(t([[1.0, 2.0], [-1.0, 3.0]]))
    assert q.tolist() == [[1.5, 3.5, 5.5], [0.5, 4.5, 5.5]]


def test_dueling_q_is_invariant_to_a_constant_shift_of_the_advantage_stream() -> None:
    net = hand_dueling()
    obs = t([[1.0, 2.0], [-1.0, 3.0]])
    before = net(obs)
    with torch.no_grad():
        net.advantage.bias.add_(7.25)
    assert torch.equal(net(obs), before)
    # the same on a random net with a wide body
    torch.manual_seed(0)
    net = MLP((4,), n_actions=5, hidden=(16, 16), dueling=True)
    obs = torch.randn(32, 4)
    before = net(obs)
    with torch.no_grad():
        net.advantage.bias.add_(-3.0)
    torch.testing.assert_close(net(obs), before, rtol=0, atol=1e-5)
    # while a shift of the value stream moves every Q-value by exactly that shift
    with torch.no_grad():
        net.value.bias.add_(2.0)
    torch.testing.assert_close(net(obs), before + 2.0, rtol=0, atol=1e-5)


def test_dueling_c51_logits_combine_per_atom_and_ignore_an_advantage_shift() -> None:
    torch.manual_seed(1)
    net = MLP((3,), n_actions=2, hidden=(8,), dueling=True, head="c51", atoms=5, v_min=0.0, v_max=4.0)
    obs = torch.randn(6, 3)
    h = net.body(obs)
    v, a = net.value(h).view(-1, 1, 5), net.advantage(h).view(-1, 2, 5)
    torch.testing.assert_close(net.dist_logits(obs), v + a - a.mean(1, keepdim=True))
    before = net(obs)
    with torch.no_grad():
        net.advantage.bias.add_(1.5)
    torch.testing.assert_close(net(obs), before, rtol=0, atol=1e-5)


# --- C51 projection ---------------------------------------------------------------------------------------

SUPPORT5 = t([0.0, 1.0, 2.0, 3.0, 4.0])
P5 = t([0.1, 0.2, 0.3, 0.3, 0.1])


def project(probs, reward, terminated, gamma, support=SUPPORT5) -> torch.Tensor:
    probs = t(probs) if not isinstance(probs, torch.Tensor) else probs
    probs = probs.unsqueeze(0) if probs.dim() == 1 else probs
    b = probs.shape[0]
    reward = t(reward).expand(b) if not isinstance(reward, torch.Tensor) else reward
    terminated = t(terminated).expand(b) if not isinstance(terminated, torch.Tensor) else terminated
    return categorical_projection(probs, reward, terminated, gamma, support)


def test_c51_non_integer_shift_splits_mass_between_neighbours() -> None:
    # r = 0.25, gamma = 1: Tz = [0.25, 1.25, 2.25, 3.25, 4.25 -> clipped to 4]
    # atom 0 (0.1): 0.075 -> 0, 0.025 -> 1;   atom 1 (0.2): 0.15 -> 1, 0.05 -> 2
    # atom 2 (0.3): 0.225 -> 2, 0.075 -> 3;   atom 3 (0.3): 0.225 -> 3, 0.075 -> 4;   atom 4 (0.1): 0.1 -> 4
    m = project(P5, 0.25, 0.0, 1.0)
    torch.testing.assert_close(m, t([[0.075, 0.175, 0.275, 0.3, 0.175]]), rtol=0, atol=1e-7)


def test_c51_discount_contracts_the_distribution_before_projecting() -> None:
    # r = 1, gamma = 0.5: Tz = [1, 1.5, 2, 2.5, 3]
    # atom 0 (0.1) -> 1; atom 1 (0.2): 0.1 -> 1, 0.1 -> 2; atom 2 (0.3) -> 2; atom 3 (0.3): 0.15 -> 2, 0.15 -> 3;
    # atom 4 (0.1) -> 3
    m = project(P5, 1.0, 0.0, 0.5)
    torch.testing.assert_close(m, t([[0.0, 0.2, 0.55, 0.25, 0.0]]), rtol=0, atol=1e-7)


def test_c51_per_sample_discount_tensor_matches_scalar_gammas() -> None:
    # n-step batches pass gamma^k per row: rows 0 and 1 are the two hand cases above
    m = project(torch.stack([P5, P5]), t([0.25, 1.0]), t([0.0, 0.0]), t([1.0, 0.5]))
    torch.testing.assert_close(m, t([[0.075, 0.175, 0.275, 0.3, 0.175], [0.0, 0.2, 0.55, 0.25, 0.0]]),
                               rtol=0, atol=1e-7)


def test_c51_clips_at_v_min_and_v_max() -> None:
    close = dict(rtol=0, atol=1e-7)
    torch.testing.assert_close(project(P5, 100.0, 0.0, 0.9), t([[0.0, 0.0, 0.0, 0.0, 1.0]]), **close)
    torch.testing.assert_close(project(P5, -100.0, 0.0, 0.9), t([[1.0, 0.0, 0.0, 0.0, 0.0]]), **close)
    # partial clipping: r = 2, gamma = 1 -> Tz = [2, 3, 4, 5, 6] -> atoms 2..4 pile onto v_max
    torch.testing.assert_close(project(P5, 2.0, 0.0, 1.0), t([[0.0, 0.0, 0.1, 0.2, 0.7]]), **close)
    # r = -3, gamma = 1 -> Tz = [-3, -2, -1, 0, 1] -> atoms 0..3 pile onto v_min
    torch.testing.assert_close(project(P5, -3.0, 0.0, 1.0), t([[0.9, 0.1, 0.0, 0.0, 0.0]]), **close)


@pytest.mark.parametrize(("reward", "expected"), [
    (2.0, [0.0, 0.0, 1.0, 0.0, 0.0]),
    (2.5, [0.0, 0.0, 0.5, 0.5, 0.0]),
    (0.75, [0.25, 0.75, 0.0, 0.0, 0.0]),
    (7.0, [0.0, 0.0, 0.0, 0.0, 1.0]),
    (-1.0, [1.0, 0.0, 0.0, 0.0, 0.0]),
])
def test_c51_terminal_transition_puts_all_mass_at_the_clipped_reward(reward: float, expected: list) -> None:
    for probs in (P5, t([1.0, 0.0, 0.0, 0.0, 0.0]), t([0.0, 0.0, 0.0, 0.0, 1.0])):
        m = project(probs, reward, 1.0, 0.99)
        torch.testing.assert_close(m, t([expected]), rtol=0, atol=1e-7)


def test_c51_exact_landing_keeps_the_whole_mass_on_that_atom() -> None:
    # r = 1, gamma = 1: Tz = [1, 2, 3, 4, 5 -> 4]: every atom lands exactly on a support point
    m = project(P5, 1.0, 0.0, 1.0)
    assert m[0, 0] == 0.0  # no mass leaks below the landing points
    assert torch.equal(m[0, 1:4], P5[:3])  # each atom's whole mass, bit for bit
    torch.testing.assert_close(m[0, 4], P5[3] + P5[4], rtol=0, atol=1e-7)
    # r = 0, gamma = 1: the identity, bit for bit
    assert torch.equal(project(P5, 0.0, 0.0, 1.0), P5[None])


def test_c51_exact_landing_on_the_default_51_atom_support_leaks_no_mass() -> None:
    # support [-10, 10], dz = 0.4; r = 0.8, gamma = 1 shifts every atom up by two atoms (float rounding in
    # (Tz - v_min) / dz may move a negligible share to a neighbour, never more)
    support = torch.linspace(-10.0, 10.0, 51)
    probs = torch.softmax(torch.randn(1, 51, generator=torch.Generator().manual_seed(0)), -1)
    m = project(probs, 0.8, 0.0, 1.0, support)
    expected = torch.zeros(1, 51)
    expected[0, 2:] = probs[0, :49]
    expected[0, 50] += probs[0, 49:].sum()
    torch.testing.assert_close(m, expected, rtol=0, atol=1e-5)


def test_c51_projection_is_a_distribution_on_random_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    support = torch.linspace(-10.0, 10.0, 51)
    probs = torch.softmax(3 * torch.randn(256, 51, generator=gen), -1)
    reward = 30 * torch.rand(256, generator=gen) - 15
    terminated = (torch.rand(256, generator=gen) < 0.3).float()
    gamma = torch.rand(256, generator=gen)
    m = project(probs, reward, terminated, gamma, support)
    assert (m >= 0).all()
    torch.testing.assert_close(m.sum(-1), torch.ones(256), rtol=0, atol=1e-5)
    # the projection preserves the mean wherever nothing is clipped: E[m] = r + gamma (1 - d) E[Z]
    tz = reward[:, None] + gamma[:, None] * (1 - terminated[:, None]) * support
    inside = ((tz >= -10) & (tz <= 10)).all(1)
    assert inside.sum() > 10
    mean_m, mean_tz = (m * support).sum(-1), (probs * tz).sum(-1)
    torch.testing.assert_close(mean_m[inside], mean_tz[inside], rtol=0, atol=1e-4)


# --- tabular Q-learning and the `latest` replay ----------------------------------------------------------
#
# 4 states x 3 actions; gamma = 0.5, alpha = 0.25:
#   s=1, a=2, r=1,  s'=2, not terminal: y = 1 + 0.5 * max(4, 8, -2) = 5; Q(1,2) = 0.5 + 0.25 * (5 - 0.5) = 1.625
#   s=2, a=0, r=-1, terminal:           y = -1;                     Q(2,0) = 4 + 0.25 * (-1 - 4) = 2.75

TABLE = [[0.0, 1.0, 2.0], [3.0, -1.0, 0.5], [4.0, 8.0, -2.0], [0.0, 0.0, 0.0]]


def tabular_learner() -> Learner:
    online = QTable((), n_actions=3, n_obs_categories=4)
    with torch.no_grad():
        online.table.copy_(t(TABLE))
    target = QTable((), n_actions=3, n_obs_categories=4, init=-50.0)  # stale: the sync must overwrite it
    learner = Learner(online, target, torch.optim.SGD(online.parameters(), lr=0.25), gamma=0.5, loss="half_sse",
                      max_grad_norm=None, fast_mlp=False)
    learner.sync_target()  # the target is the current table, as with target_update_interval=1
    return learner


def one_transition(s: int, a: int, r: float, s2: int, term: float) -> Batch:
    return Batch(obs=torch.tensor([[s]]), action=torch.tensor([[a]]), reward=t([[r]]), next_obs=torch.tensor([[s2]]),
                 terminated=t([[term]]))


@pytest.mark.parametrize(("transition", "cell", "value"), [
    ((1, 2, 1.0, 2, 0.0), (1, 2), 1.625),
    ((2, 0, -1.0, 2, 1.0), (2, 0), 2.75),
    ((3, 1, 0.0, 3, 0.0), (3, 1), 0.0),  # a self-loop with an all-zero row stays at 0
])
def test_tabular_learner_step_is_the_textbook_q_learning_update(transition: tuple, cell: tuple,
                                                                 value: float) -> None:
    learner = tabular_learner()
    learner.update(one_transition(*transition))
    expected = [row[:] for row in TABLE]
    expected[cell[0]][cell[1]] = value
    assert learner.online.table.tolist() == expected  # only that one entry changed, to the exact value
    assert learner.target.table.tolist() == TABLE


def test_tabular_batch_of_distinct_transitions_gives_each_entry_the_full_alpha_step() -> None:
    # half_sse is summed over the batch, not averaged: two transitions in one batch (two vector envs) each
    # get the textbook step, as if applied one after the other (they touch different entries).
    learner = tabular_learner()
    batch = Batch(obs=torch.tensor([[1, 2]]), action=torch.tensor([[2, 0]]), reward=t([[1.0, -1.0]]),
                  next_obs=torch.tensor([[2, 2]]), terminated=t([[0.0, 1.0]]))
    learner.update(batch)
    expected = [row[:] for row in TABLE]
    expected[1][2], expected[2][0] = 1.625, 2.75
    assert learner.online.table.tolist() == expected


def test_frozenlake_preset_builds_the_textbook_tabular_learner() -> None:
    cfg = compose_train(["env=frozenlake", "optimizer.lr=0.25", "learner.gamma=0.5", "device=cpu"])
    learner = builders.build_algorithm(cfg, builders.build_env_spec(cfg.env)).learner
    assert isinstance(learner.online, QTable) and learner.online.table.shape == (16, 4)
    with torch.no_grad():
        learner.online.table.copy_(torch.arange(64, dtype=torch.float32).view(16, 4) / 8)
    learner.sync_target()
    before = learner.online.table.detach().clone()
    # s=5, a=1, r=1, s'=6: y = 1 + 0.5 * max Q(6, .) = 1 + 0.5 * 27/8; Q(5,1) = 21/8 + 0.25 * (y - 21/8)
    learner.update(one_transition(5, 1, 1.0, 6, 0.0))
    expected = before.clone()
    expected[5, 1] = 21 / 8 + 0.25 * (1 + 0.5 * 27 / 8 - 21 / 8)
    torch.testing.assert_close(learner.online.table.detach(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("env", ["frozenlake", "taxi", "cliffwalking"])
def test_tabular_presets_update_once_per_vector_step_on_the_latest_rows(env: str) -> None:
    # With `latest` replay a burst sees only the last vector step's rows: train_freq above num_envs would
    # silently skip transitions, below it would repeat them. Both stay coupled in every tabular preset.
    cfg = compose_train([f"env={env}"])
    assert cfg.replay.latest and cfg.network._target_ == "dqnrun.networks.QTable"
    assert cfg.algo.train_freq == cfg.env.num_envs and cfg.algo.gradient_steps == 1
    assert cfg.replay.capacity >= cfg.env.num_envs
    assert cfg.algo.target_update_interval <= cfg.env.num_envs  # the target is the current table
    assert cfg.learner.loss == "half_sse" and cfg.optimizer._target_ == "torch.optim.SGD"


def latest_buffer(capacity: int = 5) -> ReplayBuffer:
    return ReplayBuffer(capacity=capacity, batch_size=1, obs_shape=(), obs_dtype=torch.int64, latest=True)


def add_states(buf: ReplayBuffer, states: list[int], valid: list[bool] | None = None) -> None:
    s = np.array(states, dtype=np.int64)
    buf.add(s, s % 3, s.astype(np.float32), s + 100, np.zeros(len(s), bool), np.zeros(len(s), bool),
            None if valid is None else np.array(valid))


def test_latest_replay_returns_exactly_the_rows_of_the_last_add() -> None:
    buf = latest_buffer(capacity=5)
    add_states(buf, [1, 2])
    add_states(buf, [3, 4])
    b = buf.sample()
    assert b.obs.tolist() == [3, 4] and b.action.tolist() == [0, 1]
    assert b.reward.tolist() == [3.0, 4.0] and b.next_obs.tolist() == [103, 104]
    assert b.weights is None and b.indices is None and b.discount is None
    assert buf.sample(n_batches=3).obs.tolist() == [[3, 4]] * 3
    add_states(buf, [5, 6, 7])  # wraps the ring: slots 4, 0, 1
    assert buf.sample().obs.tolist() == [5, 6, 7]
    add_states(buf, [8, 9, 10], valid=[True, False, True])  # the autoreset row is dropped
    assert buf.sample(n_batches=2).obs.tolist() == [[8, 10]] * 2


def test_latest_replay_is_empty_after_an_all_invalid_add_and_the_learner_skips_it() -> None:
    buf = latest_buffer()
    add_states(buf, [1, 2])
    add_states(buf, [3, 4], valid=[False, False])
    assert buf.sample().obs.shape == (0,)
    batch = buf.sample(n_batches=2)
    assert batch.obs.shape == (2, 0) and batch.action.shape == (2, 0)
    learner = tabular_learner()
    assert learner.update(batch) == []
    assert learner.updates == 0 and learner.online.table.tolist() == TABLE


# --- NoisyNet --------------------------------------------------------------------------------------------


def test_noisy_linear_train_output_follows_its_noise_and_changes_after_reset() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(3, 2)
    x = torch.randn(4, 3)
    y1 = layer(x)
    assert torch.equal(layer(x), y1)  # the same noise until it is resampled
    w = layer.weight_mu + layer.weight_sigma * torch.outer(layer.eps_out, layer.eps_in)
    b = layer.bias_mu + layer.bias_sigma * layer.eps_out
    torch.testing.assert_close(y1, x @ w.T + b)
    layer.reset_noise()
    assert not torch.allclose(layer(x), y1)


def test_noisy_linear_noise_is_factorised_signed_square_roots_of_gaussians() -> None:
    layer = NoisyLinear(5, 3)
    torch.manual_seed(123)
    g_in, g_out = torch.randn(5), torch.randn(3)
    torch.manual_seed(123)
    layer.reset_noise()
    torch.testing.assert_close(layer.eps_in, g_in.sign() * g_in.abs().sqrt())
    torch.testing.assert_close(layer.eps_out, g_out.sign() * g_out.abs().sqrt())


def test_noisy_linear_eval_mode_uses_only_the_means() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(3, 2).eval()
    x = torch.randn(4, 3)
    y = layer(x)
    assert torch.equal(y, nn.functional.linear(x, layer.weight_mu, layer.bias_mu))
    layer.reset_noise()
    assert torch.equal(layer(x), y)
    # a whole noisy MLP in eval mode is the plain MLP of its mean weights
    net = MLP((3,), n_actions=2, hidden=(4,), noisy=True, noisy_input=True).eval()
    plain = MLP((3,), n_actions=2, hidden=(4,))
    for src, dst in zip([m for m in net.net if isinstance(m, NoisyLinear)], plain.linears, strict=True):
        set_linear(dst, src.weight_mu.tolist(), src.bias_mu.tolist())
    torch.testing.assert_close(net(x), plain(x))


def test_noisy_mlp_keeps_a_plain_input_layer_unless_asked() -> None:
    kinds = lambda net: [type(m).__name__ for m in net.net if isinstance(m, nn.Linear | NoisyLinear)]  # noqa: E731
    assert kinds(MLP((3,), 2, hidden=(4, 4), noisy=True)) == ["Linear", "NoisyLinear", "NoisyLinear"]
    assert kinds(MLP((3,), 2, hidden=(4, 4), noisy=True, noisy_input=True)) == ["NoisyLinear"] * 3


def test_learner_resamples_noise_at_every_gradient_step() -> None:
    torch.manual_seed(0)
    online = MLP((4,), n_actions=3, hidden=(8,), noisy=True, dueling=True)
    target = copy.deepcopy(online)
    learner = Learner(online, target, torch.optim.Adam(online.parameters(), lr=1e-3), gamma=0.9)
    assert learner.noisy and learner.manual is None
    calls = {"online": 0, "target": 0}
    for name, net in (("online", online), ("target", target)):
        def counting(net=net, name=name) -> None:
            calls[name] += 1
            MLP.reset_noise(net)
        net.reset_noise = counting

    def eps(net: nn.Module) -> list[torch.Tensor]:
        return [b.clone() for name, b in net.named_buffers() if name.endswith(("eps_in", "eps_out"))]

    gen = torch.Generator().manual_seed(1)
    batch = Batch(obs=torch.randn(3, 5, 4, generator=gen), action=torch.randint(0, 3, (3, 5), generator=gen),
                  reward=torch.randn(3, 5, generator=gen), next_obs=torch.randn(3, 5, 4, generator=gen),
                  terminated=torch.zeros(3, 5))
    before_online, before_target = eps(online), eps(target)
    learner.update(batch)  # a burst of G = 3 gradient steps
    assert calls == {"online": 3, "target": 3}
    after_online = eps(online)
    assert all(not torch.equal(a, b) for a, b in zip(before_online, after_online, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(before_target, eps(target), strict=True))
    learner.update(Batch(*(None if x is None else x[:1] for x in batch)))
    assert calls == {"online": 4, "target": 4}
    assert all(not torch.equal(a, b) for a, b in zip(after_online, eps(online), strict=True))
