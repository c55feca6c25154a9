"""Shared helpers: run the real CLI in a subprocess, and compose the real config in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")  # optuna 2.10 on SQLAlchemy 1.4 (pinned <2)

# A tiny CartPole run: enough steps to update, evaluate and checkpoint, in about a second.
TINY = [
    "total_steps=1200", "algo.learning_starts=400", "eval.every=600", "eval.episodes=4",
    "checkpoint.every=600", "log.every=200", "log.progress=false", "replay.capacity=2000",
]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180,
            ) -> subprocess.CompletedProcess[str]:
    """`python -m dqnrun ARGS` in ``cwd``, like a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dqnrun", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def tb_dir(run_dir: Path) -> Path:
    """The TensorBoard run directory of a run: <run_dir>/tb/<label>/ (one label per run)."""
    (label,) = [p for p in (run_dir / "tb").iterdir() if p.is_dir()]
    return label


def compose_train(overrides: list[str] | None = None):
    """The config `dqnrun train OVERRIDES` would run (key spellings rewritten, integers normalized)."""
    from dqnrun.config.compose import compose, rewrite

    return compose("train", rewrite(overrides or [])[0])[0]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real training run through the CLI, shared by the read-only smoke tests."""
    cwd = tmp_path_factory.mktemp("train")
    proc = run_cli(["train", "env=cartpole", "seed=1", *TINY], cwd)
    assert proc.returncode == 0, proc.stderr
    runs = [p.parent for p in (cwd / "outputs").rglob("results.json")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # Tests use tiny tensors: a second OpenMP thread only spins against the other jobs on a 2-core box.
    import torch

    torch.set_num_threads(1)
