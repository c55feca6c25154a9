"""Env steps per second: dqnrun vs Stable-Baselines3 DQN at the same hyperparameters, alternated A B A B.

Configurations (1 env, Huber loss, grad-norm clip 10, the same linear epsilon schedule in env steps,
no evaluation, torch threads 1 for both):
  (a) rl-zoo3's tuned CartPole-v1 DQN entry: 5e4 steps, train_freq 256, gradient_steps 128, [256,256].
  (b) CleanRL dqn.py defaults ([120,84], train_freq 10, learning_starts 10k, 250k-step epsilon decay),
      run for a shorter budget (--cleanrl-steps) with every other hyperparameter kept.

SB3 collects whole rollouts of train_freq steps and checks its budget only between them, so it runs
ceil(total / train_freq) * train_freq steps; both tools get that rounded total, so that they do the same
number of env steps and gradient updates (the table reports both counts).

SPS: dqnrun = results['sps'] (its train_seconds excludes setup, eval and checkpoints);
SB3 = total_timesteps / wall time of model.learn() (model construction excluded).

    .venv/bin/python bench/throughput.py [--quick] [--repeats 3] [--configs a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import tempfile
import time
from typing import Any

import _common as C
import torch


def run_dqnrun(cfg: C.DQNConfig, total: int, seed: int, tmp: pathlib.Path) -> dict[str, Any]:
    import dqnrun.run.lifecycle

    hcfg = C.compose_dqnrun(cfg.dqnrun_overrides(total, seed))
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="dqnrun-", dir=tmp))
    # Process CPU time of the training loop alone: wrap the algorithm's loop that run() calls (bench-side only).
    from dqnrun.algos.dqn import DQN

    loop_cpu: list[float] = []
    inner = DQN.train

    def timed_loop(*a: Any, **kw: Any) -> Any:
        c = time.process_time()
        try:
            return inner(*a, **kw)
        finally:
            loop_cpu.append(time.process_time() - c)

    DQN.train = timed_loop  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        res = dqnrun.run.lifecycle.run(hcfg, run_dir)
        wall = time.perf_counter() - t0
    finally:
        DQN.train = inner  # type: ignore[method-assign]
    cpu = loop_cpu[0]
    return {"tool": "dqnrun", "steps": res["steps"], "updates": res["updates"], "sps": res["sps"],
            "seconds": res["train_seconds"], "wall_incl_setup": wall, "cpu_seconds": cpu,
            "cpu_sps": res["steps"] / cpu}


def run_sb3(cfg: C.DQNConfig, total: int, seed: int) -> dict[str, Any]:
    from stable_baselines3 import DQN

    torch.set_num_threads(1)
    model = C.sb3_silent(DQN("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", verbose=0, **cfg.sb3_kwargs(total)))
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=total)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"tool": "sb3", "steps": int(model.num_timesteps), "updates": int(model._n_updates),
           "sps": total / wall, "seconds": wall, "cpu_seconds": cpu, "cpu_sps": total / cpu}
    model.env.close()
    return out


def warm_up(tmp: pathlib.Path) -> None:
    """A few hundred updates of each tool, so that neither pays first-call costs inside a timed run."""
    cfg = C.DQNConfig(
        name="warmup", source="", total_steps=1536, lr=1e-3, batch_size=64, buffer_size=2000,
        learning_starts=1000, gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=64,
        eps_start=1.0, eps_end=0.05, eps_decay_steps=1000, net_arch=(64, 64),
    )
    run_dqnrun(cfg, cfg.total_steps, 0, tmp)
    run_sb3(cfg, cfg.total_steps, 0)


def loop_vs_floor(path: str, selected: list[C.DQNConfig], summary: dict[str, Any]) -> None:
    """dqnrun's measured µs per env step against floor.py's whole-run prediction for the same config."""
    preds = json.loads(pathlib.Path(path).read_text())["predictions"]
    rows = []
    for cfg in selected:
        bare, own = preds.get(cfg.name), preds.get(cfg.name + " (dqnrun update)")
        if bare is None or bare["run_total_steps"] != cfg.rounded_total():
            print(f"\n(floor file has no prediction for {cfg.name} at {cfg.rounded_total()} steps; skipped)")
            continue
        measured = 1e6 / summary[cfg.name]["dqnrun_sps"]
        row = {"measured_us_per_step": measured, "floor_us_per_step": 1e6 / bare["run_sps"],
               "ratio_to_floor": measured * bare["run_sps"] / 1e6}
        if own is not None:
            row |= {"floor_own_update_us_per_step": 1e6 / own["run_sps"],
                    "ratio_to_floor_own_update": measured * own["run_sps"] / 1e6}
        summary[cfg.name]["loop_vs_floor"] = row
        rows.append([cfg.name, C.fmt(measured, 1), C.fmt(row["floor_us_per_step"], 1),
                     C.fmt(row["ratio_to_floor"], 2) + "x", C.fmt(row.get("floor_own_update_us_per_step"), 1),
                     C.fmt(row.get("ratio_to_floor_own_update"), 2) + "x"])
    if rows:
        print("\n## dqnrun's loop against the floor (µs per env step, whole run)\n")
        print(C.md_table(["config", "dqnrun measured", "floor (bare update)", "measured/floor",
                          "floor with dqnrun's update", "measured/that floor"], rows))
        print("\nfloor = bench/floor.py's whole-run prediction: updates x update + acting steps x act + steps x "
              "(env step + replay add), with no sampling and no loop bookkeeping. Target: measured/floor <= 1.3.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets, 1 repeat: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=3, help="runs per tool per config, alternated A B A B")
    p.add_argument("--configs", default="a,b", help="comma list of a (rl-zoo3) and b (CleanRL)")
    p.add_argument("--zoo-steps", type=int, default=C.ZOO_CARTPOLE.total_steps, help="budget of config (a)")
    p.add_argument("--cleanrl-steps", type=int, default=30_000, help="budget of config (b) (CleanRL: 500k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--floor", metavar="PATH", help="floor.py --json output: also report dqnrun's loop against it")
    args = p.parse_args()
    repeats = args.repeats
    zoo_steps, cleanrl_steps = args.zoo_steps, args.cleanrl_steps
    if args.quick:
        repeats, zoo_steps, cleanrl_steps = 1, 2048, 10_400
    torch.set_num_threads(1)

    configs = {"a": C.ZOO_CARTPOLE.with_total(zoo_steps), "b": C.CLEANRL_DEFAULTS.with_total(cleanrl_steps)}
    selected = [configs[key.strip()] for key in args.configs.split(",")]
    env = C.environment()
    print(f"# throughput: dqnrun vs SB3 {env.get('stable_baselines3')} ({env['date']}, git {env.get('git')}, "
          f"torch {env['torch']}, {env['cpus']} CPUs), repeats {repeats}\n")

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dqnrun-bench-") as tmpd:
        tmp = pathlib.Path(tmpd)
        if not args.quick:
            warm_up(tmp)
        for cfg in selected:
            total = cfg.rounded_total()
            for r in range(repeats):
                # A B A B, with the order flipped on odd repeats so that neither tool always goes first
                order = ("dqnrun", "sb3") if r % 2 == 0 else ("sb3", "dqnrun")
                for tool in order:
                    gc.collect()
                    res = run_dqnrun(cfg, total, args.seed, tmp) if tool == "dqnrun" else run_sb3(cfg, total,
                                                                                                   args.seed)
                    res.update(config=cfg.name, repeat=r, expected_updates=cfg.expected_updates(total))
                    runs.append(res)
                    print(f"  {cfg.name:28s} repeat {r} {tool:6s}: {res['steps']:>6} steps, {res['updates']:>6} "
                          f"updates, {res['seconds']:6.1f} s, {res['sps']:7.0f} steps/s "
                          f"(CPU {res['cpu_seconds']:.1f} s)", flush=True)

    rows, summary = [], {}
    for cfg in selected:
        d = [x for x in runs if x["config"] == cfg.name and x["tool"] == "dqnrun"]
        s = [x for x in runs if x["config"] == cfg.name and x["tool"] == "sb3"]
        d_sps, s_sps = C.median([x["sps"] for x in d]), C.median([x["sps"] for x in s])
        pair_ratios = [a["sps"] / b["sps"] for a, b in zip(d, s, strict=True)]
        upd_d, upd_s = sorted({x["updates"] for x in d}), sorted({x["updates"] for x in s})
        st_d, st_s = sorted({x["steps"] for x in d}), sorted({x["steps"] for x in s})
        match = upd_d == upd_s and st_d == st_s
        cpu_ratio = C.median([x["cpu_sps"] for x in d]) / C.median([x["cpu_sps"] for x in s])
        summary[cfg.name] = {"dqnrun_sps": d_sps, "sb3_sps": s_sps, "ratio": d_sps / s_sps, "cpu_ratio": cpu_ratio,
                             "pair_ratios": pair_ratios, "dqnrun_updates": upd_d, "sb3_updates": upd_s,
                             "dqnrun_steps": st_d, "sb3_steps": st_s, "counts_match": match}
        rows.append([cfg.name, "/".join(map(str, st_d)), "/".join(map(str, st_s)),
                     "/".join(map(str, upd_d)), "/".join(map(str, upd_s)), "yes" if match else "**NO**",
                     " ".join(C.fmt(x["sps"]) for x in d), " ".join(C.fmt(x["sps"]) for x in s),
                     C.fmt(d_sps), C.fmt(s_sps), C.fmt(d_sps / s_sps, 2) + "x",
                     " ".join(C.fmt(x, 2) for x in pair_ratios), C.fmt(cpu_ratio, 2) + "x"])
    print()
    print(C.md_table(["config", "steps dqnrun", "steps SB3", "updates dqnrun", "updates SB3", "counts match",
                      "dqnrun SPS (runs)", "SB3 SPS (runs)", "dqnrun SPS (median)", "SB3 SPS (median)",
                      "dqnrun/SB3", "per-pair ratios",
                      "CPU-time ratio"], rows))
    print("\nSPS = env steps / wall seconds (dqnrun: its own train_seconds; SB3: model.learn). CPU-time ratio = "
          "the same ratio from process CPU seconds of the training loop / model.learn), a check "
          "against other load on the machine.")
    for cfg in selected:
        print(f"\n{cfg.name}: dqnrun overrides: {' '.join(cfg.dqnrun_overrides(cfg.rounded_total(), args.seed))}")
        kw = cfg.sb3_kwargs(cfg.rounded_total())
        print(f"{cfg.name}: SB3 DQN('MlpPolicy', 'CartPole-v1', seed={args.seed}, device='cpu', "
              + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + f").learn({cfg.rounded_total()})")
    if args.floor:
        loop_vs_floor(args.floor, selected, summary)
    print(f"\nload average at start: {env['loadavg_at_start']}; {C.load_note()}")
    env["load_at_end"] = C.load_note()
    C.write_json(args.json, {"env": env, "runs": runs, "summary": summary, "args": vars(args),
                             "configs": {k: C.asdict(v) for k, v in configs.items()}})


if __name__ == "__main__":
    main()
