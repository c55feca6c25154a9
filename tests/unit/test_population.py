"""Populations: which jobs group, and a member's batched update computing what its solo run's update computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dqnrun import builders
from dqnrun.population import grouping
from dqnrun.population.member import export_member, stack_members
from dqnrun.population.stats import bootstrap_ci, iqm
from dqnrun.replay import Batch
from tests.conftest import compose_train

SMALL = ["env=cartpole", "network.hidden=[32,32]", "replay.batch_size=32"]


def _dqn(overrides: list[str], preset: list[str] = SMALL):
    cfg = compose_train([*preset, *overrides])
    torch.manual_seed(int(cfg.seed))  # what the lifecycle's seed_everything does before it builds
    return builders.build_algorithm(cfg, builders.build_env_spec(cfg.env))


@pytest.fixture(params=[1, 2], ids=["numpy-products", "torch-products"])
def products(request):
    """Torch on one thread (a stack's products through numpy, `numpy_products`) or two (torch's batched products)."""
    from dqnrun.population.stacked import numpy_products

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    assert numpy_products(torch.zeros(1)) == (request.param == 1)
    yield request.param
    torch.set_num_threads(before)


# --- grouping -----------------------------------------------------------------------------------------
def test_seeds_and_per_member_hyperparameters_share_one_population() -> None:
    cfgs = [compose_train(["env=cartpole", f"seed={s}", f"optimizer.lr={lr}", f"learner.gamma={g}",
                           f"schedule.decay_steps={d}", f"algo.target_update_interval={t}", f"learner.tau={tau}",
                           f"learner.max_grad_norm={c}"])
            for s, lr, g, d, t, tau, c in [(0, 1e-3, 0.99, 5000, 100, 1.0, 10), (1, 3e-4, 0.9, 2000, 50, 0.5, "null")]]
    plan = grouping.plan(cfgs, max_members=64)
    assert plan.populations == [[0, 1]] and not plan.alone and not plan.splits


def test_a_different_network_splits_groups_and_says_which_key() -> None:
    cfgs = [compose_train(["env=cartpole", f"seed={s}", f"network.hidden={h}"])
            for h in ("[64,64]", "[32]") for s in (0, 1)]
    plan = grouping.plan(cfgs, max_members=64, jobs=[10, 11, 12, 13])
    assert plan.populations == [[0, 1], [2, 3]]
    assert plan.splits == ["jobs 12-13 differ from jobs 10-11 in network.hidden"]


def test_variants_without_a_batched_update_stand_alone_with_a_reason() -> None:
    def why(*overrides: str) -> str | None:
        return grouping.eligibility(compose_train(["env=cartpole", *overrides]))

    assert "noisy" in why("network=noisy_mlp")
    assert why("algo=pqn") is None  # PQN over an MLP joins (tests/unit/test_population_pqn.py)
    assert "rmsprop" in why("optimizer=rmsprop").lower()
    # the hand-written stack and the batched autograd path between them take every other DQN switch
    assert why("learner.double=true", "replay=prioritized") is None
    for joins, key in ((["network=dueling_mlp"], "network.dueling=True"),
                       (["learner.distributional=c51"], "learner.distributional=c51"),
                       (["learner.distributional=qr"], "learner.distributional=qr"),
                       (["learner.distributional=iqn"], "learner.distributional=iqn"),
                       (["learner.munchausen=true"], "learner.munchausen=true"),
                       (["network.activation=gelu"], "network.activation=gelu"),
                       (["learner.fast_mlp=false"], "learner.fast_mlp=false")):
        cfg = compose_train(["env=cartpole", *joins])
        assert grouping.eligibility(cfg, autograd=True) is None, joins
        assert grouping.autograd_key(cfg) == key
        # under vmap the autograd path is slower than separate runs on a CPU: there it joins only when asked to;
        # the batched products' update (another activation, no fast path) measured faster and joins
        refused = grouping.eligibility(cfg, autograd=False)
        assert refused is not None and refused.startswith(key) and "hydra.launcher.autograd=true" in refused
        if not torch.cuda.is_available():
            products = key in ("network.dueling=True", "network.activation=gelu", "learner.fast_mlp=false")
            assert grouping.eligibility(cfg) == (None if products else refused), key
    assert grouping.autograd_key(compose_train(["env=minatar_breakout"])) is None  # the stacked update's


def test_where_a_job_trains_decides_whether_the_autograd_path_joins_by_default(monkeypatch) -> None:
    """``hydra.launcher.autograd=auto``: a job on CUDA joins through the batched autograd path, one that trains on the
    CPU does not, on any machine; ``device=cuda`` populations are as welcome as ``device=auto`` ones (an H200 run
    of bench/population_gpu.sh found every Pong job refused under ``device=cuda``)."""
    def why(*overrides: str) -> str | None:
        return grouping.eligibility(compose_train(["env=cartpole", *overrides]))

    for cuda_here in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda here=cuda_here: here)
        assert why("device=cuda") is None and why("device=cuda:1") is None  # the stacked MLP update
        assert why("device=cuda", "network=dueling_mlp") is None
        assert why("device=cpu", "network=noisy_mlp").startswith("network.noisy=True")
        auto = why("network=noisy_mlp")
        assert (auto is None) if cuda_here else auto.startswith("network.noisy=True")
        assert why("device=mps") == "device=mps: populations run on the CPU or on CUDA"
    # on a CPU, by default, the jobs that learn through batched products and one backward (they measured faster
    # than separate runs there); the ones under vmap, or over a CNN, only with hydra.launcher.autograd=true
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert why("network.norm=layernorm") is None and why("network.activation=elu") is None
    assert why("network=dueling_mlp") is None and why("network=dueling_mlp", "learner.double=true") is None
    assert why("network=dueling_mlp", "learner.distributional=c51").startswith("network.dueling=True")
    assert why("learner.fast_mlp=false") is None
    assert why("network.norm=layernorm", "learner.distributional=c51").startswith("network.norm=layernorm")
    assert why("network.norm=layernorm", "learner.munchausen=true").startswith("network.norm=layernorm")
    assert grouping.eligibility(compose_train(["env=pong"])).startswith("network.conv=nature")


def test_max_members_cuts_a_group_into_balanced_populations() -> None:
    cfgs = [compose_train(["env=cartpole", f"seed={s}"]) for s in range(9)]
    assert grouping.plan(cfgs[:5], max_members=2).populations == [[0, 1], [2], [3, 4]]
    # n_jobs: split into one population per worker, so that no core waits (4 jobs on 2 cores: two of 2 members
    # took 19 s where one of 4 took 42 s and joblib 27 s, docs/benchmarks.md section 12)
    assert grouping.plan(cfgs[:5], max_members=64, n_jobs=2).populations == [[0, 1], [2, 3, 4]]
    assert grouping.plan(cfgs, max_members=64, n_jobs=2).populations == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert grouping.plan(cfgs[:3], max_members=64, n_jobs=4).populations == [[0], [1], [2]]
    # a group cut by max_members is split further only where workers would otherwise wait
    assert grouping.plan(cfgs, max_members=3, n_jobs=2).populations == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


# --- statistics ---------------------------------------------------------------------------------------
def test_iqm_is_the_25_percent_trimmed_mean() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # drops 1, 2 and 7, 8
    assert iqm([10.0, 0.0, 1000.0, 2.0]) == 6.0  # drops 0 and 1000: mean of 2 and 10
    assert iqm([3.0, 5.0, 100.0]) == pytest.approx(36.0)  # int(0.75) = 0 dropped: the mean
    low, high = bootstrap_ci([1, 2, 3, 4, 5, 6, 7, 8])
    assert 1 <= low < 4.5 < high <= 8


# --- the batched update equals each member's solo update ---------------------------------------------
MEMBERS = [["seed=0", "optimizer.lr=1e-3", "learner.gamma=0.99", "learner.max_grad_norm=10"],
           ["seed=1", "optimizer.lr=3e-3", "learner.gamma=0.9", "learner.max_grad_norm=0.5"],
           ["seed=2", "optimizer.lr=1e-3", "learner.gamma=0.95", "learner.max_grad_norm=null", "learner.tau=0.3"]]


def _batches(n: int, k: int, seed: int, n_step: bool) -> list[list[Batch]]:
    """``n`` updates' worth of (G=1, B=32) CartPole-shaped batches for each of ``k`` members."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        row = []
        for _ in range(k):
            obs, nxt = torch.randn(1, 32, 4, generator=gen) * 2, torch.randn(1, 32, 4, generator=gen) * 2
            row.append(Batch(obs, torch.randint(0, 2, (1, 32), generator=gen), torch.randn(1, 32, generator=gen) * 3,
                             nxt, (torch.rand(1, 32, generator=gen) < 0.2).float(),
                             discount=(0.9 ** torch.randint(1, 4, (1, 32), generator=gen)).float() if n_step else None))
        out.append(row)
    return out


