"""PQN's parts, by hand: Q(lambda) returns (continuation, termination, truncation, autoreset, the rollout's end),
the rollout's saved state and the config's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dqnrun.algos.pqn.returns import q_lambda_returns
from dqnrun.algos.pqn.rollout import Rollout
from dqnrun.errors import UsageError
from tests.conftest import compose_train

G, L = 0.5, 0.5  # gamma, lambda: round numbers by hand


def _returns(reward, terminated=None, ended=None, valid=None, values=None, last=40.0, gamma=G, lam=L):  # noqa: ANN001, ANN202
    T = len(reward)
    col = lambda x, d: np.asarray(d if x is None else x).reshape(T, 1)  # noqa: E731
    return q_lambda_returns(col(reward, None).astype(np.float32), col(terminated, [False] * T),
                            col(ended, [False] * T), col(valid, [True] * T),
                            col(values, None).astype(np.float32), np.array([last]), gamma, lam)[:, 0]


def test_returns_blend_the_next_return_and_the_next_value() -> None:
    # G2 = 3 + .5*40 = 23; G1 = 2 + .5*(.5*23 + .5*30) = 15.25; G0 = 1 + .5*(.5*15.25 + .5*20) = 9.8125
    got = _returns([1, 2, 3], values=[10, 20, 30])
    np.testing.assert_allclose(got, [9.8125, 15.25, 23.0])


def test_a_termination_does_not_bootstrap_and_the_autoreset_step_is_not_a_transition() -> None:
    # t1 ends the episode in a terminal state; t2 is Gymnasium's autoreset step (obs = the final obs, no transition);
    # t3 starts the next episode. G3 = 4 + .5*40 = 24; G2 = 0 (not a transition); G1 = 2 (terminal);
    # G0 = 1 + .5*(.5*2 + .5*20) = 6.5
    got = _returns([1, 2, 0, 4], terminated=[0, 1, 0, 0], ended=[0, 1, 0, 0], valid=[1, 1, 0, 1],
                   values=[10, 20, 99, 30])
    np.testing.assert_allclose(got, [6.5, 2.0, 0.0, 24.0])


def test_a_truncation_bootstraps_from_the_final_observations_value() -> None:
    # t1 is truncated: its value at t2 (recorded when the agent saw the final observation) is the bootstrap,
    # with no lambda continuation into the next episode. G1 = 2 + .5*99 = 51.5; G0 = 1 + .5*(.5*51.5 + .5*20)
    got = _returns([1, 2, 0, 4], terminated=[0, 0, 0, 0], ended=[0, 1, 0, 0], valid=[1, 1, 0, 1],
                   values=[10, 20, 99, 30])
    np.testing.assert_allclose(got, [1 + 0.5 * (0.5 * 51.5 + 0.5 * 20), 51.5, 0.0, 24.0])


def test_an_episode_ending_at_the_rollouts_last_step() -> None:
    np.testing.assert_allclose(_returns([1, 2], terminated=[0, 1], ended=[0, 1], values=[10, 20]),
                               [1 + 0.5 * (0.5 * 2 + 0.5 * 20), 2.0])
    np.testing.assert_allclose(_returns([1, 2], ended=[0, 1], values=[10, 20], last=8.0),
                               [1 + 0.5 * (0.5 * 6 + 0.5 * 20), 6.0])


def test_lambda_zero_is_one_step_q_learning_and_lambda_one_a_bootstrapped_monte_carlo_return() -> None:
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=6), rng.normal(size=6)
    one_step = _returns(r, values=v, lam=0.0, gamma=0.9)
    np.testing.assert_allclose(one_step, r + 0.9 * np.append(v[1:], 40.0), rtol=1e-6)
    mc = _returns(r, values=v, lam=1.0, gamma=0.9)
    want = [sum(0.9 ** (k - t) * r[k] for k in range(t, 6)) + 0.9 ** (6 - t) * 40.0 for t in range(6)]
    np.testing.assert_allclose(mc, want, rtol=1e-5)


def test_envs_are_independent_columns() -> None:
    reward = np.array([[1.0, 5.0], [2.0, 6.0]], np.float32)
    ended = np.array([[False, True], [False, False]])
    values = np.array([[0.0, 0.0], [3.0, 7.0]], np.float32)
    out = q_lambda_returns(reward, ended, ended, np.ones((2, 2), bool), values, np.array([1.0, 2.0]), G, L)
    np.testing.assert_allclose(out[:, 0], _returns([1, 2], values=[0, 3], last=1.0))
    np.testing.assert_allclose(out[:, 1], _returns([5, 6], terminated=[1, 0], ended=[1, 0], values=[0, 7], last=2.0))


def test_the_rollout_saves_its_filled_steps_and_restores_them() -> None:
    r = Rollout(4, 2, (3,), np.dtype(np.float32))
    for t in range(3):
        r.add(np.full((2, 3), t), np.array([t, t + 1]), np.array([1.0, 2.0]), np.array([False, t == 2]),
              np.array([t == 1, False]), np.array([True, t != 1]), np.array([0.5, 0.25]))
    state = r.state_dict()
    assert state["pos"] == 3 and all(isinstance(v, torch.Tensor) for k, v in state.items() if k != "pos")
    back = Rollout(4, 2, (3,), np.dtype(np.float32))
    back.load_state_dict(state)
    assert back.pos == 3 and not back.full
    for f in Rollout.FIELDS:
        np.testing.assert_array_equal(getattr(back, f)[:3], getattr(r, f)[:3])
    np.testing.assert_array_equal(back.ended[:3, 0], [False, True, False])
    with pytest.raises(ValueError, match="does not fit"):
        Rollout(2, 2, (3,), np.dtype(np.float32)).load_state_dict(state)


@pytest.mark.parametrize(("overrides", "match"), [
    (["algo.minibatches=1000"], "algo.minibatches=1000 exceeds the rollout's 512 transitions"),
    (["total_steps=100"], "shorter than one rollout of 512 env steps"),
    (["algo.q_lambda=1.5"], "algo.q_lambda=1.5 is out of range"),
    (["learner.loss=half_sse"], "learner.loss='half_sse' is not one of mse | huber"),
    (["learner.double=true"], "'learner.double' is not a key of the config with algo=pqn"),
    (["network.noisy=true"], "network.noisy=true is not supported by algo=pqn"),
    (["algo.lr_decay_steps=0"], "algo.lr_decay_steps=0 is out of range"),
])
def test_pqn_settings_that_cannot_work_get_one_line(overrides: list[str], match: str) -> None:
    from dqnrun.config.rules import validate_train_config

    with pytest.raises(UsageError, match=match.replace("(", r"\(").replace("|", r"\|").replace(".", r"\.")):
        validate_train_config(compose_train(["algo=pqn", "env=cartpole", *overrides]))


def test_the_pqn_presets_follow_their_references() -> None:
    cp = compose_train(["algo=pqn", "env=cartpole"])
    assert cp.optimizer._target_ == "torch.optim.RAdam" and cp.optimizer.lr == 2.5e-4
    assert (cp.total_steps, cp.env.num_envs, cp.algo.num_steps, cp.algo.epochs, cp.algo.minibatches) == \
        (500_000, 4, 128, 4, 4)
    assert list(cp.network.hidden) == [120, 84] and cp.network.norm == "layernorm"
    assert cp.algo.lr_decay_steps == 500_000 and cp.schedule.decay_steps == 250_000 and cp.schedule.end == 0.05
    assert "replay" not in cp
    dqn = compose_train(["env=cartpole"])
    assert dqn.optimizer._target_ == "torch.optim.Adam" and dqn.network.get("norm") is None
