"""ReplayBuffer(storage="frames"): stacked observations stored as frames, returned exactly as the env gave them.

The frame sequences here are built by hand (or by a small fake vector env, independent of the buffer), and
the reference is either a plain list of what the env returned or the per-row ``storage="transitions"``
buffer fed the same steps.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dqnrun.replay import Batch, ReplayBuffer

K, HW = 4, (6, 6)  # small stacks, so thousands of steps run in well under a second


class StackedEnvs:
    """E fake envs returning k stacked uint8 frames (E, k, *hw), with NEXT_STEP autoreset as in the loop.

    Within an episode each step shifts the stack and appends a new frame (sometimes a copy of the newest one,
    like a static screen). An episode ends by termination or truncation; the next step is an autoreset step
    (valid=False, reward 0) whose next_obs is the reset stack with ``padding`` before the reset frame:
    "zeros", "repeat" (the reset frame k times), "garbage" (random frames), or "mixed" (one of the three per
    episode). A life loss reports terminated=True but the stack goes on and the next step is a real one.
    """

    PADDINGS = ("zeros", "repeat", "garbage")

    def __init__(self, n_envs: int, seed: int = 0, k: int = K, hw: tuple[int, int] = HW, padding: str = "mixed",
                 p_end: float = 0.03, p_trunc: float = 0.01, p_life: float = 0.02, p_static: float = 0.05) -> None:
        self.n, self.k, self.hw, self.padding = n_envs, k, hw, padding
        self.p_end, self.p_trunc, self.p_life, self.p_static = p_end, p_trunc, p_life, p_static
        self.rng = np.random.default_rng(seed)
        self.obs = np.stack([self.reset_stack() for _ in range(n_envs)])
        self.autoreset = np.zeros(n_envs, dtype=bool)

    def frame(self) -> np.ndarray:
        return self.rng.integers(0, 256, self.hw, dtype=np.uint8)

    def reset_stack(self) -> np.ndarray:
        """(k, *hw): padding, then the reset frame."""
        pad = self.padding if self.padding != "mixed" else self.PADDINGS[self.rng.integers(3)]
        first = self.frame()
        if pad == "zeros":
            stack = np.zeros((self.k, *self.hw), np.uint8)
        elif pad == "repeat":
            stack = np.repeat(first[None], self.k, axis=0)
        else:
            stack = self.rng.integers(0, 256, (self.k, *self.hw), dtype=np.uint8)
        stack[-1] = first
        return stack

    def step(self) -> dict[str, np.ndarray]:
        """One vector step, as the loop passes it to ``add``."""
        n = self.n
        obs = self.obs.copy()
        next_obs = np.empty_like(obs)
        reward = np.round(self.rng.normal(size=n), 2).astype(np.float32)
        terminated, truncated, life = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        valid = ~self.autoreset
        for e in range(n):
            if self.autoreset[e]:
                next_obs[e], reward[e] = self.reset_stack(), 0.0
                continue
            next_obs[e, :-1] = obs[e, 1:]
            next_obs[e, -1] = obs[e, -1] if self.rng.random() < self.p_static else self.frame()
            u = self.rng.random()
            if u < self.p_end:
                terminated[e] = True
            elif u < self.p_end + self.p_trunc:
                truncated[e] = True
            elif u < self.p_end + self.p_trunc + self.p_life:
                terminated[e] = life[e] = True  # life loss: terminal for the learner, the stack goes on
        self.autoreset = (terminated | truncated) & valid & ~life
        self.obs = next_obs
        action = self.rng.integers(0, 6, n)
        return {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs.copy(),
                "terminated": terminated, "truncated": truncated, "valid": valid}


def frames_buffer(capacity: int, n_envs: int, **kw) -> ReplayBuffer:
    return ReplayBuffer(capacity, kw.pop("batch_size", 16), (K, *HW), torch.uint8, storage="frames",
                        num_envs=n_envs, **kw)


def transitions_buffer(capacity: int, **kw) -> ReplayBuffer:
    return ReplayBuffer(capacity, kw.pop("batch_size", 16), (K, *HW), torch.uint8, **kw)


def assert_same_rows(a: Batch, b: Batch) -> None:
    for name in ("obs", "next_obs", "action", "reward", "terminated", "discount"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), name


def row_key(obs: torch.Tensor, next_obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor) -> tuple:
    return obs.numpy().tobytes(), next_obs.numpy().tobytes(), int(action), float(reward)


# --- 1. hand-built sequences: every stored row is exactly what the env returned ---------------------------
def f(*values: int) -> np.ndarray:
    """A stack (len(values), 1, 2) whose frame i is filled with values[i]."""
    return np.array([np.full((1, 2), v) for v in values], dtype=np.uint8)


def test_hand_built_episode_starts_and_a_life_loss_come_back_exactly_with_one_frame_per_step() -> None:
    # (obs, next_obs, terminated, truncated, valid): zero padding, a life loss, a truncation, an autoreset to
    # repeat padding, a termination, an autoreset to garbage padding
    script = [
        (f(0, 0, 1), f(0, 1, 2), False, False, True),
        (f(0, 1, 2), f(1, 2, 3), True, False, True),  # life loss: terminated, the stack goes on
        (f(1, 2, 3), f(2, 3, 4), False, False, True),
        (f(2, 3, 4), f(3, 4, 5), False, True, True),  # truncated
        (f(3, 4, 5), f(6, 6, 6), False, False, False),  # autoreset: repeated reset frame
        (f(6, 6, 6), f(6, 6, 7), False, False, True),
        (f(6, 6, 7), f(6, 7, 8), True, False, True),  # terminated
        (f(6, 7, 8), f(9, 200, 10), False, False, False),  # autoreset: arbitrary padding
        (f(9, 200, 10), f(200, 10, 11), False, False, True),
    ]
    buf = ReplayBuffer(20, 4, (3, 1, 2), torch.uint8, storage="frames")
    for i, (obs, nxt, term, trunc, valid) in enumerate(script):
        buf.add(obs[None], np.array([i]), np.array([i / 4]), nxt[None], np.array([term]), np.array([trunc]),
                np.array([valid]))
    kept = [(i, s) for i, s in enumerate(script) if s[4]]
    assert len(buf) == len(kept) == 7
    batch = buf.get_rows(np.arange(len(buf)))
    for row, (i, (obs, nxt, term, _, _)) in enumerate(kept):
        assert torch.equal(batch.obs[row], torch.from_numpy(obs))
        assert torch.equal(batch.next_obs[row], torch.from_numpy(nxt))
        assert (int(batch.action[row]), float(batch.reward[row]), float(batch.terminated[row])) == (i, i / 4, term)
    # frames stored: 0, 1 (the first obs, its zero padding once), 2, 3, 4, 5, 6 (repeat padding once), 7, 8,
    # 9, 200, 10 (arbitrary padding: all of it), 11
    assert buf.frames_written == 13


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("padding", ["zeros", "repeat", "garbage", "mixed"])
def test_every_row_and_every_sample_is_exactly_what_the_env_returned(n_envs: int, padding: str) -> None:
    env = StackedEnvs(n_envs, seed=n_envs, padding=padding, p_end=0.08, p_life=0.05)
    buf = frames_buffer(5000, n_envs, seed=1, batch_size=32)
    expected: list[tuple] = []  # the valid transitions, in the order the buffer stores them
    for _ in range(400):
        s = env.step()
        buf.add(**s)
        for e in np.flatnonzero(s["valid"]):
            expected.append((s["obs"][e], s["next_obs"][e], s["action"][e], s["reward"][e], s["terminated"][e]))
    assert len(buf) == len(expected) > 300
    assert buf.valid_rows().all()
    batch = buf.get_rows(np.arange(len(buf)))
    for row, (obs, nxt, action, reward, term) in enumerate(expected):
        assert torch.equal(batch.obs[row], torch.from_numpy(obs)), row
        assert torch.equal(batch.next_obs[row], torch.from_numpy(nxt)), row
        assert (int(batch.action[row]), float(batch.reward[row]), float(batch.terminated[row])) == \
            (action, reward, float(term))
    known = {row_key(torch.from_numpy(o), torch.from_numpy(n), torch.tensor(a), torch.tensor(r))
             for o, n, a, r, _ in expected}
    sampled = buf.sample(n_batches=40)
    assert sampled.obs.shape == (40, 32, K, *HW) and sampled.obs.dtype == torch.uint8
    for o, n, a, r in zip(sampled.obs.flatten(0, 1), sampled.next_obs.flatten(0, 1), sampled.action.flatten(),
                          sampled.reward.flatten(), strict=True):
        assert row_key(o, n, a, r) in known


def test_an_obs_that_does_not_continue_the_buffers_last_next_obs_is_stored_as_given() -> None:
    # e.g. a resume whose envs start new episodes: the obs of the next add is not the last next_obs stored
    env = StackedEnvs(2, seed=4)
    buf = frames_buffer(100, 2)
    for _ in range(10):
        buf.add(**env.step())
    env.obs[1] = env.reset_stack()  # env 1 restarts behind the buffer's back
    env.autoreset[:] = False
    s = env.step()
    buf.add(**s)
    last = buf.get_rows(np.arange(len(buf) - 2, len(buf)))
    assert torch.equal(last.obs, torch.from_numpy(s["obs"]))
    assert torch.equal(last.next_obs, torch.from_numpy(s["next_obs"]))


# --- 2. against the per-row reference buffer, wrapping several times ---------------------------------------
def feed_both(steps: int, n_envs: int, capacity: int, seed: int = 0, env_kw: dict | None = None, **kw):
    env = StackedEnvs(n_envs, seed=seed, **(env_kw or {}))
    ref = transitions_buffer(capacity, seed=seed, **kw)
    buf = frames_buffer(capacity, n_envs, seed=seed, **kw)
    for _ in range(steps):
        s = env.step()
        ref.add(**s)
        buf.add(**s)
    return env, ref, buf


@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("n_envs", [1, 3])
def test_every_valid_row_equals_the_transitions_buffer_after_wrapping(n_step: int, n_envs: int) -> None:
    _, ref, buf = feed_both(3000, n_envs, capacity=700, n_step=n_step, gamma=0.9)
    assert len(ref) == len(buf) == 700 and ref.pos == buf.pos
    assert buf.frames_written > 4 * buf.capacity  # the frame ring wrapped several times too
    valid = np.flatnonzero(buf.valid_rows())
    assert len(valid) > 0.9 * len(buf)
    assert_same_rows(buf.get_rows(valid), ref.get_rows(valid))


@pytest.mark.parametrize("n_step", [1, 3])
def test_prioritized_samples_are_valid_rows_with_their_reference_contents(n_step: int) -> None:
    _, ref, buf = feed_both(2000, 3, capacity=500, n_step=n_step, prioritized=True, batch_size=32)
    valid = buf.valid_rows()
    rng = np.random.default_rng(0)
    for step in range(0, 2000, 100):
        batch = buf.sample(n_batches=3, step=step)
        assert batch.indices.shape == (3, 32) and batch.weights.shape == (3, 32)
        assert batch.obs.shape == (3, 32, K, *HW) and batch.next_obs.shape == (3, 32, K, *HW)
        assert valid[batch.indices].all()
        assert torch.all((batch.weights > 0) & (batch.weights <= 1.0))
        assert_same_rows(batch, ref.get_rows(batch.indices))
        buf.update_priorities(batch.indices, rng.random((3, 32)) * 5)
    single = buf.sample(step=10)
    assert single.indices.shape == (32,) and single.weights.shape == (32,) and single.obs.shape == (32, K, *HW)


def test_episodes_long_enough_for_the_slack_lose_no_rows() -> None:
    # zero padding costs 2 frames per episode start; with 250-step episodes that is 0.8% < the 1% slack
    env = StackedEnvs(1, seed=2, padding="zeros", p_end=0.0, p_trunc=0.0, p_life=0.01, p_static=0.0)
    buf = frames_buffer(5000, 1)
    for t in range(1, 30_000):
        s = env.step()
        if t % 251 == 0:  # this step ends the episode; the next one is the autoreset step
            s["truncated"][:] = True
            env.autoreset[:] = True
        buf.add(**s)
    assert buf.frames_written > 5 * buf.capacity
    assert buf.valid_rows().all()


# --- 3. invalid rows are never sampled -----------------------------------------------------------------------
def test_rows_whose_frames_were_overwritten_are_never_sampled() -> None:
    # 1-3 step episodes with arbitrary padding: each row costs ~3 frames, so the ring drops many old rows
    env_kw = {"padding": "garbage", "p_end": 0.5, "p_trunc": 0.1, "p_life": 0.0}
    _, ref, buf = feed_both(600, 2, capacity=300, seed=3, env_kw=env_kw, batch_size=64)
    valid = buf.valid_rows()
    assert 0.1 * len(buf) < np.count_nonzero(~valid) < 0.9 * len(buf)
    known = {row_key(*(getattr(b, n)[0] for n in ("obs", "next_obs", "action", "reward")))
             for b in (ref.get_rows(np.array([i])) for i in np.flatnonzero(valid))}
    batch = buf.sample(n_batches=50)
    for o, n, a, r in zip(batch.obs.flatten(0, 1), batch.next_obs.flatten(0, 1), batch.action.flatten(),
                          batch.reward.flatten(), strict=True):
        assert row_key(o, n, a, r) in known
    with pytest.raises(ValueError, match="overwritten"):
        buf.get_rows(np.flatnonzero(~valid)[:1])

    _, ref, per = feed_both(600, 2, capacity=300, seed=3, env_kw=env_kw, batch_size=64, prioritized=True)
    for _ in range(20):
        batch = per.sample(n_batches=4)
        assert valid[batch.indices].all()
        assert_same_rows(batch, ref.get_rows(batch.indices))
    # invalid rows met while sampling left the priority tree: no mass is wasted on them again
    leaves = per.tree.leaf_values(len(per))
    assert np.count_nonzero(leaves[~valid] == 0) > 0 and np.all(leaves[valid] > 0)


# --- 4. checkpoint round trip ------------------------------------------------------------------------------
def roundtrip(state: dict) -> dict:
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def compare_samples(a: ReplayBuffer, b: ReplayBuffer, n_batches: int, step: int) -> None:
    sa, sb = a.sample(n_batches=n_batches, step=step), b.sample(n_batches=n_batches, step=step)
    assert_same_rows(sa, sb)
    if sa.indices is not None:
        assert np.array_equal(sa.indices, sb.indices) and torch.equal(sa.weights, sb.weights)


@pytest.mark.parametrize(("steps", "n_step", "prioritized"), [(60, 1, False), (900, 3, False), (900, 3, True),
                                                              (900, 1, True)])
def test_state_dict_round_trip_continues_identically(steps: int, n_step: int, prioritized: bool) -> None:
    env = StackedEnvs(3, seed=8, p_end=0.1)
    kw = {"n_step": n_step, "prioritized": prioritized, "gamma": 0.9, "batch_size": 8}
    src = frames_buffer(500, 3, seed=5, **kw)
    for _ in range(steps):
        src.add(**env.step())
    src.sample(n_batches=2, step=steps)  # move the RNG on: its state, not the seed, must be restored
    state = roundtrip(src.state_dict())
    assert state["frames"].shape[0] == min(src.frames_written, src.frame_slots(500, K, 3, n_step))
    dst = frames_buffer(500, 3, seed=999, **kw)
    dst.load_state_dict(state)
    assert (dst.pos, dst.size, dst.frames_written) == (src.pos, src.size, src.frames_written)
    for t in range(300):
        s = env.step()
        src.add(**s)
        dst.add(**s)
        if t % 10 == 0:
            compare_samples(src, dst, 2, steps + t)
            if prioritized:
                td = np.random.default_rng(t).random((2, 8))
                batch = src.sample(n_batches=2)
                assert np.array_equal(batch.indices, dst.sample(n_batches=2).indices)
                src.update_priorities(batch.indices, td)
                dst.update_priorities(batch.indices, td)
    assert torch.equal(src.frames, dst.frames)
    assert_same_rows(src.get_rows(np.flatnonzero(src.valid_rows())), dst.get_rows(np.flatnonzero(dst.valid_rows())))


def test_load_state_dict_rejects_another_storage_or_ring_size() -> None:
    env = StackedEnvs(2, seed=1)
    src = frames_buffer(50, 2)
    for _ in range(5):
        src.add(**env.step())
    with pytest.raises(ValueError, match="storage"):
        transitions_buffer(50).load_state_dict(src.state_dict())
    with pytest.raises(ValueError, match="frame ring"):
        frames_buffer(50, 5).load_state_dict(src.state_dict())


# --- 5. the torch-op (accelerator) write path ------------------------------------------------------------------
@pytest.mark.parametrize(("n_step", "prioritized"), [(1, False), (3, True)])
def test_torch_op_path_stores_and_samples_like_the_numpy_path(n_step: int, prioritized: bool) -> None:
    env = StackedEnvs(3, seed=6, p_end=0.1)
    kw = {"n_step": n_step, "prioritized": prioritized, "gamma": 0.9, "batch_size": 8, "seed": 2}
    fast, torch_ops = frames_buffer(300, 3, **kw), frames_buffer(300, 3, **kw)
    torch_ops._use_torch_ops()
    assert torch_ops._views is None and torch_ops._frame_view is None
    for t in range(1500):  # wraps both rings
        s = env.step()
        fast.add(**s)
        torch_ops.add(**s)
        if t % 50 == 0 and len(fast):
            compare_samples(fast, torch_ops, 2, t)
        if t == 777:  # frames still waiting on the host (the accelerator path writes them at the next read)
            assert torch_ops.store._pending
            a, b = fast.state_dict(), torch_ops.state_dict()
            assert torch.equal(a["frames"], b["frames"]) and not torch_ops.store._pending
    assert torch.equal(fast.frames, torch_ops.frames)
    assert torch.equal(fast.obs_refs, torch_ops.obs_refs) and torch.equal(fast.next_refs, torch_ops.next_refs)
    for name in ("action", "reward", "terminated", "discount"):
        assert torch.equal(getattr(fast, name), getattr(torch_ops, name)), name


def test_torch_op_path_of_the_transitions_buffer_matches_too() -> None:
    env = StackedEnvs(2, seed=7)
    fast, torch_ops = transitions_buffer(100, seed=3), transitions_buffer(100, seed=3)
    torch_ops._use_torch_ops()
    for _ in range(300):
        s = env.step()
        fast.add(**s)
        torch_ops.add(**s)
    assert torch.equal(fast.obs, torch_ops.obs) and torch.equal(fast.next_obs, torch_ops.next_obs)
    assert_same_rows(fast.sample(n_batches=2), torch_ops.sample(n_batches=2))


# --- 6. sizes and shapes -------------------------------------------------------------------------------------
def test_nbytes_of_a_million_atari_frames_is_one_frame_per_row() -> None:
    need = ReplayBuffer.nbytes(1_000_000, (4, 84, 84), torch.uint8, storage="frames")
    assert 7.06e9 <= need <= 7.3e9
    assert 7.06e9 <= ReplayBuffer.nbytes(1_000_000, (4, 84, 84), torch.uint8, "frames", num_envs=8, n_step=3) <= 7.3e9
    # the default is still the per-row storage, and its number is unchanged
    assert ReplayBuffer.nbytes(10, (4, 84, 84), torch.uint8) == 10 * (2 * 4 * 84 * 84 + 20)


def test_nbytes_matches_what_a_frames_buffer_allocates() -> None:
    buf = frames_buffer(1000, 3, n_step=2)
    buf.add(**StackedEnvs(3).step())
    tensors = [buf.frames, buf.obs_refs, buf.next_refs, buf.action, buf.reward, buf.terminated, buf.discount]
    allocated = sum(t.numel() * t.element_size() for t in tensors) + buf._cur.nbytes
    assert ReplayBuffer.nbytes(1000, (K, *HW), torch.uint8, "frames", num_envs=3, n_step=2) == allocated


@pytest.mark.parametrize("shape", [(), (84,), (1, 84, 84)])
def test_frames_storage_needs_a_stack_of_at_least_two_frames(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="stacked observations"):
        ReplayBuffer(10, 2, shape, torch.uint8, storage="frames")
    with pytest.raises(ValueError, match="stacked observations"):
        ReplayBuffer.nbytes(10, shape, torch.uint8, storage="frames")


def test_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError, match="storage"):
        ReplayBuffer(10, 2, (4, 6, 6), torch.uint8, storage="pixels")


def test_latest_rows_come_back_from_frames_too() -> None:
    env = StackedEnvs(3, seed=9)
    buf = frames_buffer(10, 3, latest=True)
    for _ in range(20):
        s = env.step()
        buf.add(**s)
    batch = buf.sample(n_batches=2)
    keep = s["valid"]
    assert torch.equal(batch.obs, torch.from_numpy(s["obs"][keep])[None].expand(2, -1, -1, -1, -1))
    assert torch.equal(batch.next_obs[0], torch.from_numpy(s["next_obs"][keep]))