def _stack(batches: list[Batch]) -> Batch:
    return Batch(*(None if getattr(batches[0], f) is None else torch.stack([getattr(b, f) for b in batches])
                   for f in ("obs", "action", "reward", "next_obs", "terminated", "discount", "weights")))


def _side_by_side(solo: list, pop, batches: list[list[Batch]]) -> None:
    """Each member's solo DQN updates on its own batches and the population on all of them stacked, a target sync
    in the middle (at update 5: hard for tau 1, polyak for tau < 1), as a population's loop does it."""
    for step, row in enumerate(batches):
        if step == 5:
            for d in solo:
                d.learner.sync_target()
            pop.sync_targets(list(range(len(solo))))
        for d, b in zip(solo, row, strict=True):
            d.learner.update(b)
        pop.update(_stack(row))


def _members_equal_solo(solo: list, twins: list, pop, atol: float = 1e-5) -> None:
    """Each member exported from ``pop`` into its twin holds its solo run's online and target weights (to ``atol``),
    its 10 updates and its mean loss."""
    for i, (d, twin) in enumerate(zip(solo, twins, strict=True)):
        export_member(pop, i, twin)
        for a, b in zip(d.learner.online.parameters(), twin.learner.online.parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=atol, rtol=0)
        for a, b in zip(d.learner.target.parameters(), twin.learner.target.parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=atol, rtol=0)
        assert twin.learner.updates == d.learner.updates == 10
        assert twin.learner.read_metrics()["td_loss"] == pytest.approx(d.learner.read_metrics()["td_loss"], rel=1e-5)


@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("n_step", [False, True])
def test_ten_batched_updates_equal_each_members_solo_updates(double: bool, n_step: bool, products: int) -> None:
    extra = [f"learner.double={str(double).lower()}"]
    solo = [_dqn([*m, *extra]) for m in MEMBERS]
    twins = [_dqn([*m, *extra]) for m in MEMBERS]  # the same seeds: the same initial weights
    pop = stack_members(twins)
    assert pop.adam.lr == [1e-3, 3e-3, 1e-3] and pop.max_grad_norm[2] == float("inf")
    _side_by_side(solo, pop, _batches(10, 3, seed=7, n_step=n_step))
    _members_equal_solo(solo, twins, pop)
    # and the members really learned different things (per-member lr, gamma, cap): not one shared update
    assert not torch.allclose(solo[0].learner.online.linears[0].weight, solo[2].learner.online.linears[0].weight)


