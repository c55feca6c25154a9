"""Every option trains through the real CLI (a few hundred steps each), and eval runs on the results; QR and IQN
checkpoints load, export and resume exactly."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli

# --- smoke: every option through the real CLI -----------------------------------------------------------

SMOKE = ["total_steps=600", "algo.learning_starts=200", "eval.every=300", "eval.episodes=2",
         "log.progress=false", "log.every=300"]
HAS_BOX2D = importlib.util.find_spec("Box2D") is not None

# Each group is one `dqnrun train -m` process (a Hydra multirun, one job per combination): a process start
# costs more than a 600-step job, so options are batched. Every listed option appears in some job.
SMOKE_GROUPS = {
    "networks": ["network=mlp,dueling_mlp,noisy_mlp", "learner.distributional=false,true"],
    "replay": ["replay=uniform,prioritized", "replay.n_step=1,3", "learner.double=true"],
    "rainbow": ["experiment=rainbow"],
    # QR, IQN, Munchausen on DQN, M-QR, M-IQN (and plain DQN), each with dueling, prioritized replay, 3-step returns
    "quantile": ["learner.distributional=false,qr,iqn", "learner.munchausen=false,true", "network=dueling_mlp",
                 "replay=prioritized"],
    "tabular": ["env=frozenlake,taxi,cliffwalking", "network=tabular"],
    "lunarlander": ["env=lunarlander"],
}
SMOKE_JOBS = {"networks": 6, "replay": 4, "rainbow": 1, "quantile": 6, "tabular": 3, "lunarlander": 1}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Run every smoke group once; map group -> its job directories, in job order."""
    root = tmp_path_factory.mktemp("smoke")
    out: dict[str, list[Path]] = {}
    for name, overrides in SMOKE_GROUPS.items():
        if name == "lunarlander" and not HAS_BOX2D:
            continue
        sweep_dir = root / name
        proc = run_cli(["train", "-m", *SMOKE, *overrides, f"hydra.sweep.dir={sweep_dir}"], root, timeout=120)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        out[name] = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                           key=lambda p: int(p.name))
    return out


@pytest.mark.parametrize("group", list(SMOKE_GROUPS))
def test_every_option_composes_builds_and_trains_through_the_cli(group: str,
                                                                 smoke_runs: dict[str, list[Path]]) -> None:
    if group == "lunarlander" and not HAS_BOX2D:
        pytest.skip("Box2D is not installed (pip install 'dqnrun[box2d]')")
    runs = smoke_runs[group]
    assert len(runs) == SMOKE_JOBS[group]
    for run_dir in runs:
        r = json.loads((run_dir / "results.json").read_text())
        assert r["status"] == "completed", run_dir
        assert r["steps"] >= 600 and r["updates"] > 0, (run_dir, r)
        assert r["final_eval_return"] is not None and math.isfinite(r["final_eval_return"])
        assert (run_dir / "checkpoints" / "last.pt").exists()


def test_smoke_jobs_really_use_the_requested_variants(smoke_runs: dict[str, list[Path]]) -> None:
    def stored(run_dir: Path) -> dict:
        return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)

    nets = {(c["network"].get("dueling", False), c["network"].get("noisy", False),
             c["learner"]["distributional"]) for c in (stored(d)["config"] for d in smoke_runs["networks"])}
    assert nets == {(d, n, c) for d, n in ((False, False), (True, False), (False, True)) for c in (False, True)}
    rainbow = stored(smoke_runs["rainbow"][0])
    keys = rainbow["policy"].keys()
    assert any(k.endswith("weight_sigma") for k in keys) and any(k.startswith("advantage.") for k in keys)
    assert rainbow["policy"]["support"].numel() == rainbow["config"]["network"]["atoms"]
    assert rainbow["config"]["replay"]["prioritized"] and rainbow["config"]["replay"]["n_step"] == 3
    assert rainbow["config"]["learner"]["double"]
    heads = {}
    for d in smoke_runs["quantile"]:
        ckpt = stored(d)
        lc = ckpt["config"]["learner"]
        heads[(lc["distributional"], lc["munchausen"])] = ckpt
        assert ckpt["config"]["replay"]["prioritized"] and ckpt["config"]["replay"]["n_step"] == 3
        assert any(k.startswith("advantage.") for k in ckpt["policy"])
    assert set(heads) == {(d, m) for d in (False, "qr", "iqn") for m in (False, True)}
    qr = heads[("qr", False)]
    assert qr["policy"]["advantage.weight"].shape[0] == 2 * qr["config"]["network"]["quantiles"]
    iqn = heads[("iqn", True)]
    assert iqn["policy"]["embedding.linear.weight"].shape[1] == iqn["config"]["network"]["quantile_embedding"]
    assert "tau_rng" in iqn["algo_state"] and "tau_rng" not in qr["algo_state"]
    for d in smoke_runs["tabular"]:
        ckpt = stored(d)
        assert list(ckpt["policy"].keys()) == ["table"], d
        assert ckpt["config"]["replay"]["latest"] and ckpt["config"]["learner"]["loss"] == "half_sse"


