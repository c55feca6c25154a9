"""Peak memory of real runs that fill the replay buffer with Pong frames (84x84, 4 stacked), as the OS sees it.

Each case is a real `dqnrun train env=pong` process that acts until its buffer is full (learning_starts at the
buffer's capacity, one update burst at the very end), measured as the child's peak RSS (getrusage ru_maxrss), not
by multiplying out array sizes. Cases: the stored-once frame storage at 100k and 1M transitions, and the per-row
storage of obs and next_obs at 100k for comparison.

    .venv/bin/python bench/replay_memory.py [--cases frames:100000,frames:1000000,transitions:100000] [--json out]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time

import _common as C

ENVS = 8


def row_bytes(storage: str) -> int:
    """Pixel bytes per transition: one 84x84 frame stored once, or obs and next_obs of 4 frames each."""
    return 84 * 84 if storage == "frames" else 2 * 4 * 84 * 84


def measure(storage: str, capacity: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dqnrun-mem-") as tmp:
        args = [sys.executable, "-m", "dqnrun", "train", "env=pong", f"env.num_envs={ENVS}",
                f"total_steps={capacity + ENVS}", f"algo.learning_starts={capacity}",
                f"replay.capacity={capacity}", f"replay.storage={storage}", "eval.every=0", "checkpoint.every=0",
                "checkpoint.save_replay=false", "log.progress=false", "log.every=50000", "device=cpu",
                f"hydra.run.dir={tmp}/run"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the max over children waited for so far
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return {"storage": storage, "capacity": capacity, "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,
            "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="frames:100000,transitions:100000,frames:1000000")
    p.add_argument("--json")
    args = p.parse_args()
    out = {"environment": C.environment(), "cases": []}
    print(f"# bench/replay_memory.py ({C.load_note()})\n")
    rows = []
    # Smallest first: ru_maxrss of RUSAGE_CHILDREN is the max over all children so far, so each case must peak
    # above the ones before it to be read correctly; the cases are sorted by their expected peak.
    cases = sorted((c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(","))
    cases.sort(key=lambda c: c[1] * row_bytes(c[0]))
    for storage, capacity in cases:
        r = measure(storage, capacity)
        out["cases"].append(r)
        rows.append([storage, f"{capacity:,}", f"{r['peak_rss_gib']:.2f}",
                     f"{capacity * row_bytes(storage) / 1e9:.2f}", f"{r['wall_s']:.0f}"])
        print(f"  {storage} {capacity}: peak {r['peak_rss_gib']:.2f} GiB in {r['wall_s']:.0f} s", flush=True)
    print()
    print(C.md_table(["storage", "transitions", "peak RSS (GiB)", "frame bytes alone (GB)", "wall s"], rows))
    C.write_json(args.json, out)


if __name__ == "__main__":
    main()
