"""Train-seconds to solve CartPole-v1: dqnrun's `env=cartpole` preset vs SB3 with rl-zoo3's tuned entry.

Both are evaluated every 2,000 env steps with 100 greedy episodes on the same eval seeds
(dqnrun.envs.run_episodes on a 100-env vector env, reset seeds IN_TRAINING_EVAL_SEED_BASE + seed *
SEED_STRIDE + i), and "solved" is the first eval with mean return >= 475. Eval time is excluded from
both tools' train-seconds. A seed that never solves within its budget counts as its full train time.

- dqnrun: `dqnrun.lifecycle.run` with the preset as shipped (overrides: seed, log.progress=false); it reports
  solved_at_seconds / solved_at_step itself and trains its full total_steps.
- SB3: DQN with rl-zoo3's hyperparams/dqn.yml CartPole-v1 entry (5e4 steps); a BaseCallback runs the
  eval and accumulates the time spent outside it. By default SB3 stops at its first solve (nothing after
  it changes the result); pass --sb3-full to let it run its whole budget.

The two tools take turns per seed (dqnrun first on even seeds, SB3 first on odd ones).

    .venv/bin/python bench/solve_time.py [--quick] [--seeds 0-4] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import tempfile
import time
from typing import Any

import _common as C
import numpy as np
import torch


def parse_seeds(s: str) -> list[int]:
    out: list[int] = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def run_dqnrun(seed: int, tmp: pathlib.Path, extra: list[str]) -> dict[str, Any]:
    import dqnrun.run.lifecycle

    cfg = C.compose_dqnrun(["env=cartpole", f"seed={seed}", "log.progress=false", *extra])
    t0 = time.perf_counter()
    res = dqnrun.run.lifecycle.run(cfg, pathlib.Path(tempfile.mkdtemp(prefix=f"dqnrun-s{seed}-", dir=tmp)))
    wall = time.perf_counter() - t0
    solved = res["solved_at_seconds"] is not None
    return {
        "tool": "dqnrun", "seed": seed, "solved": solved, "solved_at_step": res["solved_at_step"],
        "solved_at_seconds": res["solved_at_seconds"],
        "seconds_to_solve": res["solved_at_seconds"] if solved else res["train_seconds"],
        "train_seconds": res["train_seconds"], "steps": res["steps"], "updates": res["updates"],
        "best_eval": res["best_eval_return"], "final_eval": res["final_eval_return"],
        "evals": res["eval_history"], "wall": wall,
        "config": {"total_steps": cfg.total_steps, "num_envs": cfg.env.num_envs},
    }


def make_sb3_callback(seed: int, stop_at_solve: bool) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    from dqnrun.envs import IN_TRAINING_EVAL_SEED_BASE, SEED_STRIDE, make_vector_env, run_episodes

    # The same evaluation as dqnrun's preset does in training: read from it, so the two cannot drift apart.
    preset = C.compose_dqnrun(["env=cartpole"])
    every, episodes, solved_score = preset.eval.every, preset.eval.episodes, preset.env.solved_score

    class SolveTimer(BaseCallback):
        """Greedy eval every `eval.every` env steps on dqnrun's eval seeds; times training without it."""

        def __init__(self) -> None:
            super().__init__()
            self.eval_envs = make_vector_env("CartPole-v1", min(episodes, preset.eval.max_envs))
            self.eval_seed = IN_TRAINING_EVAL_SEED_BASE + seed * SEED_STRIDE
            self.t_start = 0.0
            self.eval_seconds = 0.0
            self.history: list[tuple[int, float]] = []
            self.solved_at_step: int | None = None
            self.solved_at_seconds: float | None = None
            self.train_seconds = 0.0

        def _on_training_start(self) -> None:
            self.t_start = time.perf_counter()

        def act(self, obs: np.ndarray) -> np.ndarray:
            return self.model.predict(obs, deterministic=True)[0]

        def train_seconds_now(self) -> float:
            return time.perf_counter() - self.t_start - self.eval_seconds

        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n // every == (n - self.training_env.num_envs) // every:
                return True
            t0 = time.perf_counter()
            train_s = self.train_seconds_now()
            ret = float(run_episodes(self.eval_envs, self.act, episodes, self.eval_seed).mean())
            self.history.append((n, ret))
            if self.solved_at_step is None and ret >= solved_score:
                self.solved_at_step, self.solved_at_seconds = n, train_s
            self.eval_seconds += time.perf_counter() - t0
            return not (stop_at_solve and self.solved_at_step is not None)

        def _on_training_end(self) -> None:
            self.train_seconds = self.train_seconds_now()
            self.eval_envs.close()

    return SolveTimer()


