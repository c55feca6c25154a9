"""Populations against joblib: the same sweep as one process (``hydra/launcher=population``) and as one process per
job (``hydra/launcher=joblib hydra.launcher.n_jobs=2``), whole commands timed as a user waits for them, the two
ways alternated in one run, on this machine.

    .venv/bin/python bench/population.py                              # every case, full budgets, one round
    .venv/bin/python bench/population.py --cases cartpole16 --rounds 2 --json out.json
    .venv/bin/python bench/population.py --quick                      # 3000 steps: check that it runs

Cases (each 16 runs):
- ``cartpole16``: 16 seeds of the CartPole preset (its [128, 128] net, 50k steps);
- ``mlp64``: the same with ``network.hidden=[64,64]`` (a smaller update: the batched update gains more);
- ``grid4x4``: 4 learning rates x 4 seeds of the preset;
- ``breakout8``: 8 seeds of the MinAtar Breakout preset at 100k steps (its network batched: one convolution);
- ``frozenlake16``: 16 seeds of FrozenLake's tabular preset (Q-tables, SGD, ``replay=latest``, 200k steps);
- ``taxi16``: 16 seeds of Taxi's tabular preset (300k steps);
- ``noisy8``: 8 CartPole seeds with NoisyNet layers, 30k steps (the batched autograd path: ``autograd=true``);
- ``solo``: one run of the preset, for the peak RSS of one run.

For each command: wall seconds, peak RSS of the process tree (``/usr/bin/time``'s maximum resident set size of the
command, which covers its reaped children), and the runs that solved (``solved_at_step``). The load average
(`uptime`) is recorded before and after: the 2-core machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEEDS16 = "seed=" + ",".join(str(s) for s in range(16))
CASES: dict[str, list[str]] = {
    "cartpole16": ["env=cartpole", SEEDS16],
    "mlp64": ["env=cartpole", SEEDS16, "network.hidden=[64,64]"],
    "grid4x4": ["env=cartpole", "seed=0,1,2,3", "optimizer.lr=1e-3,2.5e-3,5e-3,1e-2"],
    "breakout8": ["env=minatar_breakout", "seed=" + ",".join(str(s) for s in range(8)), "total_steps=100000"],
    # the batched autograd path (dqnrun/population/functional.py): C51 with a dueling head
    "c51dueling8": ["env=cartpole", "seed=" + ",".join(str(s) for s in range(8)), "network=dueling_mlp",
                    "learner.distributional=c51", "total_steps=30000"],
    "seeds4": ["env=cartpole", "seed=0,1,2,3"],
    # a plain TD loss over a network the hand-written stack does not cover (LayerNorm): batched products, one backward
    "layernorm8": ["env=cartpole", "seed=" + ",".join(str(s) for s in range(8)), "network.norm=layernorm",
                   "total_steps=30000"],
    "dueling8": ["env=cartpole", "seed=" + ",".join(str(s) for s in range(8)), "network=dueling_mlp",
                 "total_steps=30000"],
    # PQN populations (dqnrun/population/pqn.py): CartPole's PQN preset, 8 seeds, a fifth of its 500k steps
    "pqn8": ["algo=pqn", "env=cartpole", "seed=" + ",".join(str(s) for s in range(8)), "total_steps=100000"],
    "pqnbreakout4": ["algo=pqn", "env=minatar_breakout", "seed=0,1,2,3", "total_steps=100000"],
    # Q-table populations (dqnrun/population/table.py): FrozenLake's tabular preset (200k steps), 16 seeds
    "frozenlake16": ["env=frozenlake", SEEDS16],
    "taxi16": ["env=taxi", SEEDS16],  # Taxi's tabular preset (300k steps, 500 states)
    # NoisyNet members (the batched autograd path, each member's noise from its own torch stream), 30k steps
    "noisy8": ["env=cartpole", "seed=" + ",".join(str(s) for s in range(8)), "network=noisy_mlp", "schedule.start=0",
               "schedule.end=0", "total_steps=30000"],
}
# cases whose population takes the batched autograd path, which joins on a CPU only when asked
AUTOGRAD = {"c51dueling8", "pqn8", "pqnbreakout4", "noisy8", "layernorm8", "dueling8"}
LAUNCHERS = {
    "population": ["hydra/launcher=population"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}
COMMON = ["log.progress=false", "checkpoint.every=0"]


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def timed(args: list[str], cwd: Path) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """(wall seconds, peak RSS in MiB, process) of ``args`` under /usr/bin/time."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    rss = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS ")]
    return wall, (rss[-1] // 1024 if rss else -1), proc


def sweep(case: str, launcher: str, steps: int | None, tmp: Path, keep: Path | None = None) -> dict:
    sweep_dir = tmp / f"{case}-{launcher}-{time.time_ns()}"
    extra = [f"total_steps={steps}"] if steps else []
    if launcher == "population" and case in AUTOGRAD:
        extra.append("hydra.launcher.autograd=true")
    args = [sys.executable, "-m", "dqnrun", "train", "-m", *CASES[case], *COMMON, *extra, *LAUNCHERS[launcher],
            f"hydra.sweep.dir={sweep_dir}"]
    before = load()
    wall, rss, proc = timed(args, tmp)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}\n{proc.stderr[-3000:]}")
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]
    first = proc.stdout.splitlines()[:3]
    if keep is not None:  # for `dqnrun report` on both ways afterwards
        keep.mkdir(parents=True, exist_ok=True)
        shutil.move(str(sweep_dir), str(keep / sweep_dir.name))
    shutil.rmtree(sweep_dir, ignore_errors=True)
    finals = [r["final_eval_return"] for r in runs if r.get("final_eval_return") is not None]
    out = {"case": case, "launcher": launcher, "wall_s": round(wall, 1), "peak_rss_mib": rss, "runs": len(runs),
           "solved": sum(r.get("solved_at_step") is not None for r in runs),
           "final_eval_mean": round(sum(finals) / len(finals), 2) if finals else None,
           "failed": sum(r.get("status") != "completed" for r in runs), "load_before": before, "load_after": load(),
           "first_lines": first, "command": " ".join(["dqnrun train -m", *CASES[case], *COMMON, *extra,
                                                      *LAUNCHERS[launcher]])}
    print(json.dumps(out), flush=True)
    return out