def test_an_evaluations_frozen_stack_acts_as_the_live_one(products: int) -> None:
    """An evaluation acts on a copy of its members' weights: row-major numpy copies where torch runs one thread, else
    a frozen stack (`StackedMLP.frozen`) with the same Q-values as the live stack's forward, whatever the members'
    order; either copy stays as it was when the live weights move on."""
    dqns = [_dqn(m) for m in MEMBERS]
    pop = stack_members(dqns)
    x = torch.randn(3, 40, 4, generator=torch.Generator().manual_seed(5))
    frozen = pop.online.frozen([2, 0])
    assert not np.shares_memory(frozen.flat.numpy(), pop.online.flat.numpy())  # its own copy, made once
    torch.testing.assert_close(frozen.forward(x[[2, 0]]), pop.online.forward(x)[[2, 0]], atol=1e-6, rtol=0)
    before = frozen.forward(x[[2, 0]])
    pop.update(_stack(_batches(1, 3, seed=4, n_step=False)[0]))
    assert torch.equal(frozen.forward(x[[2, 0]]), before)
    assert not torch.allclose(pop.online.forward(x)[[2, 0]], before)
    # and the greedy actions of an evaluation (its cache holds its copy of the weights: row-major numpy arrays where
    # torch runs one thread, else the frozen stack) are each member's own, and stay so while the live weights move
    obs = x.numpy()
    cache: dict = {}
    got = pop.greedy(obs, rows=[0, 1, 2], cache=cache)
    assert list(cache) == (["rowmajor"] if products == 1 else ["net"])
    for i, d in enumerate(dqns):
        export_member(pop, i, d)
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))
    with torch.no_grad():
        pop.online.flat.neg_()  # the live weights move (far: every member's actions change)
    np.testing.assert_array_equal(pop.greedy(obs, rows=[0, 1, 2], cache=cache), got)
    assert not np.array_equal(pop.greedy(obs, rows=[0, 1, 2], cache={}), got)  # the live weights did move
    np.testing.assert_array_equal(pop.greedy(obs[[2, 0]], rows=[2, 0], cache={})[1], pop.greedy(obs)[0])


def test_only_the_active_members_step() -> None:
    dqns = [_dqn(m) for m in MEMBERS[:2]]
    pop = stack_members(dqns)
    before = pop.online.flat.clone()
    pop.update(_stack(_batches(1, 2, seed=3, n_step=False)[0]), active=[False, True])
    assert torch.equal(pop.online.flat[0], before[0]) and not torch.equal(pop.online.flat[1], before[1])
    assert list(pop.updates) == [0, 1]


def test_greedy_actions_of_the_stack_are_each_members_own() -> None:
    dqns = [_dqn(m) for m in MEMBERS]
    pop = stack_members(dqns)
    obs = np.random.default_rng(0).normal(size=(3, 16, 4)).astype(np.float32)
    got = pop.greedy(obs)
    for i, d in enumerate(dqns):
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))


def test_a_member_that_leaves_keeps_the_others_rows() -> None:
    dqns = [_dqn(m) for m in MEMBERS]
    pop = stack_members(dqns)
    rows = pop.online.flat[[0, 2]].clone()
    pop.keep([0, 2])
    assert pop.k == 2 and torch.equal(pop.online.flat, rows)
    assert pop.gamma == [0.99, 0.95] and pop.adam.lr == [1e-3, 1e-3]


# --- a job of several seeds returns the IQM of their objectives ---------------------------------------
def test_a_jobs_value_is_the_iqm_of_its_seeds_objectives() -> None:
    from omegaconf import OmegaConf

    from dqnrun.population.launch import JobSlot, MemberRecord, job_return

    cfg = OmegaConf.create({"seed": 0})
    members = [MemberRecord(spec=type("S", (), {"cfg": cfg})(), sweep_config=cfg, job=0) for _ in range(5)]
    job = JobSlot(num=3, overrides=["optimizer.lr=0.001"], config=cfg, members=[0, 1, 2, 3, 4])
    values = [250.0, 10.0, 480.0, 300.0, 120.0]
    results = {i: {"objective": {"name": "auc", "value": v}} for i, v in enumerate(values)}
    # int(0.25 * 5) = 1 score dropped at each end (10 and 480): the mean of 120, 250 and 300
    assert job_return(job, members, results, {}, seeds=5).return_value == pytest.approx((120 + 250 + 300) / 3)
    results[2] = {"status": "failed", "objective": {"name": "auc", "value": None}}  # a seed that fails fails its job
    assert np.isnan(job_return(job, members, results, {}, seeds=5).return_value)


def test_bad_launcher_options_are_named() -> None:
    from dqnrun.population.launch import Options

    with pytest.raises(ValueError, match="hydra.launcher.seeds_per_job=0 must be at least 1"):
        Options.of({"seeds_per_job": 0})
    with pytest.raises(ValueError, match="unknown option.*bogus.*it takes max_members"):
        Options.of({"bogus": 1})
    assert Options.of({"n_jobs": -1}).n_jobs >= 1  # joblib's convention: one per core
    with pytest.raises(ValueError, match="hydra.launcher.autograd=maybe must be auto, true or false"):
        Options.of({"autograd": "maybe"})
    assert [Options.of({"autograd": v}).autograd for v in (True, "false", "auto")] == [True, False, "auto"]


# --- MinAtar's network: its one convolution batched as a matrix product over image patches ---------------
MINATAR = ["env=minatar_breakout", "network.hidden=[32]", "replay.batch_size=16"]


def _minatar_dqn(overrides: list[str]):
    return _dqn(overrides, MINATAR)


