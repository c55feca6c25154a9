"""Faults get one line naming what failed and why, and lose nothing: a full disk, a read-only filesystem, an env
that raises or returns the wrong thing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dqnrun.run.checkpoint import load_checkpoint
from tests.conftest import REPO, run_cli

BASE = ["env=cartpole", "total_steps=3000", "algo.learning_starts=300", "eval.every=500", "eval.episodes=2",
        "checkpoint.every=500", "log.progress=false", "replay.capacity=4000"]
BROKEN = ["env.id=tests.custom_envs:DqnrunTest/Broken-v0", "env.num_envs=2", "total_steps=3000",
          "algo.learning_starts=100", "eval.every=0", "log.progress=false"]
PYTHONPATH = {"PYTHONPATH": str(REPO)}


def _mount(path: Path, size: str, readonly: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    if not _mount(disk, "600k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-fault tests cover the same code")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("dqnrun ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_earlier_checkpoints(small_disk: Path,
                                                                                  tmp_path: Path) -> None:
    d = small_disk / "run"
    proc = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path)
    assert proc.returncode == 3
    line = _one_error_line(proc.stderr)
    assert "the disk is full" in line and str(d) in line, line
    last = d / "checkpoints" / "last.pt"
    if last.exists():  # the first save fit: it is intact
        assert load_checkpoint(last)["step"] >= 500


@pytest.mark.parametrize(("fault", "words"), [
    ("last.pt:writing#2@enospc", "the disk is full"),
    pytest.param("last.replay.pt:writing#2@enospc", "the disk is full", marks=pytest.mark.thorough),
    pytest.param("best.pt:writing#1@erofs", "the filesystem is read-only", marks=pytest.mark.thorough)])
def test_a_failed_write_is_one_line_and_the_last_checkpoint_stays_loadable(fault: str, words: str,
                                                                           tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path, env={"DQNRUN_TEST_FAULT": fault})
    assert proc.returncode == 3
    assert words in _one_error_line(proc.stderr)
    saved = (d / "checkpoints" / "last.pt").exists()
    if saved:
        assert load_checkpoint(d / "checkpoints" / "last.pt")["step"] == 500
    assert json.loads((d / "results.json").read_text())["status"] == "failed"
    assert not list(d.rglob(".*.tmp-*"))
    # and it resumes (a run that failed before its first checkpoint starts afresh with resume=auto)
    again = ["train", f"resume={d}"] if saved else ["train", *BASE, "resume=auto", f"hydra.run.dir={d}"]
    resumed = run_cli(again, tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_a_read_only_run_directory_and_an_export_into_one_are_one_line(tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert run_cli(["train", *BASE, "total_steps=1000", f"hydra.run.dir={d}"], tmp_path).returncode == 0
    ro = tmp_path / "ro"
    if not _mount(ro, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["cp", "-a", str(d), str(ro)], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        export = run_cli(["export", f"ckpt={ro / 'run'}"], tmp_path)
        assert export.returncode == 2 and "the filesystem is read-only" in _one_error_line(export.stderr)
        resume = run_cli(["train", f"resume={ro / 'run'}", "total_steps=2000"], tmp_path)
        assert resume.returncode == 2 and "read-only" in _one_error_line(resume.stderr)
        ev = run_cli(["eval", f"ckpt={ro / 'run'}", "episodes=2"], tmp_path)  # eval writes nothing there: it works
        assert ev.returncode == 0, ev.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.parametrize(("bug", "words"), [
    ("raise_step", "step() raised RuntimeError: the simulator lost its connection"),
    pytest.param("step_shape", "step() returned an observation of shape (4,), but its observation_space is Box(5,)",
                 marks=pytest.mark.thorough),
    ("nan_obs", "the env returned non-finite observations"),
])
def test_an_env_that_misbehaves_is_named_with_what_it_did(bug: str, words: str, tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BROKEN, f"++env.kwargs.bug={bug}", f"hydra.run.dir={d}"], tmp_path, env=PYTHONPATH)
    assert proc.returncode == 3
    line = _one_error_line(proc.stderr)
    assert words in line and "DqnrunTest/Broken-v0" in line, line
    assert "optimizer.lr" not in line  # never blamed on the learning rate
    log = (d / "train.log").read_text()
    assert bug == "nan_obs" or "Traceback" in log  # the full traceback is in train.log


def test_learning_starts_0_with_3_step_returns_trains(tmp_path: Path) -> None:
    """The CartPole preset's 3-step returns: its buffer has no row for the first steps; no update samples it."""
    proc = run_cli(["train", "env=cartpole", "algo.learning_starts=0", "total_steps=800", "eval.every=0",
                    "log.progress=false", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["status"] == "completed" and r["updates"] >= 190
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 800
