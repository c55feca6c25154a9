"""The Ray launcher, in its own environment (`make test-ray` builds .venv-ray: hydra-ray-launcher pins
cloudpickle<3, which the joblib launcher's joblib cannot live with). Marked `ray`: outside the default tier."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.ray

QUICK = ["env=cartpole", "total_steps=1200", "algo.learning_starts=400", "eval.every=600", "eval.episodes=2",
         "log.progress=false", "replay.capacity=2000", "checkpoint.every=0"]


def test_ray_launcher_runs_a_two_job_multirun_on_a_local_cluster(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    sweep = tmp_path / "sweep"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    try:
        proc = run_cli(["train", "-m", "seed=0,1", *QUICK, "hydra/launcher=ray_local", f"hydra.sweep.dir={sweep}"],
                       tmp_path, env=env, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((sweep / j / "results.json").read_text()) for j in ("0", "1")]
    assert sorted(r["seed"] for r in runs) == [0, 1]
    assert all(r["status"] == "completed" and r["steps"] == 1200 for r in runs)
    assert "all 2 jobs finished" in proc.stdout
