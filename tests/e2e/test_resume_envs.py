"""Resume on every env family: classic control, toy text, MinAtar and the numpy CartPole vector env resume
exactly (their state saved as arrays, never pickled); Box2D and Atari resume with new episodes and say so."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from dqnrun import train

TINY = ["eval.every=0", "log.progress=false", "log.every=100", "checkpoint.every=0"]
# preset -> overrides that make a short run of it (a few hundred steps, an update now and then)
EXACT = {
    "acrobot": ["total_steps=900", "algo.learning_starts=200", "replay.capacity=1000"],
    "mountaincar": ["total_steps=900", "algo.learning_starts=200", "replay.capacity=1000"],
    "cartpole_numpy_vector": ["env=cartpole", "env.num_envs=8", "total_steps=960", "algo.learning_starts=200",
                              "replay.capacity=1000"],
    "frozenlake": ["total_steps=960"],
    "taxi": ["total_steps=960"],
    "cliffwalking": ["total_steps=600"],
    "minatar_breakout": ["total_steps=900", "algo.learning_starts=300", "replay.capacity=1000",
                         "algo.target_update_interval=100"],
}


def _overrides(name: str) -> list[str]:
    extra = EXACT.get(name, [])
    env = [] if any(o.startswith("env=") for o in extra) else [f"env={name}"]
    return [*env, *extra, *TINY, "seed=5"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["policy"]


@pytest.mark.parametrize("name", [n if n in ("cartpole_numpy_vector", "frozenlake", "minatar_breakout") else
                                  pytest.param(n, marks=pytest.mark.thorough) for n in sorted(EXACT)])
def test_a_run_stopped_by_a_signal_resumes_exactly_on(name: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    full = train(_overrides(name), run_dir=tmp_path / "full")
    monkeypatch.setenv("DQNRUN_TEST_SIGNAL_AT_STEP", "450")
    stopped = train(_overrides(name), run_dir=tmp_path / "cut")
    monkeypatch.delenv("DQNRUN_TEST_SIGNAL_AT_STEP")
    assert stopped["status"] == "interrupted" and stopped["exit_code"] == 128 + signal.SIGTERM
    resumed = train([f"resume={tmp_path / 'cut'}"])
    for key in ("steps", "updates", "episodes", "recent_train_return"):
        assert resumed[key] == full[key], key
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "not restored exactly" not in (tmp_path / "cut" / "train.log").read_text()


@pytest.mark.parametrize(("preset", "overrides"), [
    ("lunarlander", ["total_steps=600", "algo.learning_starts=200", "replay.capacity=1000"]),
    pytest.param("pong", ["total_steps=96", "algo.learning_starts=64", "replay.capacity=200", "env.num_envs=2",
                          "replay.batch_size=8"], marks=pytest.mark.thorough),
])
def test_an_env_that_cannot_be_captured_resumes_with_new_episodes_and_says_so(
        preset: str, overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("Box2D" if preset == "lunarlander" else "ale_py")
    args = [f"env={preset}", *overrides, *TINY]
    monkeypatch.setenv("DQNRUN_TEST_SIGNAL_AT_STEP", str(int(overrides[0].split("=")[1]) // 2))
    stopped = train(args, run_dir=tmp_path / "run")
    monkeypatch.delenv("DQNRUN_TEST_SIGNAL_AT_STEP")
    assert stopped["status"] == "interrupted"
    resumed = train([f"resume={tmp_path / 'run'}"])
    assert resumed["status"] == "completed" and resumed["steps"] == stopped["total_steps"]
    log = (tmp_path / "run" / "train.log").read_text()
    line = next(ln for ln in log.splitlines() if "is not restored exactly" in ln)
    assert "starts new episodes from" in line and "exact" in line
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["resumed_from_step"] == stopped["steps"]
