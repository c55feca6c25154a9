"""PQN populations: a member's batched learning computes what its solo PQN computes."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dqnrun import builders
from dqnrun import metrics as M
from dqnrun.population import grouping
from dqnrun.population.pqn import BatchedRAdam, PQNPopulationLearner, export_pqn
from tests.conftest import compose_train

SMALL = ["env=cartpole", "algo=pqn", "network.hidden=[32,32]", "algo.num_steps=16", "algo.epochs=2",
         "algo.minibatches=4", "total_steps=4096", "algo.lr_decay_steps=4096"]
MEMBERS = [["seed=0"], ["seed=1", "optimizer.lr=1e-3", "learner.gamma=0.9", "algo.q_lambda=0.0"],
           ["seed=2", "learner.max_grad_norm=0.05", "algo.q_lambda=0.9"]]


def _pqn(overrides: list[str], extra: list[str] | None = None):
    cfg = compose_train([*SMALL, *(extra or []), *overrides])
    torch.manual_seed(int(cfg.seed))
    return builders.build_algorithm(cfg, builders.build_env_spec(cfg.env))


def _fill(pqn, seed: int) -> np.ndarray:
    """A full rollout of made-up CartPole-shaped steps (some autoreset steps, so members keep different counts of
    transitions); returns the observation after it."""
    gen = np.random.default_rng(seed)
    r = pqn.rollout
    t_len, e = r.action.shape
    for _ in range(t_len):
        ended = gen.random(e) < 0.1
        r.add(gen.normal(size=(e, 4)).astype(np.float32), gen.integers(0, 2, e), gen.normal(size=e).astype(np.float32),
              ended & (gen.random(e) < 0.5), ended, gen.random(e) > 0.15, gen.normal(size=e).astype(np.float32))
    return gen.normal(size=(e, 4)).astype(np.float32)


def test_pqn_jobs_group_by_their_shared_settings_and_join_through_the_autograd_path() -> None:
    cfgs = [compose_train([*SMALL, *m]) for m in MEMBERS]
    assert all(grouping.eligibility(c, autograd=True) is None for c in cfgs)
    assert len({grouping.group_key(c) for c in cfgs}) == 1  # seed, lr, gamma, lambda, gradient cap: per member
    assert grouping.autograd_key(cfgs[0]) == "algo=pqn"
    assert grouping.eligibility(cfgs[0], autograd=False).startswith("algo=pqn: the batched autograd path")
    # by default a PQN population over an MLP forms on a CPU too (it measured faster than separate runs there),
    # over MinAtar's CNN only where CUDA is (it measured slower on a CPU)
    assert grouping.eligibility(cfgs[0]) is None
    minatar = compose_train(["env=minatar_breakout", "algo=pqn", "device=cpu"])
    assert grouping.eligibility(minatar).startswith("algo=pqn: the batched autograd path")
    assert grouping.eligibility(minatar, autograd=True) is None
    other = compose_train([*SMALL, "algo.num_steps=32"])
    assert grouping.differing_keys(grouping.group_key(cfgs[0]), grouping.group_key(other)) == ["algo.num_steps"]
    assert grouping.eligibility(compose_train([*SMALL, "optimizer=adam"]), autograd=True).startswith(
        "optimizer Adam: a PQN population steps RAdam")


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_a_members_batched_learning_equals_its_solo_learning(loss: str) -> None:
    """Two rollouts' worth of updates (2 epochs x 4 minibatches each, RAdam past its warm-up into rectified steps,
    the learning rate decaying) on each member's own data, through the batched products and one backward: weights,
    RAdam's state, learning rate and counters agree with each member's solo PQN to 1e-5."""
    solo = [_pqn(m, [f"learner.loss={loss}"]) for m in MEMBERS]
    twins = [copy.deepcopy(p) for p in solo]
    pop = PQNPopulationLearner(twins)
    for rollout in range(2):
        step = (rollout + 1) * 64
        sessions = []
        for i, (p, t) in enumerate(zip(solo, twins, strict=True)):
            last = _fill(p, 10 * i + rollout)
            _fill(t, 10 * i + rollout)
            p.learn(last, rollout_start=step - 64)
            sessions.append((i, SimpleNamespace(cursor=SimpleNamespace(obs=last), step=step)))
        pop.learn(sessions)
    for i, (p, t) in enumerate(zip(solo, twins, strict=True)):
        export_pqn(pop, i, t)
        assert t.updates == p.updates == 16
        for a, b in zip(p.policy.parameters(), t.policy.parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        for a, b in zip(p.policy.parameters(), t.policy.parameters(), strict=True):
            sa, sb = p.optimizer.state[a], t.optimizer.state[b]
            assert float(sa["step"]) == float(sb["step"]) == 16
            torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], atol=1e-9, rtol=1e-4)
        assert t.optimizer.param_groups[0]["lr"] == pytest.approx(p.optimizer.param_groups[0]["lr"])
        assert t.read_metrics(0)[M.TD_LOSS] == pytest.approx(p.read_metrics(0)[M.TD_LOSS], rel=1e-4)
        assert t.shuffle.get_state().equal(p.shuffle.get_state())  # the same minibatch shuffles were drawn


def test_batched_radam_steps_each_active_member_as_torch_radam_does() -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, generator=gen)) for _ in range(3)]
    opts = [torch.optim.RAdam([p], lr=lr, weight_decay=0.01) for p, lr in zip(params, (1e-2, 1e-3, 3e-2), strict=True)]
    flat = torch.stack([p.detach().clone() for p in params])
    radam = BatchedRAdam(3, 5, (0.9, 0.999), 1e-8, 0.01, torch.device("cpu"))
    for step in range(12):
        grads = torch.randn(3, 5, generator=gen)
        active = [True, step % 3 != 0, True]  # member 1 sits some steps out
        for m, (p, opt) in enumerate(zip(params, opts, strict=True)):
            if active[m]:
                p.grad = grads[m].clone()
                opt.step()
        radam.step(flat, grads, [1e-2, 1e-3, 3e-2], active)
    torch.testing.assert_close(flat, torch.stack([p.detach() for p in params]), atol=1e-6, rtol=0)
    assert list(radam.steps) == [12, 8, 12]


@pytest.mark.parametrize("extra", [[], ["network.activation=tanh"], ["env=custom", "env.id=FrozenLake-v1"]])
def test_members_q_values_are_each_members_own_forward(extra: list[str]) -> None:
    """`StackedQ` (batched products over LayerNorm MLPs) gives each member what its own network gives; networks it
    does not cover act through vmap."""
    from dqnrun.networks import QNetwork
    from dqnrun.population.functional import StackedQ

    pqns = [_pqn(m, extra) for m in MEMBERS]
    pop = PQNPopulationLearner([copy.deepcopy(p) for p in pqns])
    assert pop._stacked_q is not None
    categorical = "env.id=FrozenLake-v1" in extra
    gen = np.random.default_rng(0)
    obs = gen.integers(0, 16, (3, 5)) if categorical else gen.normal(size=(3, 5, 4)).astype(np.float32)
    q = pop.q_values(obs)
    for i, p in enumerate(pqns):
        np.testing.assert_allclose(q[i], p.q_values(obs[i]), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pop.q_values(obs[[2, 0]], rows=[2, 0]), q[[2, 0]])
    for other in ({"noisy": True}, {"head": "c51", "atoms": 11}):
        kw = {"obs_shape": (4,), "n_actions": 2, "hidden": [8], **other}
        assert StackedQ.of(QNetwork(**kw)) is None, other
    assert StackedQ.of(QNetwork((4,), 2, [8], dueling=True)) is not None  # V + A - mean A from batched heads


def test_minatar_members_q_values_and_updates_through_grouped_convolutions_are_their_own() -> None:
    """PQN's MinAtar preset (a LayerNorm'd convolution over (H, W, C) boolean frames, LayerNorm MLP): the batched
    products give each member its own Q-values, and a batched update of made-up minibatches each member's own solo
    gradient step (its loss's gradient, RAdam's first step) to 1e-5."""
    extra = ["env=minatar_breakout", "algo=pqn", "network.hidden=[32]", "algo.num_steps=8"]
    pqns = [builders.build_algorithm(c, builders.build_env_spec(c.env))
            for c in (compose_train([*extra, *m]) for m in MEMBERS)]
    twins = [copy.deepcopy(p) for p in pqns]
    pop = PQNPopulationLearner(twins)
    assert pop._stacked_q is not None and pop._stacked_q.torso  # the torso batched too
    gen = torch.Generator().manual_seed(4)
    obs = torch.rand(3, 12, 10, 10, 4, generator=gen) < 0.1
    q = pop.q_values(obs.numpy())
    for i, p in enumerate(pqns):
        np.testing.assert_allclose(q[i], p.q_values(obs[i].numpy()), rtol=0, atol=1e-5)
    action, target = torch.randint(0, 3, (3, 12), generator=gen), torch.randn(3, 12, generator=gen)
    pop.update(obs, action, target, torch.ones(3, 12), torch.full((3,), 12.0), [True, True, True])
    for i, (p, t) in enumerate(zip(pqns, twins, strict=True)):
        loss = p.loss_fn(p.policy(obs[i]).gather(1, action[i].unsqueeze(1)).squeeze(1), target[i]).mean()
        p.optimizer.zero_grad()
        loss.backward()
        if p.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(p.policy.parameters(), p.max_grad_norm)
        p.optimizer.param_groups[0]["lr"] = pop.lr[i]
        p.optimizer.step()
        export_pqn(pop, i, t)
        for a, b in zip(p.policy.parameters(), t.policy.parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
