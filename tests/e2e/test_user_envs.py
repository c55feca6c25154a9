"""Users' own environments: `module:EnvId` ids, env.kwargs.<name>=value for any name, and env.wrappers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

ENV = {"PYTHONPATH": str(REPO)}  # so that `tests.custom_envs` imports from any cwd
BUDGET = ["total_steps=800", "algo.learning_starts=200", "eval.every=400", "eval.episodes=4", "log.every=100",
          "log.progress=false", "replay.capacity=1000", "checkpoint.every=0", "env.num_envs=2",
          "algo.train_freq=2"]
WRAP_X10 = ("env.wrappers=[{_target_:gymnasium.wrappers.TransformReward,"
            "func:{_target_:tests.custom_envs.times,_partial_:true,k:10}}]")


def _run(tmp_path: Path, *args: str) -> Path:
    proc = run_cli(["train", "env.id=tests.custom_envs:DqnrunTest/Corridor-v0", *BUDGET, *args,
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "run"


def test_env_kwargs_name_works_whether_or_not_the_preset_sets_it(tmp_path: Path) -> None:
    # The default env config has kwargs: {} -- `size` is a new key, given without Hydra's `+`.
    run = _run(tmp_path, "env.kwargs.size=8")
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["env"]["kwargs"] == {"size": 8}
    assert ckpt["policy"]["net.0.weight"].shape[1] == 8  # the network saw 8-dim observations
    # FrozenLake's preset sets kwargs.map_name; overriding a key the preset has works the same way.
    proc = run_cli(["train", "env=frozenlake", "env.kwargs.map_name=8x8", "env.kwargs.is_slippery=false",
                    "--cfg", "job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "map_name: 8x8" in proc.stdout and "is_slippery: false" in proc.stdout


def test_wrappers_apply_to_training_and_evaluation_and_travel_in_the_checkpoint(tmp_path: Path) -> None:
    run = _run(tmp_path, "env.kwargs.size=4", WRAP_X10, "logger=[tensorboard,csv]")
    # Training: every episode return is 10x a 0/1 return (the wrapper multiplies rewards by 10).
    with open(run / "metrics.csv", newline="") as f:
        returns = [float(r["charts/episodic_return"]) for r in csv.DictReader(f) if r["charts/episodic_return"]]
    assert returns and set(returns) <= {0.0, 10.0} and 10.0 in returns
    results = json.loads((run / "results.json").read_text())
    assert results["best_eval_return"] in (0.0, 10.0)
    stored = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["config"]["env"]["wrappers"]
    assert stored[0]["_target_"] == "gymnasium.wrappers.TransformReward" and stored[0]["func"]["k"] == 10
    # Evaluation rebuilds the same env from the checkpoint alone: returns are multiples of 10 too.
    proc = run_cli(["eval", f"ckpt={run / 'checkpoints' / 'best.pt'}", "episodes=6"], tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr
    (eval_json,) = (tmp_path / "outputs").rglob("eval.json")
    assert set(json.loads(eval_json.read_text())["returns"]) <= {0.0, 10.0}


@pytest.mark.parametrize(("args", "pattern"), [
    (["env.wrappers=[{_target_:gymnasium.wrappers.NoSuchWrapper}]"], "env.wrappers[0]: cannot wrap the env"),
    (["env.wrappers=[gymnasium.wrappers.TimeAwareObservation]"], "env.wrappers must be a list of {_target_"),
    (["env=pong", "env.wrappers=[{_target_:gymnasium.wrappers.TimeAwareObservation}]"],
     "env.wrappers cannot wrap Atari's C++ vector env"),
    (["env.kwargs.nosuch=1"], "env.kwargs rejected by CartPole-v1"),
])
def test_bad_wrappers_and_kwargs_get_one_clear_line(args: list[str], pattern: str, tmp_path: Path) -> None:
    proc = run_cli(["train", *args], tmp_path, env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and pattern in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()
