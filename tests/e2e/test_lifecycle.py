"""How a run starts, stops and says where it is: names and tags, init_from, stop_when_solved, stop_reason,
the closing lines."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, run_cli, tb_dir


def _only_run(cwd: Path) -> Path:
    (run,) = [p.parent for p in (cwd / "outputs").rglob("results.json")]
    return run


def test_name_and_tags_name_the_run_directory_its_tensorboard_run_and_results(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=cartpole", *TINY, "seed=2", "name=baseline", "tags=[lr-test,v2]"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = _only_run(tmp_path)
    assert run.parent.name.startswith("CartPole-v1+baseline+lr-test+v2+") and run.name.endswith("-seed2")
    # what the run is: env, name, seed, then the overrides that change it (bookkeeping such as log.every left out)
    assert tb_dir(run).name.startswith("CartPole-v1,baseline,seed=2,algo.learning_starts=400,eval.episodes=4,")
    assert "log.every" not in tb_dir(run).name and "checkpoint.every" not in tb_dir(run).name
    results = json.loads((run / "results.json").read_text())
    assert results["name"] == "baseline" and results["tags"] == ["lr-test", "v2"]


def test_the_last_lines_say_where_the_run_is_and_what_to_run_next(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=cartpole", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = _only_run(tmp_path).relative_to(tmp_path)
    tail = proc.stdout.strip().splitlines()[-4:]
    assert "completed: 1200 steps" in tail[0]
    assert tail[1].endswith(f"run directory: {run}")
    evaluate = tail[2].split("evaluate it:   ", 1)[1]
    assert evaluate.endswith(f" eval ckpt={run}/checkpoints/best.pt")
    assert tail[3].split("watch it:      ", 1)[1].endswith(f" --logdir {run}/tb")
    # what a run prints works as printed, from where it ran, without an activated venv
    path = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    path["PATH"] = "/usr/bin:/bin"
    done = subprocess.run(f"{evaluate} episodes=2", shell=True, cwd=tmp_path, env=path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    watch = tail[3].split("watch it:      ", 1)[1].split(" --logdir")[0]
    assert subprocess.run(f"{watch} --version", shell=True, cwd=tmp_path, env=path, capture_output=True,
                          timeout=120).returncode == 0
    results = json.loads((tmp_path / run / "results.json").read_text())
    assert results["status"] == "completed" and results["stop_reason"] == "completed"


def test_stop_when_solved_ends_at_the_first_evaluation_that_reaches_the_score(tmp_path: Path) -> None:
    # A score of 5 is reached by any CartPole policy: the first evaluation (step 600) solves it.
    proc = run_cli(["train", "env=cartpole", *TINY, "stop_when_solved=true", "env.solved_score=5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((_only_run(tmp_path) / "results.json").read_text())
    assert r["stop_reason"] == "solved" and r["status"] == "completed"
    assert r["steps"] == 600 and r["solved_at_step"] == 600 and r["eval_history"] == [[600, r["best_eval_return"]]]
    assert torch.load(_only_run(tmp_path) / "checkpoints" / "last.pt", weights_only=True)["step"] == 600


def test_stop_when_solved_needs_a_solved_score(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=acrobot", "env.solved_score=null", "stop_when_solved=true"], tmp_path)
    assert proc.returncode == 2 and "stop_when_solved=true needs env.solved_score" in proc.stderr


def test_init_from_starts_a_new_run_from_trained_weights_with_a_fresh_optimizer(tmp_path: Path) -> None:
    first = tmp_path / "first"
    proc = run_cli(["train", "env=cartpole", *TINY, f"hydra.run.dir={first}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    source = torch.load(first / "checkpoints" / "last.pt", weights_only=True)
    tuned = tmp_path / "tuned"
    # A learning rate so small that the weights after the fine-tuning updates still equal the source's.
    proc = run_cli(["train", "env=cartpole", *TINY, f"init_from={first / 'checkpoints' / 'last.pt'}",
                    "optimizer.lr=1e-30", f"hydra.run.dir={tuned}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(tuned / "checkpoints" / "last.pt", weights_only=True)
    for k, v in source["policy"].items():
        assert torch.allclose(ckpt["policy"][k], v) and torch.allclose(ckpt["algo_state"]["target"][k], v), k
    r = json.loads((tuned / "results.json").read_text())
    # Fresh counters: the same step budget and warm-up as a new run (not a continuation at step 1200).
    assert r["steps"] == 1200 and r["updates"] == (1200 - 400) // 4 and r["resumed_from_step"] is None
    assert r["init_from"].endswith("first/checkpoints/last.pt")
    # Fresh optimizer: Adam's step count is the new run's updates only.
    steps = {int(s["step"]) for s in ckpt["algo_state"]["optimizer"]["state"].values()}
    assert steps == {r["updates"]}


@pytest.mark.parametrize(("args", "pattern"), [
    (["init_from=/nonexistent.pt"], "init_from=/nonexistent.pt: no checkpoint found"),
    (["init_from=X", "resume=Y"], "init_from and resume exclude each other"),
])
def test_bad_init_from_gets_one_clear_line(args: list[str], pattern: str, tmp_path: Path) -> None:
    proc = run_cli(["train", *args], tmp_path)
    assert proc.returncode == 2 and pattern in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_init_from_a_network_that_does_not_fit_says_so(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert run_cli(["train", "env=cartpole", *TINY, f"hydra.run.dir={first}"], tmp_path).returncode == 0
    proc = run_cli(["train", "env=cartpole", *TINY, "network.hidden=[32]",
                    f"init_from={first}", f"hydra.run.dir={tmp_path / 'other'}"], tmp_path)
    assert proc.returncode == 2 and "its weights do not fit this run's network" in proc.stderr
