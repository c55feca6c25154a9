"""Pixel envs through the real CLI: Atari and MinAtar runs, the minatar_paper recipe, device placement, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dqnrun.replay import ReplayBuffer
from tests.conftest import run_cli

LIVES, LIFE = 3, 4  # a game of 3 lives, each lost after 4 steps: 12 steps and 12 reward per game


def test_unknown_ale_game_gets_one_line_with_a_suggestion(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=atari", "env.atari.game=pongg"], tmp_path)
    assert proc.returncode == 2
    assert "env.atari.game='pongg' is not an ALE game. Did you mean pong" in proc.stderr


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_pong_trains_for_a_few_thousand_steps_and_evaluates_with_a_video(tmp_path: Path) -> None:
    pytest.importorskip("moviepy")
    run = tmp_path / "pong"
    proc = run_cli(["train", "env=pong", "total_steps=2400", "algo.learning_starts=1600", "env.num_envs=8",
                    "replay.capacity=3000", "eval.every=0", "checkpoint.every=0", "log.every=800",
                    "log.progress=false", f"hydra.run.dir={run}"], tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((run / "results.json").read_text())
    assert r["steps"] == 2400 and r["updates"] == (2400 - 1600) // 4 and r["env_id"] == "ALE/Pong-v5"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["replay"]["storage"] == "frames" and ckpt["config"]["algo"]["reward_clip"] == 1.0
    # save_replay writes the frame buffer beside last.pt (within checkpoint.replay_max_gb), and it restores
    from dqnrun.run.checkpoint import load_replay_state

    saved = load_replay_state(run / "checkpoints", 2400)
    assert saved is not None and int(saved["size"]) == 2400  # one row per env step (no Pong game ends this soon)
    size = (run / "checkpoints" / "last.replay.pt").stat().st_size
    assert 2400 * 84 * 84 < size < 1.2 * (2400 + 8 * 4) * 84 * 84 + 2_000_000  # ~one frame per transition
    fresh = ReplayBuffer(3000, 32, (4, 84, 84), torch.uint8, storage="frames", num_envs=8)
    fresh.load_state_dict(saved)
    assert len(fresh) == int(saved["size"]) and fresh.valid_rows().all()
    proc = run_cli(["eval", f"ckpt={run / 'checkpoints' / 'last.pt'}", "episodes=1", "video=true",
                    "video_episodes=1"], tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr
    (eval_json,) = (tmp_path / "outputs").rglob("eval.json")
    result = json.loads(eval_json.read_text())
    assert result["epsilon"] == 0.05  # the preset's eval epsilon, stored in the checkpoint
    assert -21 <= result["returns"][0] <= 21 and float(result["returns"][0]).is_integer()  # a raw Pong score
    (mp4,) = (tmp_path / "outputs").rglob("*.mp4")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert meta["size"] == (160, 210) and sum(1 for _ in reader) > 100  # a whole game, full-size colour frames


def minatar_run(tmp_path: Path, overrides: list[str]) -> tuple[dict, dict]:
    """A short MinAtar training run through the CLI: its results.json and last checkpoint."""
    run = tmp_path / "run"
    proc = run_cli(["train", *overrides, "log.progress=false", "checkpoint.every=0", f"hydra.run.dir={run}"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run / "results.json").read_text())
    return results, torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_minatar_smoke_run(tmp_path: Path) -> None:
    r, ckpt = minatar_run(tmp_path, ["env=minatar_breakout", "total_steps=3000", "algo.learning_starts=1000",
                                     "eval.every=1500", "eval.episodes=3"])
    assert r["steps"] == 3000 and r["updates"] == 500 and len(r["eval_history"]) == 2
    assert ckpt["policy"]["torso.0.weight"].shape == (16, 4, 3, 3)  # channels last, permuted in the network


def test_the_minatar_paper_experiment_runs_young_and_tians_dqn(tmp_path: Path) -> None:
    r, ckpt = minatar_run(tmp_path, ["env=minatar_space_invaders", "experiment=minatar_paper", "total_steps=5400",
                                     "eval.every=5400", "eval.episodes=1"])
    assert r["updates"] == 400  # one update per frame after 5000 random frames
    assert ckpt["policy"]["net.2.weight"].shape == (6, 128)  # the full action set (the preset has 4 actions)
    group = {k: v for k, v in ckpt["algo_state"]["optimizer"]["param_groups"][0].items() if k != "params"}
    # centered RMSProp as examples/dqn.py ran it: its GRAD_MOMENTUM = 0.95 was never passed to the optimizer
    assert group | {"lr": 2.5e-4, "alpha": 0.95, "eps": 0.01, "centered": True, "momentum": 0.0} == group
    state = next(iter(ckpt["algo_state"]["optimizer"]["state"].values()))
    assert "momentum_buffer" not in state and "grad_avg" in state  # centered, without gradient momentum
    cfg = ckpt["config"]
    assert (cfg["replay"]["n_step"], cfg["algo"]["train_freq"], cfg["learner"]["max_grad_norm"]) == (1, 1, None)


def test_device_auto_puts_pixel_networks_and_their_replay_on_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    from dqnrun import builders
    from tests.conftest import compose_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for preset, expected in (("minatar_breakout", "cuda"), ("pong", "cuda"), ("cartpole", "cpu")):
        cfg = compose_train([f"env={preset}"])
        spec = builders.build_env_spec(cfg.env)
        net = builders.build_network(cfg.network, spec)
        device = builders.resolve_device(cfg.device, net, spec)
        assert device.type == expected, preset
        assert builders._replay_device(cfg.replay.device, device) == device  # batches never cross the bus


def test_the_ram_check_covers_the_frame_buffer(tmp_path: Path) -> None:
    from dqnrun import builders
    from tests.conftest import compose_train

    cfg = compose_train(["env=pong", "replay.capacity=1000000"])
    spec = builders.build_env_spec(cfg.env)
    shape, dtype = builders._obs_storage(spec)
    need = ReplayBuffer.nbytes(1_000_000, shape, dtype, storage="frames", num_envs=8)
    assert 7.06e9 <= need <= 7.3e9  # ~ one 84x84 frame per transition, not 2 x 4
    proc = run_cli(["train", "env=pong", "replay.capacity=1000000000"], tmp_path)
    assert proc.returncode == 2 and "replay.capacity=1000000000 needs 67" in proc.stderr
    assert not (tmp_path / "outputs").exists()
