"""Learning-quality table: each preset/variant over seeds, judged on a fresh `dqnrun eval` of best.pt.

    python bench/learning.py                        # every row, seeds 0-4, 2 jobs at a time
    python bench/learning.py --rows cartpole,cartpole-rainbow --seeds 0,1,2 --jobs 2 --json out.json

Each seed trains through the real CLI into its own run dir, then `dqnrun eval ckpt=<run>/checkpoints/best.pt`
runs from another directory on held-out seeds (100 episodes; 1,000 for FrozenLake). A row passes when at
least `need` of its seeds reach the threshold on that fresh evaluation (not on the in-training eval).
Train-seconds exclude evaluation; with --jobs 2 two runs share the 2 cores, so seconds are inflated a bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    overrides: tuple[str, ...]
    threshold: float
    need: int  # seeds (of 5) that must reach the threshold
    episodes: int = 100


ROWS: dict[str, Row] = {
    "cartpole": Row(("env=cartpole",), 475, 4),  # the preset: 3-step returns
    "cartpole-1step": Row(("env=cartpole", "replay.n_step=1"), 475, 4),
    "cartpole-double": Row(("env=cartpole", "learner.double=true"), 475, 4),
    "cartpole-dueling": Row(("env=cartpole", "network=dueling_mlp"), 475, 4),
    "cartpole-per": Row(("env=cartpole", "replay=prioritized"), 475, 4),
    # NoisyNet explores by itself: epsilon 0
    "cartpole-noisy": Row(("env=cartpole", "network=noisy_mlp", "schedule.start=0", "schedule.end=0"), 475, 4),
    "cartpole-c51": Row(("env=cartpole", "learner.distributional=true"), 475, 4),
    "cartpole-rainbow": Row(("env=cartpole", "experiment=rainbow"), 475, 4),
    # quantile heads and Munchausen, each the only switch on the preset (3-step returns included)
    "cartpole-qr": Row(("env=cartpole", "learner.distributional=qr"), 475, 4),
    "cartpole-iqn": Row(("env=cartpole", "learner.distributional=iqn"), 475, 4),
    "cartpole-munchausen": Row(("env=cartpole", "learner.munchausen=true"), 475, 4),
    "cartpole-m-iqn": Row(("env=cartpole", "learner.distributional=iqn", "learner.munchausen=true"), 475, 4),
    # PQN (algo=pqn): CleanRL pqn.py's CartPole settings; the issue asks 5 of 5 seeds
    "pqn-cartpole": Row(("algo=pqn", "env=cartpole"), 475, 5),
    "acrobot": Row(("env=acrobot",), -100, 4),
    "mountaincar": Row(("env=mountaincar",), -110, 3),
    "lunarlander": Row(("env=lunarlander",), 200, 3),
    "frozenlake": Row(("env=frozenlake",), 0.65, 4, episodes=1000),
    "taxi": Row(("env=taxi",), 7.5, 4),
}


def _dqnrun(args: list[str], cwd: Path | None = None) -> str | None:
    """Run `python -m dqnrun ARGS`; None on success, else the last line of its stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "dqnrun", *args], cwd=cwd, capture_output=True, text=True, env=env)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]


def run_seed(name: str, row: Row, seed: int, root: Path) -> dict:
    run_dir = root / name / f"seed{seed}"
    t0 = time.time()
    error = _dqnrun(["train", *row.overrides, f"seed={seed}", "log.progress=false", f"hydra.run.dir={run_dir}"])
    wall = time.time() - t0
    if error is not None:
        return {"row": name, "seed": seed, "error": [error]}
    results = json.loads((run_dir / "results.json").read_text())
    elsewhere = root / "eval" / name / f"seed{seed}"  # evaluated from another directory, as a user would
    elsewhere.mkdir(parents=True, exist_ok=True)
    error = _dqnrun(["eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"episodes={row.episodes}",
                     f"seed={seed}", f"hydra.run.dir={elsewhere / 'run'}"], cwd=elsewhere)
    if error is not None:
        return {"row": name, "seed": seed, "error": [error]}
    mean = json.loads((elsewhere / "run" / "eval.json").read_text())["mean_return"]
    return {"row": name, "seed": seed, "eval_mean": mean, "passed": mean >= row.threshold,
            "solved_at_step": results["solved_at_step"], "solved_at_seconds": results["solved_at_seconds"],
            "train_seconds": results["train_seconds"], "steps": results["steps"], "wall_seconds": wall,
            "best_in_training_eval": results["best_eval_return"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep run dirs here instead of a temp dir")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra overrides appended to every row (for tuning; the table records them)")
    args = ap.parse_args()
    names = [r for r in args.rows.split(",") if r]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        sys.exit(f"unknown rows: {unknown}; choose from {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="dqnrun-learning-"))
    rows = {n: dataclasses.replace(ROWS[n], overrides=(*ROWS[n].overrides, *args.set)) for n in names}
    jobs = [(n, s) for n in names for s in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        out = list(pool.map(lambda job: run_seed(job[0], rows[job[0]], job[1], root), jobs))
    for r in out:
        print(json.dumps(r), flush=True)
    command = f"python bench/learning.py --rows {args.rows} --seeds {args.seeds} --jobs {args.jobs}"
    if args.set:
        command += " --set " + " ".join(args.set)
    print(f"\n# learning table ({time.strftime('%Y-%m-%d')}, `{command}`)\n")
    print("| row | threshold | fresh-eval mean per seed | median | solved seeds | need | pass | median env steps to "
          "solve (in-training eval) | median train-s to solve | median train-s total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for name in names:
        rs = [r for r in out if r["row"] == name]
        ok = [r for r in rs if "error" not in r]
        means = [r["eval_mean"] for r in ok]
        n_pass = sum(r["passed"] for r in ok)
        need = rows[name].need * len(seeds) // 5 or 1
        solved = [r for r in ok if r["solved_at_step"] is not None]
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        row = {"row": name, "threshold": rows[name].threshold, "means": means, "median": med(means),
               "passed": n_pass, "seeds": len(seeds), "need": need, "pass": n_pass >= need and not
               (len(ok) < len(rs)), "steps_to_solve": med([r["solved_at_step"] for r in solved]),
               "secs_to_solve": med([r["solved_at_seconds"] for r in solved]),
               "train_seconds": med([r["train_seconds"] for r in ok]),
               "errors": [r["error"] for r in rs if "error" in r]}
        table.append(row)
        fmt = lambda x: "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))  # noqa: E731
        print(f"| {name} | {row['threshold']} | {' '.join(fmt(m) for m in means)} | {fmt(row['median'])} | "
              f"{n_pass}/{len(seeds)} | {need} | {'yes' if row['pass'] else 'NO'} | {fmt(row['steps_to_solve'])} | "
              f"{fmt(row['secs_to_solve'])} | {fmt(row['train_seconds'])} |")
        if row["errors"]:
            print(f"|  errors: {row['errors']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": table, "runs": out}, indent=2))


if __name__ == "__main__":
    main()
