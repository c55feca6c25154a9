"""PQN populations end to end: a member is its solo twin, and an interrupted population resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.e2e.test_population import _ckpt_tensors, _same_bits, results

# 4 envs x 128 steps per rollout (CartPole's PQN preset), 4 epochs x 4 minibatches; over an MLP a PQN population
# forms on a CPU by default
PQN = ["algo=pqn", "env=cartpole", "total_steps=2048", "eval.every=1024", "eval.episodes=3", "log.every=512",
       "log.progress=false", "checkpoint.every=0", "algo.lr_decay_steps=2048", "schedule.decay_steps=1024"]
POP = ["hydra/launcher=population", "hydra.launcher.n_jobs=1"]


def test_a_pqn_member_trains_as_its_solo_twin(tmp_path: Path) -> None:
    sweep, solo = tmp_path / "sweep", tmp_path / "solo"
    proc = run_cli(["train", "-m", "seed=0,1", "optimizer.lr=2.5e-4,1e-3", *PQN, *POP, f"hydra.sweep.dir={sweep}"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "dqnrun train: 4 jobs in 1 population", proc.stdout
    proc = run_cli(["train", "seed=1", "optimizer.lr=1e-3", *PQN, f"hydra.run.dir={solo}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    member, twin = results(sweep / "3"), results(solo)  # job 3: seed 1, lr 1e-3
    assert member["population_members"] == 4
    for key in ("steps", "updates", "episodes", "eval_history", "status"):
        assert member[key] == twin[key], key
    assert member["updates"] == 4 * 16  # 4 rollouts x 4 epochs x 4 minibatches
    _close(sweep / "3", solo)


def _close(member: Path, twin: Path) -> None:
    """last.pt of a member and of its solo twin: weights, RAdam's moments and step, learning rate, shuffle
    generator, counters and metric sums, each equal or (floating point) within 1e-5."""
    ours, theirs = (_ckpt_tensors(d / "checkpoints" / "last.pt") for d in (member, twin))
    assert ours.keys() == theirs.keys()
    assert any(".exp_avg_sq" in k for k in ours) and any(".shuffle" in k for k in ours)
    for k, x in ours.items():
        y = theirs[k]
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=k)
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), k
        elif isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-4, abs=1e-6), k
        else:
            assert x == y, k


def test_an_interrupted_pqn_population_resumes_bit_for_bit(tmp_path: Path) -> None:
    """A SIGTERM at env step 1200, in the middle of a rollout: each member saves its rollout so far and resumes it."""
    grid = ["seed=0,1", *PQN, *POP]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    proc = run_cli(["train", "-m", *grid, f"hydra.sweep.dir={cut}"], tmp_path,
                   env={"DQNRUN_TEST_SIGNAL_AT_STEP": "1200"})
    assert proc.returncode == 128 + 15, proc.stderr
    assert all(results(cut / j)["steps"] == 1200 for j in ("0", "1"))
    assert run_cli(["train", "-m", *grid, f"resume={cut}"], tmp_path).returncode == 0
    assert run_cli(["train", "-m", *grid, f"hydra.sweep.dir={whole}"], tmp_path).returncode == 0
    for job in ("0", "1"):
        r = results(cut / job)
        assert r["status"] == "completed" and r["resumed_from_step"] == 1200
        assert r["eval_history"] == results(whole / job)["eval_history"]
        ours = _ckpt_tensors(cut / job / "checkpoints" / "last.pt")
        assert ours[".step"] == 2048 and not _same_bits(ours, _ckpt_tensors(whole / job / "checkpoints" / "last.pt"))


def test_a_pqn_member_whose_loss_goes_non_finite_fails_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "optimizer.lr=1e30,2.5e-4", "learner.max_grad_norm=null", *PQN, *POP,
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "dqnrun train: 2 jobs in 1 population" in proc.stdout
    assert "1 of 2 jobs failed" in proc.stderr
    failed = results(sweep / "0")
    assert failed["status"] == "failed" and failed["error"].startswith("non-finite loss or Q-value")
    other = results(sweep / "1")
    assert other["status"] == "completed" and other["steps"] == 2048 and other["objective"]["value"] is not None


@pytest.mark.slow
def test_pqn_members_that_end_first_leave_and_the_others_stay_their_solo_twins(tmp_path: Path) -> None:
    sweep, solo = tmp_path / "sweep", tmp_path / "solo"
    base = [a for a in PQN if not a.startswith("total_steps=")]
    proc = run_cli(["train", "-m", "seed=0,1", "total_steps=1024,2048", *base, *POP, f"hydra.sweep.dir={sweep}"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [results(sweep / j)["steps"] for j in "0123"] == [1024, 2048, 1024, 2048]
    proc = run_cli(["train", "seed=1", "total_steps=2048", *base, f"hydra.run.dir={solo}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    member, twin = results(sweep / "3"), results(solo)
    for key in ("steps", "updates", "episodes", "eval_history"):
        assert member[key] == twin[key], key
    _close(sweep / "3", solo)
