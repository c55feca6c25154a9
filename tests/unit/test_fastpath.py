"""The hand-written MLP backward must compute what autograd computes, step after step."""

from __future__ import annotations

import copy

import pytest
import torch

from dqnrun.algos.dqn.learner import Learner
from dqnrun.fastpath import mlp_forward, supports
from dqnrun.networks import MLP
from dqnrun.replay import Batch


def _batch(g: int, b: int, obs_dim: int | None, n_actions: int, seed: int, categories: int | None = None) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    if categories:
        obs = torch.randint(0, categories, (g, b), generator=gen)
        nxt = torch.randint(0, categories, (g, b), generator=gen)
    else:
        obs = torch.randn(g, b, obs_dim, generator=gen) * 3  # large enough that huber's linear part is used
        nxt = torch.randn(g, b, obs_dim, generator=gen) * 3
    return Batch(obs, torch.randint(0, n_actions, (g, b), generator=gen), torch.randn(g, b, generator=gen) * 5,
                 nxt, (torch.rand(g, b, generator=gen) < 0.2).float())


def _pair(activation: str, loss: str, double: bool, clip: float | None, categories: int | None = None):
    torch.manual_seed(0)
    net = MLP((5,) if not categories else (), 3, [16, 8], activation, n_obs_categories=categories)
    learners = []
    for fast in (False, True):
        online = copy.deepcopy(net)
        target = copy.deepcopy(net)
        with torch.no_grad():
            for p in target.parameters():
                p.add_(0.05)
        opt = torch.optim.Adam(online.parameters(), lr=1e-2)
        learners.append(Learner(online, target, opt, gamma=0.9, loss=loss, max_grad_norm=clip, double=double,
                                fast_mlp=fast))
    return learners


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_manual_backward_matches_autograd_over_many_updates(activation, loss, double, clip, weighted) -> None:
    slow, fast = _pair(activation, loss, double, clip)
    assert slow.manual is None and fast.manual is not None
    for step in range(30):
        batch = _batch(2, 32, 5, 3, seed=step)
        if weighted:  # prioritized replay: IS weights on the loss, |TD| back as priorities
            gen = torch.Generator().manual_seed(100 + step)
            batch = batch._replace(weights=torch.rand(2, 32, generator=gen) + 0.1,
                                   indices=torch.arange(64).view(2, 32).numpy())
        ps, pf = slow.update(batch), fast.update(batch)
        assert len(ps) == len(pf) == (2 if weighted else 0)
        for (rs, ts), (rf, tf) in zip(ps, pf, strict=True):
            assert (rs == rf).all()
            torch.testing.assert_close(torch.from_numpy(tf), torch.from_numpy(ts), rtol=1e-4, atol=1e-5)
        if step % 10 == 9:
            slow.sync_target()
            fast.sync_target()
    for ps, pf in zip(slow.online.parameters(), fast.online.parameters(), strict=True):
        torch.testing.assert_close(pf, ps, rtol=1e-5, atol=1e-6)
    ms, mf = slow.read_metrics(), fast.read_metrics()
    assert ms is not None and mf is not None
    assert mf["td_loss"] == pytest.approx(ms["td_loss"], rel=1e-5)
    assert mf["q_values"] == pytest.approx(ms["q_values"], rel=1e-5)


def test_manual_gradient_equals_autograd_gradient_exactly_enough_on_one_step() -> None:
    slow, fast = _pair("relu", "huber", False, None)
    batch = _batch(1, 64, 5, 3, seed=7)
    y = slow.targets(batch)[0]
    q = slow.online(batch.obs[0]).gather(1, batch.action[0].unsqueeze(1)).squeeze(1)
    torch.nn.functional.smooth_l1_loss(q, y).backward()
    fast.manual(batch.obs[0], batch.action[0], y)
    for ps, pf in zip(slow.online.parameters(), fast.online.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-6, atol=1e-7)


def test_manual_backward_handles_one_hot_observations() -> None:
    slow, fast = _pair("relu", "mse", False, 10.0, categories=6)
    for step in range(10):
        batch = _batch(1, 16, None, 3, seed=step, categories=6)
        slow.update(batch)
        fast.update(batch)
    for ps, pf in zip(slow.online.parameters(), fast.online.parameters(), strict=True):
        torch.testing.assert_close(pf, ps, rtol=1e-5, atol=1e-6)


def test_lean_forward_equals_module_forward() -> None:
    net = MLP((4,), 2, [32, 32], "tanh")
    x = torch.randn(10, 4)
    torch.testing.assert_close(mlp_forward(net, x), net(x), rtol=0, atol=0)


