"""Pixels: dqnrun against Stable-Baselines3 on the same machine, in one process, tools alternating.

Sections (``--sections acting,minatar,pong``):

- acting: Pong, 8 envs, no updates (learning_starts beyond the budget, so both tools act uniformly at random
  without a forward pass): env frames/s (agent steps x frame skip 4) of dqnrun's path (ale_py's C++ vector env
  with the stored-once frame replay) against SB3's ``make_atari_env`` + ``VecFrameStack(4)`` (AtariWrapper in a
  DummyVecEnv, its ReplayBuffer). Both store every transition in their replay.
- minatar: MinAtar Breakout training, 1 env, one update per 4 env steps, batch 32, the same small CNN (one 3x3
  conv with 16 filters, 128 units), the same linear epsilon schedule over the run, 1-step targets, the same number
  of updates: env steps/s. Then where dqnrun's time goes, from the costs of its parts measured alone.
- pong: dqnrun's Pong training on this CPU (8 envs, the preset's update every 4 env steps, batch 32): steps/s,
  and how the time splits between env, acting, replay and update.

SPS: dqnrun = results['sps'] (train_seconds: setup, eval and checkpoints excluded); SB3 = total_timesteps /
wall time of model.learn() (construction excluded).

    .venv/bin/python bench/pixels.py [--quick] [--repeats 2] [--sections acting,minatar,pong] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import shutil
import tempfile
import time
from typing import Any

import _common as C
import numpy as np
import torch


def dqnrun_run(overrides: list[str]) -> dict[str, Any]:
    import dqnrun.run.lifecycle

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="dqnrun-px-"))
    try:
        cfg = C.compose_dqnrun([*overrides, "log.progress=false", "eval.every=0", "checkpoint.every=0",
                                "checkpoint.save_replay=false", "device=cpu", "torch_threads=1"])
        res = dqnrun.run.lifecycle.run(cfg, tmp)
        return {"tool": "dqnrun", "steps": res["steps"], "updates": res["updates"], "sps": res["sps"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sb3_learn(model: Any, total: int) -> dict[str, Any]:
    C.sb3_silent(model)
    t0 = time.perf_counter()
    model.learn(total_timesteps=total)
    wall = time.perf_counter() - t0
    return {"tool": "sb3", "steps": int(model.num_timesteps), "updates": int(model._n_updates),
            "sps": model.num_timesteps / wall}


# --- acting: Pong, 8 envs ------------------------------------------------------------------------------
def acting_dqnrun(total: int) -> dict[str, Any]:
    # learning_starts = total - 8: the last vector step crosses it, so one burst of 2 updates runs at the end
    return dqnrun_run(["env=pong", "env.num_envs=8", f"total_steps={total}", f"algo.learning_starts={total - 8}",
                       f"replay.capacity={total}"])


def acting_sb3(total: int) -> dict[str, Any]:
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=8, seed=0), n_stack=4)
    model = DQN("CnnPolicy", env, buffer_size=total, learning_starts=total + 8, train_freq=4, batch_size=32,
                optimize_memory_usage=False, device="cpu", verbose=0, seed=0)
    try:
        return sb3_learn(model, total)
    finally:
        env.close()


# --- MinAtar Breakout training ---------------------------------------------------------------------------
MINATAR = {"lr": 2.5e-4, "buffer": 100_000, "learning_starts": 5000, "batch": 32, "train_freq": 4,
           "target": 1000, "gamma": 0.99, "eps_end": 0.1}


def minatar_dqnrun(total: int) -> dict[str, Any]:
    m = MINATAR
    return dqnrun_run(["env=minatar_breakout", f"total_steps={total}", "replay.n_step=1",
                       f"algo.learning_starts={m['learning_starts']}", f"schedule.decay_steps={total}",
                       f"schedule.end={m['eps_end']}", "log.every=5000"])


def minatar_sb3(total: int) -> dict[str, Any]:
    import gymnasium as gym
    import minatar.gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from torch import nn

    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()

    class MinAtarCNN(BaseFeaturesExtractor):
        """Young and Tian's torso: conv 16 3x3 on (C, 10, 10), then 128 units (SB3 adds the linear head)."""

        def __init__(self, observation_space: gym.Space, features_dim: int = 128) -> None:
            super().__init__(observation_space, features_dim)
            c = observation_space.shape[-1]
            self.conv = nn.Sequential(nn.Conv2d(c, 16, 3), nn.ReLU(), nn.Flatten())
            self.linear = nn.Sequential(nn.Linear(16 * 8 * 8, features_dim), nn.ReLU())

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.linear(self.conv(obs.permute(0, 3, 1, 2)))

    m = MINATAR
    env = gym.make("MinAtar/Breakout-v1")
    model = DQN("MlpPolicy", env, learning_rate=m["lr"], buffer_size=m["buffer"],
                learning_starts=m["learning_starts"], batch_size=m["batch"], train_freq=m["train_freq"],
                gradient_steps=1, target_update_interval=m["target"], gamma=m["gamma"], exploration_fraction=1.0,
                exploration_initial_eps=1.0, exploration_final_eps=m["eps_end"], max_grad_norm=10, device="cpu",
                verbose=0, seed=0,
                policy_kwargs={"features_extractor_class": MinAtarCNN, "net_arch": [], "normalize_images": False})
    try:
        return sb3_learn(model, total)
    finally:
        env.close()