def _image_batches(n: int, k: int, seed: int, pong: bool = False) -> list[list[Batch]]:
    """``n`` updates' worth of (G=1) image batches for each of ``k`` members, with n-step discounts: MinAtar-shaped
    (B=16, 10x10x4 booleans, 3 actions), or with ``pong`` Pong-shaped (B=8, 4 stacked 84x84 uint8 frames, 6 actions)."""
    gen = torch.Generator().manual_seed(seed)
    b, actions = (8, 6) if pong else (16, 3)
    out = []
    for _ in range(n):
        row = []
        for _ in range(k):
            pair = (torch.randint(0, 256, (2, 1, b, 4, 84, 84), generator=gen, dtype=torch.uint8) if pong
                    else torch.rand(2, 1, b, 10, 10, 4, generator=gen) < 0.1)
            obs, nxt = pair.unbind(0)
            row.append(Batch(obs, torch.randint(0, actions, (1, b), generator=gen), torch.randn(1, b, generator=gen),
                             nxt, (torch.rand(1, b, generator=gen) < 0.2).float(),
                             discount=(0.9 ** torch.randint(1, 4, (1, b), generator=gen)).float()))
        out.append(row)
    return out


@pytest.mark.parametrize("double", [False, True])
def test_minatar_members_batched_updates_equal_their_solo_updates(double: bool, products: int) -> None:
    extra = [f"learner.double={str(double).lower()}"]
    solo = [_minatar_dqn([*m, *extra]) for m in MEMBERS]
    twins = [_minatar_dqn([*m, *extra]) for m in MEMBERS]
    assert all(d.learner.manual is not None for d in solo)  # the solo runs take the hand-written path the stack batches
    pop = stack_members(twins)
    assert pop.online.conv is not None and pop.online.conv.filters == 16
    _side_by_side(solo, pop, _image_batches(10, 3, seed=11))
    for i, (d, twin) in enumerate(zip(solo, twins, strict=True)):
        export_member(pop, i, twin)
        for net in ("online", "target"):
            for a, b in zip(getattr(d.learner, net).parameters(), getattr(twin.learner, net).parameters(), strict=True):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        state_a, state_b = d.learner.optimizer.state_dict()["state"], twin.learner.optimizer.state_dict()["state"]
        for key in state_a:
            torch.testing.assert_close(state_b[key]["exp_avg"], state_a[key]["exp_avg"], atol=1e-6, rtol=0)
        assert twin.learner.updates == d.learner.updates == 10
    conv = solo[0].learner.online.torso[0]
    assert not torch.allclose(conv.weight, solo[2].learner.online.torso[0].weight)


def test_minatar_greedy_actions_of_the_stack_are_each_members_own() -> None:
    dqns = [_minatar_dqn(m) for m in MEMBERS]
    pop = stack_members(dqns)
    obs = np.random.default_rng(0).random((3, 8, 10, 10, 4)) < 0.1
    got = pop.greedy(obs)
    for i, d in enumerate(dqns):
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))
        q = d.learner.online(torch.as_tensor(obs[i]))
        np.testing.assert_array_equal(got[i], q.argmax(1).numpy())


def test_minatar_jobs_group_and_pixel_jobs_join_through_autograd() -> None:
    cfgs = [compose_train(["env=minatar_breakout", f"seed={s}", f"optimizer.lr={lr}"])
            for s, lr in [(0, 1e-3), (1, 3e-4)]]
    assert grouping.eligibility(cfgs[0]) is None
    assert grouping.plan(cfgs, max_members=64).populations == [[0, 1]]
    assert grouping.eligibility(compose_train(["env=minatar_breakout", "network=nature_cnn"]), autograd=True) is None
    pong = compose_train(["env=pong"])  # Nature's CNN over a replay of frames: the batched autograd path
    assert grouping.eligibility(pong, autograd=True) is None
    assert grouping.eligibility(pong, autograd=False).startswith("network.conv=nature")


# --- evaluation side by side --------------------------------------------------------------------------
class _EvalRun:
    """What `evaluate_together` reads of a member's `Run`: its eval rounds, eval epsilon and action count."""

    def __init__(self, seed: int, epsilon: float, episodes: int, n_envs: int) -> None:
        from types import SimpleNamespace

        from dqnrun.envs import make_vector_env

        self.eval_envs = self.envs = make_vector_env("CartPole-v1", n_envs, evaluation=True)
        self.seed, self.episodes = seed, episodes
        self.cfg = SimpleNamespace(eval=SimpleNamespace(epsilon=epsilon, episodes=episodes), env={})
        self.spec = SimpleNamespace(n_actions=2)

    def eval_plan(self):
        from dqnrun.run.lifecycle import EvalPlan

        return EvalPlan(self.episodes, 1000 + self.seed, self.cfg.eval.epsilon, np.random.default_rng(self.seed),
                        False)

    def eval_rounds(self):
        from dqnrun.envs import episode_rounds

        plan = self.eval_plan()
        return episode_rounds(self.envs, plan.episodes, plan.seed), plan.rng