@pytest.mark.parametrize(("group", "job"), [("rainbow", 0), ("tabular", 0), ("quantile", 5)])
def test_eval_runs_on_a_smoke_checkpoint(group: str, job: int, smoke_runs: dict[str, list[Path]],
                                         tmp_path: Path) -> None:
    ckpt = smoke_runs[group][job] / "checkpoints" / "last.pt"
    proc = run_cli(["eval", f"ckpt={ckpt}", "episodes=2", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path,
                   timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert r["episodes"] == 2 and len(r["returns"]) == 2
    assert all(math.isfinite(x) for x in r["returns"])


def quantile_job(smoke_runs: dict[str, list[Path]], head: str, munchausen: bool = False) -> Path:
    for d in smoke_runs["quantile"]:
        lc = torch.load(d / "checkpoints" / "last.pt", weights_only=True)["config"]["learner"]
        if (lc["distributional"], lc["munchausen"]) == (head, munchausen):
            return d
    raise AssertionError(f"no smoke job with learner.distributional={head} learner.munchausen={munchausen}")


@pytest.mark.parametrize("head", ["qr", "iqn"])
def test_quantile_checkpoints_load_and_export_deterministically(head: str, smoke_runs: dict[str, list[Path]],
                                                                tmp_path: Path) -> None:
    """`dqnrun.load(...).q_values`, TorchScript and ONNX on QR and IQN checkpoints: the mean quantile (IQN's on its
    fixed grid), the same on every call and at any batch size."""
    import onnxruntime

    from dqnrun import load
    from dqnrun.export import export

    ckpt = quantile_job(smoke_runs, head) / "checkpoints" / "last.pt"
    agent = load(ckpt)
    obs = (np.random.default_rng(3).normal(size=(9, 4)) * [1.0, 1.0, 0.1, 1.0]).astype(np.float32)
    q = agent.q_values(obs)
    assert q.shape == (9, 2) and np.array_equal(q, agent.q_values(obs))
    np.testing.assert_allclose(agent.q_values(obs[0]), q[0], rtol=1e-6)  # batch size changes only rounding
    scripted = torch.jit.load(str(export(ckpt, "torchscript", tmp_path / "policy.pt")))
    session = onnxruntime.InferenceSession(str(export(ckpt, "onnx", tmp_path / "policy.onnx")))
    for b in (1, 4, 9):
        np.testing.assert_allclose(scripted(torch.from_numpy(obs[:b])).numpy(), q[:b], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(session.run(None, {"obs": obs[:b]})[0], q[:b], rtol=1e-5, atol=1e-5)


def test_iqn_resume_continues_exactly(smoke_runs: dict[str, list[Path]], tmp_path: Path) -> None:
    """300 steps, then resume to 600: the same weights, target, optimizer and sampled fractions as the smoke job
    that ran 600 steps at once (the learner's fraction stream is checkpointed)."""
    full = quantile_job(smoke_runs, "iqn")
    d = tmp_path / "run"
    args = [*SMOKE, "learner.distributional=iqn", "learner.munchausen=false", "network=dueling_mlp",
            "replay=prioritized"]
    first = run_cli(["train", *args, "total_steps=300", f"hydra.run.dir={d}"], tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli(["train", *args, "total_steps=600", f"hydra.run.dir={d}", "resume=auto"], tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (torch.load(x / "checkpoints" / "last.pt", weights_only=True) for x in (full, d))
    assert a["step"] == b["step"] and a["algo_state"]["updates"] == b["algo_state"]["updates"] > 0
    for k in a["policy"]:
        assert torch.equal(a["policy"][k], b["policy"][k]), ("policy", k)
    for k in a["algo_state"]["target"]:
        assert torch.equal(a["algo_state"]["target"][k], b["algo_state"]["target"][k]), ("target", k)
    assert torch.equal(a["algo_state"]["tau_rng"], b["algo_state"]["tau_rng"])
