"""A run is never lost: SIGKILL at every stage of a save leaves a directory that resumes, and resume never runs
code from the run directory (faults injected with DQNRUN_TEST_FAULT, dqnrun.run.faults)."""

from __future__ import annotations

import json
import pickle
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

BASE = ["env=cartpole", "seed=4", "total_steps=2000", "algo.learning_starts=300", "eval.every=500",
        "eval.episodes=3", "checkpoint.every=500", "log.every=100", "log.progress=false", "replay.capacity=3000"]
# The second periodic save (step 1000) writes, in order: last.replay.pt, last.env.pt, step_*.pt, last.pt.
THOROUGH = pytest.mark.thorough  # make test-thorough; the default tier runs the others
SAVE_STAGES = [
    pytest.param("last.replay.pt:writing#2", True, marks=THOROUGH),  # a partial temp file: all still step 500's
    ("last.replay.pt:replaced#2", False),  # replay of step 1000 beside last.pt of step 500: refilled
    pytest.param("last.env.pt:written#2", False, marks=THOROUGH),
    pytest.param("last.env.pt:replaced#2", False, marks=THOROUGH),
    pytest.param("step_0000001000.pt:replaced", False, marks=THOROUGH),
    pytest.param("last.pt:written#2", False, marks=THOROUGH),
    ("last.pt:replaced#2", True),          # the commit point passed: step 1000 is whole
    pytest.param("best.pt:written#2", True, marks=THOROUGH),
    pytest.param("results.json:written#4", True, marks=THOROUGH),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("full") / "run"
    proc = run_cli(["train", *BASE, f"hydra.run.dir={d}"], d.parent)
    assert proc.returncode == 0, proc.stderr
    return d


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["policy"]


@pytest.mark.parametrize(("stage", "exact"), SAVE_STAGES)
def test_a_kill_at_any_stage_of_a_save_leaves_a_run_that_resumes(stage: str, exact: bool, uninterrupted: Path,
                                                                 tmp_path: Path) -> None:
    d = tmp_path / "run"
    killed = run_cli(["train", *BASE, f"hydra.run.dir={d}"], tmp_path, env={"DQNRUN_TEST_FAULT": stage})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(["train", f"resume={d}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads((d / "results.json").read_text())
    assert r["status"] == "completed" and r["steps"] == 2000 and r["resumed_from_step"] in (500, 1000, 1500)
    assert not list(d.rglob(".*.tmp-*")), "a killed save's temp file was left behind"
    if exact:
        wa, wb = _weights(uninterrupted), _weights(d)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    else:
        assert r["updates"] > 0


def test_a_resume_without_its_replay_refills_before_updating(tmp_path: Path) -> None:
    """checkpoint.save_replay=false: the resumed run acts for learning_starts steps before its next update."""
    d = tmp_path / "run"
    first = run_cli(["train", *BASE, "total_steps=1000", "checkpoint.save_replay=false", f"hydra.run.dir={d}"],
                    tmp_path)
    assert first.returncode == 0, first.stderr
    before = json.loads((d / "results.json").read_text())["updates"]
    resumed = run_cli(["train", f"resume={d}", "total_steps=2000"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "refilling it for 300 env steps" in (d / "train.log").read_text()
    assert json.loads((d / "results.json").read_text())["updates"] == before + (2000 - 1300) // 4


@THOROUGH
def test_a_resume_from_an_older_periodic_checkpoint_works(tmp_path: Path) -> None:
    d = tmp_path / "run"
    first = run_cli(["train", *BASE, "checkpoint.keep_last=3", f"hydra.run.dir={d}"], tmp_path)
    assert first.returncode == 0, first.stderr
    older = d / "checkpoints" / "step_0000001000.pt"
    resumed = run_cli(["train", f"resume={older}", "total_steps=2000"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    log = (d / "train.log").read_text()
    assert "refilling it" in log and "is not restored exactly" in log  # replay and envs are step 2000's
    assert json.loads((d / "results.json").read_text())["resumed_from_step"] == 1000


class Evil:
    def __reduce__(self):  # would run code if this file were unpickled
        return (Path.touch, (Path("PWNED"),))


@pytest.mark.parametrize("name", ["last.env.pt", pytest.param("last.env.pkl", marks=THOROUGH),
                                  pytest.param("last.replay.pt", marks=THOROUGH)])
def test_resume_never_runs_code_from_the_run_directory(name: str, tmp_path: Path) -> None:
    d = tmp_path / "run"
    first = run_cli(["train", *BASE, "total_steps=1000", f"hydra.run.dir={d}"], tmp_path)
    assert first.returncode == 0, first.stderr
    if name == "last.env.pkl":  # dqnrun 0.2's pickled env state: never loaded
        (d / "checkpoints" / "last.env.pt").unlink()
    (d / "checkpoints" / name).write_bytes(pickle.dumps({"step": 1000, "envs": Evil()}))
    resumed = run_cli(["train", f"resume={d}", "total_steps=1500"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "PWNED").exists()
    assert json.loads((d / "results.json").read_text())["status"] == "completed"
