"""Wall-clock time of one 4-job sweep run in parallel (joblib launcher) against the same 4 jobs one after
another (Hydra's basic launcher), alternated, on this machine.

Each job is the CartPole preset with a shorter budget (--steps). In parallel, each job gets its share of the
cores (dqnrun.sweep.cpu_share: here 2 cores / 2 jobs = 1 torch thread each, BLAS capped alike), so jobs do not
oversubscribe. The whole command is timed, process start and Hydra included, as a user waits for it.

    .venv/bin/python bench/sweep_parallel.py [--quick] [--repeats 2] [--steps 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def sweep(mode: str, steps: int, tmp: Path) -> dict:
    sweep_dir = tmp / f"{mode}-{time.time_ns()}"
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if mode == "parallel" else ["hydra/launcher=basic"]
    args = [sys.executable, "-m", "dqnrun", "train", "-m", "env=cartpole", "seed=0,1,2,3", f"total_steps={steps}",
            "log.progress=false", "checkpoint.every=0", *launcher, f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}\n{proc.stderr[-2000:]}")
    jobs = [json.loads((sweep_dir / str(j) / "results.json").read_text()) for j in range(4)]
    shutil.rmtree(sweep_dir, ignore_errors=True)
    return {"mode": mode, "wall_s": wall, "train_s": [j["train_seconds"] for j in jobs],
            "threads": [j["torch_threads"] for j in jobs], "cpu_share": [j["cpu_share"] for j in jobs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--json")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats = 2000, 1
    out = {"environment": C.environment(), "args": vars(args), "runs": []}
    print(f"# bench/sweep_parallel.py ({C.load_note()})\n")
    tmp = Path(tempfile.mkdtemp(prefix="dqnrun-sweep-"))
    try:
        for i in range(args.repeats):
            for mode in (("sequential", "parallel") if i % 2 == 0 else ("parallel", "sequential")):
                r = sweep(mode, args.steps, tmp)
                out["runs"].append(r)
                print(f"  {mode}: {r['wall_s']:.1f} s wall; per job train-s {[round(x, 1) for x in r['train_s']]}, "
                      f"torch threads {r['threads']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seq = C.median([r["wall_s"] for r in out["runs"] if r["mode"] == "sequential"])
    par = C.median([r["wall_s"] for r in out["runs"] if r["mode"] == "parallel"])
    print()
    print(C.md_table(["4 jobs of env=cartpole", "wall s (median)", "per run"], [
        ["one after another (basic launcher)", f"{seq:.1f}",
         ", ".join(f"{r['wall_s']:.1f}" for r in out["runs"] if r["mode"] == "sequential")],
        ["in parallel (joblib, 2 jobs at a time)", f"{par:.1f}",
         ", ".join(f"{r['wall_s']:.1f}" for r in out["runs"] if r["mode"] == "parallel")]]))
    print(f"\nsequential / parallel: **{seq / par:.2f}x** on {C.environment()['cpus']} cores")
    out["speedup"] = seq / par
    C.write_json(args.json, out)


if __name__ == "__main__":
    main()
