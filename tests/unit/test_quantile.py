"""QR-DQN and IQN (``learner.distributional=qr|iqn``) against hand-computed expectations.

The quantile Huber loss on a tiny example, QR's target quantiles and per-sample loss on a hand-set network (with
n-step discounts, Double DQN and prioritized weights), IQN's cosine embedding and shapes on every torso, acting that
is deterministic while the learner samples its fractions from its own checkpointed stream, exact resume, and the
fast path stepping aside for both heads. Munchausen's target is in test_munchausen.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dqnrun import builders
from dqnrun.algos.dqn.learner import Learner
from dqnrun.algos.dqn.quantile import quantile_huber_loss, quantile_target
from dqnrun.config.rules import validate_train_config
from dqnrun.errors import UsageError
from dqnrun.fastpath import supports
from dqnrun.networks import MLP, CosineEmbedding, QNetwork, fixed_taus
from dqnrun.replay import Batch
from tests.conftest import compose_train


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# --- the quantile Huber loss ------------------------------------------------------------------------------
#
# Two predicted quantiles z = [0, 2] at taus [0.25, 0.75]; two target samples [1, 4]; kappa = 1.
# u_ij = target_j - z_i; rho_ij = |tau_i - 1{u_ij < 0}| * L(u_ij), L(u) = u^2 / 2 (|u| <= 1), |u| - 1/2 beyond.
#   i = 0 (z 0, tau 0.25): u = [1, 4]  -> weights [0.25, 0.25], L = [0.5, 3.5] -> rho [0.125, 0.875], mean 0.5
#   i = 1 (z 2, tau 0.75): u = [-1, 2] -> weights [0.25, 0.75], L = [0.5, 1.5] -> rho [0.125, 1.125], mean 0.625
# loss = sum_i mean_j rho_ij = 1.125
# dloss/dz_i = -mean_j w_ij clip(u_ij, -1, 1): i = 0: -(0.25 + 0.25) / 2 = -0.25; i = 1: -(-0.25 + 0.75) / 2 = -0.25

Z, TAUS, TARGET = [0.0, 2.0], [0.25, 0.75], [1.0, 4.0]


def test_quantile_huber_loss_on_a_hand_example() -> None:
    z = t([Z]).requires_grad_(True)
    loss = quantile_huber_loss(z, t([TARGET]), t(TAUS))
    assert loss.shape == (1,)
    torch.testing.assert_close(loss, t([1.125]), rtol=0, atol=1e-7)
    loss.sum().backward()
    torch.testing.assert_close(z.grad, t([[-0.25, -0.25]]), rtol=0, atol=1e-7)


def test_quantile_huber_loss_kappa_scales_the_quadratic_zone() -> None:
    # kappa = 2: L_2(u) = u^2 / 2 for |u| <= 2, else 2 (|u| - 1); rho = w L_2 / 2
    #   i = 0: u = [1, 4] -> L = [0.5, 6]   -> w L / 2 = [0.0625, 0.75], mean 0.40625
    #   i = 1: u = [-1, 2] -> L = [0.5, 2]  -> w L / 2 = [0.0625, 0.75], mean 0.40625
    loss = quantile_huber_loss(t([Z]), t([TARGET]), t(TAUS), kappa=2.0)
    torch.testing.assert_close(loss, t([0.8125]), rtol=0, atol=1e-7)


def test_quantile_huber_loss_weighs_under_and_overestimates_by_tau_and_one_minus_tau() -> None:
    # one quantile at tau = 0.1, z = 0: a target above (u = 1) weighs 0.1, one below (u = -1) weighs 0.9
    assert quantile_huber_loss(t([[0.0]]), t([[1.0]]), t([0.1])).item() == pytest.approx(0.1 * 0.5)
    assert quantile_huber_loss(t([[0.0]]), t([[-1.0]]), t([0.1])).item() == pytest.approx(0.9 * 0.5)
    # per-sample fractions (B, N), as IQN samples them: row 1 is row 0 with tau mirrored
    loss = quantile_huber_loss(t([[0.0], [0.0]]), t([[1.0], [1.0]]), t([[0.1], [0.9]]))
    torch.testing.assert_close(loss, t([0.05, 0.45]), rtol=0, atol=1e-7)


def test_quantile_huber_loss_minimum_sits_at_the_tau_quantile_of_the_targets() -> None:
    # targets 0..99: the 0.25-quantile lies between 24 and 25, the 0.75-quantile between 74 and 75
    z = t([[50.0, 50.0]]).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=20.0)
    for _ in range(400):
        opt.zero_grad()
        quantile_huber_loss(z, torch.arange(100.0)[None], t(TAUS)).sum().backward()
        opt.step()
    assert 24.0 <= z[0, 0].item() <= 25.0 and 74.0 <= z[0, 1].item() <= 75.0


def test_quantile_target_shifts_and_discounts_every_sample_and_masks_termination() -> None:
    y = quantile_target(t([1.0, 1.0, 2.0]), t([0.0, 1.0, 0.0]), t([0.5, 0.5, 0.25]),
                        t([[0.0, 6.0], [0.0, 6.0], [4.0, 8.0]]))
    assert y.tolist() == [[1.0, 4.0], [1.0, 1.0], [3.0, 4.0]]
    assert quantile_target(t([1.0]), t([0.0]), 0.5, t([[2.0, -2.0]])).tolist() == [[2.0, 0.0]]


def test_fixed_taus_are_the_midpoints() -> None:
    assert fixed_taus(2).tolist() == [0.25, 0.75]
    assert fixed_taus(4).tolist() == [0.125, 0.375, 0.625, 0.875]


# --- QR-DQN on a hand-set network ----------------------------------------------------------------------
#
# Nets whose quantiles ignore the observation (zero weights, the biases are the quantiles), 2 actions, N = 2:
#   online: Z(., 0) = [0, 2] (mean 1),  Z(., 1) = [0.5, 0.5] (mean 0.5)   -> online greedy action 0
#   target: Z(., 0) = [1, 3] (mean 2),  Z(., 1) = [0, 6]     (mean 3)     -> target greedy action 1
# Batch: action 0, reward 1, gamma 0.5:
#   row 0, not terminal:   target samples 1 + 0.5 [0, 6] = [1, 4]     -> the loss example above: 1.125
#   row 1, terminal:       [1, 1]: i = 0: u = [1, 1], w 0.25, L 0.5 -> 0.125; i = 1: u = [-1, -1], w 0.25 -> 0.125
#                          loss 0.25
#   row 2, n-step discount 0.25: [1, 2.5]: i = 0: u = [1, 2.5], w 0.25, L [0.5, 2] -> mean 0.3125;
#                          i = 1: u = [-1, 0.5], w [0.25, 0.75], L [0.5, 0.125] -> [0.125, 0.09375], mean 0.109375
#                          loss 0.421875
#   Double DQN, row 0: a* = 0 (online), target Z(s', 0) = [1, 3] -> samples [1.5, 2.5]:
#                          i = 0: u = [1.5, 2.5], w 0.25, L [1, 2] -> mean 0.375
#                          i = 1: u = [-0.5, 0.5], w [0.25, 0.75], L [0.125, 0.125] -> mean 0.0625;  loss 0.4375


def qr_net(quantiles: list[list[float]]) -> MLP:
    net = MLP((1,), n_actions=len(quantiles), hidden=(), head="qr", quantiles=len(quantiles[0]))
    (layer,) = net.net
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(t(quantiles).flatten())
    return net


def qr_learner(double: bool = False, lr: float = 0.0) -> Learner:
    online, target = qr_net([[0.0, 2.0], [0.5, 0.5]]), qr_net([[1.0, 3.0], [0.0, 6.0]])
    return Learner(online, target, torch.optim.SGD(online.parameters(), lr=lr), gamma=0.5, max_grad_norm=None,
                   double=double, distributional="qr")


def qr_batch(weights: list[float] | None = None) -> Batch:
    return Batch(obs=t([[[0.0], [0.0], [0.0]]]), action=torch.tensor([[0, 0, 0]]), reward=t([[1.0, 1.0, 1.0]]),
                 next_obs=t([[[0.0], [0.0], [0.0]]]), terminated=t([[0.0, 1.0, 0.0]]),
                 discount=t([[0.5, 0.5, 0.25]]), weights=None if weights is None else t([weights]),
                 indices=np.array([[7, 8, 9]]))


def test_qr_net_forward_is_the_mean_quantile() -> None:
    net = qr_net([[0.0, 2.0], [0.5, 0.5]])
    assert net.quantiles(t([[3.0]])).tolist() == [[[0.0, 2.0], [0.5, 0.5]]]
    assert net(t([[3.0]])).tolist() == [[1.0, 0.5]]


def test_qr_learner_per_sample_losses_match_the_hand_table() -> None:
    learner = qr_learner()
    assert learner.targets(qr_batch()) is None  # a distribution per step, not a burst of scalar targets
    ((rows, per_sample),) = learner.update(qr_batch(weights=[1.0, 1.0, 1.0]))
    assert rows.tolist() == [7, 8, 9]
    np.testing.assert_allclose(per_sample, [1.125, 0.25, 0.421875], rtol=0, atol=1e-6)  # priorities = losses
    metrics = learner.read_metrics()
    assert metrics["td_loss"] == pytest.approx((1.125 + 0.25 + 0.421875) / 3)
    assert metrics["q_values"] == pytest.approx(1.0)  # mean of Z(s, 0) = [0, 2]


def test_qr_learner_scales_each_sample_by_its_prioritized_weight() -> None:
    learner = qr_learner()
    learner.update(qr_batch(weights=[1.0, 2.0, 0.5]))
    assert learner.read_metrics()["td_loss"] == pytest.approx((1.125 + 2 * 0.25 + 0.5 * 0.421875) / 3)


def test_qr_double_dqn_bootstraps_from_the_online_greedy_action() -> None:
    learner = qr_learner(double=True)
    ((_, per_sample),) = learner.update(qr_batch(weights=[1.0, 1.0, 1.0]))
    assert per_sample[0] == pytest.approx(0.4375)
    assert per_sample[1] == pytest.approx(0.25)  # a terminal row does not bootstrap at all


def test_qr_learner_takes_the_hand_computed_sgd_step() -> None:
    # Row 0 alone (B = 1), lr 1: dloss/dz = [-0.25, -0.25] (above) -> Z(., 0) = [0.25, 2.25]; action 1 untouched
    learner = qr_learner(lr=1.0)
    b = qr_batch()
    learner.update(Batch(*(None if x is None else x[:, :1] for x in b)))
    (layer,) = learner.online.net
    torch.testing.assert_close(layer.bias.detach(), t([0.25, 2.25, 0.5, 0.5]), rtol=0, atol=1e-6)
    assert layer.weight.abs().sum() == 0  # obs is 0: no weight gradient


# --- IQN -------------------------------------------------------------------------------------------------


def test_cosine_embedding_by_hand() -> None:
    # n_cos = 3: cos(pi * i * tau) at tau = 0.5 is [1, 0, -1]; at tau = 0: [1, 1, 1]
    emb = CosineEmbedding(dim=2, n_cos=3)
    with torch.no_grad():
        emb.linear.weight.copy_(t([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]]))
        emb.linear.bias.copy_(t([0.0, -4.0]))
    # tau 0.5: relu([0, 3] + [0, -4]) = [0, 0]; tau 0: relu([3, 1] + [0, -4]) = [3, 0]; tau 1: [1, -1, 1] ->
    # relu([1, 3 - 4]) = [1, 0]
    out = emb(t([[0.5, 0.0, 1.0]]))
    assert out.shape == (1, 3, 2)
    torch.testing.assert_close(out, t([[[0.0, 0.0], [3.0, 0.0], [1.0, 0.0]]]), rtol=0, atol=1e-6)


def hand_iqn() -> MLP:
    # no hidden layer: psi is the observation itself (d = 1); phi(tau) = relu(1 + cos(pi tau)) = 1 + cos(pi tau);
    # one action, z(tau) = obs * (1 + cos(pi tau)).  K = 2: taus [0.25, 0.75] -> cos = +-0.7071 -> Q = obs.
    net = MLP((1,), n_actions=1, hidden=(), head="iqn", quantile_embedding=2, iqn_k=2)
    with torch.no_grad():
        net.embedding.linear.weight.copy_(t([[0.0, 1.0]]))
        net.embedding.linear.bias.copy_(t([1.0]))
        (layer,) = net.net
        layer.weight.copy_(t([[1.0]]))
        layer.bias.zero_()
    return net


def test_iqn_quantiles_and_q_on_a_hand_set_network() -> None:
    net = hand_iqn()
    z = net.quantiles(t([[2.0], [-1.0]]), t([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]))
    assert z.shape == (2, 1, 3)
    torch.testing.assert_close(z, t([[[4.0, 2.0, 0.0]], [[-2.0, -1.0, 0.0]]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(net(t([[2.0], [-1.0]])), t([[2.0], [-1.0]]), rtol=0, atol=1e-6)
    # fractions shared by the batch, (N,), give what (B, N) copies of them give
    torch.testing.assert_close(net.quantiles(t([[2.0], [-1.0]]), t([0.0, 0.5, 1.0])), z)


@pytest.mark.parametrize(("kw", "obs_shape", "psi_dim"), [
    ({"hidden": (16, 8)}, (4,), 16),  # MLP: the first hidden layer's output
    ({"hidden": (16,), "dueling": True, "noisy": True}, (4,), 16),
    ({"hidden": ()}, (4,), 4),
    ({"hidden": (32,), "conv": "minatar", "channels_last": True}, (10, 10, 4), 16 * 8 * 8),  # the torso's output
    ({"hidden": (32,), "conv": "nature", "pixel_scale": 1 / 255}, (4, 84, 84), 64 * 7 * 7),
])
def test_iqn_shapes_on_every_torso(kw: dict, obs_shape: tuple, psi_dim: int) -> None:
    torch.manual_seed(0)
    net = QNetwork(obs_shape, n_actions=3, head="iqn", quantile_embedding=64, iqn_k=32, **kw)
    assert net.embedding.linear.in_features == 64 and net.embedding.linear.out_features == psi_dim
    obs = torch.rand(5, *obs_shape)
    assert net.quantiles(obs, torch.rand(5, 7)).shape == (5, 3, 7)
    assert net.quantiles(obs, torch.rand(7)).shape == (5, 3, 7)
    assert net(obs).shape == (5, 3)
    assert net.act_taus.tolist() == fixed_taus(32).tolist()
    assert "act_taus" not in net.state_dict() and "embedding.freqs" not in net.state_dict()  # derived, not saved
    net.eval()
    torch.testing.assert_close(net(obs), net.quantiles(obs, fixed_taus(32)).mean(-1))


def iqn_learner(seed: int = 0, **kw) -> Learner:
    torch.manual_seed(1)
    online = MLP((4,), n_actions=3, hidden=(16, 16), head="iqn", quantile_embedding=8, iqn_k=4, **kw)
    target = copy.deepcopy(online)
    return Learner(online, target, torch.optim.Adam(online.parameters(), lr=1e-3), gamma=0.9,
                   distributional="iqn", iqn_n=6, iqn_n_prime=5, seed=seed)


def random_batch(g: int, b: int, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randn(g, b, 4, generator=gen), action=torch.randint(0, 3, (g, b), generator=gen),
                 reward=torch.randn(g, b, generator=gen), next_obs=torch.randn(g, b, 4, generator=gen),
                 terminated=(torch.rand(g, b, generator=gen) < 0.3).float(),
                 discount=torch.full((g, b), 0.9 ** 3))


def test_iqn_acting_is_deterministic_while_the_learner_samples_fractions() -> None:
    learner = iqn_learner()
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    assert np.array_equal(learner.greedy_actions(obs), learner.greedy_actions(obs))
    q = learner.online(torch.from_numpy(obs))
    assert torch.equal(q, learner.online(torch.from_numpy(obs)))
    tau1, tau1_next = learner._sample_taus(8)
    tau2, _ = learner._sample_taus(8)
    assert tau1.shape == (8, 6) and tau1_next.shape == (8, 5)
    assert not torch.equal(tau1, tau2) and tau1.min() > 0 and tau1.max() < 1
    # the fractions come from the learner's own stream: an update leaves the global RNG where it was
    state = torch.get_rng_state()
    learner.update(random_batch(2, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert learner.updates == 2


def test_iqn_loss_is_the_quantile_huber_loss_at_the_sampled_fractions() -> None:
    learner = iqn_learner()
    b = Batch(*(None if x is None else x[0] for x in random_batch(1, 8, seed=4)))
    taus = learner._sample_taus(8)
    per_sample, _, _ = learner._quantile_loss(b.obs, b.action, b.reward, b.next_obs, b.terminated, b.discount, taus)
    rows = torch.arange(8)
    with torch.no_grad():
        a_star = learner.target(b.next_obs).argmax(1)  # the target's Q on its fixed grid picks a*
        next_z = learner.target.quantiles(b.next_obs, taus[1])[rows, a_star]
        y = b.reward[:, None] + b.discount[:, None] * (1 - b.terminated[:, None]) * next_z
    z = learner.online.quantiles(b.obs, taus[0])[rows, b.action]
    torch.testing.assert_close(per_sample, quantile_huber_loss(z, y, taus[0]))


def test_iqn_learner_resumes_exactly_from_its_state_dict() -> None:
    # Two updates, save (online weights + state_dict), load into a fresh learner built with another seed;
    # two more updates on each must give bit-identical weights: the fractions' stream is in the state.
    a = iqn_learner(seed=3)
    a.update(random_batch(2, 8, seed=1))
    policy, state = copy.deepcopy(a.online.state_dict()), copy.deepcopy(a.state_dict())
    assert "tau_rng" in state
    b = iqn_learner(seed=99)
    b.online.load_state_dict(policy)
    b.load_state_dict(state)
    batch = random_batch(2, 8, seed=2)
    a.update(batch)
    b.update(batch)
    for pa, pb in zip(a.online.parameters(), b.online.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # without the stream's state the continuation differs
    c = iqn_learner(seed=99)
    c.online.load_state_dict(policy)
    c.load_state_dict({k: v for k, v in state.items() if k != "tau_rng"})
    c.update(batch)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.online.parameters(), c.online.parameters(), strict=True))


def test_iqn_composes_with_noisy_dueling_and_double() -> None:
    learner = iqn_learner(noisy=True, dueling=True)
    learner.double = True
    assert learner.noisy
    before = [p.detach().clone() for p in learner.online.parameters()]
    learner.update(random_batch(2, 8))
    assert all(torch.isfinite(p).all() for p in learner.online.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(before, learner.online.parameters(), strict=True))


CNNS = {"nature": ((4, 84, 84), torch.uint8, {"conv": "nature", "hidden": [64], "pixel_scale": 1 / 255}),
        "minatar": ((10, 10, 4), torch.bool, {"conv": "minatar", "hidden": [32], "channels_last": True})}
VARIANTS = {"qr": ({"head": "qr", "quantiles": 8}, {"distributional": "qr"}),
            "iqn": ({"head": "iqn", "quantile_embedding": 16, "iqn_k": 4, "dueling": True},
                    {"distributional": "iqn", "double": True}),
            "m-iqn": ({"head": "iqn", "quantile_embedding": 16, "iqn_k": 4, "noisy": True},
                      {"distributional": "iqn", "munchausen": True}),
            "m-qr": ({"head": "qr", "quantiles": 8}, {"distributional": "qr", "munchausen": True}),
            "m-dqn": ({}, {"munchausen": True})}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cnn", list(CNNS))
def test_quantile_and_munchausen_learners_train_on_both_conv_torsos(cnn: str, variant: str) -> None:
    shape, dtype, kwargs = CNNS[cnn]
    net_kw, learner_kw = VARIANTS[variant]
    torch.manual_seed(0)
    net = QNetwork(shape, 5, **kwargs, **net_kw)
    learner = Learner(net, copy.deepcopy(net), torch.optim.Adam(net.parameters(), lr=1e-4), iqn_n=4,
                      iqn_n_prime=3, **learner_kw)
    high = 256 if dtype == torch.uint8 else 2
    obs = torch.randint(0, high, (1, 4, *shape)).to(dtype)
    batch = Batch(obs, torch.randint(0, 5, (1, 4)), torch.ones(1, 4), obs.flip(1), torch.zeros(1, 4),
                  discount=torch.full((1, 4), 0.97))
    before = [p.detach().clone() for p in net.parameters()]
    learner.update(batch)
    assert torch.isfinite(torch.tensor(learner.read_metrics()["td_loss"]))
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True) if a.numel() > 1)
    q = net(obs[0])
    assert q.shape == (4, 5) and torch.isfinite(q).all()
    assert learner.greedy_actions(obs[0].numpy()).shape == (4,)


# --- the fast path steps aside, by structure --------------------------------------------------------------


@pytest.mark.parametrize("head", ["qr", "iqn"])
@pytest.mark.parametrize("conv", [None, "minatar"])
def test_quantile_heads_take_autograd_not_the_fast_path(head: str, conv: str | None) -> None:
    shape = (10, 10, 4) if conv else (4,)
    net = QNetwork(shape, n_actions=3, hidden=(16,), head=head, conv=conv, channels_last=bool(conv), quantiles=4,
                   quantile_embedding=8, iqn_k=4)
    assert supports(QNetwork(shape, n_actions=3, hidden=(16,), conv=conv, channels_last=bool(conv)))
    assert not supports(net)  # QR: more outputs than actions; IQN: an embedding the fast path does not implement
    learner = Learner(net, copy.deepcopy(net), torch.optim.Adam(net.parameters()), distributional=head,
                      fast_mlp=True, iqn_n=3, iqn_n_prime=3)
    assert learner.manual is None and learner.np_actor is None


# --- config: keys, validation, build ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    ["learner.distributional=qr"],
    ["learner.distributional=iqn", "network=dueling_mlp", "learner.double=true", "replay=prioritized"],
    ["learner.distributional=iqn", "network=noisy_mlp"],
    ["learner.distributional=qr", "env=minatar_breakout"],
    ["learner.distributional=iqn", "env=minatar_breakout", "learner.munchausen=true"],
])
def test_quantile_configs_validate_and_build_the_head(overrides: list[str]) -> None:
    cfg = compose_train([*overrides, "device=cpu"])
    validate_train_config(cfg)
    learner = builders.build_algorithm(cfg, builders.build_env_spec(cfg.env)).learner
    head = cfg.learner.distributional
    assert learner.head == head and learner.online.head_kind == head and learner.manual is None
    lc = cfg.learner
    # the paper's sizes, except CartPole's preset, which halves them for these 2 cores (conf/tuned/dqn/cartpole.yaml)
    paper = cfg.env.id != "CartPole-v1"
    if head == "qr":
        assert learner.online.n_quantiles == cfg.network.quantiles == (200 if paper else 50)
    else:
        assert (learner.iqn_n, learner.iqn_n_prime, learner.online.act_taus.numel()) == \
            (lc.iqn_n, lc.iqn_n_prime, lc.iqn_k) == ((64, 64, 32) if paper else (32, 32, 32))
        assert learner.online.embedding.linear.in_features == cfg.network.quantile_embedding == 64


@pytest.mark.parametrize(("overrides", "message"), [
    (["learner.distributional=iqm"], "learner.distributional='iqm' is not one of false | true (C51) | c51 | qr | iqn"),
    (["learner.distributional=1"], "learner.distributional=1 is not one of"),
    (["env=frozenlake", "learner.distributional=qr"], "needs a network with a quantile head (network.quantiles)"),
    (["env=taxi", "learner.distributional=iqn"], "needs a network with a quantile head (network.quantile_embedding)"),
    (["learner.distributional=qr", "network.quantiles=1"], "network.quantiles=1 is out of range"),
    (["learner.distributional=iqn", "learner.iqn_k=0"], "learner.iqn_k=0 is out of range"),
])
def test_bad_quantile_configs_get_one_usage_error(overrides: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        validate_train_config(compose_train(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_c51_keeps_its_spellings() -> None:
    for value in ("true", "c51"):
        cfg = compose_train([f"learner.distributional={value}", "device=cpu"])
        validate_train_config(cfg)
        learner = builders.build_algorithm(cfg, builders.build_env_spec(cfg.env)).learner
        assert learner.head == "c51" and learner.online.n_atoms == 51


def test_quantile_learner_never_holds_a_param_without_grad() -> None:
    # every parameter of the online net gets a gradient from one IQN step (embedding included)
    learner = iqn_learner()
    b = Batch(*(None if x is None else x[0] for x in random_batch(1, 8)))
    loss, _, _ = learner._loss_terms(b.obs, b.action, b.reward, b.next_obs, b.terminated, b.discount, None, None,
                                     learner._sample_taus(8))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.online.parameters())
