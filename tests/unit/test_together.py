"""`dqnrun.envs.together`: several members' CartPole vector envs stepped as one numpy computation return, and
leave behind, exactly what each member's own ``SyncVectorEnv.step`` does."""

from __future__ import annotations

import numpy as np
import pytest

from dqnrun.envs import make_vector_env
from dqnrun.envs.state import capture, restore
from dqnrun.envs.together import CartPoleTogether


def _members(n: int, envs: int = 4) -> list:
    vecs = [make_vector_env("CartPole-v1", envs) for _ in range(n)]
    for m, vec in enumerate(vecs):
        vec.reset(seed=100 * m)
    return vecs


def _policy(rng: np.random.Generator, obs: np.ndarray) -> np.ndarray:
    """Mostly a balancing controller (episodes that reach the 500-step limit), sometimes random (falls)."""
    balance = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)
    return np.where(rng.random(len(obs)) < 0.15, rng.integers(0, 2, len(obs)), balance)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _same_step(got: tuple, want: tuple) -> bool:
    """Two vector steps' returns alike: observations, rewards and flags equal in dtype, shape and every bit."""
    return all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
               for a, b in zip(got[:4], want[:4], strict=True)) and got[4] == want[4]


def _step_alike(stepper, alone: list, acts: list) -> list:
    """Step ``stepper``'s members together and each twin in ``alone`` on its own with ``acts`` (None: that member
    sits out); assert the returns alike and give the twins' (None where one sat out)."""
    got = stepper.step(acts)
    wants: list = []
    for m, vec in enumerate(alone):
        if acts[m] is None:
            assert got[m] is None
            wants.append(None)
            continue
        wants.append(vec.step(acts[m]))
        assert _same_step(got[m], wants[-1]), m
    return wants


def test_members_stepped_together_return_and_keep_what_each_sync_step_does() -> None:
    alone, together = _members(3), _members(3)
    assert CartPoleTogether.fits(together)
    stepper = CartPoleTogether(together)
    rng = np.random.default_rng(0)
    obs = [v._observations.copy() for v in alone]
    ends = {"terminated": 0, "truncated": 0}
    for t in range(1500):
        acts = [_policy(rng, o) for o in obs]
        acts[1] = None if t % 7 == 3 else acts[1]  # a member that does not step this round
        for m, want in enumerate(_step_alike(stepper, alone, acts)):
            if want is None:
                continue
            assert want[4] == {}
            obs[m] = want[0].copy()
            ends["terminated"] += int(want[2].sum())
            ends["truncated"] += int(want[3].sum())
        if t % 100 == 0 or t == 1499:  # what a checkpoint would hold of each member's envs
            for a, b in zip(alone, together, strict=True):
                assert _same(capture(a), capture(b)), t
    assert ends["terminated"] > 10 and ends["truncated"] > 0  # both kinds of episode end were crossed
    assert stepper.stepped_together > 0.95 * 4 * (3 * 1500 - 1500 // 7)  # nearly all took the numpy step


def test_a_member_restored_from_a_checkpoint_steps_on_together_as_alone() -> None:
    alone, together = _members(2), _members(2)
    stepper = CartPoleTogether(together)
    rng = np.random.default_rng(1)
    for _ in range(60):
        acts = [rng.integers(0, 2, 4) for _ in range(2)]
        stepper.step(acts)
        for vec, a in zip(alone, acts, strict=True):
            vec.step(a)
    saved = capture(together[0])
    fresh = _members(2)  # a resume: new envs, the saved state put back
    restore(fresh[0], saved)
    restore(fresh[1], capture(together[1]))
    stepper = CartPoleTogether(fresh)
    for _ in range(200):
        acts = [rng.integers(0, 2, 4) for _ in range(2)]
        _step_alike(stepper, alone, acts)
    assert all(_same(capture(a), capture(b)) for a, b in zip(alone, fresh, strict=True))


def test_members_of_other_sizes_and_a_member_reset_by_hand_step_as_alone() -> None:
    """Members with as many envs each keep their step arrays as rows of shared ones; a member whose vector env is
    reset by hand (new arrays) steps on from its new state, as do members of other sizes (nothing shared)."""
    for sizes in ((4, 4, 4), (4, 6, 3)):
        alone = [make_vector_env("CartPole-v1", n) for n in sizes]
        together = [make_vector_env("CartPole-v1", n) for n in sizes]
        for m, (a, b) in enumerate(zip(alone, together, strict=True)):
            a.reset(seed=11 * m)
            b.reset(seed=11 * m)
        stepper = CartPoleTogether(together)
        assert (stepper.arrays is not None) == (len(set(sizes)) == 1)
        rng = np.random.default_rng(5)
        obs = [v._observations.copy() for v in alone]
        ends = 0
        for t in range(300):
            if t == 150:  # a reset outside the stepper: the vector env makes new step arrays
                alone[1].reset(seed=99)
                together[1].reset(seed=99)
                obs[1] = alone[1]._observations.copy()
            acts = [rng.integers(0, 2, len(o)) for o in obs]  # random: poles fall every few dozen steps
            for m, want in enumerate(_step_alike(stepper, alone, acts)):
                obs[m] = want[0].copy()
                ends += int(want[2].sum()) if t > 150 and m == 1 else 0
            if t % 50 == 0:
                assert all(_same(capture(a), capture(b)) for a, b in zip(alone, together, strict=True)), (sizes, t)
        assert ends > 5


@pytest.mark.parametrize("case", ["numpy_vector", "other_env", "single", "sutton_barto", "wrapped"])
def test_envs_off_the_plain_path_are_not_stepped_together(case: str) -> None:
    import gymnasium as gym

    if case == "numpy_vector":
        vecs = [make_vector_env("CartPole-v1", 16)]  # Gymnasium's CartPoleVectorEnv: one generator for all
    elif case == "other_env":
        vecs = [make_vector_env("Acrobot-v1", 4)]
    elif case == "single":
        vecs = [make_vector_env("CartPole-v1", 1)]  # SingleVectorEnv
    elif case == "sutton_barto":
        vecs = [make_vector_env("CartPole-v1", 4, kwargs={"sutton_barto_reward": True})]
    else:
        vecs = [make_vector_env("CartPole-v1", 4, wrapper=gym.wrappers.RecordEpisodeStatistics)]
    assert not CartPoleTogether.fits(_members(1) + vecs)


def test_members_numpy_cartpoles_stepped_together_return_and_keep_what_each_step_does() -> None:
    """Evaluations' envs (Gymnasium's CartPoleVectorEnv, one generator per member): stepped together, each member's
    returns, state, counters and generator stay what its own ``step`` makes them, members sitting out included."""
    from dqnrun.envs.together import CartPoleVectorTogether

    sizes = (8, 12, 9)
    alone = [make_vector_env("CartPole-v1", n) for n in sizes]
    together = [make_vector_env("CartPole-v1", n) for n in sizes]
    for m, (a, b) in enumerate(zip(alone, together, strict=True)):
        a.reset(seed=7 * m)
        b.reset(seed=7 * m)
    assert CartPoleVectorTogether.fits(together)
    stepper = CartPoleVectorTogether(together)
    rng = np.random.default_rng(3)
    obs = [a.state.T.astype(np.float32) for a in alone]
    ended = {"terminated": 0, "truncated": 0}
    for t in range(1200):
        acts: list = [_policy(rng, o) for o in obs]
        if t % 5 == 2:
            acts[2] = None
        for m, want in enumerate(_step_alike(stepper, alone, acts)):
            if want is None:
                continue
            obs[m] = want[0]
            ended["terminated"] += int(want[2].sum())
            ended["truncated"] += int(want[3].sum())
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.state, b.state) and np.array_equal(a.steps, b.steps)
        assert np.array_equal(a.prev_done, b.prev_done)
        assert a.np_random.bit_generator.state == b.np_random.bit_generator.state
    assert ended["terminated"] > 10 and ended["truncated"] > 0
    assert not CartPoleVectorTogether.fits([*together, make_vector_env("CartPole-v1", 4)])  # a SyncVectorEnv


