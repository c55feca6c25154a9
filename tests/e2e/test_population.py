"""hydra/launcher=population end to end: members are real runs, a member is its solo twin, failures stay inside
their member, seeds per job, exact resume, the aggregate TensorBoard runs, submitit."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import TINY, run_cli

POP = ["hydra/launcher=population", "env=cartpole"]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def replay_rows(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.replay.pt", weights_only=False)["replay"]


def test_a_population_sweep_trains_real_runs_that_equal_their_solo_twins(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", "learner.distributional=false,true", *POP, *TINY,
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "dqnrun train: 4 jobs in 1 population and 2 jobs on their own", lines[:4]
    assert lines[1] == "  population 1: 2 members (jobs 0, 2)"
    assert "job 1 runs on its own: learner.distributional=True" in lines[2]
    assert "all 4 jobs finished" in proc.stdout
    for job in ("0", "1", "2", "3"):  # members and ordinary jobs alike: a solo sweep job's directory
        d = sweep / job
        for f in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/best.pt",
                  "train.log"):
            assert (d / f).exists(), d / f
        assert list((d / "tb").iterdir())
        assert results(d)["status"] == "completed" and results(d)["steps"] == 1200
    assert sorted(p.parent.name for p in sweep.rglob("results.json")) == ["0", "1", "2", "3"]
    assert "one of 2 members of population 1" in (sweep / "2" / "train.log").read_text()

    # the member of seed 1 (job 2) against its solo twin: the same env seeds, exploration and replay indices,
    # so the same actions and observations, stored row for row; the first rows are before learning starts
    solo = tmp_path / "solo"
    proc = run_cli(["train", "seed=1", "env=cartpole", *TINY, f"hydra.run.dir={solo}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    member, twin = replay_rows(sweep / "2"), replay_rows(solo)
    n = 400 // 4 * 4 - 8  # rows stored before learning starts (4 envs; the 3-step window holds some back)
    assert torch.equal(member["action"][:n], twin["action"][:n])
    assert torch.equal(member["obs"][:n], twin["obs"][:n])
    assert results(sweep / "2")["episodes"] > 0

    # eval, export, load and report take a member as they take any run
    ev = run_cli(["eval", f"ckpt={sweep / '2'}", "episodes=2"], tmp_path)
    assert ev.returncode == 0 and "mean return" in ev.stdout, ev.stderr
    ex = run_cli(["export", f"ckpt={sweep / '2'}", f"out={tmp_path / 'm.pt'}"], tmp_path)
    assert ex.returncode == 0 and (tmp_path / "m.pt").exists(), ex.stderr
    import numpy as np

    import dqnrun

    agent = dqnrun.load(sweep / "2")
    assert agent.act(np.zeros((3, 4), np.float32)).shape == (3,)
    rep = run_cli(["report", str(sweep)], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "learner.distributional" in rep.stdout and (sweep / "report.md").exists()


def test_a_member_whose_loss_goes_non_finite_fails_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "optimizer.lr=1e15,1e-3,3e-4", *POP, *TINY, "checkpoint.every=0",
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "dqnrun train: 3 jobs in 1 population" in proc.stdout  # one population: lr differs per member
    assert "1 of 3 jobs failed" in proc.stderr
    failed = results(sweep / "0")
    assert failed["status"] == "failed" and failed["error"].startswith("non-finite loss or Q-value")
    assert "non-finite loss" in (sweep / "0" / "train.log").read_text()
    for job in ("1", "2"):
        r = results(sweep / job)
        assert r["status"] == "completed" and r["steps"] == 1200 and r["objective"]["value"] is not None
