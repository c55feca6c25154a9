"""`dqnrun eval`: evaluate a checkpoint using only what the checkpoint file holds."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dqnrun import builders
from dqnrun.checkpoint import load_checkpoint
from dqnrun.envs import EVAL_SEED_BASE, SEED_STRIDE, resolve_env_id, run_episodes
from dqnrun.errors import UsageError
from dqnrun.networks import greedy_actor
from dqnrun.validate import validate_eval_config

log = logging.getLogger(__name__)


def load_policy(ckpt_path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, DictConfig, dict]:
    """Rebuild the online network from a checkpoint's stored config and load its weights."""
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    cfg = OmegaConf.create(ckpt["config"])
    spec = builders.build_env_spec(cfg.env)
    net = builders.build_network(cfg.network, spec, cfg.get("learner")).to(device)
    try:
        net.load_state_dict(ckpt["online"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"ckpt={ckpt_path}: weights do not match the stored network config ({first})") from None
    net.eval()
    return net, cfg, ckpt


def record_videos(net: torch.nn.Module, cfg: DictConfig, n_episodes: int, seed: int, epsilon: float,
                  video_dir: Path) -> list[str]:
    """Play episodes one by one in a rgb_array env wrapped in RecordVideo; return the mp4 paths."""
    import gymnasium as gym

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise UsageError("video=true needs moviepy: pip install 'dqnrun[video]' (make install does)") from None
    kwargs = {**builders.env_kwargs(cfg.env), "render_mode": "rgb_array"}
    env = gym.make(resolve_env_id(cfg.env.id), **kwargs)
    env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, disable_logger=True)
    rng = np.random.default_rng(seed)
    act = greedy_actor(net, epsilon, rng, int(env.action_space.n))
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(int(act(np.asarray(obs)[None])[0]))
            done = terminated or truncated
    env.close()
    return sorted(str(p) for p in video_dir.glob("*.mp4"))


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    validate_eval_config(cfg)
    net, train_cfg, ckpt = load_policy(cfg.ckpt, cfg.device)
    env_cfg = train_cfg.env
    if cfg.env_kwargs:
        env_cfg = OmegaConf.merge(env_cfg, {"kwargs": cfg.env_kwargs})
    seed = EVAL_SEED_BASE + cfg.seed * SEED_STRIDE
    envs = builders.build_vector_env(env_cfg, num_envs=min(cfg.episodes, 128))
    rng = np.random.default_rng([cfg.seed, 2])
    try:
        returns = run_episodes(envs, greedy_actor(net, cfg.epsilon, rng, int(envs.single_action_space.n)),
                               cfg.episodes, seed)
    finally:
        envs.close()
    result: dict[str, Any] = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "env_id": env_cfg.id,
        "step": int(ckpt["step"]),
        "episodes": int(cfg.episodes),
        "epsilon": float(cfg.epsilon),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "returns": [float(r) for r in returns],
        "solved_score": env_cfg.get("solved_score"),
    }
    if cfg.video:
        result["videos"] = record_videos(net, OmegaConf.create({"env": env_cfg}), cfg.video_episodes,
                                         seed, cfg.epsilon, out_dir / "videos")
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{env_cfg.id} @ step {result['step']}: mean return {result['mean_return']:.2f} "
          f"+/- {result['std_return']:.2f} over {cfg.episodes} episodes  ({out_dir / 'eval.json'})")
    return result


@hydra.main(config_path="pkg://dqnrun.conf", config_name="eval", version_base=None)
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run(cfg, out_dir)["mean_return"]
    except UsageError as exc:
        print(f"dqnrun eval: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
