"""Per-vector-step cost of the replay's parts: the storage write alone, a 1-step add and a 3-step add, at 1 and 8
envs, with CartPole-like observations (4,) float32 (CleanRL's DQN setting: capacity 10,000).

Each case feeds a pre-generated vector-env stream (episodes end with probability 1/64 per step, 3 in 4 by
termination, then one autoreset step with valid=False, as the training loop passes it) and reports the min over
repeats of (time of ``--adds`` calls) / ``--adds``, measured with time.perf_counter.

    python bench/replay_parts.py                         # this checkout's dqnrun.replay
    python bench/replay_parts.py --before /tmp/before    # and the replay of another checkout, for comparison

With ``--before DIR`` each side runs in a worker process of its own (DIR/.venv/bin/python imports DIR's
dqnrun); the two workers time the same case one after the other, case by case, for ``--rounds`` rounds, and each
case keeps its best time. The table gives old / new. Timings on a shared machine move by 25%, so only ratios from
the same run are comparable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

OBS_DIM, CAPACITY, P_END = 4, 10_000, 1 / 64
CASES = [  # (name, envs, what)
    ("storage write", 1, "write"), ("1-step add", 1, "add1"), ("3-step add", 1, "add3"),
    ("3-step add, no episode end", 1, "add3_open"),
    ("storage write", 8, "write"), ("1-step add", 8, "add1"), ("3-step add", 8, "add3"),
]


def stream(n_envs: int, steps: int, seed: int = 0, p_end: float = P_END) -> list[tuple]:
    """``steps`` vector steps (obs, action, reward, next_obs, terminated, truncated, valid), all (E, ...)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n_envs, OBS_DIM)).astype(np.float32)
    autoreset = np.zeros(n_envs, dtype=bool)
    steps_out = []
    for _ in range(steps):
        next_obs = (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32)
        u = rng.random(n_envs)
        valid = ~autoreset
        terminated = (u < 0.75 * p_end) & valid
        truncated = (u >= 0.75 * p_end) & (u < p_end) & valid
        reward = np.where(valid, 1.0, 0.0).astype(np.float32)
        steps_out.append((obs, rng.integers(0, 2, n_envs), reward, next_obs, terminated, truncated, valid))
        autoreset = terminated | truncated
        obs = next_obs
    return steps_out


def time_case(what: str, n_envs: int, adds: int, repeats: int) -> float:
    """Best seconds per vector step of one case, for whichever dqnrun.replay this interpreter imports."""
    import torch

    from dqnrun.replay import ReplayBuffer

    steps = stream(n_envs, adds, p_end=0.0 if what == "add3_open" else P_END)
    n_step = 3 if what.startswith("add3") else 1
    best = float("inf")
    for r in range(repeats + 1):  # the first pass warms up and is not counted
        buf = ReplayBuffer(CAPACITY, 32, (OBS_DIM,), torch.float32, n_step=n_step, gamma=0.99)
        if what == "write":
            # the new code's storage part, or the old buffer's private row write
            if hasattr(buf, "store"):
                write, rows = buf.store.write, [(o, no, a, rw, te) for o, a, rw, no, te, _, _ in steps]
            else:
                write, rows = buf._write, [(o, no, a, rw, te, None) for o, a, rw, no, te, _, _ in steps]
            t0 = time.perf_counter()
            for row in rows:
                write(*row)
        else:
            add = buf.add
            t0 = time.perf_counter()
            for s in steps:
                add(*s)
        elapsed = time.perf_counter() - t0
        if r:
            best = min(best, elapsed / adds)
    return best


def worker() -> None:
    """Time the cases the parent asks for, one JSON line in ("what envs adds repeats"), one out (seconds)."""
    import torch

    torch.set_num_threads(1)
    for line in sys.stdin:
        what, envs, adds, repeats = line.split()
        print(json.dumps(time_case(what, int(envs), int(adds), int(repeats))), flush=True)


class Worker:
    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def time(self, what: str, envs: int, adds: int, repeats: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{what} {envs} {adds} {repeats}\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="a checkout of the old code with its own .venv")
    p.add_argument("--adds", type=int, default=3000, help="vector steps per timed pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per case and round (the best counts)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over all cases (old and new alternating)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker()
        return
    workers = {"new": Worker(sys.executable)}
    if args.before is not None:
        workers["old"] = Worker(str(args.before / ".venv" / "bin" / "python"))
    best: dict[str, dict[str, float]] = {side: {} for side in workers}
    try:
        for r in range(args.rounds):
            for name, envs, what in CASES:
                order = list(workers) if r % 2 == 0 else list(workers)[::-1]
                for side in order:  # the same case back to back on both sides: drift hits both alike
                    sec = workers[side].time(what, envs, args.adds, args.repeats)
                    key = f"{name}|{envs}"
                    best[side][key] = min(best[side].get(key, float("inf")), sec)
    finally:
        for w in workers.values():
            w.close()
    cols = "| case | envs | new µs |" + (" old µs | old / new |" if "old" in best else "")
    print(f"\nreplay, µs per vector step (best of {args.rounds} rounds x {args.repeats} passes of {args.adds} adds"
          + (", old and new alternating case by case" if "old" in best else "") + ")\n")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for name, envs, _ in CASES:
        key = f"{name}|{envs}"
        row = f"| {name} | {envs} | {best['new'][key] * 1e6:.1f} |"
        if "old" in best:
            row += f" {best['old'][key] * 1e6:.1f} | {best['old'][key] / best['new'][key]:.2f} |"
        print(row)
    new = best["new"]
    print(f"\nnew 3-step add / 1-step add at 1 env: {new['3-step add|1'] / new['1-step add|1']:.2f}; "
          f"3-step add / storage write: {new['3-step add|1'] / new['storage write|1']:.2f}")


if __name__ == "__main__":
    main()