# numpy's products act for few envs, torch's for many; CartPoleVectorEnvs are stepped together; episodes within one
# round of the envs take the evaluation in arrays (`evaluate_cartpoles`), more take each member's episode rounds
@pytest.mark.parametrize(("n_envs", "rounds"), [(6, 1.5), (20, 1.5), (6, 1), (20, 1), (20, 0.7)])
def test_members_evaluated_side_by_side_return_their_own_evaluations(n_envs: int, rounds: float) -> None:
    from dqnrun.acting import greedy_actor
    from dqnrun.envs import drive
    from dqnrun.population import evaluation
    from dqnrun.population.evaluation import evaluate_together

    dqns = [_dqn(m) for m in MEMBERS]
    pop = stack_members(dqns)
    # 3 members; one member explores
    runs = [_EvalRun(seed=i, epsilon=0.3 if i == 1 else 0.0, episodes=int(n_envs * rounds), n_envs=n_envs)
            for i in range(len(dqns))]
    # (6 CartPoles are a SyncVectorEnv of CartPoleEnvs, 20 Gymnasium's numpy CartPoleVectorEnv)
    assert evaluation.cartpoles_fit([(i, r) for i, r in enumerate(runs)]) == (rounds <= 1 and n_envs == 20)
    got = evaluate_together(pop, [(1, runs[1]), (0, runs[0]), (2, runs[2])])
    for i, (d, run) in enumerate(zip(dqns, runs, strict=True)):
        rounds, rng = run.eval_rounds()
        own = float(drive(rounds, greedy_actor(d.learner.online, run.cfg.eval.epsilon, rng, 2)).mean())
        assert got[i] == own, (i, got[i], own)
    assert len({got[0], got[1], got[2]}) > 1  # the members differ: each got its own weights' result

    # a member whose env fails gets its exception; the others their returns
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("physics exploded")

    runs[2].envs.reset = broken  # type: ignore[method-assign]  # (in arrays: the whole try fails, each goes alone)
    out = evaluate_together(pop, [(0, runs[0]), (2, runs[2])])
    assert out[0] == got[0] and isinstance(out[2], RuntimeError)
    del runs[2].envs.reset
    runs[2].envs.step = broken  # type: ignore[method-assign]
    out = evaluate_together(pop, [(0, runs[0]), (2, runs[2])])
    assert out[0] == got[0] and isinstance(out[2], RuntimeError)


# --- the batched autograd path: networks and heads outside the hand-written stack ------------------------
AUTOGRAD_VARIANTS = {
    "dueling": ["network=dueling_mlp"],
    "c51": ["learner.distributional=c51"],
    "qr": ["learner.distributional=qr", "network.quantiles=8"],
    "dueling_double_layernorm": ["network=dueling_mlp", "learner.double=true", "network.norm=layernorm"],
    # IQN's fractions: each member's from its own generator, as its solo run draws them
    "iqn": ["learner.distributional=iqn", "learner.iqn_n=8", "learner.iqn_n_prime=8", "learner.iqn_k=8"],
    "munchausen": ["learner.munchausen=true"],
    "iqn_munchausen": ["learner.distributional=iqn", "learner.munchausen=true", "learner.iqn_n=8",
                       "learner.iqn_n_prime=8", "learner.iqn_k=8"],
}


@pytest.mark.parametrize("variant", sorted(AUTOGRAD_VARIANTS))
def test_autograd_variants_batched_updates_equal_their_solo_updates(variant: str) -> None:
    from dqnrun.population.functional import FuncPopulationLearner

    extra = AUTOGRAD_VARIANTS[variant]
    solo = [_dqn([*m, *extra]) for m in MEMBERS]
    twins = [_dqn([*m, *extra]) for m in MEMBERS]
    pop = stack_members(twins)
    assert isinstance(pop, FuncPopulationLearner)
    obs = np.random.default_rng(1).normal(size=(3, 16, 4)).astype(np.float32)
    got = pop.greedy(obs)
    for i, d in enumerate(solo):  # acting before any update: each member's own greedy actions
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))
    _side_by_side(solo, pop, _batches(10, 3, seed=7, n_step=True))
    _members_equal_solo(solo, twins, pop)
    for d, twin in zip(solo, twins, strict=True):
        # Adam's moments came back as a solo optimizer keeps them: a checkpoint of the member resumes solo
        for p_solo, p_twin in zip(d.learner.online.parameters(), twin.learner.online.parameters(), strict=True):
            torch.testing.assert_close(twin.learner.optimizer.state[p_twin]["exp_avg"],
                                       d.learner.optimizer.state[p_solo]["exp_avg"], atol=1e-6, rtol=1e-4)
    first = next(iter(solo[0].learner.online.parameters()))
    other = next(iter(solo[2].learner.online.parameters()))
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("extra", [["network.dueling=true"], ["learner.distributional=c51", "network.atoms=11"]],
                         ids=["dueling", "c51"])
def test_a_convolutional_torso_outside_the_stack_batches_through_autograd(extra: list[str]) -> None:
    from dqnrun.population.functional import FuncPopulationLearner

    solo = [_minatar_dqn([*m, *extra]) for m in MEMBERS]
    twins = [_minatar_dqn([*m, *extra]) for m in MEMBERS]
    assert all(d.learner.manual is None for d in solo)  # autograd in the solo runs too
    pop = stack_members(twins)
    assert isinstance(pop, FuncPopulationLearner)
    obs = torch.rand(3, 5, 10, 10, 4).lt(0.1).numpy()
    got = pop.greedy(obs)
    for i, d in enumerate(solo):
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))
    _side_by_side(solo, pop, _image_batches(10, 3, seed=11))
    for i, (d, twin) in enumerate(zip(solo, twins, strict=True)):
        export_member(pop, i, twin)
        for net in ("online", "target"):
            for a, b in zip(getattr(d.learner, net).parameters(), getattr(twin.learner, net).parameters(), strict=True):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


PONG = ["env=pong", "replay.capacity=1000", "replay.batch_size=8", "network.hidden=[32]"]


def _pong_dqn(overrides: list[str]):
    return _dqn(overrides, PONG)


def _pong_batches(seed: int) -> list[list[Batch]]:
    return _image_batches(10, 3, seed, pong=True)


