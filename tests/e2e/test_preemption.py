"""Cluster preemption through submitit's local executor: SIGUSR2 -> save -> requeue -> resume=auto."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_preempted_submitit_job_is_requeued_into_the_same_run_dir_and_resumes(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "dqnrun", "train", "-m", "hydra/launcher=submitit_local", "resume=auto",
            "seed=0", "total_steps=40000", "checkpoint.every=1000", "eval.every=0", "log.progress=false"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = None
        deadline = time.time() + 120
        while pid is None and time.time() < deadline:
            for log in (tmp_path / "outputs").rglob("train.log") if (tmp_path / "outputs").exists() else []:
                m = re.search(r"\(pid (\d+)\)", log.read_text())
                if m:
                    pid, run_dir = int(m.group(1)), log.parent
            time.sleep(0.05)
        assert pid is not None, "the submitit job never started training"
        import os

        os.kill(pid, signal.SIGUSR2)  # what SLURM/submitit send before preempting a job
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    text = (run_dir / "train.log").read_text()
    assert "interrupted" in text and "resuming" in text
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 40000
    assert 0 < results["resumed_from_step"] < 40000
    assert len(list((tmp_path / "outputs").rglob("results.json"))) == 1  # same run dir, not a new one
    submitit_logs = "".join(p.read_text() for p in (tmp_path / "outputs").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs
