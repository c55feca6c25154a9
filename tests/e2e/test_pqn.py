"""PQN end to end: it trains through the same lifecycle as DQN (no branch for it there), resumes exactly from the
middle of a rollout, and its checkpoints evaluate, export and load like DQN's."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from dqnrun import load, train
from tests.conftest import run_cli

# 4 envs x 16 steps = 64 env steps per rollout; 2 epochs x 4 minibatches of 16
SMALL = ["algo=pqn", "env=cartpole", "seed=2", "algo.num_steps=16", "algo.epochs=2", "algo.minibatches=4",
         "total_steps=2048", "algo.lr_decay_steps=2048", "schedule.decay_steps=1024", "eval.every=512",
         "eval.episodes=3", "checkpoint.every=1024", "log.every=256", "log.progress=false"]


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _assert_same(a: Path, b: Path) -> None:
    ca, cb = _last(a), _last(b)
    assert ca["step"] == cb["step"] and ca["algo_state"]["updates"] == cb["algo_state"]["updates"]
    for k in ca["policy"]:
        assert torch.equal(ca["policy"][k], cb["policy"][k]), k
    for k, v in ca["algo_state"]["optimizer"]["state"].items():
        for name in v:
            assert torch.equal(v[name], cb["algo_state"]["optimizer"]["state"][k][name]), (k, name)
    lr = [c["algo_state"]["optimizer"]["param_groups"][0]["lr"] for c in (ca, cb)]
    assert lr[0] == lr[1]
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for key in ("steps", "updates", "episodes", "eval_history", "recent_train_return"):
        assert ra[key] == rb[key], key


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pqn") / "full"
    r = train(SMALL, run_dir=d)
    assert r["status"] == "completed" and r["steps"] == 2048
    assert r["updates"] == 2048 // 64 * 2 * 4  # every rollout: epochs x minibatches updates
    return d


@pytest.mark.parametrize("at", [450, 1100])  # mid-rollout (450 = 7 rollouts + 2 vector steps); after a periodic save
def test_pqn_stopped_mid_rollout_resumes_exactly(at: int, full: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQNRUN_TEST_SIGNAL_AT_STEP", str(at))
    stopped = train(SMALL, run_dir=tmp_path / "cut")
    monkeypatch.delenv("DQNRUN_TEST_SIGNAL_AT_STEP")
    assert stopped["status"] == "interrupted" and stopped["exit_code"] == 128 + signal.SIGTERM
    assert stopped["steps"] % 64, "the stop should fall inside a rollout"
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.replay.pt", weights_only=True)["replay"]  # the rollout
    assert 0 < saved["pos"] < 16 and saved["obs"].shape == (saved["pos"], 4, 4)
    resumed = train([f"resume={tmp_path / 'cut'}"])
    assert resumed["status"] == "completed"
    _assert_same(full, tmp_path / "cut")
    assert "not restored exactly" not in (tmp_path / "cut" / "train.log").read_text()


def test_a_pqn_resume_that_raises_total_steps_matches_a_longer_run(tmp_path: Path) -> None:
    """The learning rate and epsilon decay over absolute env steps (the preset's), so raising total_steps on
    resume changes neither."""
    long = train([*SMALL[:-8], "total_steps=1024", "eval.every=0", "log.progress=false", "checkpoint.every=0"],
                 run_dir=tmp_path / "long")
    short = train([*SMALL[:-8], "total_steps=512", "eval.every=0", "log.progress=false", "checkpoint.every=0"],
                  run_dir=tmp_path / "short")
    assert short["steps"] == 512
    train([f"resume={tmp_path / 'short'}", "total_steps=1024"])
    assert long["steps"] == 1024
    a, b = _last(tmp_path / "long"), _last(tmp_path / "short")
    assert all(torch.equal(a["policy"][k], b["policy"][k]) for k in a["policy"])


def test_a_pqn_checkpoint_evaluates_exports_and_loads(full: Path, tmp_path: Path) -> None:
    agent = load(full)
    obs = np.zeros((3, 4), np.float32)
    assert agent.q_values(obs).shape == (3, 2) and agent.act(obs).shape == (3,)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in agent.net.modules())
    ev = run_cli(["eval", f"ckpt={full}", "episodes=3"], tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "mean return" in ev.stdout + ev.stderr
    out = tmp_path / "policy.onnx"
    ex = run_cli(["export", f"ckpt={full}", "format=onnx", f"out={out}"], tmp_path)
    assert ex.returncode == 0, ex.stderr
    assert out.exists() and out.stat().st_size > 0


def test_pqn_logs_its_learning_rate_as_it_decays(full: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dqnrun import metrics as M
    from tests.conftest import tb_dir

    acc = EventAccumulator(str(tb_dir(full)), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = [e.value for e in acc.Scalars(M.LEARNING_RATE)]
    assert lrs[0] == pytest.approx(2.5e-4, rel=0.2) and lrs[-1] < lrs[0] / 4
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert acc.Scalars(M.TD_LOSS)