def test_only_plain_mlps_take_the_manual_path() -> None:
    assert supports(MLP((4,), 2, [8], "relu"))
    assert not supports(MLP((4,), 2, [8], "gelu"))  # derivative not written out: autograd
    assert not supports(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    assert not supports(MLP((4,), 2, [8], dueling=True))
    assert not supports(MLP((4,), 2, [8], noisy=True))
    assert not supports(MLP((4,), 2, [8], head="c51"))


def test_a_layer_the_fast_path_does_not_implement_sends_the_network_through_autograd() -> None:
    """Eligibility is decided by the layers a network holds, not by the flags it was built from: the same MLP
    with a LayerNorm slipped in is refused, and its update (autograd) trains the LayerNorm too."""
    torch.manual_seed(0)
    net = MLP((5,), 3, [16, 8], "relu")
    assert supports(net)
    net.net.insert(1, torch.nn.LayerNorm(16))
    assert not supports(net)
    learner = Learner(net, copy.deepcopy(net), torch.optim.SGD(net.parameters(), lr=0.1))
    assert learner.manual is None and learner.np_actor is None
    norm = net.net[1]
    before = norm.weight.detach().clone()
    learner.update(_batch(1, 32, 5, 3, seed=1))
    assert not torch.equal(norm.weight, before)  # the gradient went through the LayerNorm
    x = torch.randn(4, 5)
    assert learner.greedy_actions(x.numpy()).tolist() == net(x).argmax(1).tolist()


@pytest.mark.parametrize(("conv", "obs_shape", "shapes"), [
    ("minatar", (10, 10, 4), [(16, 8, 8)]),
    ("nature", (4, 84, 84), [(32, 20, 20), (64, 9, 9), (64, 7, 7)]),
])
def test_network_norm_puts_a_layernorm_over_each_convolutions_output(conv: str, obs_shape: tuple,
                                                                      shapes: list[tuple]) -> None:
    """network.norm=layernorm with a conv torso (PQN's MinAtar and Atari presets): a LayerNorm over the whole (C, H, W)
    output of each convolution, before its ReLU, trained by the update; MinAtar's network then leaves the fast path."""
    from dqnrun.networks import QNetwork

    torch.manual_seed(0)
    kw = {"channels_last": True} if conv == "minatar" else {}
    net = QNetwork(obs_shape, 3, hidden=(32,), conv=conv, norm="layernorm", **kw)
    norms = [m for m in net.torso if isinstance(m, torch.nn.LayerNorm)]
    assert [tuple(m.normalized_shape) for m in norms] == shapes
    kinds = [type(m).__name__ for m in net.torso]
    assert kinds == ["Conv2d", "LayerNorm", "ReLU"] * len(shapes)
    assert not supports(net) and (conv != "minatar" or supports(QNetwork(obs_shape, 3, hidden=(32,), conv=conv, **kw)))
    obs = torch.rand(5, *obs_shape)
    with torch.no_grad():  # a LayerNorm over (C, H, W): the first conv's normalized output has mean 0, variance 1
        h = net.torso[1](net.torso[0](obs.permute(0, 3, 1, 2) if conv == "minatar" else obs))
    assert torch.allclose(h.mean((1, 2, 3)), torch.zeros(5), atol=1e-5)
    assert torch.allclose(h.var((1, 2, 3), unbiased=False), torch.ones(5), atol=1e-3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(obs).sum().backward()
    opt.step()
    assert not torch.equal(norms[0].weight, torch.ones_like(norms[0].weight))


def test_lean_fused_adam_step_is_bit_identical_to_optimizer_step() -> None:
    from dqnrun.fastpath import FusedAdamStep

    torch.manual_seed(0)
    a = MLP((4,), 2, [8])
    b = copy.deepcopy(a)
    opt_a = torch.optim.Adam(a.parameters(), lr=3e-3, eps=1e-5, weight_decay=1e-4, fused=True)
    opt_b = torch.optim.Adam(b.parameters(), lr=3e-3, eps=1e-5, weight_decay=1e-4, fused=True)
    lean = FusedAdamStep(opt_b)
    assert lean.enabled
    for p in b.parameters():
        p.grad = torch.zeros_like(p)
    for step in range(20):
        grads = [torch.randn_like(p) for p in a.parameters()]
        for p, g in zip(a.parameters(), grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(b.parameters(), grads, strict=True):
            p.grad.copy_(g)
        opt_a.step()
        lean()
        if step == 10:  # a checkpoint round trip in the middle replaces the state tensors
            opt_b.load_state_dict(copy.deepcopy(opt_b.state_dict()))
            lean.rebind()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a.state[pa][key], opt_b.state[pb][key])


def test_lean_adam_step_falls_back_for_other_optimizers() -> None:
    from dqnrun.fastpath import FusedAdamStep

    net = MLP((4,), 2, [8])
    assert not FusedAdamStep(torch.optim.Adam(net.parameters(), fused=False)).enabled
    assert not FusedAdamStep(torch.optim.SGD(net.parameters(), lr=0.1)).enabled
    assert not FusedAdamStep(torch.optim.Adam(net.parameters(), amsgrad=True, fused=True)).enabled


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_numpy_actor_matches_the_torch_network_and_follows_weight_updates(activation: str) -> None:
    from dqnrun.fastpath import NumpyGreedyActor

    torch.manual_seed(1)
    net = MLP((3, 2), 4, [16, 16], activation)
    actor = NumpyGreedyActor(net)
    obs = torch.randn(50, 3, 2)
    np_q = actor.q_values(obs.numpy())
    torch.testing.assert_close(torch.from_numpy(np_q), net(obs), rtol=1e-5, atol=1e-5)
    assert (actor(obs.numpy()) == net(obs).argmax(1).numpy()).all()
    with torch.no_grad():  # in-place changes (optimizer steps, target syncs, loads) are seen at once
        for p in net.parameters():
            p.mul_(-0.5)
    torch.testing.assert_close(torch.from_numpy(actor.q_values(obs.numpy())), net(obs), rtol=1e-5, atol=1e-5)


def test_numpy_actor_one_hot_encodes_discrete_observations() -> None:
    from dqnrun.fastpath import NumpyGreedyActor

    net = MLP((), 3, [8], n_obs_categories=5)
    obs = torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(torch.from_numpy(NumpyGreedyActor(net).q_values(obs.numpy())), net(obs),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.RAdam(ps, lr=2.5e-4),
    lambda ps: torch.optim.RMSprop(ps, lr=2.5e-4, alpha=0.95, eps=0.01, centered=True),
    lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
], ids=["radam", "rmsprop_centered", "rmsprop_momentum", "adam_fused"])
def test_the_lean_step_is_bit_identical_to_torchs_step(make) -> None:  # noqa: ANN001
    """PQN's RAdam and the MinAtar recipe's centered RMSProp pay no per-call Python, and compute what step()
    computes, bit for bit, through a learning rate changed between steps (PQN anneals it)."""
    from dqnrun.fastpath import LeanStep

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b = copy.deepcopy(a)
    opt_a, opt_b = make(list(a.parameters())), make(list(b.parameters()))
    lean = LeanStep(opt_b)
    assert lean.enabled
    for i in range(12):
        x = torch.randn(32, 5)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.param_groups[0]["lr"] *= 0.9 if i % 3 == 2 else 1.0
            opt.zero_grad(set_to_none=True)  # autograd makes new grad tensors every step
            net(x).pow(2).mean().backward()
        opt_a.step()
        lean()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb), i
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][name]), name


