"""Action masks end to end, on an env that ends an episode with -10 at any illegal action: with
env.action_mask=true no illegal action is ever taken, in training or evaluation, whichever way the env reports
its legal actions, for 1 env and several, PQN and DQN (Double, n-step, C51), and the agent learns the corridor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import tests.custom_envs as C
from dqnrun import load, train
from tests.conftest import run_cli

INFO, DICT = "tests.custom_envs:DqnrunTest/MaskedCorridor-v0", "tests.custom_envs:DqnrunTest/MaskedCorridorDict-v0"
PQN = ["algo=pqn", "total_steps=40000", "algo.lr_decay_steps=40000", "schedule.decay_steps=20000",
       "network.hidden=[64,64]", "optimizer.lr=1e-3"]
DQN = ["algo=dqn", "total_steps=10000", "network.hidden=[64,64]"]
COMMON = ["env.action_mask=true", "eval.every=10000", "eval.episodes=20", "log.progress=false", "seed=0",
          "checkpoint.every=0"]


@pytest.mark.parametrize(("env", "algo", "extra"), [
    (INFO, PQN, ["env.num_envs=4"]),
    pytest.param(DICT, PQN, ["env.num_envs=1", "algo.num_steps=128", "algo.minibatches=2"],
                 marks=pytest.mark.thorough),
    (INFO, DQN, ["env.num_envs=1"]),  # the fast path's numpy actor, masked
    pytest.param(DICT, DQN, ["env.num_envs=4", "learner.double=true", "replay.n_step=3"], marks=pytest.mark.thorough),
    pytest.param(INFO, DQN, ["env.num_envs=2", "learner.distributional=true", "network.v_min=-10",
                             "network.v_max=2"], marks=pytest.mark.thorough),
])
def test_no_illegal_action_ever_and_the_corridor_is_learned(env: str, algo: list[str], extra: list[str],
                                                            tmp_path: Path) -> None:
    C.MaskedCorridor.illegal = 0
    r = train([f"env.id={env}", *algo, *COMMON, *extra], run_dir=tmp_path / "run")
    assert r["status"] == "completed"
    assert C.MaskedCorridor.illegal == 0  # training, its evaluations and the env check
    assert r["best_eval_return"] >= 0.9, r["eval_history"]  # reaches the end: no -10, at most ~10 steps
    agent = load(tmp_path / "run")
    res = agent.evaluate(episodes=10)
    assert C.MaskedCorridor.illegal == 0 and min(res["returns"]) > 0.5
    ev = run_cli(["eval", f"ckpt={tmp_path / 'run'}", "episodes=5"], tmp_path,
                 env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert ev.returncode == 0, ev.stderr
    written = json.loads(Path(re.search(r"\((\S+eval\.json)\)", ev.stdout).group(1)).read_text())
    assert len(written["returns"]) == 5 and min(written["returns"]) > 0.5  # an illegal action would give -10


def test_an_api_agent_acts_through_the_envs_mask(tmp_path: Path) -> None:
    import gymnasium as gym

    train([f"env.id={INFO}", *PQN[:1], "total_steps=2048", "algo.num_steps=64", "env.num_envs=4",
           "env.action_mask=true", "eval.every=0", "log.progress=false"], run_dir=tmp_path / "run")
    agent = load(tmp_path / "run")
    env = gym.make("DqnrunTest/MaskedCorridor-v0")
    C.MaskedCorridor.illegal = 0
    for ep in range(5):
        obs, info = env.reset(seed=ep)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(agent.act(obs, mask=info["action_mask"], epsilon=0.3,
                                                           rng=np.random.default_rng(ep)))
            done = term or trunc
    assert C.MaskedCorridor.illegal == 0