# Networks whose Q-values the batched products compute (`StackedQ`: Nature's CNN as grouped convolutions,
# normalization layers, a dueling head), whose plain TD loss takes one differentiable forward and one backward
GROUPED_VARIANTS = {
    "layernorm_double": (_dqn, ["network.norm=layernorm", "learner.double=true"], lambda: _batches(10, 3, 7, True)),
    "elu_mse": (_dqn, ["network.activation=elu", "learner.loss=mse"], lambda: _batches(10, 3, 8, False)),
    "nature_cnn": (_pong_dqn, [], lambda: _pong_batches(9)),
    "nature_cnn_double_layernorm": (_pong_dqn, ["learner.double=true", "network.norm=layernorm"],
                                    lambda: _pong_batches(10)),
    "dueling_double": (_dqn, ["network=dueling_mlp", "learner.double=true"], lambda: _batches(10, 3, 11, True)),
    "nature_cnn_dueling": (_pong_dqn, ["network.dueling=true"], lambda: _pong_batches(12)),
}


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v.startswith("nature_cnn_") else v
                                     for v in sorted(GROUPED_VARIANTS)])  # Pong's CNN variants: 2-3 s each
def test_grouped_updates_equal_each_members_solo_updates(variant: str) -> None:
    """One forward and one backward for every member (grouped convolutions for a torso) give each member the 10
    updates, Adam state and greedy actions of its solo run."""
    build, extra, batches = GROUPED_VARIANTS[variant]
    solo = [build([*m, *extra]) for m in MEMBERS]
    twins = [build([*m, *extra]) for m in MEMBERS]
    pop = stack_members(twins)
    assert pop._grouped is not None  # the grouped step, not vmap
    rows = batches()
    obs = torch.stack([b.obs[0] for b in rows[0]]).numpy()
    got = pop.greedy(obs)
    for i, d in enumerate(solo):
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))
    _side_by_side(solo, pop, rows)
    # a LayerNorm bias whose gradient is near zero moves by Adam's step either way: 2.5e-5 after 10 updates, as
    # much through vmap as here (checked), so that variant is held to 5e-5 (its Adam moments to 5e-6)
    loose = 5.0 if variant == "nature_cnn_double_layernorm" else 1.0
    _members_equal_solo(solo, twins, pop, atol=1e-5 * loose)
    for d, twin in zip(solo, twins, strict=True):
        for p_solo, p_twin in zip(d.learner.online.parameters(), twin.learner.online.parameters(), strict=True):
            torch.testing.assert_close(twin.learner.optimizer.state[p_twin]["exp_avg"],
                                       d.learner.optimizer.state[p_solo]["exp_avg"], atol=1e-6 * loose, rtol=1e-4)
    assert not torch.allclose(next(iter(solo[0].learner.online.parameters())),
                              next(iter(solo[2].learner.online.parameters())))


def test_grouped_updates_weigh_samples_and_return_priorities_as_prioritized_replay_needs() -> None:
    extra = ["network.norm=layernorm"]
    solo = [_dqn([*m, *extra]) for m in MEMBERS]
    pop = stack_members([_dqn([*m, *extra]) for m in MEMBERS])
    assert pop._grouped is not None
    gen = torch.Generator().manual_seed(3)
    for row in _batches(3, 3, seed=5, n_step=False):
        row = [b._replace(weights=torch.rand(1, 32, generator=gen) + 0.1, indices=np.arange(32)[None]) for b in row]
        got = pop.update(_stack(row))
        for i, (d, b) in enumerate(zip(solo, row, strict=True)):
            (_, td_abs), = d.learner.update(b)
            np.testing.assert_allclose(got[0][i], td_abs, rtol=1e-4, atol=1e-5)


