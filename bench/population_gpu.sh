#!/usr/bin/env bash
# 16 Pong seeds in one process (hydra/launcher=population) against one seed, on one GPU: env steps/s in all.
#
# The issue's GPU row: aim for at least 8x the env steps/s of one seed. Three parts, in one call:
#   1. bench/population_parts.py: one lockstep round's parts (acting, the batched update, the members' envs) for
#      SEEDS members against one, timed alone: why the ratio below is what it is.
#   2. bench/population_twin.py: a member of a 2-seed population against its solo twin on this device (150
#      updates): the same steps, updates, episodes and evaluations, and how far apart their weights end.
#   3. Each way trains for BUDGET_S seconds after its start (process start, Hydra and building included), then gets
#      a SIGTERM, saves and ends; the script reads every run's results.json and reports env steps per second of
#      wall clock, summed over the runs, and each way's steps per train-second. Pong's members take the batched
#      autograd path (Nature's CNN), which a population uses by default where CUDA is present.
#
# Prepared for the device tool's H200 machine, as bench/pong_gpu.sh is: `bash bench/gpu_wheels.sh` once, here, brings
# the wheels that machine lacks into .whl/. There, in one call with room for a rerun:
#
#   run(command="bash bench/population_gpu.sh", carry=[".whl"], timeout_s=540)
#
# Here, a dry run of the mechanics on the CPU (its numbers mean nothing):
#
#   NO_WHEELS=1 DEVICE=cpu SEEDS=2 BUDGET_S=40 REPS=5 PYTHON=.venv/bin/python bash bench/population_gpu.sh
#
# PROFILE_S=40: then the population once more under cProfile for that long, its 40 costliest functions (own time and
# cumulative) into $OUT/profile.txt: where a lockstep round's time goes on that machine.
#
# PQN populations, the JAX tools' showcase, the same way (part 3 only): ALGO=pqn ENV=minatar_breakout (or pong).
#
# $OUT gets population_gpu.json, parts.json, twin.log and each way's stdout/stderr; the runs themselves go to
# $RUNS (their checkpoints are too large to bring back).
set -euo pipefail
BUDGET_S=${BUDGET_S:-140}
SEEDS=${SEEDS:-16}
DEVICE=${DEVICE:-cuda}
REPS=${REPS:-30}
OUT=${OUT:-/tmp/population_gpu_out}
RUNS=${RUNS:-/tmp/population_gpu_runs}
PY=${PYTHON:-python3}
ALGO=${ALGO:-dqn}                   # ALGO=pqn ENV=minatar_breakout: PQN's preset for that env instead (parts 3 only)
ENV=${ENV:-pong}
PROFILE_S=${PROFILE_S:-0}
export OUT RUNS BUDGET_S SEEDS DEVICE ALGO ENV PROFILE_S PYTHONUNBUFFERED=1
source "$(dirname "$0")/_gpu_env.sh"
rm -rf "$RUNS" && mkdir -p "$RUNS"
PARTS=${PARTS:-1}                   # PARTS=0 / TWIN=0: skip part 1 / part 2
TWIN=${TWIN:-1}
if [ "$ALGO" = dqn ] && [ "$PARTS" = 1 ]; then
  timeout 240 $PY bench/population_parts.py --env "$ENV" --device "$DEVICE" --k "$SEEDS" --reps "$REPS" \
    --out "$OUT/parts.json" || echo "population_parts.py failed"
fi
if [ "$ALGO" = dqn ] && [ "$TWIN" = 1 ]; then
  timeout 240 $PY bench/population_twin.py --device "$DEVICE" --out "$RUNS" > "$OUT/twin.log" 2>&1 \
    || echo "population_twin.py failed"
  tail -n 20 "$OUT/twin.log"
fi
$PY - <<'EOF'
import json, os, signal, subprocess, sys, time
from pathlib import Path

out, runs = Path(os.environ["OUT"]), Path(os.environ["RUNS"])
budget, seeds, device = float(os.environ["BUDGET_S"]), int(os.environ["SEEDS"]), os.environ["DEVICE"]
algo, env = os.environ["ALGO"], os.environ["ENV"]
# the env's preset, no checkpoints but the last; DQN: a replay small enough for 16 members on one machine and
# learning from 2,000 steps, so that both ways spend their budget where a run spends nearly all of its time
common = [f"algo={algo}", f"env={env}", f"device={device}", "total_steps=10000000", "eval.every=0",
          "checkpoint.every=0", "checkpoint.save_replay=false", "log.progress=false"]
if algo == "dqn":
    common += ["replay.capacity=100000", "algo.learning_starts=2000"]
ways = {
    "solo": ["train", *common, "seed=0", f"hydra.run.dir={runs / 'solo'}"],
    "population": ["train", "-m", *common, "seed=" + ",".join(str(s) for s in range(seeds)),
                   "hydra/launcher=population", "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={runs / 'population'}"],
}
if device == "cpu":  # the batched autograd path joins on a CPU only when asked
    ways["population"].append("hydra.launcher.autograd=true")
report = {"budget_s": budget, "seeds": seeds, "device": device, "algo": algo, "env": env}
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
    records = [json.loads(p.read_text()) for p in sorted((runs / name).rglob("results.json"))]
    steps = sum(r.get("steps") or 0 for r in records)
    train_s = max((r.get("train_seconds") or 0.0 for r in records), default=0.0)
    report[name] = {"runs": len(records), "env_steps": steps, "wall_s": round(wall, 1),
                    "env_steps_per_wall_s": round(steps / wall, 1),
                    "env_steps_per_train_s": round(steps / train_s, 1) if train_s else None,
                    "updates": sum(r.get("updates") or 0 for r in records), "returncode": proc.returncode,
                    "statuses": sorted({r.get("status") for r in records})}
    print(name, json.dumps(report[name]), flush=True)
s, p = report["solo"], report["population"]
report["ratio_wall"] = round(p["env_steps_per_wall_s"] / max(s["env_steps_per_wall_s"], 1e-9), 2)
if s["env_steps_per_train_s"] and p["env_steps_per_train_s"]:
    report["ratio_train"] = round(p["env_steps_per_train_s"] / s["env_steps_per_train_s"], 2)
(out / "population_gpu.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
profile_s = float(os.environ["PROFILE_S"])
if profile_s > 0:
    import pstats
    args = [a.replace(str(runs / "population"), str(runs / "profiled")) for a in ways["population"]]
    with open(out / "profiled.stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(runs / "pop.prof"), "-m", "dqnrun",
                                 *args], stdout=se, stderr=se)
        try:
            proc.wait(timeout=profile_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
    with open(out / "profile.txt", "w") as f:
        stats = pstats.Stats(str(runs / "pop.prof"), stream=f)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
    print("profile:", out / "profile.txt")
EOF
