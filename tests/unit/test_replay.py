"""ReplayBuffer: ring storage, the autoreset `valid` mask, dtypes, sampling and checkpoint round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dqnrun.replay import Batch, ReplayBuffer


def rows(ids: list[int], obs_dim: int = 2) -> dict[str, np.ndarray]:
    """A vector step whose every field is a function of a row id, so a stored row identifies itself.

    obs = [id, 10*id, ...], next_obs = obs + 1000, action = id % 3, reward = id / 2, terminated = id odd.
    """
    a = np.asarray(ids)
    obs = np.stack([a * 10.0**k for k in range(obs_dim)], axis=1).astype(np.float32)
    return {
        "obs": obs,
        "action": a % 3,
        "reward": (a / 2.0).astype(np.float32),
        "next_obs": obs + 1000.0,
        "terminated": a % 2 == 1,
        "truncated": np.zeros(len(a), bool),
    }


def add_ids(buf: ReplayBuffer, ids: list[int], valid: np.ndarray | None = None) -> None:
    buf.add(**rows(ids, buf.obs.shape[1]), valid=valid)


def stored_ids(buf: ReplayBuffer) -> list[int]:
    """Row id held in each slot (read from obs[:, 0])."""
    return [int(x) for x in buf.obs[:, 0].tolist()]


def assert_rows_consistent(obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                           next_obs: torch.Tensor, terminated: torch.Tensor) -> None:
    """Every field of every row belongs to the same transition id (fields were never mixed across rows)."""
    ids = obs[..., 0].round().long()
    assert torch.equal(obs[..., 1], ids.float() * 10.0)
    assert torch.equal(action, ids % 3)
    assert torch.equal(reward, ids.float() / 2.0)
    assert torch.equal(next_obs, obs + 1000.0)
    assert torch.equal(terminated, (ids % 2).float())


def test_ring_buffer_overwrites_oldest_rows_when_it_wraps() -> None:
    buf = ReplayBuffer(capacity=5, batch_size=2, obs_shape=(2,), obs_dtype=torch.float32)
    assert (buf.pos, buf.size, len(buf)) == (0, 0, 0)

    add_ids(buf, [1, 2])
    assert (buf.pos, buf.size) == (2, 2)
    assert stored_ids(buf)[:2] == [1, 2]

    add_ids(buf, [3, 4])
    assert (buf.pos, buf.size) == (4, 4)
    assert stored_ids(buf)[:4] == [1, 2, 3, 4]

    # 3 rows from pos 4: slot 4 gets row 5, then it wraps: slot 0 gets 6, slot 1 gets 7.
    add_ids(buf, [5, 6, 7])
    assert (buf.pos, buf.size, len(buf)) == (2, 5, 5)
    assert stored_ids(buf) == [6, 7, 3, 4, 5]
    assert_rows_consistent(buf.obs, buf.action, buf.reward, buf.next_obs, buf.terminated)


def test_ring_buffer_wraps_exactly_at_capacity_boundary() -> None:
    buf = ReplayBuffer(capacity=5, batch_size=2, obs_shape=(2,), obs_dtype=torch.float32)
    add_ids(buf, [1, 2, 3, 4, 5])
    assert (buf.pos, buf.size) == (0, 5)
    add_ids(buf, [6])
    add_ids(buf, [7])
    assert (buf.pos, buf.size) == (2, 5)
    assert stored_ids(buf) == [6, 7, 3, 4, 5]


def test_valid_mask_drops_autoreset_rows_and_keeps_order() -> None:
    buf = ReplayBuffer(capacity=10, batch_size=2, obs_shape=(2,), obs_dtype=torch.float32)
    add_ids(buf, [1, 2, 3, 4], valid=np.array([True, False, True, False]))
    assert (buf.pos, buf.size) == (2, 2)
    assert stored_ids(buf)[:2] == [1, 3]
    add_ids(buf, [5, 6, 7], valid=np.array([False, True, True]))
    assert (buf.pos, buf.size) == (4, 4)
    assert stored_ids(buf)[:4] == [1, 3, 6, 7]
    assert_rows_consistent(buf.obs[:4], buf.action[:4], buf.reward[:4], buf.next_obs[:4], buf.terminated[:4])


def test_all_invalid_step_stores_nothing() -> None:
    buf = ReplayBuffer(capacity=4, batch_size=2, obs_shape=(2,), obs_dtype=torch.float32)
    add_ids(buf, [1])
    add_ids(buf, [2, 3], valid=np.array([False, False]))
    assert (buf.pos, buf.size) == (1, 1)
    assert stored_ids(buf) == [1, 0, 0, 0]


def test_valid_mask_is_applied_across_the_wrap() -> None:
    buf = ReplayBuffer(capacity=3, batch_size=2, obs_shape=(2,), obs_dtype=torch.float32)
    add_ids(buf, [1, 2])
    add_ids(buf, [3, 4, 5, 6], valid=np.array([True, False, True, True]))  # stores 3, 5, 6
    # the 3 kept rows are written from pos 2: slot 2 <- 3, then wrapping, slot 0 <- 5, slot 1 <- 6
    assert (buf.pos, buf.size) == (2, 3)
    assert stored_ids(buf) == [5, 6, 3]


def test_stored_dtypes_follow_the_documented_layout() -> None:
    buf = ReplayBuffer(capacity=4, batch_size=2, obs_shape=(2, 3), obs_dtype=torch.uint8)
    obs = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) + 250  # wraps to 250..255, 0..5 in uint8
    buf.add(
        obs=obs,
        action=np.array([1, 0], dtype=np.int32),
        reward=np.array([0.5, -1.0], dtype=np.float64),
        next_obs=obs[::-1].copy(),
        terminated=np.array([True, False]),
        truncated=np.array([False, True]),
    )
    assert buf.obs.dtype == torch.uint8 and buf.next_obs.dtype == torch.uint8
    assert buf.obs.shape == (4, 2, 3) and buf.next_obs.shape == (4, 2, 3)
    assert buf.action.dtype == torch.int64 and buf.action.shape == (4,)
    assert buf.reward.dtype == torch.float32 and buf.reward.shape == (4,)
    assert buf.terminated.dtype == torch.float32 and buf.terminated.shape == (4,)
    assert torch.equal(buf.obs[:2], torch.from_numpy(obs))  # uint8 values unchanged, incl. 250..255
    assert torch.equal(buf.next_obs[:2], torch.from_numpy(obs[::-1].copy()))
    assert buf.action[:2].tolist() == [1, 0]
    assert buf.reward[:2].tolist() == [0.5, -1.0]
    # terminated comes from `terminated` only; a truncated row is stored as non-terminal
    assert buf.terminated[:2].tolist() == [1.0, 0.0]

    batch = buf.sample(n_batches=3)
    assert batch.obs.dtype == torch.uint8 and batch.next_obs.dtype == torch.uint8
    assert batch.action.dtype == torch.int64
    assert batch.reward.dtype == torch.float32 and batch.terminated.dtype == torch.float32


def test_float64_observations_are_stored_in_the_buffer_dtype() -> None:
    buf = ReplayBuffer(capacity=2, batch_size=1, obs_shape=(1,), obs_dtype=torch.float32)
    x = np.array([[0.1], [0.2]], dtype=np.float64)
    buf.add(x, np.array([0, 1]), np.zeros(2), x, np.zeros(2, bool), np.zeros(2, bool))
    assert buf.obs.dtype == torch.float32
    assert buf.obs[:, 0].tolist() == [np.float32(0.1), np.float32(0.2)]


def test_discrete_observations_store_as_scalar_int64() -> None:
    buf = ReplayBuffer(capacity=3, batch_size=4, obs_shape=(), obs_dtype=torch.int64)
    buf.add(np.array([3, 7]), np.array([0, 1]), np.zeros(2), np.array([4, 8]), np.zeros(2, bool), np.zeros(2, bool))
    assert buf.obs.shape == (3,) and buf.obs[:2].tolist() == [3, 7]
    assert buf.sample(n_batches=2).obs.shape == (2, 4)


@pytest.mark.parametrize(("n_batches", "lead"), [(None, (8,)), (1, (1, 8)), (3, (3, 8))])
def test_sample_has_leading_dims_b_or_g_b(n_batches: int | None, lead: tuple[int, ...]) -> None:
    buf = ReplayBuffer(capacity=20, batch_size=8, obs_shape=(2,), obs_dtype=torch.float32)
    add_ids(buf, list(range(1, 11)))
    batch = buf.sample() if n_batches is None else buf.sample(n_batches=n_batches)
    assert isinstance(batch, Batch)
    assert batch.obs.shape == (*lead, 2) and batch.next_obs.shape == (*lead, 2)
    assert batch.action.shape == lead and batch.reward.shape == lead and batch.terminated.shape == lead
    assert_rows_consistent(*batch[:5])


def test_sample_draws_only_filled_rows_and_all_of_them() -> None:
    buf = ReplayBuffer(capacity=1000, batch_size=64, obs_shape=(2,), obs_dtype=torch.float32, seed=3)
    add_ids(buf, [11, 12, 13])
    batch = buf.sample(n_batches=50)
    ids = set(batch.obs[..., 0].long().flatten().tolist())
    # 3200 draws from 3 rows: never an empty (all-zero) slot, and every filled row appears
    assert ids == {11, 12, 13}
    assert_rows_consistent(*batch[:5])


def test_sample_after_wrap_draws_from_every_slot_and_only_live_rows() -> None:
    buf = ReplayBuffer(capacity=4, batch_size=256, obs_shape=(2,), obs_dtype=torch.float32)
    add_ids(buf, [1, 2, 3, 4, 5, 6])  # one add that wraps: live rows are 5, 6, 3, 4
    ids = set(buf.sample(n_batches=4).obs[..., 0].long().flatten().tolist())
    assert ids == {3, 4, 5, 6}


def _filled(seed: int) -> ReplayBuffer:
    buf = ReplayBuffer(capacity=50, batch_size=16, obs_shape=(2,), obs_dtype=torch.float32, seed=seed)
    add_ids(buf, list(range(1, 41)))
    return buf


def test_same_seed_gives_same_samples_and_a_different_seed_does_not() -> None:
    a, b, c = _filled(7), _filled(7), _filled(8)
    for _ in range(3):
        sa, sb, sc = a.sample(n_batches=2), b.sample(n_batches=2), c.sample(n_batches=2)
        for x, y in zip(sa[:5], sb[:5], strict=True):
            assert torch.equal(x, y)
        assert not torch.equal(sa.obs, sc.obs)


def test_sampling_ignores_the_global_torch_rng() -> None:
    a, b = _filled(7), _filled(7)
    torch.manual_seed(0)
    sa = a.sample()
    torch.manual_seed(12345)
    torch.rand(100)
    assert torch.equal(sa.obs, b.sample().obs)


def _roundtrip_via_bytes(state: dict) -> dict:
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


@pytest.mark.parametrize("n_rows", [30, 73])  # partly filled, and wrapped (capacity 50)
def test_state_dict_round_trip_reproduces_next_samples_and_next_writes(n_rows: int) -> None:
    src = ReplayBuffer(capacity=50, batch_size=16, obs_shape=(2,), obs_dtype=torch.float32, seed=5)
    add_ids(src, list(range(1, n_rows + 1)))
    src.sample(n_batches=3)  # advance the generator so its state, not the seed, must be restored
    state = _roundtrip_via_bytes(src.state_dict())

    dst = ReplayBuffer(capacity=50, batch_size=16, obs_shape=(2,), obs_dtype=torch.float32, seed=999)
    dst.load_state_dict(state)
    assert (dst.pos, dst.size) == (src.pos, src.size)
    for _ in range(3):
        for x, y in zip(src.sample(n_batches=2)[:5], dst.sample(n_batches=2)[:5], strict=True):
            assert torch.equal(x, y)

    # the restored write position continues the ring exactly where the source would
    add_ids(src, [500, 501])
    add_ids(dst, [500, 501])
    assert torch.equal(src.obs, dst.obs) and torch.equal(src.next_obs, dst.next_obs)
    assert torch.equal(src.action, dst.action) and torch.equal(src.reward, dst.reward)
    assert torch.equal(src.terminated, dst.terminated)
    assert (dst.pos, dst.size) == (src.pos, src.size)


def test_load_state_dict_rejects_a_different_capacity() -> None:
    src = _filled(0)
    dst = ReplayBuffer(capacity=60, batch_size=16, obs_shape=(2,), obs_dtype=torch.float32)
    with pytest.raises(ValueError, match="capacity"):
        dst.load_state_dict(src.state_dict())


def test_nbytes_counts_two_observations_and_scalar_fields_per_row() -> None:
    # per row: obs + next_obs (2 * 84*84*4 uint8 bytes) + int64 action + float32 reward, terminated, discount
    assert ReplayBuffer.nbytes(10, (4, 84, 84), torch.uint8) == 10 * (2 * 4 * 84 * 84 + 8 + 4 + 4 + 4)
    assert ReplayBuffer.nbytes(3, (4,), torch.float32) == 3 * (2 * 16 + 20)