def test_the_autograd_path_weighs_samples_and_returns_priorities_as_prioritized_replay_needs() -> None:
    solo = [_dqn([*m, "learner.distributional=c51"]) for m in MEMBERS]
    pop = stack_members([_dqn([*m, "learner.distributional=c51"]) for m in MEMBERS])
    gen = torch.Generator().manual_seed(3)
    for row in _batches(3, 3, seed=5, n_step=False):
        row = [b._replace(weights=torch.rand(1, 32, generator=gen) + 0.1, indices=np.arange(32)[None]) for b in row]
        got = pop.update(_stack(row))
        for i, (d, b) in enumerate(zip(solo, row, strict=True)):
            (_, td_abs), = d.learner.update(b)  # the solo learner's (rows, |TD|) for its priorities
            np.testing.assert_allclose(got[0][i], td_abs, rtol=1e-4, atol=1e-5)
    twin = _dqn([*MEMBERS[1], "learner.distributional=c51"])
    export_member(pop, 1, twin)
    for a, b in zip(solo[1].learner.online.parameters(), twin.learner.online.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_an_iqn_member_that_leaves_keeps_the_others_draws_and_rows() -> None:
    """After member 1 leaves, members 0 and 2 (now slots 0 and 1) go on with their own weights, Adam state and
    fraction generators: their next updates still equal their solo runs'."""
    extra = AUTOGRAD_VARIANTS["iqn"]
    solo = [_dqn([*m, *extra]) for m in MEMBERS]
    twins = [_dqn([*m, *extra]) for m in MEMBERS]
    pop = stack_members(twins)
    batches = _batches(6, 3, seed=9, n_step=True)
    _side_by_side(solo, pop, batches[:3])
    pop.keep([0, 2])
    for row in batches[3:]:
        for i in (0, 2):
            solo[i].learner.update(row[i])
        pop.update(_stack([row[0], row[2]]))
    for slot, i in enumerate((0, 2)):
        export_member(pop, slot, twins[i])
        for a, b in zip(solo[i].learner.online.parameters(), twins[i].learner.online.parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        assert torch.equal(twins[i].learner.tau_gen.get_state(), solo[i].learner.tau_gen.get_state())


# --- NoisyNet members: each draws its noise from its own stream --------------------------------------
def _noisy(overrides: list[str]):
    """A NoisyNet member built as a run builds it, and its torch stream right after (what its solo run draws
    its noise from next)."""
    d = _dqn(["network=noisy_mlp", *overrides])
    return d, torch.get_rng_state()


@pytest.mark.parametrize("extra", [[], ["learner.double=true"], ["learner.distributional=c51"]])
def test_noisy_members_draw_their_own_noise_and_update_as_their_solo_runs(extra: list[str]) -> None:
    solo = [_noisy([*m, *extra]) for m in MEMBERS]
    twins = [_noisy([*m, *extra]) for m in MEMBERS]
    pop = stack_members([d for d, _ in twins], [s for _, s in twins])
    streams = [s for _, s in solo]
    gen = np.random.default_rng(3)
    obs = gen.normal(size=(3, 8, 4)).astype(np.float32)
    rows = _batches(20, 3, seed=7, n_step=False)
    for step in range(10):  # bursts of 2 gradient steps: a solo run's burst targets come before its fresh noise
        burst = [Batch(*(None if a is None else torch.cat([a, b]) for a, b in zip(x, y, strict=True)))
                 for x, y in zip(rows[2 * step], rows[2 * step + 1], strict=True)]
        if step == 5:
            for d, _ in solo:
                d.learner.sync_target()
            pop.sync_targets([0, 1, 2])
        for i, ((d, _), b) in enumerate(zip(solo, burst, strict=True)):
            torch.set_rng_state(streams[i])  # each solo run has the global stream to itself
            d.learner.update(b)
            streams[i] = torch.get_rng_state()
        pop.update(_stack(burst))
        acted = pop.greedy(obs)  # acting with each member's current noise
        for i, (d, _) in enumerate(solo):
            np.testing.assert_array_equal(acted[i], d.learner.greedy_actions(obs[i]))
    with pop.evaluation():  # evaluation acts on the mean weights
        evaluated = pop.greedy(obs)
    for i, ((d, _), twin) in enumerate(zip(solo, [t for t, _ in twins], strict=True)):
        d.learner.online.eval()
        np.testing.assert_array_equal(evaluated[i], d.learner.greedy_actions(obs[i]))
        d.learner.online.train()
        export_member(pop, i, twin)
        for a, b in zip(d.learner.online.state_dict().values(), twin.learner.online.state_dict().values(),
                        strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)  # weights and the current noise factors
        for a, b in zip(d.learner.target.state_dict().values(), twin.learner.target.state_dict().values(),
                        strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        assert torch.equal(torch.get_rng_state(), streams[i])  # export leaves its stream for its checkpoint
        assert twin.learner.updates == d.learner.updates == 20
    # every member drew noise of its own
    eps = [d.learner.online.state_dict()["net.2.eps_out"] for d, _ in solo]
    assert not torch.equal(eps[0], eps[1])


# --- one replay with a member axis ----------------------------------------------------------------------
def _filled(seed: int, **kwargs):
    from dqnrun.replay import ReplayBuffer

    rb = ReplayBuffer(300, 16, (4,), torch.float32, seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    for _ in range(40):
        obs, nxt = rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=(4, 4)).astype(np.float32)
        rb.add(obs, rng.integers(0, 2, 4), rng.normal(size=4).astype(np.float32), nxt, rng.random(4) < 0.1,
               np.zeros(4, bool), np.ones(4, bool))
    return rb


@pytest.mark.parametrize("kwargs", [{"n_step": 3}, {"prioritized": True}])
def test_members_replays_share_columns_and_one_gather_returns_each_members_own_batch(kwargs: dict) -> None:
    from dqnrun.population.rows import StackedRows

    replays, twins = [_filled(s, **kwargs) for s in range(3)], [_filled(s, **kwargs) for s in range(3)]
    assert StackedRows.fits(replays)
    rows = StackedRows(replays)
    # every member's row i is one packed row of the shared tensor: its columns side by side
    for k, r in enumerate(replays):
        base = rows.packed[k * 300].data_ptr()
        for name, (offset, _, _) in rows.layout.items():
            assert getattr(r.store, name).data_ptr() == base + offset, name
            assert getattr(r.store, name)[1].data_ptr() == base + rows.width + offset, name
    for step in range(3):  # each member draws from its own sampler; its twin samples on its own
        draws = {s: (*replays[s].sampler.draw(2, 5000), replays[s]) for s in (0, 2)}  # member 1 not due
        batch = rows.gather(draws, 3)
        for s in (0, 2):
            own = twins[s].sample(n_batches=2, step=5000)
            for name in ("obs", "action", "reward", "next_obs", "terminated", "discount", "weights"):
                mine, theirs = getattr(batch, name), getattr(own, name)
                assert (mine is None) == (theirs is None), name
                if theirs is not None:
                    assert torch.equal(mine[s], theirs), (name, step)
        # writes still reach a member's own rows, and its checkpoint holds them
        obs = np.full((4, 4), float(step), np.float32)
        for rb in (replays[1], twins[1]):
            rb.add(obs, np.zeros(4, int), np.ones(4, np.float32), obs, np.zeros(4, bool), np.zeros(4, bool),
                   np.ones(4, bool))
        mine, theirs = replays[1].state_dict(), twins[1].state_dict()
        for name in ("obs", "next_obs", "action", "reward", "terminated", "discount"):
            assert torch.equal(mine[name], theirs[name]), name
            # a member's checkpoint holds its own rows only, not the shared tensor its columns are views of
            assert mine[name].is_contiguous() and mine[name].untyped_storage().nbytes() == mine[name].nbytes, name
        assert mine["pos"] == theirs["pos"] and mine["size"] == theirs["size"]
    assert torch.equal(replays[1].store.obs, twins[1].store.obs)
    assert not StackedRows.fits([_filled(0), _filled(1, latest=True)])  # latest replay keeps its own gather


@pytest.mark.parametrize(("n_step", "prioritized", "torch_ops"), [(1, False, True), (3, True, True), (3, False, False)])
def test_members_frame_rings_share_one_tensor_and_one_gather_returns_each_members_own_stacks(
        n_step: int, prioritized: bool, torch_ops: bool) -> None:
    """Atari members: their rings become rows of one tensor; on an accelerator (``torch_ops``: the CPU writing as
    there) frames wait on the host until a read writes every member's at once. Each member's draw from the shared
    gather is the batch its solo replay returns, through ring wraps and a checkpoint."""
    from dqnrun.population.rows import StackedFrames
    from tests.unit.test_frame_replay import StackedEnvs, assert_same_rows, frames_buffer

    kw = {"n_step": n_step, "prioritized": prioritized, "gamma": 0.9, "batch_size": 8}
    solo = [frames_buffer(200, 2, seed=s, **kw) for s in range(3)]
    twins = [frames_buffer(200, 2, seed=s, **kw) for s in range(3)]
    for r in solo + twins if torch_ops else ():
        r._use_torch_ops()
    envs = [StackedEnvs(2, seed=10 + s, p_end=0.1) for s in range(3)]
    shared = StackedFrames(twins)
    assert all(t.store.writer is shared for t in twins)
    for t in range(700):  # wraps the rings
        for env, a, b in zip(envs, solo, twins, strict=True):
            step = env.step()
            a.add(**step)
            b.add(**step)
        if t % 50 == 49:
            assert any(b.store._pending for b in twins) == torch_ops
            draws = {slot: (*b.sampler.draw(2, t), b) for slot, b in enumerate(twins) if slot != 1}
            got = shared.gather(draws, 3)  # member 1 not due: its slot is masked out
            assert not any(b.store._pending for b in twins)
            for slot in (0, 2):
                want = solo[slot].sample(n_batches=2, step=t)
                mine = Batch(*(None if x is None else x[slot] for x in got[:7]))
                assert_same_rows(want, mine)
                if prioritized:
                    torch.testing.assert_close(got.weights[slot], torch.as_tensor(want.weights))
            solo[1].sample(n_batches=2, step=t)  # member 1's solo run drew then too: both samplers stay in step
            twins[1].sampler.draw(2, t)
    for a, b in zip(solo, twins, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert torch.equal(sa[key], sb[key]), key


def test_a_members_updates_do_not_depend_on_how_many_members_share_its_population(products: int) -> None:
    """Bit for bit, whether a member trains with others or alone (the others having ended, or resumed from other
    steps): a population's stacked update once wrote a layer's weight gradient with ``bmm(out=<strided view>)``,
    whose rounding changed with the number of members, so a member resumed beside members at other steps drifted
    from its uninterrupted twin in the last bits."""
    def member(seed: int):
        cfg = compose_train(["env=cartpole", f"seed={seed}"])  # the preset's [128, 128]: 2 actions, 4 inputs
        torch.manual_seed(seed)
        return builders.build_algorithm(cfg, builders.build_env_spec(cfg.env))

    many, alone = stack_members([member(4), member(5), member(6)]), stack_members([member(5)])
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        b = Batch(torch.randn(3, 1, 128, 4, generator=gen), torch.randint(0, 2, (3, 1, 128), generator=gen),
                  torch.randn(3, 1, 128, generator=gen), torch.randn(3, 1, 128, 4, generator=gen),
                  torch.zeros(3, 1, 128), discount=torch.full((3, 1, 128), 0.97))
        many.update(b)
        alone.update(Batch(*(None if x is None else x[1:2] for x in b)))
    assert torch.equal(many.online.flat[1], alone.online.flat[0])
    assert torch.equal(many.adam.exp_avg[1], alone.adam.exp_avg[0])


def test_frame_rings_too_large_to_share_stay_each_members_own(monkeypatch) -> None:
    """Where the device cannot hold the shared rings beside the members' own (1M-frame Pong rings: 7 GB each),
    every member keeps its own ring, untouched, and gathers from it as alone."""
    from dqnrun.population import rows
    from tests.unit.test_frame_replay import StackedEnvs, frames_buffer

    replays = [frames_buffer(50, 1, seed=s) for s in range(2)]
    env = StackedEnvs(1, seed=3)
    for _ in range(20):
        step = env.step()
        for r in replays:
            r.add(**step)
    own = [r.store._ring for r in replays]

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(rows.torch, "zeros", no_memory)
    assert rows.StackedFrames.fits(replays) and rows.StackedFrames.share(replays) is None
    assert all(r.store.writer is None and r.store._ring is ring for r, ring in zip(replays, own, strict=True))


@pytest.mark.parametrize("kind", [["env=cartpole"], ["algo=pqn", "env=cartpole", "total_steps=1024"]])
def test_a_population_never_imports_torchs_dynamo(tmp_path, kind: list[str]) -> None:
    """Its members' optimizers are made, restored and exported without torch._dynamo (1 s of every worker's start
    here: `optimizers_without_dynamo`); a fresh interpreter that trains a population of 2 has not imported it."""
    import subprocess
    import sys

    args = ["train", "-m", "seed=0,1", "total_steps=2000", "eval.every=1000", "eval.episodes=2", "log.progress=false",
            "checkpoint.every=1000", *kind, "hydra/launcher=population", "hydra.launcher.n_jobs=1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    code = f"""
import sys
from dqnrun.cli import main
sys.argv = ["dqnrun", *{args!r}]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("torch._dynamo" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "False"
    assert len(list((tmp_path / "sweep").rglob("last.pt"))) == 2  # both members trained and saved
