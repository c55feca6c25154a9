"""PQN on CartPole: dqnrun against CleanRL's own ``cleanrl/pqn.py``, whole process, alternated A B A B.

Both run CleanRL pqn.py's defaults (500k env steps, 4 envs x 128 steps, 4 epochs x 4 minibatches, RAdam 2.5e-4
annealed, [120, 84] with LayerNorm, lambda 0.65, epsilon 1 -> 0.05 over 250k steps): CleanRL as
``python pqn.py --no-cuda --seed S --total-timesteps N``, dqnrun as ``dqnrun train algo=pqn env=cartpole seed=S
total_steps=N`` (its preset is those values). Each is a fresh process timed from start to exit: imports, env
construction, training, and for dqnrun its evaluations (100 greedy episodes every 20k steps, which pqn.py does
not do) and checkpoints. dqnrun is also timed with ``eval.every=0`` (no evaluation: pqn.py's work only).

CleanRL's script is not on PyPI: pass a checkout's file, e.g.
``git clone https://github.com/vwxyzjn/cleanrl && python bench/pqn_speed.py --cleanrl cleanrl/cleanrl/pqn.py``
(it needs tyro: ``pip install -e '.[bench]'``).

    .venv/bin/python bench/pqn_speed.py --cleanrl PATH/pqn.py [--steps 500000] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

MIRROR = Path("/work/.mirror/vwxyzjn+cleanrl/repo")  # where this project's machines keep a CleanRL snapshot


def cleanrl_script(path: str | None, into: Path) -> Path:
    if path:
        return Path(path).resolve()
    if MIRROR.exists():  # a bare git snapshot: take the file out of it
        out = into / "pqn.py"
        out.write_bytes(subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:cleanrl/pqn.py"], check=True,
                                       capture_output=True).stdout)
        return out
    sys.exit("pass --cleanrl PATH/TO/cleanrl/pqn.py (git clone https://github.com/vwxyzjn/cleanrl)")


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cleanrl", help="path to CleanRL's cleanrl/pqn.py")
    p.add_argument("--steps", type=int, default=500_000, help="env steps per run (pqn.py's default: 500k)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    dqnrun = str(Path(sys.executable).with_name("dqnrun"))
    env = C.environment()
    print(f"# PQN CartPole: dqnrun vs CleanRL pqn.py, whole process ({env['date']}, git {env.get('git')}, "
          f"torch {env['torch']}, {env['cpus']} CPUs), {args.steps} steps, repeats {args.repeats}\n")
    tools = {
        "cleanrl": lambda d: [sys.executable, str(script), "--no-cuda", f"--seed={args.seed}",
                              f"--total-timesteps={args.steps}"],
        "dqnrun": lambda d: [dqnrun, "train", "algo=pqn", "env=cartpole", f"seed={args.seed}",
                             f"total_steps={args.steps}", f"hydra.run.dir={d / 'run'}"],
        "dqnrun (no eval)": lambda d: [dqnrun, "train", "algo=pqn", "env=cartpole", f"seed={args.seed}",
                                       f"total_steps={args.steps}", "eval.every=0", f"hydra.run.dir={d / 'run'}"],
    }
    times: dict[str, list[float]] = {k: [] for k in tools}
    finals: dict[str, list[str]] = {k: [] for k in tools}
    with tempfile.TemporaryDirectory(prefix="pqn-speed-") as tmpd:
        tmp = Path(tmpd)
        script = cleanrl_script(args.cleanrl, tmp)
        for r in range(args.repeats):
            order = list(tools) if r % 2 == 0 else list(reversed(tools))
            for name in order:
                d = tmp / f"{name.split()[0]}-{r}"
                d.mkdir()
                wall, out = timed(tools[name](d), d)
                times[name].append(wall)
                m = re.findall(r"final eval ([-\d.]+)", out)
                finals[name].append(m[-1] if m else "-")
                print(f"  {name:18s} repeat {r}: {wall:7.1f} s", flush=True)
                shutil.rmtree(d, ignore_errors=True)
    base = statistics.median(times["cleanrl"])
    rows = [[name, C.fmt(statistics.median(ts), 1), C.fmt(args.steps / statistics.median(ts), 0),
             C.fmt(base / statistics.median(ts), 2) + "x", ", ".join(finals[name])] for name, ts in times.items()]
    print("\n" + C.md_table(["tool", "median wall s", "env steps/s (whole process)", "speed vs CleanRL",
                             "final eval (dqnrun)"], rows))
    C.write_json(args.json, {"environment": env, "steps": args.steps, "seed": args.seed, "times": times})


if __name__ == "__main__":
    main()