def per_call(fn: Any, k: int, warmup: int) -> float:
    """Seconds per call of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def build_parts(overrides: list[str]) -> tuple[Any, Any, Any]:
    """dqnrun's learner, replay and training envs for a preset, as a run builds them."""
    from dqnrun import builders

    cfg = C.compose_dqnrun(["device=cpu", *overrides])
    spec = builders.build_env_spec(cfg.env)
    algo = builders.build_algorithm(cfg, spec)
    return algo.learner, algo.replay, builders.build_vector_env(cfg.env, threads=1)


def minatar_parts(n: int = 2000) -> dict[str, float]:
    """µs per call of dqnrun's parts on MinAtar Breakout, each alone."""
    learner, replay, envs = build_parts(["env=minatar_breakout", "replay.n_step=1"])
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    warm = min(200, n)
    costs = {"env step": per_call(lambda: envs.step(rng.integers(0, 3, 1)), n, warm)}
    o = envs.step(rng.integers(0, 3, 1))[0].copy()
    costs["greedy action (1 obs)"] = per_call(lambda: learner.greedy_actions(o), n, warm)
    a, r, f, ok = np.zeros(1, np.int64), np.zeros(1), np.zeros(1, bool), np.ones(1, bool)
    costs["replay add"] = per_call(lambda: replay.add(o, a, r, o, f, f, ok), n, warm)
    costs["replay sample (1, 32)"] = per_call(lambda: replay.sample(n_batches=1), n // 4, warm)
    batch = replay.sample(n_batches=1)
    costs["update (batch 32)"] = per_call(lambda: learner.update(batch), n // 4, warm)
    envs.close()
    return {k: v * 1e6 for k, v in costs.items()}


# --- Pong on this CPU ---------------------------------------------------------------------------------------
def pong_parts(n: int = 40) -> dict[str, float]:
    """ms per call of dqnrun's Pong parts alone, 8 envs."""
    learner, replay, envs = build_parts(["env=pong", "replay.capacity=5000", "env.num_envs=8"])
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    valid = np.ones(8, bool)
    steps = []  # 60 real consecutive vector steps, replayed into the buffer in order
    for _ in range(60):
        nxt, r, te, tr, _ = envs.step(rng.integers(0, 6, 8))
        steps.append((obs, np.zeros(8, np.int64), r, nxt, te, tr, valid))
        obs = nxt
    costs = {"env step (8 envs)": per_call(lambda: envs.step(rng.integers(0, 6, 8)), 4 * n, 3)}
    order = iter(range(10**9))
    costs["replay add (8 envs, frames)"] = per_call(lambda: replay.add(*steps[next(order) % len(steps)]), 4 * n, 3)
    costs["greedy actions (8 obs)"] = per_call(lambda: learner.greedy_actions(obs), n, 3)
    costs["replay sample (1, 32)"] = per_call(lambda: replay.sample(n_batches=1), n, 3)
    batch = replay.sample(n_batches=1)
    costs["update (batch 32)"] = per_call(lambda: learner.update(batch), n // 2, 3)
    envs.close()
    return {k: v * 1e3 for k, v in costs.items()}


def head_to_head(a: Any, b: Any, repeats: int, sb3_name: str, extra: tuple[str, Any]) -> dict[str, Any]:
    """Run dqnrun (``a``) and SB3 (``b``) alternately, print their table and ratio of median steps/s.
    ``extra`` is (column header, fn(runs, median sps) -> cell), the comparison's own column."""
    d, s = alternate(a, b, repeats)
    md, ms = C.median([r["sps"] for r in d]), C.median([r["sps"] for r in s])
    head, cell = extra
    print(C.md_table(["tool", head, "steps/s (median)", "per run"],
                     [[name, cell(runs, m), C.fmt(m), ", ".join(C.fmt(r["sps"]) for r in runs)]
                      for name, runs, m in (("dqnrun", d, md), (sb3_name, s, ms))]))
    print(f"\ndqnrun / SB3: **{md / ms:.2f}x**\n")
    return {"dqnrun": d, "sb3": s, "ratio": md / ms, "dqnrun_sps": md, "sb3_sps": ms}


def alternate(a: Any, b: Any, repeats: int) -> tuple[list[dict], list[dict]]:
    ra: list[dict] = []
    rb: list[dict] = []
    for i in range(repeats):  # A B, B A, ...
        for fn, out in ((a, ra), (b, rb)) if i % 2 == 0 else ((b, rb), (a, ra)):
            gc.collect()
            out.append(fn())
            print(f"  {out[-1]['tool']}: {out[-1]['steps']} steps, {out[-1]['updates']} updates, "
                  f"{out[-1]['sps']:.0f} steps/s", flush=True)
    return ra, rb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sections", default="acting,minatar,pong")
    p.add_argument("--acting-steps", type=int, default=40_000)
    p.add_argument("--minatar-steps", type=int, default=45_000)
    p.add_argument("--pong-steps", type=int, default=3_000)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    sections = args.sections.split(",")
    if args.quick:
        args.acting_steps, args.minatar_steps, args.pong_steps, args.repeats = 2000, 6000, 1200, 1
    out: dict[str, Any] = {"environment": C.environment(), "args": vars(args)}
    print(f"# bench/pixels.py ({C.load_note()})\n")

    if "acting" in sections:
        print(f"## Acting only: Pong, 8 envs, {args.acting_steps} agent steps (env frames = 4 x agent steps)")
        out["acting"] = head_to_head(lambda: acting_dqnrun(args.acting_steps), lambda: acting_sb3(args.acting_steps),
                                     args.repeats, "SB3 make_atari_env",
                                     ("env frames/s", lambda runs, m: C.fmt(4 * m)))

    if "minatar" in sections:
        print(f"## MinAtar Breakout training: 1 env, train_freq 4, batch 32, {args.minatar_steps} env steps")
        out["minatar"] = head_to_head(lambda: minatar_dqnrun(args.minatar_steps),
                                      lambda: minatar_sb3(args.minatar_steps), args.repeats, "SB3",
                                      ("updates", lambda runs, m: runs[0]["updates"]))
        md = out["minatar"]["dqnrun_sps"]
        parts = minatar_parts(300 if args.quick else 2000)
        learn_steps = args.minatar_steps - MINATAR["learning_starts"]
        per_step = {  # µs of each part per env step, over the whole run
            "env step": parts["env step"],
            "acting (greedy share of the epsilon schedule)": parts["greedy action (1 obs)"]
            * (learn_steps / args.minatar_steps) * (1 - (1 + MINATAR["eps_end"]) / 2),
            "replay add": parts["replay add"],
            "sample + update (every 4 steps)": (parts["replay sample (1, 32)"] + parts["update (batch 32)"])
            * learn_steps / args.minatar_steps / MINATAR["train_freq"],
        }
        total = sum(per_step.values())
        rows = [[k, f"{v:.1f}", f"{100 * v / total:.0f}%"] for k, v in per_step.items()]
        rows.append(["sum of parts -> predicted steps/s", f"{total:.1f}", C.fmt(1e6 / total)])
        rows.append(["measured loop (all included)", f"{1e6 / md:.1f}", C.fmt(md)])
        print("Where dqnrun's time goes (µs per env step; each part timed alone):\n")
        print(C.md_table(["part", "µs / env step", "share"], rows))
        print("\n" + C.md_table(["part alone", "µs per call"], [[k, f"{v:.1f}"] for k, v in parts.items()]) + "\n")
        out["minatar"].update(parts_us=parts, per_step_us=per_step)

    if "pong" in sections:
        print(f"## Pong training on this CPU: 8 envs, train_freq 4, batch 32, {args.pong_steps} env steps")
        learning_starts = args.pong_steps // 3
        r = dqnrun_run(["env=pong", "env.num_envs=8", f"total_steps={args.pong_steps}",
                        f"algo.learning_starts={learning_starts}", "replay.capacity=20000", "log.every=1000"])
        parts = pong_parts(6 if args.quick else 40)
        learn_frac = 1 - learning_starts / args.pong_steps
        vec = {  # ms per vector step of 8 env steps, in the learning phase
            "env (8 envs, C++ threads)": parts["env step (8 envs)"],
            "replay add (frames once)": parts["replay add (8 envs, frames)"],
            "acting (batched forward, 8 obs)": parts["greedy actions (8 obs)"],
            "sample + 2 updates": 2 * (parts["replay sample (1, 32)"] + parts["update (batch 32)"]),
        }
        total = sum(vec.values())
        rows = [[k, f"{v:.2f}", f"{100 * v / total:.0f}%"] for k, v in vec.items()]
        rows.append(["sum -> predicted steps/s while learning", f"{total:.2f}", C.fmt(8e3 / total)])
        print(f"measured: {r['sps']:.0f} env steps/s over the run ({r['updates']} updates; the first "
              f"{learning_starts} steps act at random without updates, {learn_frac:.0%} of the run learns)\n")
        print(C.md_table(["part (per vector step of 8 env steps)", "ms", "share"], rows) + "\n")
        out["pong"] = {"run": r, "parts_ms": parts, "per_vector_step_ms": vec}

    C.write_json(args.json, out)


if __name__ == "__main__":
    main()
