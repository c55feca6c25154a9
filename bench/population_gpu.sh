#!/usr/bin/env bash
# 16 Pong seeds in one process (hydra/launcher=population) against one seed, on one GPU: env steps/s in all.
#
# The issue's GPU row: aim for at least 8x the env steps/s of one seed. Each way trains for BUDGET_S seconds after
# its start (process start, Hydra and building included), then gets a SIGTERM, saves and ends; the script reads
# every run's results.json and reports env steps per second of wall clock, summed over the runs, and each way's
# steps per train-second. Pong's members take the batched autograd path (Nature's CNN), which a population uses
# by default where CUDA is present (hydra.launcher.autograd=auto).
#
# Prepared for the device tool's H200 machine, as bench/pong_gpu.sh is (its header says how to bring the wheels in
# .whl/ that machine lacks). There, in one call with room for a rerun:
#
#   run(command="bash bench/population_gpu.sh", carry=[".whl"], timeout_s=560)
#
# Here, a dry run of the mechanics on the CPU (its numbers mean nothing):
#
#   DEVICE=cpu SEEDS=2 BUDGET_S=40 PYTHON=.venv/bin/python bash bench/population_gpu.sh
#
# It writes $OUT/population_gpu.json and each way's stdout/stderr.
set -euo pipefail
BUDGET_S=${BUDGET_S:-200}
SEEDS=${SEEDS:-16}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/population_gpu_out}
export OUT BUDGET_S SEEDS DEVICE
source "$(dirname "$0")/_gpu_env.sh"
${PYTHON:-python3} - <<'EOF'
import json, os, signal, subprocess, sys, time
from pathlib import Path

out = Path(os.environ["OUT"])
budget, seeds, device = float(os.environ["BUDGET_S"]), int(os.environ["SEEDS"]), os.environ["DEVICE"]
# the Pong preset, a replay small enough for 16 members on one machine, no checkpoints but the last
common = ["env=pong", f"device={device}", "total_steps=10000000", "replay.capacity=100000",
          "algo.learning_starts=20000", "eval.every=0", "checkpoint.every=0", "checkpoint.save_replay=false",
          "log.progress=false"]
ways = {
    "solo": ["train", *common, "seed=0", f"hydra.run.dir={out / 'solo'}"],
    "population": ["train", "-m", *common, "seed=" + ",".join(str(s) for s in range(seeds)),
                   "hydra/launcher=population", "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={out / 'population'}"],
}
if device == "cpu":  # the batched autograd path joins on a CPU only when asked
    ways["population"].append("hydra.launcher.autograd=true")
report = {"budget_s": budget, "seeds": seeds, "device": device}
for name, args in ways.items():
    t0 = time.time()
    with open(out / f"{name}.stdout", "w") as so, open(out / f"{name}.stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "dqnrun", *args], stdout=so, stderr=se)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # every run saves at its next step boundary and records itself
            proc.wait(timeout=300)
    wall = time.time() - t0
    runs = [json.loads(p.read_text()) for p in sorted((out / name).rglob("results.json"))]
    steps = sum(r.get("steps") or 0 for r in runs)
    train_s = max((r.get("train_seconds") or 0.0 for r in runs), default=0.0)
    report[name] = {"runs": len(runs), "env_steps": steps, "wall_s": round(wall, 1),
                    "env_steps_per_wall_s": round(steps / wall, 1),
                    "env_steps_per_train_s": round(steps / train_s, 1) if train_s else None,
                    "updates": sum(r.get("updates") or 0 for r in runs), "returncode": proc.returncode,
                    "statuses": sorted({r.get("status") for r in runs})}
    print(name, json.dumps(report[name]), flush=True)
s, p = report["solo"], report["population"]
report["ratio_wall"] = round(p["env_steps_per_wall_s"] / max(s["env_steps_per_wall_s"], 1e-9), 2)
if s["env_steps_per_train_s"] and p["env_steps_per_train_s"]:
    report["ratio_train"] = round(p["env_steps_per_train_s"] / s["env_steps_per_train_s"], 2)
(out / "population_gpu.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
EOF
