"""One process per run directory, a record that is never spoiled, and locks that never outlive their owner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dqnrun.run.lock import LOCK_NAME, RunDirBusy, RunLock, owner_alive, read_lock
from tests.conftest import run_cli

BASE = ["env=cartpole", "total_steps=1500", "algo.learning_starts=300", "eval.every=500", "eval.episodes=3",
        "checkpoint.every=500", "log.progress=false", "replay.capacity=2000"]


def _popen(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dqnrun", *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def test_two_trainings_into_one_directory_one_runs_the_other_gets_one_line(tmp_path: Path) -> None:
    d = tmp_path / "run"
    procs = [_popen(["train", *BASE, f"seed={s}", f"hydra.run.dir={d}"], tmp_path) for s in (1, 2)]
    outs = [(p.wait(120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(rc for rc, _ in outs)
    assert codes == [0, 2], outs
    (winner,) = [i for i, (rc, _) in enumerate(outs) if rc == 0]
    loser_err = outs[1 - winner][1].strip().splitlines()
    assert len(loser_err) == 1 and ("is in use by pid" in loser_err[0] or "already holds a run" in loser_err[0])
    seed = winner + 1
    assert yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["seed"] == seed
    assert json.loads((d / "results.json").read_text())["seed"] == seed


@pytest.mark.thorough
def test_two_resumes_of_one_run_the_second_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert run_cli(["train", *BASE, "total_steps=600", f"hydra.run.dir={d}"], tmp_path).returncode == 0
    slow = _popen(["train", f"resume={d}", "total_steps=1500"], tmp_path, env={"DQNRUN_TEST_SLOW_SAVE": "1.5"})
    time.sleep(0.5)
    for _ in range(100):  # wait until the first resume owns the directory
        if read_lock(d) is not None:
            break
        time.sleep(0.1)
    second = run_cli(["train", f"resume={d}", "total_steps=1500"], tmp_path)
    assert second.returncode == 2 and f"pid {slow.pid}" in second.stderr, second.stderr
    assert slow.wait(120) == 0, slow.stderr.read()  # type: ignore[union-attr]
    assert json.loads((d / "results.json").read_text())["steps"] == 1500


def test_a_fresh_run_into_a_directory_that_holds_a_run_is_refused_before_writing(tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert run_cli(["train", *BASE, "total_steps=600", f"hydra.run.dir={d}"], tmp_path).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}
    proc = run_cli(["train", *BASE, "seed=9", f"hydra.run.dir={d}"], tmp_path)
    assert proc.returncode == 2 and f"resume={d}" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} == before  # .hydra/ included


def test_the_api_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    from dqnrun import UsageError, train

    train([*BASE, "total_steps=600"], run_dir=tmp_path / "run")
    with pytest.raises(UsageError, match="already holds a run"):
        train([*BASE, "total_steps=600"], run_dir=tmp_path / "run")


def test_a_lock_left_by_a_killed_process_never_blocks_a_resume(tmp_path: Path) -> None:
    d = tmp_path / "run"
    killed = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path, env={"DQNRUN_TEST_FAULT": "last.pt:replaced#2"})
    assert killed.returncode == -signal.SIGKILL
    assert (d / LOCK_NAME).exists()  # the dead process's lock is still there
    resumed = run_cli(["train", f"resume={d}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not (d / LOCK_NAME).exists()


def test_resume_auto_of_a_run_that_never_reached_a_checkpoint_starts_it_afresh(tmp_path: Path) -> None:
    d = tmp_path / "run"
    killed = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path, env={"DQNRUN_TEST_FAULT": "build"})
    assert killed.returncode == -signal.SIGKILL and not (d / "checkpoints" / "last.pt").exists()
    again = run_cli(["train", *BASE, "resume=auto", f"hydra.run.dir={d}"], tmp_path)
    assert again.returncode == 0, again.stderr
    r = json.loads((d / "results.json").read_text())
    assert r["status"] == "completed" and r["resumed_from_step"] is None


@pytest.mark.parametrize(("point", "action"), [("restore", "kill"), pytest.param("restore", "term",
                                               marks=pytest.mark.thorough), pytest.param("build", "int",
                                                                                         marks=pytest.mark.thorough)])
def test_a_resume_that_dies_while_starting_keeps_the_record_of_the_run(point: str, action: str,
                                                                      tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert run_cli(["train", *BASE, "total_steps=1000", f"hydra.run.dir={d}"], tmp_path).returncode == 0
    record = json.loads((d / "results.json").read_text())
    proc = run_cli(["train", f"resume={d}", "total_steps=2000"], tmp_path,
                   env={"DQNRUN_TEST_FAULT": f"{point}@{action}"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    after = json.loads((d / "results.json").read_text())
    assert (after["status"], after["steps"], after["eval_history"]) == ("completed", 1000, record["eval_history"])
    resumed = run_cli(["train", f"resume={d}", "total_steps=2000"], tmp_path)  # and it still resumes
    assert resumed.returncode == 0, resumed.stderr


# --- the lock's rules, on crafted records ---------------------------------------------------------------


def _write_lock(d: Path, **record: object) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / LOCK_NAME).write_text(json.dumps({"token": "x", "started": time.time(), **record}))


def test_a_lock_of_a_dead_pid_on_this_host_is_stale(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid, host=socket.gethostname())
    assert not owner_alive(read_lock(tmp_path))  # type: ignore[arg-type]
    with RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()  # type: ignore[index]


def test_a_lock_of_a_live_pid_or_a_fresh_heartbeat_elsewhere_holds(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _write_lock(tmp_path / "a", pid=live.pid, host=socket.gethostname())
        with pytest.raises(RunDirBusy, match=f"pid {live.pid}"):
            RunLock(tmp_path / "a").acquire()
    finally:
        live.kill()
    _write_lock(tmp_path / "b", pid=1, host="another-node")
    with pytest.raises(RunDirBusy, match="another-node"):
        RunLock(tmp_path / "b").acquire()


def test_a_lock_elsewhere_whose_heartbeat_stopped_is_stale(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=1, host="another-node")
    old = time.time() - 600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with RunLock(tmp_path):
        pass


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_previous_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _write_lock(tmp_path, pid=1, host="node-17", slurm_job="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with RunLock(tmp_path):
        assert read_lock(tmp_path)["slurm_job"] == "4242"  # type: ignore[index]
