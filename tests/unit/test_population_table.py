"""Q-table populations (``network=tabular``): which jobs join, and the stacked tables' update computing what each
member's solo update computes, with batches of different widths (``replay=latest``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dqnrun import builders
from dqnrun.population import grouping
from dqnrun.population.engine import stack_batches, update_together
from dqnrun.population.member import export_member, stack_members
from dqnrun.population.table import TablePopulationLearner
from dqnrun.replay import Batch
from tests.conftest import compose_train

STATES, ACTIONS = 16, 4  # FrozenLake 4x4
MEMBERS = [["seed=0", "optimizer.lr=0.05", "learner.gamma=0.99"],
           ["seed=1", "optimizer.lr=0.2", "learner.gamma=0.9", "learner.max_grad_norm=0.3"],
           ["seed=2", "optimizer.lr=0.05", "learner.gamma=0.95", "learner.tau=0.5"]]


def _dqn(overrides: list[str]):
    cfg = compose_train(["env=frozenlake", "network.init=0.25", *overrides])
    torch.manual_seed(int(cfg.seed))
    return builders.build_algorithm(cfg, builders.build_env_spec(cfg.env))


def _batch(gen: torch.Generator, width: int, n_step: bool, weights: bool) -> Batch:
    def states() -> torch.Tensor:
        return torch.randint(0, STATES, (1, width), generator=gen)

    return Batch(states(), torch.randint(0, ACTIONS, (1, width), generator=gen),
                 (torch.rand(1, width, generator=gen) < 0.3).float(), states(),
                 (torch.rand(1, width, generator=gen) < 0.2).float(),
                 discount=(0.9 ** torch.randint(1, 4, (1, width), generator=gen)).float() if n_step else None,
                 weights=torch.rand(1, width, generator=gen) + 0.5 if weights else None)


# --- grouping -----------------------------------------------------------------------------------------
def test_tabular_jobs_join_and_per_member_alpha_and_gamma_share_a_population() -> None:
    cfgs = [compose_train(["env=frozenlake", f"seed={s}", f"optimizer.lr={lr}", f"learner.gamma={g}"])
            for s, lr, g in [(0, 0.05, 0.99), (1, 0.1, 0.9), (2, 0.2, 0.95)]]
    assert all(grouping.eligibility(c) is None for c in cfgs)
    assert grouping.autograd_key(cfgs[0]) is None  # its own stacked update, not the autograd path
    assert grouping.plan(cfgs, max_members=64).populations == [[0, 1, 2]]
    taxi = compose_train(["env=taxi"])
    assert grouping.eligibility(taxi) is None
    assert grouping.plan([cfgs[0], taxi], max_members=64).populations == [[0], [1]]  # another env splits


def test_tabular_jobs_outside_the_stacked_update_stand_alone_with_a_reason() -> None:
    def why(*overrides: str) -> str | None:
        return grouping.eligibility(compose_train(["env=frozenlake", *overrides]))

    assert why("optimizer=adam").startswith("optimizer Adam: a Q-table population steps SGD")
    assert why("optimizer.momentum=0.9").startswith("optimizer SGD")
    assert why("learner.munchausen=true").startswith("learner.munchausen=true")
    assert why("device=mps") == "device=mps: populations run on the CPU or on CUDA"
    for joins in (["learner.double=true"], ["learner.loss=huber"], ["replay=uniform", "replay.n_step=3"]):
        assert why(*joins) is None, joins
    # replay=latest stands alone everywhere but the Q-table
    assert why("network=mlp", "learner.loss=huber", "optimizer=adam").startswith("replay=latest")


# --- the stacked update equals each member's solo update -----------------------------------------------
@pytest.mark.parametrize(("loss", "double", "n_step", "weights"), [
    ("half_sse", False, False, False), ("half_sse", True, True, False), ("huber", False, False, True),
    ("mse", True, False, False)])
def test_ten_stacked_updates_of_ragged_batches_equal_each_members_solo_updates(
        loss: str, double: bool, n_step: bool, weights: bool) -> None:
    extra = [f"learner.loss={loss}", f"learner.double={str(double).lower()}"]
    solo = [_dqn([*m, *extra]) for m in MEMBERS]
    twins = [_dqn([*m, *extra]) for m in MEMBERS]
    pop = stack_members(twins)
    assert isinstance(pop, TablePopulationLearner) and pop.adam.lr == [0.05, 0.2, 0.05]
    gen = torch.Generator().manual_seed(5)
    for step in range(10):
        if step == 5:  # a target sync in the middle: hard for tau 1, polyak for tau 0.5
            for d in solo:
                d.learner.sync_target()
            pop.sync_targets([0, 1, 2])
        # every member its own width (latest replay after some envs autoreset); weighted batches are full
        widths = [8, 8, 8] if weights else [8 - (step + i) % 4 for i in range(3)]
        rows = {i: _batch(gen, w, n_step, weights) for i, w in enumerate(widths)}
        for d, b in zip(solo, rows.values(), strict=True):
            d.learner.update(b)
        pop.update(stack_batches(rows, 3), [True] * 3, widths=widths)
    for i, (d, twin) in enumerate(zip(solo, twins, strict=True)):
        export_member(pop, i, twin)
        torch.testing.assert_close(twin.learner.online.table, d.learner.online.table, atol=1e-6, rtol=0)
        torch.testing.assert_close(twin.learner.target.table, d.learner.target.table, atol=1e-6, rtol=0)
        assert twin.learner.updates == d.learner.updates == 10
        got, want = twin.learner.read_metrics(), d.learner.read_metrics()
        assert got["td_loss"] == pytest.approx(want["td_loss"], rel=1e-5)
        assert got["q_values"] == pytest.approx(want["q_values"], rel=1e-5)
        assert not twin.learner.optimizer.state  # SGD without momentum keeps none, as the solo run's
    # and the members learned different things (their own alpha, gamma, cap, tau)
    assert not torch.allclose(solo[0].learner.online.table, solo[1].learner.online.table)


def test_the_stacked_tables_act_greedily_as_each_member_and_a_leaving_member_keeps_the_others() -> None:
    dqns = [_dqn(m) for m in MEMBERS]
    gen = torch.Generator().manual_seed(1)
    for d in dqns:  # distinct tables, with ties left in (a fresh table is all ties: the first action wins)
        d.learner.online.table.data[:8] = torch.randint(0, 3, (8, ACTIONS), generator=gen).float()
    pop = stack_members(dqns)
    obs = np.random.default_rng(0).integers(0, STATES, size=(3, 12))
    got = pop.greedy(obs)
    for i, d in enumerate(dqns):
        np.testing.assert_array_equal(got[i], d.learner.greedy_actions(obs[i]))
    np.testing.assert_array_equal(pop.greedy(obs[[2, 0]], rows=[2, 0]), got[[2, 0]])
    rows = pop.online.flat[[0, 2]].clone()
    pop.keep([0, 2])
    assert pop.k == 2 and torch.equal(pop.online.flat, rows) and pop.adam.lr == [0.05, 0.05]
    np.testing.assert_array_equal(pop.greedy(obs[[0, 2]]), got[[0, 2]])


def test_only_the_active_members_step_and_padded_rows_add_nothing() -> None:
    pop = stack_members([_dqn(m) for m in MEMBERS[:2]])
    gen = torch.Generator().manual_seed(2)
    before = pop.online.flat.clone()
    rows = {0: _batch(gen, 3, False, False), 1: _batch(gen, 6, False, False)}
    pop.update(stack_batches(rows, 2), active=[False, True], widths=[3, 6])
    assert torch.equal(pop.online.flat[0], before[0]) and not torch.equal(pop.online.flat[1], before[1])
    assert list(pop.updates) == [0, 1]
    # member 0's three rows alone, padded to 6 or not, change its table alike
    a, b = stack_members([_dqn(MEMBERS[0])]), stack_members([_dqn(MEMBERS[0])])
    a.update(stack_batches({0: rows[0]}, 1))
    padded = stack_batches({0: rows[0], 1: rows[1]}, 2)
    b.update(Batch(*(None if x is None else x[:1] for x in padded)), widths=[3])
    assert torch.equal(a.online.flat, b.online.flat)


def test_a_member_whose_latest_batch_is_empty_learns_nothing_while_the_others_do() -> None:
    """After a vector step where every env of a member autoreset, ``replay=latest`` hands it no row: its solo run
    skips the update (no step, no count), and so does it in the population."""
    pop = stack_members([_dqn(m) for m in MEMBERS])
    gen = torch.Generator().manual_seed(4)
    before = pop.online.flat.clone()
    assert update_together(pop, {0: _batch(gen, 0, False, False), 1: _batch(gen, 0, False, False)}) == []
    assert torch.equal(pop.online.flat, before) and list(pop.updates) == [0, 0, 0]
    update_together(pop, {0: _batch(gen, 0, False, False), 1: _batch(gen, 5, False, False),
                          2: _batch(gen, 2, False, False)})
    assert list(pop.updates) == [0, 1, 1] and torch.equal(pop.online.flat[0], before[0])


def test_q_table_members_with_a_history_share_replay_columns_and_gather_their_own_rows() -> None:
    """``network=tabular replay=uniform``: integer states (one number a row) in the shared columns
    (`dqnrun.population.rows`); one gather returns each member's own batch, as its own replay samples it."""
    from dqnrun.population.rows import StackedRows

    def members():
        return [_dqn([*m, "replay=uniform", "replay.n_step=3", "replay.batch_size=16"]) for m in MEMBERS]

    mine, twins = members(), members()
    rng = np.random.default_rng(0)
    for _ in range(30):  # the same vector steps into every member and its twin
        obs, nxt = rng.integers(0, STATES, 8), rng.integers(0, STATES, 8)
        step = (obs, rng.integers(0, ACTIONS, 8), (rng.random(8) < 0.2).astype(np.float32), nxt,
                rng.random(8) < 0.1, np.zeros(8, bool), np.ones(8, bool))
        for d in (*mine, *twins):
            d.replay.add(*step)
    replays = [d.replay for d in mine]
    assert StackedRows.fits(replays)
    rows = StackedRows(replays)
    batch = rows.gather({s: (*replays[s].sampler.draw(2, 0), replays[s]) for s in range(3)}, 3)
    assert batch.obs.shape == (3, 2, 16) and batch.obs.dtype == torch.int64
    for s, twin in enumerate(twins):
        own = twin.replay.sample(n_batches=2)
        for name in ("obs", "action", "reward", "next_obs", "terminated", "discount"):
            assert torch.equal(getattr(batch, name)[s], getattr(own, name)), name