@pytest.mark.parametrize(("net_kw", "distributional", "optimizer"), [
    ({"dueling": True}, False, "adam"),
    ({"head": "c51", "atoms": 11}, True, "adam"),
    ({"head": "qr", "quantiles": 8}, "qr", "radam"),
    ({"noisy": True}, False, "rmsprop"),
])
def test_the_autograd_path_takes_the_lean_step_bit_identical_to_optimizer_step(net_kw: dict, distributional: bool | str,
                                                                                optimizer: str) -> None:
    """Networks off the hand-written path (dueling, C51, QR, noisy) step through `LeanStep` too: the same weights
    as torch's own ``optimizer.step()`` after a burst of updates, and after a state_dict round trip (rebind)."""
    make = {"adam": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
            "radam": lambda p: torch.optim.RAdam(p, lr=1e-3),
            "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True, momentum=0.9)}[optimizer]
    learners = []
    for _ in range(2):
        torch.manual_seed(0)
        net = MLP((5,), 3, [16, 8], **net_kw)
        learners.append(Learner(net, copy.deepcopy(net), make(net.parameters()), distributional=distributional))
    lean, plain = learners
    assert lean.manual is None and lean.step_optimizer.enabled
    plain.step_optimizer = plain.optimizer.step
    for i in range(3):
        torch.manual_seed(i)  # NoisyNet draws its noise from the global stream
        lean.update(_batch(2, 16, 5, 3, seed=i))
        torch.manual_seed(i)
        plain.update(_batch(2, 16, 5, 3, seed=i))
    lean.load_state_dict(lean.state_dict())
    torch.manual_seed(9)
    lean.update(_batch(2, 16, 5, 3, seed=9))
    torch.manual_seed(9)
    plain.update(_batch(2, 16, 5, 3, seed=9))
    for a, b in zip(lean.online.parameters(), plain.online.parameters(), strict=True):
        assert torch.equal(a, b)
