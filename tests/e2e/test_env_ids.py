"""Any Gymnasium id, honestly: an id that is a preset's id gets that preset; any other id gets dqnrun's documented
neutral defaults and its own spec's solved score, never another env's tuning, and the run says so first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

CORRIDOR = "tests.custom_envs:DqnrunTest/Corridor-v0"


def _cfg(tmp_path: Path, *overrides: str) -> dict:
    proc = run_cli(["train", *overrides, "--cfg", "job"], tmp_path, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize(("env_id", "preset", "solved"), [
    ("LunarLander-v3", "lunarlander", 200), ("CartPole-v1", "cartpole", 475),
    pytest.param("MinAtar/Breakout-v1", "minatar_breakout", None, marks=pytest.mark.thorough),
    pytest.param("ALE/Pong-v5", "pong", 18, marks=pytest.mark.thorough)])
def test_an_id_that_is_a_presets_id_uses_that_preset(env_id: str, preset: str, solved: float | None,
                                                     tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"env.id={env_id}")
    assert cfg["env"]["preset"] == preset and cfg["env"]["id"] == env_id and cfg["env"]["solved_score"] == solved


def test_an_ale_id_without_a_preset_of_its_own_gets_the_atari_preset_with_its_game(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "env.id=ALE/Seaquest-v5")
    assert cfg["env"]["preset"] == "atari" and cfg["env"]["atari"]["game"] == "seaquest"
    assert cfg["env"]["id"] == "ALE/Seaquest-v5" and cfg["network"]["conv"] == "nature"


def test_an_id_without_a_preset_gets_neutral_defaults_not_cartpoles(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"env.id={CORRIDOR}")
    neutral = _cfg(tmp_path, "env=custom", f"env.id={CORRIDOR}")
    cartpole = _cfg(tmp_path, "env=cartpole")
    assert cfg == neutral and cfg["env"]["preset"] is None and cfg["env"]["solved_score"] is None
    for key in (("optimizer", "lr"), ("schedule", "decay_steps"), ("network", "hidden"), ("env", "num_envs")):
        assert cfg[key[0]][key[1]] != cartpole[key[0]][key[1]], key


def test_an_id_without_a_preset_takes_the_solved_score_its_spec_declares(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "env.id=CartPole-v0")  # no preset; its spec says reward_threshold 195
    assert cfg["env"]["preset"] is None and cfg["env"]["solved_score"] == 195


def test_the_run_says_first_where_its_settings_came_from_and_report_draws_no_false_solved_line(
        tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = run_cli(["train", f"env.id={CORRIDOR}", "total_steps=1500", "eval.every=500", "eval.episodes=3",
                    "log.progress=false", f"hydra.run.dir={d}"], tmp_path, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    first = (d / "train.log").read_text().splitlines()[0]
    assert f"{CORRIDOR} has no preset: dqnrun's neutral defaults for algo=dqn" in first
    assert "solved score: none" in first
    r = json.loads((d / "results.json").read_text())
    assert r["solved_score"] is None and r["solved_at_step"] is None
    report = run_cli(["report", str(d), "--reps", "50"], tmp_path)
    assert report.returncode == 0 and "solved score" not in report.stdout, report.stdout
