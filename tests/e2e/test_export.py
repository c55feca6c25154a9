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
            "c51": ["learner.distributional=true", "network.v_min=0", "network.v_max=100"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run per network, and its TorchScript and ONNX exports (one through the CLI)."""
    from dqnrun.export import export

    runs = {}
    for name, args in NETWORKS.items():
        cwd = tmp_path_factory.mktemp(name)
        proc = run_cli(["train", "env=cartpole", *TINY, *args, f"hydra.run.dir={cwd / 'run'}"], cwd)
        assert proc.returncode == 0, proc.stderr
        runs[name] = cwd / "run"
    ckpt = runs["dueling"] / "checkpoints" / "best.pt"
    proc = run_cli(["export", f"ckpt={ckpt}", "format=onnx"], runs["dueling"])  # the CLI, with its defaults
    assert proc.returncode == 0, proc.stderr
    assert str(runs["dueling"] / "export" / "policy.onnx") in proc.stdout
    for name, run in runs.items():
        for fmt in ("torchscript", "onnx"):
            if (name, fmt) != ("dueling", "onnx"):
                export(run / "checkpoints" / "best.pt", fmt)
    return runs


def _observations(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.normal(size=(n, 4)) * [1.0, 1.0, 0.1, 1.0]).astype(np.float32)


# Run the exported files in a fresh interpreter that never imports dqnrun (and would fail if it tried).
RUNNER = r"""
import json, sys
sys.modules["dqnrun"] = None
import numpy as np
obs = np.load(sys.argv[1])
out = {}
for fmt, path in zip(sys.argv[2::2], sys.argv[3::2]):
    if fmt == "torchscript":
        import torch
        policy = torch.jit.load(path)
        assert policy(torch.from_numpy(obs[:2])).grad_fn is None, "an exported policy's outputs carry no graph"
        run = lambda x: policy(torch.from_numpy(x)).numpy()
    else:
        import onnxruntime
        session = onnxruntime.InferenceSession(path)
        run = lambda x: session.run(None, {"obs": x})[0]
    out[path] = {str(b): run(obs[:b]).tolist() for b in (1, 5, len(obs))}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def outputs(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    obs_path = tmp_path_factory.mktemp("obs") / "obs.npy"
    np.save(obs_path, _observations(64))
    args = []
    for run in trained.values():
        args += ["torchscript", str(run / "export" / "policy.pt"), "onnx", str(run / "export" / "policy.onnx")]
    ran = subprocess.run([sys.executable, "-c", RUNNER, str(obs_path), *args], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_exported_policy_chooses_the_checkpoints_actions_at_any_batch_size(
        trained: dict[str, Path], outputs: dict[str, dict], network: str, fmt: str) -> None:
    path = trained[network] / "export" / ("policy.pt" if fmt == "torchscript" else "policy.onnx")
    q = {int(b): np.array(v) for b, v in outputs[str(path)].items()}
    agent = load(trained[network] / "checkpoints" / "best.pt")
    obs = _observations(64)
    expected = agent.q_values(obs)
    for b, values in q.items():
        assert values.shape == (b, 2)
        np.testing.assert_allclose(values, expected[:b], rtol=1e-5, atol=1e-5)  # C51: expected Q-values
    assert np.array_equal(q[64].argmax(1), agent.act(obs))


def test_out_creates_missing_parent_directories(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "policy.pt"
    proc = run_cli(["export", f"ckpt={trained['plain'] / 'checkpoints' / 'best.pt'}", f"out={out}"], tmp_path)
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
