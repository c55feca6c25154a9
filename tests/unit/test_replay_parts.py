"""The replay's parts one by one: sum tree, row and frame storage, 1-step and n-step accumulators, samplers, and
how ReplayBuffer composes them. Expectations are computed by hand (gamma = 0.5 and small integer rewards keep
every return exact in float32)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dqnrun.replay import (
    FrameStorage,
    LatestSampler,
    NStepAccumulator,
    OneStep,
    PrioritizedSampler,
    ReplayBuffer,
    RowStorage,
    SumTree,
    UniformSampler,
)
from dqnrun.replay.samplers import annealed_beta

CPU = torch.device("cpu")


# --- sum tree ------------------------------------------------------------------------------------------------
def test_sum_tree_prefix_search_skips_zero_leaves_and_pads_to_a_power_of_two() -> None:
    tree = SumTree(5)
    assert (tree.leaves, tree.depth) == (8, 3)
    tree.update(np.arange(5), np.array([0.0, 3.0, 0.0, 1.0, 4.0]))
    assert tree.total == 8.0
    # prefix sums: row 1 covers [0, 3), row 3 [3, 4), row 4 [4, 8); rows 0 and 2 cover nothing
    assert tree.find(np.array([0.0, 2.99, 3.0, 3.99, 4.0, 7.99])).tolist() == [1, 1, 3, 3, 4, 4]
    assert tree.find(np.array([[0.5, 3.5]])).shape == (1, 2)  # any shape in, the same shape out


def test_sum_tree_update_recomputes_every_ancestor() -> None:
    tree = SumTree(4)
    tree.update(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    tree.update(np.array([0, 3]), np.array([5.0, 0.5]))
    # leaves 4..7 = [5, 2, 3, 0.5]; their parents 2, 3 = [7, 3.5]; the root 10.5
    assert tree.tree[1:4].tolist() == [10.5, 7.0, 3.5]
    assert tree.leaf_values(4).tolist() == [5.0, 2.0, 3.0, 0.5]


# --- row storage ---------------------------------------------------------------------------------------------
def row_columns(ids: list[int]) -> tuple[np.ndarray, ...]:
    """obs (R, 2) = [id, -id], next_obs = obs + 100, action = id, reward = id / 2, terminated = id odd."""
    a = np.asarray(ids)
    obs = np.stack([a, -a], axis=1).astype(np.float32)
    return obs, obs + 100, a, (a / 2).astype(np.float32), a % 2 == 1


@pytest.mark.parametrize("torch_ops", [False, True])
def test_row_storage_writes_wrap_and_keep_the_newest_rows(torch_ops: bool) -> None:
    store = RowStorage(4, (2,), torch.float32, CPU, gamma=0.9, with_discount=True)
    if torch_ops:
        store.use_torch_ops()
    assert store.write(*row_columns([1, 2, 3])) == (0, 3)
    assert store.write(*row_columns([4, 5]), discount=np.array([0.5, 0.25])) == (3, 2)  # 5 wraps to row 0
    assert (store.pos, store.size, store.last) == (1, 4, (3, 2))
    assert store.obs[:, 0].tolist() == [5, 2, 3, 4]
    assert store.next_obs[:, 1].tolist() == [95, 98, 97, 96]
    assert store.action.tolist() == [5, 2, 3, 4] and store.reward.tolist() == [2.5, 1.0, 1.5, 2.0]
    assert store.terminated.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert store.discount.tolist() == [0.25, np.float32(0.9), np.float32(0.9), 0.5]  # None leaves gamma
    # 6 rows into 4 slots: only the newest 4 (8..11) survive, written from pos 1 on
    store.write(*row_columns([6, 7, 8, 9, 10, 11]))
    assert store.obs[:, 0].tolist() == [11, 8, 9, 10] and (store.pos, store.last) == (1, (1, 4))
    store.skip()
    assert store.last == (1, 0)


def test_row_storage_gathers_any_leading_shape_with_discount_only_for_n_step() -> None:
    for with_discount in (False, True):
        store = RowStorage(8, (2,), torch.float32, CPU, with_discount=with_discount)
        store.write(*row_columns([10, 11, 12]))
        batch = store.gather(np.array([[2, 0], [1, 1]]))
        assert batch.obs[..., 0].tolist() == [[12, 10], [11, 11]]
        assert batch.next_obs.shape == (2, 2, 2) and batch.action.tolist() == [[12, 10], [11, 11]]
        assert (batch.discount is not None) == with_discount
        assert store.gather(torch.tensor([1])).obs[:, 0].tolist() == [11]  # device rows too
        assert store.valid(np.array([[0, 1]])).tolist() == [[True, True]]


def test_row_storage_state_round_trip_and_size() -> None:
    src = RowStorage(5, (2,), torch.float32, CPU)
    src.write(*row_columns([1, 2, 3]))
    src.write(*row_columns([4, 5, 6, 7]))
    state = src.state_dict()
    assert state["obs"].shape == (5, 2) and (state["pos"], state["size"], state["last"]) == (2, 5, [3, 4])
    dst = RowStorage(5, (2,), torch.float32, CPU)
    dst.load_state_dict(state)
    assert torch.equal(dst.obs, src.obs) and (dst.pos, dst.size, dst.last) == (2, 5, (3, 4))
    assert RowStorage.nbytes(5, (2,), torch.float32) == 5 * (2 * 8 + 20)


# --- frame storage -------------------------------------------------------------------------------------------
def stack(*values: int) -> np.ndarray:
    """A stack (k, 1, 2) whose frame i is filled with values[i]."""
    return np.array([np.full((1, 2), v) for v in values], dtype=np.uint8)


def test_frame_storage_encodes_each_new_frame_once_and_gathers_exact_stacks() -> None:
    store = FrameStorage(10, (3, 1, 2), torch.uint8, CPU)
    # zero padding: frames 0 and 1 are stored once each (the padding 0, 0 shares a serial), then the next stack
    # continues the first, so only frame 2 is new
    o, n = store.encode(stack(0, 0, 1)[None], stack(0, 1, 2)[None])
    assert o.tolist() == [[0, 0, 1]] and n.tolist() == [[0, 1, 2]] and store.head == 3
    o, n = store.encode(stack(0, 1, 2)[None], stack(1, 2, 3)[None])  # obs is the current stack: reused
    assert o.tolist() == [[0, 1, 2]] and n.tolist() == [[1, 2, 3]] and store.head == 4
    # an autoreset to repeated-frame padding: one frame for the whole stack
    o, n = store.encode(stack(1, 2, 3)[None], stack(6, 6, 6)[None])
    assert o.tolist() == [[1, 2, 3]] and n.tolist() == [[4, 4, 4]] and store.head == 5
    # an obs that is not the current stack (e.g. after a resume): stored anew, here 3 distinct frames
    o, n = store.encode(stack(7, 8, 9)[None], stack(8, 9, 5)[None])
    assert o.tolist() == [[5, 6, 7]] and n.tolist() == [[6, 7, 8]] and store.head == 9
    assert [int(store.frames[s, 0, 0]) for s in range(9)] == [0, 1, 2, 3, 6, 7, 8, 9, 5]
    store.write(o, n, np.array([4]), np.array([1.0]), np.array([False]))
    batch = store.gather(np.array([0]))
    assert torch.equal(batch.obs[0], torch.from_numpy(stack(7, 8, 9)))
    assert torch.equal(batch.next_obs[0], torch.from_numpy(stack(8, 9, 5)))


def test_frame_storage_rows_turn_invalid_exactly_when_their_oldest_frame_is_overwritten() -> None:
    store = FrameStorage(2, (3, 1, 2), torch.uint8, CPU, num_envs=1, n_step=1)
    slots = FrameStorage.frame_slots(2, 3, 1, 1)
    assert slots == 2 + 0 + 2 * 3 * 1 * (1 + 3) == 26
    store.write(np.array([[0, 1, 2], [10, 11, 12]]), np.array([[1, 2, 3], [11, 12, 13]]), np.zeros(2, np.int64),
                np.zeros(2), np.zeros(2, bool))
    store._put_frames(np.zeros((26, 1, 2), np.uint8))  # head 26: serial 0 still in slot 0
    assert store.valid(np.array([0, 1])).tolist() == [True, True]
    store._put_frames(np.zeros((1, 1, 2), np.uint8))  # head 27 overwrites serial 0
    assert store.valid(np.array([0, 1])).tolist() == [False, True]
    store._put_frames(np.zeros((10, 1, 2), np.uint8))  # head 37: serials below 11 are gone
    assert store.valid(np.array([[1, 0]])).tolist() == [[False, False]]


def test_frame_storage_state_round_trip() -> None:
    src = FrameStorage(10, (3, 1, 2), torch.uint8, CPU)
    o, n = src.encode(stack(0, 0, 1)[None], stack(0, 1, 2)[None])
    src.write(o, n, np.array([1]), np.array([0.5]), np.array([True]))
    state = src.state_dict()
    assert state["storage"] == "frames" and state["frames"].shape == (3, 1, 2) and state["frame_head"] == 3
    assert state["cur_refs"].tolist() == [[0, 1, 2]] and state["obs_refs"].tolist() == [[0, 0, 1]]
    dst = FrameStorage(10, (3, 1, 2), torch.uint8, CPU)
    dst.load_state_dict(state)
    o, n = dst.encode(stack(0, 1, 2)[None], stack(1, 2, 3)[None])  # continues where src left off
    assert o.tolist() == [[0, 1, 2]] and n.tolist() == [[1, 2, 3]] and dst.head == 4


# --- accumulators --------------------------------------------------------------------------------------------
def test_one_step_is_the_identity_and_drops_autoreset_rows() -> None:
    acc = OneStep()
    obs, next_obs = np.zeros((3, 2)), np.ones((3, 2))
    action, reward, term, trunc = np.arange(3), np.array([1.0, 2.0, 3.0]), np.zeros(3, bool), np.zeros(3, bool)
    rows = acc.push(obs, action, reward, next_obs, term, trunc, np.ones(3, bool))
    assert rows[0] is obs and rows[1] is next_obs and rows[2] is action and rows[3] is reward and rows[5] is None
    rows = acc.push(obs, action, reward, next_obs, term, trunc, np.array([True, False, True]))
    assert rows[2].tolist() == [0, 2] and rows[3].tolist() == [1.0, 3.0]
    assert acc.push(obs, action, reward, next_obs, term, trunc, np.zeros(3, bool)) is None


# Two envs, n = 3, gamma = 0.5. Observations name themselves; (obs, action, reward, next_obs, terminated,
# truncated, valid) per env. NEXT_STEP autoreset: the step after an episode end is passed with valid=False.
#
#  t | env 0                                   | env 1
#  0 | 0  a0 r1 -> 1                            | 100 a1 r2  -> 101
#  1 | 1  a1 r2 -> 2   terminated (2 steps)     | 101 a2 r4  -> 102
#  2 | 2 -> 10 autoreset                        | 102 a0 r8  -> 103   window [100..102] full
#  3 | 10 a2 r1 -> 11  truncated (1 step)       | 103 a1 r16 -> 104   window [101..103] full
#  4 | 11 -> 20 autoreset                       | 104 a2 r32 -> 105   terminated: flush [102, 103, 104]
#  5 | 20 a0 r2 -> 21                           | 105 -> 110 autoreset
#  6 | 21 a1 r4 -> 22  terminated (2 steps)     | 110 a0 r1  -> 111   truncated (1 step): both end at once
HAND_SCRIPT = [
    ((0, 0, 1, 1, 0, 0, 1), (100, 1, 2, 101, 0, 0, 1)),
    ((1, 1, 2, 2, 1, 0, 1), (101, 2, 4, 102, 0, 0, 1)),
    ((2, 0, 0, 10, 0, 0, 0), (102, 0, 8, 103, 0, 0, 1)),
    ((10, 2, 1, 11, 0, 1, 1), (103, 1, 16, 104, 0, 0, 1)),
    ((11, 0, 0, 20, 0, 0, 0), (104, 2, 32, 105, 1, 0, 1)),
    ((20, 0, 2, 21, 0, 0, 1), (105, 0, 0, 110, 0, 0, 0)),
    ((21, 1, 4, 22, 1, 0, 1), (110, 0, 1, 111, 0, 1, 1)),
]
# (obs, next_obs, action, return, terminated, discount) per emitted row, in emission order: full windows first
# (by env), then the ended envs' pending steps (by env, oldest first)
HAND_ROWS = [
    [],
    [(0, 2, 0, 1 + 0.5 * 2, 1.0, 0.25), (1, 2, 1, 2, 1.0, 0.5)],
    [(100, 103, 1, 2 + 0.5 * 4 + 0.25 * 8, 0.0, 0.125)],
    [(101, 104, 2, 4 + 0.5 * 8 + 0.25 * 16, 0.0, 0.125), (10, 11, 2, 1, 0.0, 0.5)],
    [(102, 105, 0, 8 + 0.5 * 16 + 0.25 * 32, 1.0, 0.125), (103, 105, 1, 16 + 0.5 * 32, 1.0, 0.25),
     (104, 105, 2, 32, 1.0, 0.5)],
    [],
    [(20, 22, 0, 2 + 0.5 * 4, 1.0, 0.25), (21, 22, 1, 4, 1.0, 0.5), (110, 111, 0, 1, 0.0, 0.5)],
]


def push_script_step(acc: NStepAccumulator | OneStep, step: tuple) -> list[tuple] | None:
    c = list(zip(*step, strict=True))
    f32 = np.float32
    rows = acc.push(np.array(c[0], f32)[:, None], np.array(c[1]), np.array(c[2], f32), np.array(c[3], f32)[:, None],
                    np.array(c[4], bool), np.array(c[5], bool), np.array(c[6], bool))
    if rows is None:
        return None
    obs, nxt, action, ret, term, disc = rows
    return [(int(o[0]), int(x[0]), int(a), float(r), float(tm), float(d))
            for o, x, a, r, tm, d in zip(obs, nxt, action, ret, term, disc, strict=True)]


def test_n_step_rows_match_the_hand_table_in_emission_order() -> None:
    acc = NStepAccumulator(3, 0.5)
    for t, (step, expected) in enumerate(zip(HAND_SCRIPT, HAND_ROWS, strict=True)):
        rows = push_script_step(acc, step)
        assert (rows or []) == expected, t
        assert rows is not None or not expected, t
    # still pending: env 0 nothing (it just ended), env 1 nothing (it ended too)
    assert acc.length.tolist() == [0, 0] and acc.t == 7


def test_n_step_state_dict_has_the_checkpoint_format_and_resumes_mid_window() -> None:
    acc = NStepAccumulator(3, 0.5)
    for step in HAND_SCRIPT[:4]:
        push_script_step(acc, step)
    window = acc.state_dict()["window"]
    assert list(window) == ["obs", "action", "reward", "length", "t"]
    # slot t % 3: t=0 -> 0, t=1 -> 1, t=2 -> 2, t=3 -> 0; env 0 skipped t=2 (autoreset), so its slot 2 is unwritten
    assert window["reward"].tolist() == [[1.0, 16.0], [2.0, 4.0], [0.0, 8.0]]
    assert window["obs"].shape == (3, 2, 1) and window["length"].tolist() == [0, 3]
    assert window["t"].dtype == torch.int64 and window["t"].shape == () and int(window["t"]) == 4
    resumed = NStepAccumulator(3, 0.5)
    resumed.load_state_dict({"window": window})
    for step, expected in zip(HAND_SCRIPT[4:], HAND_ROWS[4:], strict=True):
        assert (push_script_step(resumed, step) or []) == expected


def reference_n_step(steps: list[tuple], n: int, gamma: float) -> list[list[tuple]]:
    """The n-step rules written plainly: per env a list of pending steps."""
    pending: list[list[tuple]] = [[] for _ in range(len(steps[0][1]))]
    out = []
    for obs, action, reward, next_obs, term, trunc, valid in steps:
        full, ended = [], []
        for e in np.flatnonzero(valid):
            pending[e].append((int(obs[e, 0]), int(action[e]), float(reward[e])))
            p = pending[e]
            if term[e] or trunc[e]:
                for i in range(len(p)):
                    ret = sum(gamma**j * r for j, (_, _, r) in enumerate(p[i:]))
                    ended.append((p[i][0], int(next_obs[e, 0]), p[i][1], ret, float(term[e]), gamma ** (len(p) - i)))
                pending[e] = []
            elif len(p) == n:
                ret = sum(gamma**j * r for j, (_, _, r) in enumerate(p))
                full.append((p[0][0], int(next_obs[e, 0]), p[0][1], ret, 0.0, gamma**n))
                p.pop(0)
        out.append(full + ended)
    return out


@pytest.mark.parametrize(("n", "n_envs"), [(2, 1), (3, 3), (4, 5)])
def test_n_step_matches_the_plain_rules_on_long_random_streams(n: int, n_envs: int) -> None:
    rng = np.random.default_rng(n)
    steps, autoreset, serial = [], np.zeros(n_envs, bool), 0
    obs = np.arange(n_envs)[:, None].astype(np.float32)
    for _ in range(600):
        next_obs = np.arange(serial + n_envs, serial + 2 * n_envs)[:, None].astype(np.float32)
        serial += n_envs
        u = rng.random(n_envs)
        valid = ~autoreset
        term, trunc = (u < 0.08) & valid, (u >= 0.08) & (u < 0.12) & valid
        reward = rng.integers(-4, 5, n_envs).astype(np.float32)
        steps.append((obs, rng.integers(0, 4, n_envs), reward, next_obs, term, trunc, valid))
        autoreset, obs = term | trunc, next_obs
    acc = NStepAccumulator(n, 0.5)
    for t, (step, expected) in enumerate(zip(steps, reference_n_step(steps, n, 0.5), strict=True)):
        rows = acc.push(*step)
        got = [] if rows is None else [(int(o[0]), int(x[0]), int(a), float(r), float(tm), float(d))
                                       for o, x, a, r, tm, d in zip(*rows, strict=True)]
        assert got == expected, t


def test_n_step_needs_at_least_two_steps() -> None:
    with pytest.raises(ValueError, match="OneStep"):
        NStepAccumulator(1, 0.9)


# --- samplers ------------------------------------------------------------------------------------------------
class StubStore:
    """Just what samplers read: size, capacity, last, device, may_invalidate and valid (even rows only)."""

    def __init__(self, size: int, capacity: int = 8, may_invalidate: bool = False, last: tuple = (0, 0)) -> None:
        self.size, self.capacity, self.may_invalidate, self.last, self.device = size, capacity, may_invalidate, \
            last, CPU

    def valid(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        return rows % 2 == 0 if self.may_invalidate else np.ones(rows.shape, dtype=bool)


def test_annealed_beta_is_linear_in_absolute_env_steps_then_one() -> None:
    assert [annealed_beta(0.4, 1000, s) for s in (0, 250, 1000, 5000)] == pytest.approx([0.4, 0.55, 1.0, 1.0])


def prioritized(store: StubStore, priorities: list[float], batch_size: int = 4, beta: float = 0.5,
                seed: int = 0) -> PrioritizedSampler:
    s = PrioritizedSampler(store, batch_size, np.random.default_rng(seed), alpha=1.0, beta=beta, beta_steps=100,
                           priority_eps=0.0)
    s.update(np.arange(len(priorities)), np.array(priorities))
    return s


def test_prioritized_weights_on_hand_set_priorities() -> None:
    s = prioritized(StubStore(4), [1.0, 2.0, 3.0, 4.0])
    rows, weights = s.draw(n_batches=50, step=100)  # beta = 1: w_i = p_min / p_i
    np.testing.assert_allclose(weights.numpy(), 1.0 / (rows + 1.0), rtol=1e-6)
    rows, weights = s.draw(step=0)  # beta = 0.5: w_i = (p_min / p_i)^0.5
    np.testing.assert_allclose(weights.numpy(), (1.0 / (rows + 1.0)) ** 0.5, rtol=1e-6)
    assert weights.dtype == torch.float32 and rows.shape == weights.shape == (4,)


def test_prioritized_draws_are_stratified_over_the_priority_mass() -> None:
    # total 10, 4 strata of 2.5: prefix ranges row 0 [0, 1), row 1 [1, 3), row 2 [3, 6), row 3 [6, 10)
    rows, _ = prioritized(StubStore(4), [1.0, 2.0, 3.0, 4.0]).draw(n_batches=400)
    assert set(rows[:, 0].tolist()) == {0, 1} and set(rows[:, 1].tolist()) == {1, 2}
    assert set(rows[:, 2].tolist()) == {2, 3} and set(rows[:, 3].tolist()) == {3}


def test_prioritized_new_rows_enter_with_the_highest_priority_seen() -> None:
    s = PrioritizedSampler(StubStore(4, capacity=4), 2, np.random.default_rng(0), alpha=0.5, priority_eps=0.0)
    s.on_write(0, 2)
    assert s.tree.leaf_values(4).tolist() == [1.0, 1.0, 0.0, 0.0]  # max priority starts at 1
    s.update(np.array([1]), np.array([9.0]))
    s.on_write(3, 2)  # rows 3 and, wrapping, 0
    assert s.tree.leaf_values(4).tolist() == [3.0, 3.0, 0.0, 3.0]  # 9^0.5


def test_prioritized_rows_met_invalid_leave_the_tree_and_are_redrawn() -> None:
    store = StubStore(8, may_invalidate=True)  # odd rows are invalid
    s = prioritized(store, [1.0] * 8, batch_size=8)
    for _ in range(20):
        rows, weights = s.draw(n_batches=2)
        assert np.all(rows % 2 == 0)
    leaves = s.tree.leaf_values(8)
    assert np.all(leaves[1::2] == 0) and np.all(leaves[::2] == 1)
    np.testing.assert_allclose(weights.numpy(), 1.0)  # the rows left all have the lowest priority


def test_uniform_sampler_draws_on_the_device_or_on_the_host_with_redraws() -> None:
    gen = torch.Generator().manual_seed(5)
    expected = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(5))
    rows, weights = UniformSampler(StubStore(6), 4, gen, np.random.default_rng(0)).draw(n_batches=3)
    assert torch.equal(rows, expected) and weights is None
    host = UniformSampler(StubStore(6, may_invalidate=True), 4, gen, np.random.default_rng(0))
    rows, _ = host.draw(n_batches=50)
    assert isinstance(rows, np.ndarray) and rows.shape == (50, 4) and set(rows.ravel().tolist()) == {0, 2, 4}
    with pytest.raises(ValueError, match="empty"):
        UniformSampler(StubStore(0), 4, gen, np.random.default_rng(0)).draw()


def test_latest_sampler_returns_the_rows_of_the_last_write_across_the_wrap() -> None:
    sampler = LatestSampler(StubStore(5, capacity=5, last=(3, 3)))
    assert sampler.draw()[0].tolist() == [3, 4, 0]
    assert sampler.draw(n_batches=2)[0].tolist() == [[3, 4, 0], [3, 4, 0]]
    assert LatestSampler(StubStore(5, capacity=5, last=(2, 0))).draw(n_batches=2)[0].shape == (2, 0)


# --- the buffer: composition and checkpoint format -----------------------------------------------------------
@pytest.mark.parametrize(("kw", "parts"), [
    ({}, (RowStorage, OneStep, UniformSampler)),
    ({"n_step": 3, "prioritized": True}, (RowStorage, NStepAccumulator, PrioritizedSampler)),
    ({"latest": True}, (RowStorage, OneStep, LatestSampler)),
    ({"storage": "frames", "n_step": 2}, (FrameStorage, NStepAccumulator, UniformSampler)),
])
def test_constructor_arguments_pick_the_parts(kw: dict, parts: tuple) -> None:
    buf = ReplayBuffer(16, 4, (2, 3, 3), torch.uint8, **kw)
    assert tuple(type(p) for p in (buf.store, buf.accumulator, buf.sampler)) == parts
    assert (buf.tree is not None) == kw.get("prioritized", False)


def test_state_dict_keeps_the_checkpoint_format() -> None:
    k, hw, n_envs = 2, (3, 3), 2
    buf = ReplayBuffer(16, 4, (k, *hw), torch.uint8, storage="frames", n_step=3, prioritized=True, num_envs=n_envs)
    rng = np.random.default_rng(0)
    for _ in range(5):
        o = rng.integers(0, 255, (n_envs, k, *hw), dtype=np.uint8)
        buf.add(o, np.zeros(n_envs, np.int64), np.ones(n_envs, np.float32), o, np.zeros(n_envs, bool),
                np.zeros(n_envs, bool), np.ones(n_envs, bool))
    f = io.BytesIO()
    torch.save(buf.state_dict(), f)
    f.seek(0)
    state = torch.load(f, weights_only=True)
    assert set(state) == {"action", "reward", "terminated", "discount", "pos", "size", "capacity", "last",
                          "generator", "np_rng", "max_priority", "storage", "frames", "frame_head", "frame_slots",
                          "obs_refs", "next_refs", "cur_refs", "cur_obs", "priorities", "window"}
    assert state["reward"].shape == state["priorities"].shape == (6,) and state["obs_refs"].shape == (6, k)
    assert state["window"]["reward"].shape == (3, n_envs) and state["window"]["obs"].shape == (3, n_envs, k)
    plain = ReplayBuffer(16, 4, (2,), torch.float32).state_dict()
    assert set(plain) == {"action", "reward", "terminated", "discount", "pos", "size", "capacity", "last",
                          "generator", "np_rng", "max_priority", "obs", "next_obs"}