def solo(steps: int | None, tmp: Path) -> dict:
    run_dir = tmp / f"solo-{time.time_ns()}"
    extra = [f"total_steps={steps}"] if steps else []
    args = [sys.executable, "-m", "dqnrun", "train", "env=cartpole", "seed=0", *COMMON, *extra,
            f"hydra.run.dir={run_dir}"]
    wall, rss, proc = timed(args, tmp)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    shutil.rmtree(run_dir, ignore_errors=True)
    out = {"case": "solo", "launcher": "none", "wall_s": round(wall, 1), "peak_rss_mib": rss, "load_after": load()}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="solo,cartpole16,mlp64,grid4x4")
    p.add_argument("--rounds", type=int, default=1, help="each round runs both launchers, in alternating order")
    p.add_argument("--steps", type=int, default=None, help="override total_steps (default: each preset's own)")
    p.add_argument("--quick", action="store_true", help="3000 steps, to check that the script runs")
    p.add_argument("--joblib-first", action="store_true", help="start the alternation with joblib")
    p.add_argument("--json")
    p.add_argument("--keep", type=Path, default=None, help="move each sweep directory here instead of deleting it")
    args = p.parse_args()
    steps = 3000 if args.quick else args.steps
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dqnrun-pop-bench-") as tmp_s:
        tmp = Path(tmp_s)
        flip = args.joblib_first
        for case in args.cases.split(","):
            if case == "solo":
                results.append(solo(steps, tmp))
                continue
            for _ in range(args.rounds):
                order = ["joblib", "population"] if flip else ["population", "joblib"]
                flip = not flip
                for launcher in order:
                    results.append(sweep(case, launcher, steps, tmp, args.keep))
    print("\n| case | population s | joblib s | speedup | solved (pop / joblib) | peak RSS MiB (pop / joblib) |")
    print("|---|---|---|---|---|---|")
    for case in [c for c in args.cases.split(",") if c != "solo"]:
        pop = [r for r in results if r["case"] == case and r["launcher"] == "population"]
        job = [r for r in results if r["case"] == case and r["launcher"] == "joblib"]
        tp, tj = sum(r["wall_s"] for r in pop) / len(pop), sum(r["wall_s"] for r in job) / len(job)
        print(f"| {case} | {tp:.0f} | {tj:.0f} | {tj / tp:.2f}x | {pop[-1]['solved']}/{pop[-1]['runs']} / "
              f"{job[-1]['solved']}/{job[-1]['runs']} | {pop[-1]['peak_rss_mib']} / {job[-1]['peak_rss_mib']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
