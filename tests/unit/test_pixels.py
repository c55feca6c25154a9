"""Pixels: life-loss semantics through the real loop, stored-once frames through the loop, ALE's vector env,
the conv networks composing with every head, and smoke runs of env=pong (with a video) and MinAtar."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from dqnrun.algos.dqn.learner import Learner
from dqnrun.envs import GAME_OVER
from dqnrun.networks import QNetwork
from dqnrun.replay import Batch, ReplayBuffer
from tests.loop_helpers import run_dqn_loop
from tests.unit.test_transitions import ListLogger, NoLearning

LIVES, LIFE = 3, 4  # a game of 3 lives, each lost after 4 steps: 12 steps and 12 reward per game


class LivesVectorEnv(gym.vector.VectorEnv):
    """E scripted games of LIVES lives. Each step rewards 1; every LIFE steps a life is lost: ``terminated``
    (the learner must not bootstrap) but the game goes on, except at the last life, which ends the game: then
    GAME_OVER is set and the next step is a NEXT_STEP autoreset (reward 0, action ignored).

    Observations are frame stacks (K, 2) whose newest frame names (env, game, t) and whose older frames are the
    previous newest frames (zeros before the game's first frame), like an Atari frame stack.
    """

    K = 3

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(0, 255, (self.K, 2), np.uint8)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.game = np.zeros(num_envs, np.int64)
        self.t = np.zeros(num_envs, np.int64)
        self.stack = np.zeros((num_envs, self.K, 2), np.uint8)
        self.pending_reset = np.zeros(num_envs, bool)

    def _frame(self, e: int) -> np.ndarray:
        return np.array([10 * e + self.game[e], self.t[e]], np.uint8)

    def _new_game(self, e: int) -> None:
        self.game[e] += 1
        self.t[e] = 0
        self.stack[e] = 0
        self.stack[e, -1] = self._frame(e)

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[np.ndarray, dict]:
        for e in range(self.num_envs):
            self._new_game(e)
        self.pending_reset[:] = False
        return self.stack.copy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        reward = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, bool)
        over = np.zeros(self.num_envs, bool)
        for e in range(self.num_envs):
            if self.pending_reset[e]:
                self._new_game(e)
                self.pending_reset[e] = False
                continue
            self.t[e] += 1
            self.stack[e] = np.roll(self.stack[e], -1, axis=0)
            self.stack[e, -1] = self._frame(e)
            reward[e] = 1.0
            if self.t[e] % LIFE == 0:
                terminated[e] = True
                over[e] = self.t[e] == LIVES * LIFE
                self.pending_reset[e] = over[e]
        return self.stack.copy(), reward, terminated, np.zeros(self.num_envs, bool), {GAME_OVER: over}


def _run(envs: gym.vector.VectorEnv, steps: int, storage: str, n_step: int = 1) -> tuple[ReplayBuffer, ListLogger]:
    replay = ReplayBuffer(1000, batch_size=1, obs_shape=(LivesVectorEnv.K, 2), obs_dtype=torch.uint8,
                          storage=storage, n_step=n_step, num_envs=envs.num_envs)
    logger = ListLogger()
    state, status = run_dqn_loop(envs, NoLearning(LivesVectorEnv.K * 2), replay, steps, logger)
    assert status == "completed"
    return replay, logger


def test_a_life_loss_cuts_the_bootstrap_the_game_goes_on_and_episodes_are_whole_games() -> None:
    envs = LivesVectorEnv(2)
    replay, logger = _run(envs, steps=2 * 30, storage="transitions")  # 30 vector steps: 2 games + 4 steps
    rows = replay.get_rows(np.arange(len(replay)))
    newest = rows.obs[:, -1].numpy().astype(int)
    nxt = rows.next_obs[:, -1].numpy().astype(int)
    term = rows.terminated.numpy()
    # Each stored transition moves one step within a game (never across the game-over autoreset) ...
    assert (nxt[:, 0] == newest[:, 0]).all() and (nxt[:, 1] == newest[:, 1] + 1).all()
    # ... is terminal exactly at each lost life, including those after which the game goes on ...
    assert np.array_equal(term, (nxt[:, 1] % LIFE == 0).astype(np.float32))
    # ... and the step after a non-final life loss is a real transition, stored like any other.
    after_loss = (newest[:, 1] % LIFE == 0) & (newest[:, 1] > 0) & (newest[:, 1] < LIVES * LIFE)
    assert after_loss.sum() == 2 * 2 * (LIVES - 1)  # 2 envs x 2 games x 2 such steps
    # 2 games x 12 steps per env, plus the 4 steps of the third game; the 2 autoreset steps are not stored.
    assert len(replay) == 2 * (2 * LIVES * LIFE + 4)
    returns = [r["charts/episodic_return"] for r, _ in logger.records if "charts/episodic_return" in r]
    lengths = [r["charts/episodic_length"] for r, _ in logger.records if "charts/episodic_length" in r]
    assert returns == [LIVES * LIFE] * 4 and lengths == [LIVES * LIFE] * 4  # whole games, not lives


@pytest.mark.parametrize("n_step", [1, 3])
def test_stored_once_frames_through_the_loop_equal_a_buffer_that_stores_every_obs(n_step: int) -> None:
    naive, _ = _run(LivesVectorEnv(3), steps=3 * 200, storage="transitions", n_step=n_step)
    frames, _ = _run(LivesVectorEnv(3), steps=3 * 200, storage="frames", n_step=n_step)
    assert len(frames) == len(naive) and frames.valid_rows().all()
    rows = np.arange(len(naive))
    a, b = naive.get_rows(rows), frames.get_rows(rows)
    for field in ("obs", "next_obs", "action", "reward", "terminated", "discount"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y), field


def test_ale_vector_env_loses_lives_without_resetting_and_marks_game_over_at_the_last() -> None:
    from dqnrun.envs.atari import make_vector_env

    envs = make_vector_env({"game": "breakout"}, 1, threads=1)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    losses = overs = 0
    previous_over = False
    for _ in range(1500):
        nxt, reward, terminated, truncated, info = envs.step(rng.integers(0, 4, 1))
        if terminated[0] and not info[GAME_OVER][0]:
            losses += 1
            assert info["lives"][0] > 0
        if not previous_over:  # within a game, also across a lost life, the frame stack goes on
            assert np.array_equal(nxt[0, :-1], obs[0, 1:])
        previous_over = bool(info[GAME_OVER][0])
        overs += previous_over
        assert float(reward[0]).is_integer() and reward[0] >= 0  # raw game points, never clipped
        obs = nxt
    envs.close()
    assert losses >= 4 and overs >= 1 and losses >= 4 * overs


@pytest.mark.parametrize("evaluation", [False, True])
def test_atari_envs_sent_together_step_as_each_does_alone(evaluation: bool) -> None:
    """A population sends every member's actions before it receives any (`Session.env_send`): three games
    playing side by side in their C++ threads return what each returns stepped on its own."""
    from dqnrun.envs import steps_in_two_halves
    from dqnrun.envs.atari import make_vector_env

    def games() -> list[Any]:
        envs = [make_vector_env({"game": "breakout"}, 2, threads=1, evaluation=evaluation) for _ in range(3)]
        for i, e in enumerate(envs):
            e.reset(seed=10 * i)
        return envs

    together, alone = games(), games()
    assert all(steps_in_two_halves(e) for e in together)
    rng = np.random.default_rng(0)
    for _ in range(300):
        actions = [rng.integers(0, 4, 2) for _ in together]
        for e, a in zip(together, actions, strict=True):
            e.send(a)
        for e, f, a in zip(together, alone, actions, strict=True):
            got, want = e.recv(), f.step(a)
            for x, y in zip(got[:4], want[:4], strict=True):
                assert np.array_equal(x, y)
            assert set(got[4]) == set(want[4]) and all(np.array_equal(got[4][k], want[4][k]) for k in want[4])
    for e in together + alone:
        e.close()


def _learner(net: QNetwork, **kw: Any) -> Learner:
    return Learner(net, copy.deepcopy(net), torch.optim.Adam(net.parameters(), lr=1e-4), **kw)


CNNS = {"nature": ((4, 84, 84), torch.uint8, {"conv": "nature", "hidden": [512], "pixel_scale": 1 / 255}),
        "minatar": ((10, 10, 4), torch.bool, {"conv": "minatar", "hidden": [128], "channels_last": True})}
HEADS = {"plain": ({}, {}), "dueling": ({"dueling": True}, {}), "noisy": ({"noisy": True}, {}),
         "c51": ({"head": "c51", "atoms": 11, "v_min": -5.0, "v_max": 5.0}, {"distributional": True}),
         "double": ({}, {"double": True}), "rainbow": ({"dueling": True, "noisy": True, "head": "c51", "atoms": 11},
                                                      {"double": True, "distributional": True})}


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("cnn", list(CNNS))
def test_conv_networks_compose_with_every_head(cnn: str, head: str) -> None:
    shape, dtype, kwargs = CNNS[cnn]
    net_kw, learner_kw = HEADS[head]
    torch.manual_seed(0)
    net = QNetwork(shape, 5, **kwargs, **net_kw)
    if net_kw.get("noisy"):  # the convolutions stay plain; every fully connected layer is noisy
        assert not any(hasattr(m, "reset_noise") for m in net.torso.modules())
        assert all(type(m).__name__ == "NoisyLinear" for m in net.modules() if isinstance(m, torch.nn.Linear))
    learner = _learner(net, **learner_kw)
    high = 256 if dtype == torch.uint8 else 2
    obs = torch.randint(0, high, (1, 4, *shape)).to(dtype)
    batch = Batch(obs, torch.randint(0, 5, (1, 4)), torch.ones(1, 4), obs.flip(1), torch.zeros(1, 4))
    before = [p.detach().clone() for p in net.parameters()]
    learner.update(batch)
    assert learner.read_metrics() is not None
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True) if a.numel() > 1)
    q = net(obs[0])
    assert q.shape == (4, 5) and torch.isfinite(q).all()
    actions = learner.greedy_actions(obs[0].numpy())
    assert actions.shape == (4,)


def test_the_minatar_network_takes_the_hand_written_update_and_matches_autograd() -> None:
    shape, _, kwargs = CNNS["minatar"]
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        net = QNetwork(shape, 3, **kwargs)
        learner = _learner(net, fast_mlp=fast)
        assert (learner.manual is not None) == fast
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            obs = torch.rand(1, 32, *shape, generator=g) > 0.5
            nxt = torch.rand(1, 32, *shape, generator=g) > 0.5
            learner.update(Batch(obs, torch.randint(0, 3, (1, 32), generator=g), torch.randn(1, 32, generator=g),
                                 nxt, (torch.rand(1, 32, generator=g) > 0.9).float()))
        x = np.random.default_rng(0).random((6, *shape)) > 0.5
        results.append(([p.detach().clone() for p in net.parameters()], learner.greedy_actions(x),
                         net(torch.as_tensor(x)).argmax(1).numpy()))
    (fast_params, fast_act, fast_net_act), (slow_params, _, _) = results
    for a, b in zip(fast_params, slow_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert np.array_equal(fast_act, fast_net_act)  # numpy acting on the live weights = the network
