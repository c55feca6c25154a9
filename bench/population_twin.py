"""A Pong population member against its solo twin, through the CLI, on ``--device`` (the GPU machine's check).

tests/e2e/test_population.py runs this on the CPU (``hydra.launcher.autograd=true``) and asserts 1e-4; on a GPU
the batched autograd path is the default, and convolution algorithms may differ between a batched and a single
forward, so this prints how far the member's weights are from its twin's after 150 updates rather than asserting.

    python bench/population_twin.py --device cuda --out $OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="/tmp/population_twin")
    a = ap.parse_args()
    out = Path(a.out) / "twin"
    short = ["env=pong", f"device={a.device}", "total_steps=1200", "algo.learning_starts=600", "replay.capacity=2000",
             "eval.every=1200", "eval.episodes=1", "eval.max_envs=1", "env.kwargs.max_num_frames_per_episode=400",
             "log.progress=false"]
    cmds = {"population": ["train", "-m", "seed=0,1", *short, "hydra/launcher=population", "hydra.launcher.n_jobs=1",
                           f"hydra.sweep.dir={out / 'sweep'}"],
            "solo": ["train", "seed=1", *short, f"hydra.run.dir={out / 'solo'}"]}
    if a.device == "cpu":  # the batched autograd path joins on a CPU only when asked
        cmds["population"].append("hydra.launcher.autograd=true")
    report: dict[str, object] = {"device": a.device}
    for name, args in cmds.items():
        proc = subprocess.run([sys.executable, "-m", "dqnrun", *args], capture_output=True, text=True, timeout=400)
        report[f"{name}_rc"] = proc.returncode
        report[f"{name}_first_line"] = (proc.stdout.splitlines() or [""])[0]
        if proc.returncode:
            report[f"{name}_stderr"] = proc.stderr[-2000:]
    try:
        member = json.loads((out / "sweep" / "1" / "results.json").read_text())
        twin = json.loads((out / "solo" / "results.json").read_text())
        report["same"] = {k: member[k] == twin[k] for k in ("steps", "updates", "episodes", "eval_history")}
        report["updates"] = member["updates"]
        a_ = torch.load(out / "sweep" / "1" / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")
        b_ = torch.load(out / "solo" / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")
        report["max_abs_weight_diff"] = max(float((a_["policy"][k] - b_["policy"][k]).abs().max())
                                            for k in a_["policy"])
    except (OSError, KeyError, ValueError) as exc:
        report["error"] = repr(exc)
    print("twin", json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
