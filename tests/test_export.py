"""`dqnrun export`: a TorchScript or ONNX policy that runs without dqnrun and acts like the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dqnrun import load
from tests.conftest import TINY, run_cli

NETWORKS = {"plain": [], "dueling": ["network=dueling_mlp"],
            "c51": ["learner.distributional=true", "learner.v_min=0", "learner.v_max=100"]}


@pytest.fixture(scope="module", params=list(NETWORKS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp(request.param)
    proc = run_cli(["train", "env=cartpole", *TINY, *NETWORKS[request.param], f"hydra.run.dir={cwd / 'run'}"], cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "run"


def _observations(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.normal(size=(n, 4)) * [1.0, 1.0, 0.1, 1.0]).astype(np.float32)


# Run the exported file in a fresh interpreter that never imports dqnrun (and would fail if it tried).
RUNNER = r"""
import json, sys
sys.modules["dqnrun"] = None
import numpy as np
fmt, path, obs_path = sys.argv[1:]
obs = np.load(obs_path)
if fmt == "torchscript":
    import torch
    policy = torch.jit.load(path)
    out = {str(b): policy(torch.from_numpy(obs[:b])).detach().numpy().tolist() for b in (1, 5, len(obs))}
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(path)
    out = {str(b): session.run(None, {"obs": obs[:b]})[0].tolist() for b in (1, 5, len(obs))}
print(json.dumps(out))
"""


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_policy_chooses_the_checkpoints_actions_at_any_batch_size(
        trained: Path, fmt: str, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "best.pt"
    proc = run_cli(["export", f"ckpt={ckpt}", f"format={fmt}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = trained / "export" / ("policy.pt" if fmt == "torchscript" else "policy.onnx")
    assert path.exists() and str(path) in proc.stdout
    obs = _observations(64)
    np.save(tmp_path / "obs.npy", obs)
    ran = subprocess.run([sys.executable, "-c", RUNNER, fmt, str(path), str(tmp_path / "obs.npy")],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    q = {int(b): np.array(v) for b, v in json.loads(ran.stdout).items()}
    agent = load(ckpt)
    expected = agent.q_values(obs)
    for b, values in q.items():
        assert values.shape == (b, 2)
        np.testing.assert_allclose(values, expected[:b], rtol=1e-5, atol=1e-5)  # C51: expected Q-values
    assert np.array_equal(q[64].argmax(1), agent.act(obs))


def test_out_creates_missing_parent_directories(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "policy.pt"
    proc = run_cli(["export", f"ckpt={trained / 'checkpoints' / 'best.pt'}", f"out={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 1000


@pytest.mark.parametrize(("args", "pattern"), [
    ([], "ckpt is required"),
    (["ckpt=/nonexistent.pt"], "ckpt=/nonexistent.pt: no such file"),
    (["ckpt=x.pt", "format=tflite"], "format='tflite' is not one of torchscript | onnx"),
    (["ckpt=x.pt", "fromat=onnx"], "unknown key 'fromat'"),
])
def test_bad_export_input_gets_one_clear_line(args: list[str], pattern: str, tmp_path: Path) -> None:
    proc = run_cli(["export", *args], tmp_path)
    assert proc.returncode == 2 and pattern in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