def run_sb3(seed: int, total: int, stop_at_solve: bool) -> dict[str, Any]:
    from stable_baselines3 import DQN

    torch.set_num_threads(1)
    # the zoo entry as written: epsilon decays over 0.16 of its own n_timesteps (5e4), whatever `total` is
    kw = C.ZOO_CARTPOLE.sb3_kwargs(C.ZOO_CARTPOLE.total_steps)
    model = C.sb3_silent(DQN("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", verbose=0, **kw))
    cb = make_sb3_callback(seed, stop_at_solve)
    t0 = time.perf_counter()
    model.learn(total_timesteps=total, callback=cb)
    wall = time.perf_counter() - t0
    solved = cb.solved_at_step is not None
    out = {
        "tool": "sb3", "seed": seed, "solved": solved, "solved_at_step": cb.solved_at_step,
        "solved_at_seconds": cb.solved_at_seconds,
        "seconds_to_solve": cb.solved_at_seconds if solved else cb.train_seconds,
        "train_seconds": cb.train_seconds, "steps": int(model.num_timesteps), "updates": int(model._n_updates),
        "best_eval": max((r for _, r in cb.history), default=None),
        "final_eval": cb.history[-1][1] if cb.history else None, "evals": cb.history, "wall": wall,
        "stopped_at_solve": stop_at_solve and solved,
    }
    model.env.close()
    return out


def secs(r: dict[str, Any]) -> str:
    return C.fmt(r["seconds_to_solve"], 1) + ("" if r["solved"] else " (unsolved, full budget)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seed 0 and 4k steps per tool: a smoke run")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7")
    p.add_argument("--sb3-steps", type=int, default=C.ZOO_CARTPOLE.total_steps, help="SB3 budget (zoo: 5e4)")
    p.add_argument("--sb3-full", action="store_true", help="let SB3 train its whole budget after solving")
    p.add_argument("--dqnrun-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dqnrun override (the benchmark itself uses none); repeatable")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    seeds, sb3_steps, extra = parse_seeds(args.seeds), args.sb3_steps, list(args.dqnrun_override)
    if args.quick:
        seeds, sb3_steps, extra = seeds[:1], 4000, [*extra, "total_steps=4000"]
    torch.set_num_threads(1)

    env = C.environment()
    print(f"# solve_time: dqnrun env=cartpole vs SB3 rl-zoo3 CartPole-v1 ({env['date']}, git {env.get('git')}, "
          f"SB3 {env.get('stable_baselines3')}, {env['cpus']} CPUs), seeds {seeds}\n")

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dqnrun-solve-") as tmpd:
        tmp = pathlib.Path(tmpd)
        for i, seed in enumerate(seeds):
            order = ("dqnrun", "sb3") if i % 2 == 0 else ("sb3", "dqnrun")
            for tool in order:
                gc.collect()
                r = run_dqnrun(seed, tmp, extra) if tool == "dqnrun" else run_sb3(seed, sb3_steps,
                                                                                    not args.sb3_full)
                runs.append(r)
                print(f"  seed {seed} {tool:6s}: solved {'yes' if r['solved'] else 'no ':3s} at step "
                      f"{C.fmt(r['solved_at_step'])}, {C.fmt(r['solved_at_seconds'], 1)} s; trained "
                      f"{r['steps']} steps / {r['updates']} updates in {r['train_seconds']:.1f} s "
                      f"(wall {r['wall']:.1f} s); best eval {C.fmt(r['best_eval'], 1)}", flush=True)

    rows = []
    for seed in seeds:
        d = next(r for r in runs if r["tool"] == "dqnrun" and r["seed"] == seed)
        s = next(r for r in runs if r["tool"] == "sb3" and r["seed"] == seed)
        rows.append([seed, C.fmt(d["solved_at_step"]), secs(d), C.fmt(s["solved_at_step"]), secs(s),
                     C.fmt(s["seconds_to_solve"] / d["seconds_to_solve"], 2)])
    summary = {}
    for tool in ("dqnrun", "sb3"):
        rs = [r for r in runs if r["tool"] == tool]
        summary[tool] = {
            "median_seconds_to_solve": C.median([r["seconds_to_solve"] for r in rs]),
            "solve_rate": sum(r["solved"] for r in rs) / len(rs),
            "median_step_solved": C.median([r["solved_at_step"] for r in rs if r["solved"]]),
        }
    ratio = summary["sb3"]["median_seconds_to_solve"] / summary["dqnrun"]["median_seconds_to_solve"]
    summary["ratio_sb3_over_dqnrun"] = ratio
    print()
    print(C.md_table(["seed", "dqnrun solved at step", "dqnrun train-s to solve", "SB3 solved at step",
                      "SB3 train-s to solve", "SB3/dqnrun"], rows))
    print()
    print(C.md_table(
        ["tool", "solve rate", "median train-s to solve", "median step at solve (solved seeds)"],
        [[t, f"{sum(r['solved'] for r in runs if r['tool'] == t)}/{len(seeds)}",
          C.fmt(summary[t]["median_seconds_to_solve"], 1), C.fmt(summary[t]["median_step_solved"])]
         for t in ("dqnrun", "sb3")]))
    print(f"\nSB3 median / dqnrun median train-seconds to solve: {ratio:.2f}x")
    print(f"\nload average at start: {env['loadavg_at_start']}; {C.load_note()}")
    env["load_at_end"] = C.load_note()
    C.write_json(args.json, {"env": env, "runs": runs, "summary": summary, "args": vars(args)})


if __name__ == "__main__":
    main()
