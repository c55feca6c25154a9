"""Checkpoints written by dqnrun 0.2.0 (format 1, before the algorithm seam) still load, act, evaluate, export and
resume, with the Q-values, actions and returns that code computed on them (tests/fixtures/ckpt_v0_2_0)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_v0_2_0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def _obs(name: str) -> np.ndarray:
    e = EXPECTED[name]
    return np.asarray(e["obs"]).astype(np.dtype(e["obs_dtype"]))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_0_2_checkpoint_loads_and_acts_as_it_did(name: str) -> None:
    from dqnrun import load
    from dqnrun.run.checkpoint import load_checkpoint

    ckpt = load_checkpoint(FIXTURES / f"{name}.best.pt")
    assert ckpt["format_version"] == 2 and ckpt["algo"] == "dqn"  # migrated on load; the file is untouched
    assert torch.load(FIXTURES / f"{name}.best.pt", weights_only=True)["format_version"] == 1
    agent = load(FIXTURES / f"{name}.best.pt")
    np.testing.assert_allclose(agent.q_values(_obs(name)), EXPECTED[name]["q_values"], rtol=1e-6, atol=1e-6)
    assert agent.act(_obs(name)).tolist() == EXPECTED[name]["actions"]
    assert agent.step == EXPECTED[name]["step"]


@pytest.mark.parametrize("name", ["mlp_nstep", "c51_double", "tabular"])
def test_a_0_2_checkpoint_evaluates_to_the_same_returns(name: str) -> None:
    from dqnrun import load

    assert load(FIXTURES / f"{name}.best.pt").evaluate(episodes=10)["mean_return"] == EXPECTED[name]["eval_10"]


def test_a_0_2_config_reads_in_todays_key_spellings() -> None:
    from dqnrun.run.checkpoint import load_checkpoint

    cfg = load_checkpoint(FIXTURES / "c51_double.best.pt")["config"]
    assert cfg["algo"]["_target_"] == "dqnrun.algos.dqn.DQN"
    assert cfg["algo"]["learning_starts"] == 400 and "learning_starts" not in cfg["learner"]
    assert cfg["network"]["atoms"] == 11 and "atoms" not in cfg["learner"]
    tab = load_checkpoint(FIXTURES / "tabular.best.pt")["config"]
    assert "atoms" not in tab["network"]  # a Q-table has no support


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_a_0_2_checkpoint_exports_the_same_q_values(tmp_path: Path) -> None:
    out = tmp_path / "dueling.onnx"
    for fmt, path in (("torchscript", tmp_path / "dueling.pt"), ("onnx", out)):
        proc = run_cli(["export", f"ckpt={FIXTURES / 'dueling.best.pt'}", f"format={fmt}", f"out={path}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    obs = np.asarray(EXPECTED["dueling"]["obs"], dtype=np.float32)
    script = (f"import numpy as np, torch, onnxruntime as ort\n"
              f"obs = np.array({obs.tolist()}, dtype=np.float32)\n"
              f"print(torch.jit.load({str(tmp_path / 'dueling.pt')!r})(torch.from_numpy(obs)).tolist())\n"
              f"print(ort.InferenceSession({str(out)!r}).run(None, {{'obs': obs}})[0].tolist())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        np.testing.assert_allclose(json.loads(line), EXPECTED["dueling"]["q_values"], rtol=1e-5, atol=1e-5)


def test_dqnrun_eval_reads_a_0_2_checkpoint(tmp_path: Path) -> None:
    proc = run_cli(["eval", f"ckpt={FIXTURES / 'mlp_nstep.best.pt'}", "episodes=10"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (eval_json,) = (tmp_path / "outputs").rglob("eval.json")
    assert json.loads(eval_json.read_text())["mean_return"] == EXPECTED["mlp_nstep"]["eval_10"]


def test_a_0_2_run_resumes_and_refills_its_replay_first(tmp_path: Path) -> None:
    """A 0.2 last.pt without its replay and env files: the run resumes from it (old key spellings in its stored
    config), refills the buffer for learning_starts env steps, then updates again."""
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "mlp_nstep.last.pt", run / "checkpoints" / "last.pt")
    proc = run_cli(["train", f"resume={run}", "total_steps=2400", "log.progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = (run / "train.log").read_text()
    assert "refilling it for 400 env steps" in log
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "completed" and r["steps"] == 2400 and r["resumed_from_step"] == 1200
    # 0.2 counted 200 updates by step 1200; updates resume after 1200 + 400 steps: (2400 - 1600) / 4 more
    assert r["updates"] == 200 + (2400 - 1600) // 4
