"""Where the time goes: dqnrun's steps/s against env.num_envs and against batch size.

    .venv/bin/python bench/scaling.py [--steps 20000] [--json out.json]

The CartPole preset (3-step returns, its own net) with evaluation and checkpoints off. Updates per env step stay
at the preset's 1/4 (train_freq = 4 summed env steps), so a bigger num_envs means bursts of num_envs/4 gradient
steps per vector step sharing one sample and one target forward.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common as C

import dqnrun.run.lifecycle


def run(overrides: list[str], steps: int) -> dict:
    cfg = C.compose_dqnrun(["env=cartpole", f"total_steps={steps}", "eval.every=0", "checkpoint.every=0",
                            "log.progress=false", *overrides])
    with tempfile.TemporaryDirectory(prefix="dqnrun-scaling-") as run_dir:
        r = dqnrun.run.lifecycle.run(cfg, Path(run_dir))
    return {"overrides": overrides, "sps": r["sps"], "updates": r["updates"], "steps": r["steps"],
            "us_per_env_step": 1e6 / r["sps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    print(f"# scaling ({time.strftime('%Y-%m-%d %H:%M')}, `python bench/scaling.py --steps {args.steps}`)\n")
    print("| varied | value | SPS | µs per env step | updates |\n|---|---|---|---|---|")
    for n in (1, 4, 16, 64):
        r = run([f"env.num_envs={n}"], args.steps)
        rows.append({"varied": "env.num_envs", "value": n, **r})
        print(f"| env.num_envs | {n} | {r['sps']:,.0f} | {r['us_per_env_step']:.0f} | {r['updates']} |", flush=True)
    for b in (32, 64, 128, 256):
        r = run([f"replay.batch_size={b}"], args.steps)
        rows.append({"varied": "replay.batch_size", "value": b, **r})
        print(f"| replay.batch_size | {b} | {r['sps']:,.0f} | {r['us_per_env_step']:.0f} | {r['updates']} |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