def test_a_member_whose_env_raises_gets_its_exception_and_the_others_step_on() -> None:
    """One member's invalid action, another's env failing in its own reset: each gets its exception in place of its
    step (its runner records it as failed and stops stepping it), and the others step as they would alone."""
    alone, together = _members(3), _members(3)
    stepper = CartPoleTogether(together)
    rng = np.random.default_rng(2)
    gone: set[int] = set()

    def broken(**_: object) -> None:
        raise RuntimeError("reset exploded")

    for t in range(60):
        acts: list = [None if m in gone else rng.integers(0, 2, 4) for m in range(3)]
        if t == 20:
            acts[1] = np.array([0, 2, 1, 0])  # an action CartPole refuses
        if t == 30:
            together[2].envs[3].reset = broken  # member 2's fourth env fails at its next reset
            together[2]._autoreset_envs[3] = True
        got = stepper.step(acts)
        for m, vec in enumerate(alone):
            if m in gone:
                assert got[m] is None
            elif (t, m) == (20, 1):
                assert isinstance(got[m], AssertionError), got[m]
                gone.add(m)
            elif (t, m) == (30, 2):
                assert isinstance(got[m], RuntimeError) and "reset exploded" in str(got[m])
                gone.add(m)
            else:
                want = vec.step(acts[m])
                assert _same_step(got[m], want), (t, m)
    assert gone == {1, 2}
    assert _same(capture(alone[0]), capture(together[0]))


def test_an_env_checker_without_the_data_reuse_check_steps_together() -> None:
    """Gymnasium before 1.4: the env checker has no ``checked_data_reuse``."""
    alone, together = _members(2), _members(2)
    for vec in together:
        for env in vec.envs:
            link = env
            while hasattr(link, "env"):
                if "checked_data_reuse" in vars(link):
                    del link.checked_data_reuse
                link = link.env
    stepper = CartPoleTogether(together)
    rng = np.random.default_rng(4)
    for _ in range(100):
        acts = [rng.integers(0, 2, 4) for _ in range(2)]
        _step_alike(stepper, alone, acts)
    assert stepper.stepped_together > 0.8 * 100 * 8
