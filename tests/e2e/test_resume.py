"""Reliability: exact resume after a real signal, atomic checkpoints under kill -9, refused resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dqnrun import metrics as M
from dqnrun.run.checkpoint import load_checkpoint
from tests.conftest import run_cli, tb_dir

BASE = [
    "env=cartpole", "seed=3", "algo.learning_starts=300", "eval.every=500", "eval.episodes=3",
    "checkpoint.every=500", "log.every=100", "log.progress=false", "replay.capacity=1500",
    "algo.target_update_interval=100",
]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir(run_dir)), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _assert_same_training(a: Path, b: Path) -> None:
    ca, cb = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (a, b))
    sa, sb = ca["algo_state"], cb["algo_state"]
    assert ca["step"] == cb["step"] and sa["updates"] == sb["updates"]
    for k in ca["policy"]:
        assert torch.equal(ca["policy"][k], cb["policy"][k]), ("policy", k)
    for k in sa["target"]:
        assert torch.equal(sa["target"][k], sb["target"][k]), ("target", k)
    for k, v in sa["optimizer"]["state"].items():
        for name in v:
            assert torch.equal(v[name], sb["optimizer"]["state"][k][name]), (k, name)
    for tag in (M.TD_LOSS, M.Q_VALUES, M.EPISODIC_RETURN, M.EVAL_RETURN, M.EPSILON):
        sa, sb = _scalars(a, tag), _scalars(b, tag)
        assert sa == sb, tag  # same steps (none duplicated or missing) and bit-identical values
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for key in ("steps", "updates", "episodes", "eval_history", "best_eval_return", "final_eval_return"):
        assert ra[key] == rb[key], key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("full") / "run"
    proc = run_cli(["train", *BASE, "total_steps=2000", f"hydra.run.dir={d}"], d.parent)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_resume_after_sigterm_continues_exactly(uninterrupted: Path, tmp_path: Path) -> None:
    d = tmp_path / "run"
    args = ["train", *BASE, "total_steps=2000", f"hydra.run.dir={d}"]
    stopped = run_cli(args, tmp_path, env={"DQNRUN_TEST_SIGNAL_AT_STEP": "1234"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "resume=" in stopped.stderr
    interrupted = json.loads((d / "results.json").read_text())
    assert interrupted["status"] == "interrupted" and 1234 <= interrupted["steps"] < 2000
    assert interrupted["stop_reason"] == "interrupted"
    resumed = run_cli([*args, "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((d / "results.json").read_text())["resumed_from_step"] == interrupted["steps"]
    _assert_same_training(uninterrupted, d)


def test_resume_that_raises_total_steps_matches_a_longer_run(uninterrupted: Path, tmp_path: Path) -> None:
    d = tmp_path / "run"
    first = run_cli(["train", *BASE, "total_steps=1000", f"hydra.run.dir={d}"], tmp_path)
    assert first.returncode == 0, first.stderr
    # Resume by naming the run directory, from another cwd, raising the budget.
    resumed = run_cli(["train", f"resume={d}", "total_steps=2000"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "outputs").exists()  # continued in its own run dir, made no new one
    _assert_same_training(uninterrupted, d)


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BASE, "total_steps=400", "resume=auto", f"hydra.run.dir={d}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((d / "results.json").read_text())["resumed_from_step"] is None


@pytest.mark.parametrize(("override", "key"), [("env.id=Acrobot-v1", "env.id"),
                                               ("network.hidden=[32]", "network"),
                                               ("env.num_envs=2", "env.num_envs")])
def test_resume_refuses_changes_that_make_it_meaningless(uninterrupted: Path, override: str, key: str,
                                                         tmp_path: Path) -> None:
    before = (uninterrupted / "checkpoints" / "last.pt").read_bytes()
    proc = run_cli(["train", f"resume={uninterrupted}", override, "total_steps=3000"], tmp_path)
    assert proc.returncode == 2
    assert f"resume: {key} cannot change on resume" in proc.stderr
    assert (uninterrupted / "checkpoints" / "last.pt").read_bytes() == before


def _wait_for(pred, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError


def _popen(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dqnrun", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.thorough), signal.SIGTERM,
                                    pytest.param(signal.SIGUSR2, marks=pytest.mark.thorough)])
def test_external_signal_saves_last_checkpoint_and_exits_128_plus_signum(signum: int, tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = _popen(["train", *BASE, "total_steps=10000000", "eval.every=0", f"hydra.run.dir={d}"], tmp_path)
    _wait_for(lambda: (d / "checkpoints" / "last.pt").exists())
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    ckpt = load_checkpoint(d / "checkpoints" / "last.pt")
    assert ckpt["step"] >= 500  # written at the stop (which may come right after the periodic save at 500)
    results = json.loads((d / "results.json").read_text())
    assert results["status"] == "interrupted" and results["steps"] == ckpt["step"]


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = _popen(["train", *BASE, "total_steps=10000000", "eval.every=0", "checkpoint.every=400",
                   f"hydra.run.dir={d}"], tmp_path, env={"DQNRUN_TEST_SLOW_SAVE": "1.0"})
    ckpts = d / "checkpoints"
    _wait_for(lambda: (ckpts / "last.pt").exists())
    first_step = load_checkpoint(ckpts / "last.pt")["step"]
    # The next save is under way once any temp file shows up: kill the process in the middle of it.
    _wait_for(lambda: any(p.name.startswith(".") for p in ckpts.iterdir()))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert any(p.name.startswith(".") and ".tmp-" in p.name for p in ckpts.iterdir())  # torn temp file
    assert load_checkpoint(ckpts / "last.pt")["step"] == first_step  # previous one intact
    # and the run resumes from it
    resumed = run_cli(["train", *BASE, "total_steps=1000", "eval.every=0", "resume=auto", f"hydra.run.dir={d}"],
                      tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((d / "results.json").read_text())["resumed_from_step"] == first_step


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BASE, "total_steps=3000", "eval.every=0", "checkpoint.every=300", "optimizer=sgd",
                    "optimizer.lr=1e35", "learner.max_grad_norm=null", f"hydra.run.dir={d}"], tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "non-finite loss or Q-value between env steps" in proc.stderr
    assert "Traceback" not in proc.stderr
    ckpt = load_checkpoint(d / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["policy"].values())
    results = json.loads((d / "results.json").read_text())
    assert results["status"] == "failed" and results["stop_reason"] == "failed"
    assert results["error"].startswith("non-finite loss or Q-value between env steps")
    assert results["steps"] == ckpt["step"] + 300 or results["steps"] > ckpt["step"]


def test_in_training_evaluation_never_perturbs_the_training_streams(tmp_path: Path) -> None:
    """Evaluating every 300 steps, or never, must not change a single weight: eval has its own env and RNG."""
    runs = []
    for every in ("300", "0"):
        d = tmp_path / f"eval{every}"
        proc = run_cli(["train", *BASE, "total_steps=1200", f"eval.every={every}", f"hydra.run.dir={d}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        runs.append(torch.load(d / "checkpoints" / "last.pt", weights_only=True))
    assert runs[0]["loop"]["eval_history"] and not runs[1]["loop"]["eval_history"]
    for k in runs[0]["policy"]:
        assert torch.equal(runs[0]["policy"][k], runs[1]["policy"][k]), k


def test_only_keep_last_periodic_checkpoints_are_kept(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BASE, "total_steps=2000", "checkpoint.every=400", "checkpoint.keep_last=2",
                    f"hydra.run.dir={d}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (d / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "last.env.pt", "last.pt", "last.replay.pt", "step_0000001600.pt", "step_0000002000.pt"]
    assert load_checkpoint(d / "checkpoints" / "step_0000001600.pt")["step"] == 1600
