"""`dqnrun eval`: the Hydra task. Evaluates a checkpoint using only what the checkpoint file holds: the env (id,
kwargs, wrappers, Atari preprocessing) and the network are rebuilt from the config stored in it; episodes use the
eval epsilon the run was trained with (``eval.epsilon``: 0.05 for Atari presets) unless ``epsilon=`` is given."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dqnrun.errors import UsageError


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    from dqnrun.config.rules import validate_eval_config
    from dqnrun.envs import EVAL_SEED_BASE, SEED_STRIDE
    from dqnrun.evaluate import check_display, evaluate_policy, record_videos, stored_epsilon, watch
    from dqnrun.policy import load_policy

    validate_eval_config(cfg)
    if cfg.get("render") == "human":
        check_display()  # before any work
    policy = load_policy(cfg.ckpt, cfg.device)
    net, train_cfg = policy.net, policy.config
    env_cfg = train_cfg.env
    if cfg.env_kwargs:
        env_cfg = OmegaConf.merge(env_cfg, {"kwargs": cfg.env_kwargs})
    epsilon = stored_epsilon(train_cfg) if cfg.epsilon is None else float(cfg.epsilon)
    returns = evaluate_policy(net, env_cfg, cfg.episodes, epsilon, cfg.seed)
    seed = EVAL_SEED_BASE + cfg.seed * SEED_STRIDE
    result: dict[str, Any] = {
        "ckpt": str(policy.path.resolve()),
        "env_id": env_cfg.id,
        "step": policy.step,
        "episodes": int(cfg.episodes),
        "epsilon": epsilon,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "returns": [float(r) for r in returns],
        "solved_score": env_cfg.get("solved_score"),
    }
    if cfg.video:
        result["videos"] = record_videos(net, env_cfg, cfg.video_episodes, seed, epsilon, out_dir / "videos")
    if cfg.get("render") == "human":
        result["watched_returns"] = watch(net, env_cfg, cfg.video_episodes, seed, epsilon)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{env_cfg.id} @ step {result['step']}: mean return {result['mean_return']:.2f} "
          f"+/- {result['std_return']:.2f} over {cfg.episodes} episodes at epsilon {epsilon:g}  "
          f"({out_dir / 'eval.json'})")
    for video in result.get("videos", []):
        print(f"video: {video}")
    if cfg.video and not result.get("videos"):
        print(f"video: none written into {out_dir / 'videos'} (the env renders no frames?)")
    return result


@hydra.main(config_path="pkg://dqnrun.conf", config_name="eval", version_base=None)
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run(cfg, out_dir)["mean_return"]
    except UsageError as exc:
        print(f"dqnrun eval: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
