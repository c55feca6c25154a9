"""Signals at any moment end in one line, never a traceback, and an interrupt is always an interrupt: it saves
last.pt where it can and records the run as interrupted (never failed, never running)."""

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

from tests.conftest import run_cli

BASE = ["env=cartpole", "total_steps=3000", "algo.learning_starts=300", "eval.every=1000", "eval.episodes=3",
        "checkpoint.every=1000", "log.every=100", "log.progress=false", "replay.capacity=3000"]


def _popen(args: list[str], cwd: Path, **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dqnrun", *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)  # type: ignore[call-overload]


@pytest.mark.parametrize(("signum", "delay"), [
    (signal.SIGINT, 1.2), pytest.param(signal.SIGTERM, 1.2, marks=pytest.mark.thorough),
    pytest.param(signal.SIGINT, 0.3, marks=pytest.mark.thorough),
    pytest.param(signal.SIGTERM, 0.3, marks=pytest.mark.thorough)])
def test_a_signal_while_starting_up_ends_in_one_line(signum: int, delay: float, tmp_path: Path) -> None:
    proc = _popen(["train", *BASE, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    # 0: it finished before the signal came; -SIGTERM: the signal came before the interpreter reached dqnrun's code
    # (Python's own default: the process ends at once, writes nothing, prints nothing)
    allowed = (128 + signum, 0, -signal.SIGTERM) if signum == signal.SIGTERM else (128 + signum, 0)
    assert proc.returncode in allowed, err
    assert "Traceback" not in err + out
    results = tmp_path / "run" / "results.json"
    if results.exists():
        assert json.loads(results.read_text())["status"] != "running"


@pytest.mark.parametrize("action", ["term", pytest.param("int", marks=pytest.mark.thorough)])
def test_a_signal_while_building_is_an_interrupt_with_a_checkpoint(action: str, tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path, env={"DQNRUN_TEST_FAULT": f"build@{action}"})
    signum = signal.SIGINT if action == "int" else signal.SIGTERM
    assert proc.returncode == 128 + signum and "Traceback" not in proc.stderr
    r = json.loads((d / "results.json").read_text())
    assert r["status"] == "interrupted" and (d / "checkpoints" / "last.pt").exists()
    assert run_cli(["train", f"resume={d}"], tmp_path).returncode == 0


def test_a_second_ctrl_c_during_evaluation_aborts_in_one_line(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path,
                   env={"DQNRUN_TEST_FAULT": "evaluate#2@int,evaluate#2@int"})
    assert proc.returncode == 130, proc.stderr
    err = [line for line in proc.stderr.splitlines() if "dqnrun train" in line]
    assert "Traceback" not in proc.stderr and err == ["dqnrun train: interrupted (SIGINT)"]
    r = json.loads((d / "results.json").read_text())
    assert r["status"] == "interrupted"
    assert run_cli(["train", f"resume={d}"], tmp_path).returncode == 0  # from the last checkpoint


def test_ctrl_c_in_dqnrun_eval_ends_in_one_line(tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert run_cli(["train", *BASE, "total_steps=1000", f"hydra.run.dir={d}"], tmp_path).returncode == 0
    proc = _popen(["eval", f"ckpt={d}", "episodes=100000"], tmp_path, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "dqnrun eval: interrupted (SIGINT)"


def test_ctrl_c_under_a_pipe_whose_reader_died_saves_last_pt_and_records_an_interrupt(tmp_path: Path) -> None:
    """`dqnrun train ... 2>&1 | tee log` and Ctrl-C: tee dies first; every later write goes to a closed pipe."""
    d = tmp_path / "run"
    read, write = os.pipe()
    proc = _popen(["train", *BASE, "total_steps=200000", "checkpoint.every=0", "log.progress=true",
                   f"hydra.run.dir={d}"], tmp_path, stdout=write, stderr=write)
    os.close(write)
    with os.fdopen(read) as reader:
        while "training in" not in reader.readline():
            pass
        time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # the reader (tee) is gone: the pipe is closed
    assert proc.wait(timeout=120) == 130
    r = json.loads((d / "results.json").read_text())
    assert r["status"] == "interrupted" and r["stop_reason"] == "interrupted"
    ckpt = torch.load(d / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == r["steps"] > 0  # saved at the interrupt, not thousands of steps back
