#!/usr/bin/env bash
# Pong on one GPU, within a fixed wall-clock budget: what dqnrun reaches and how fast.
#
# Prepared for the device tool's H200 machine (Python 3.12 with torch, tensorboard and opencv, but no gymnasium,
# ale-py, hydra-core or omegaconf): those travel as cp312 wheels in .whl/ (at most 64 MiB per call). Once, here:
#
#   bash bench/gpu_wheels.sh
#
# Then run it there, in one call, with a timeout that leaves room for a rerun (the command itself stops training
# after BUDGET_S seconds and evaluates):
#
#   run(command="bash bench/pong_gpu.sh", carry=[".whl"], timeout_s=560)
#
# It writes $OUT/pong_gpu.json (reached score, wall minutes, env steps, steps/s) and $OUT/train.log.
set -euo pipefail
BUDGET_S=${BUDGET_S:-420}           # ~7 minutes of training, as the issue plans
OUT=${OUT:-/tmp/pong_gpu_out}
DEVICE=${DEVICE:-cuda}              # NO_WHEELS=1 DEVICE=cpu BUDGET_S=30 PYTHON=.venv/bin/python bash bench/pong_gpu.sh: a dry run here
export OUT BUDGET_S DEVICE
source "$(dirname "$0")/_gpu_env.sh"
${PYTHON:-python3} - <<'EOF'
import json, os, time, signal, threading, sys
from pathlib import Path

out = Path(os.environ["OUT"])
budget = float(os.environ.get("BUDGET_S", "420"))
# Pong-tuned for wall-clock speed on one GPU: 16 envs in ALE's C++ threads, one update per 4 env steps at batch
# 128 (the GPU's cost per update hardly grows with the batch), 3-step double DQN, a 500k replay of frames stored
# once, replay and networks on the GPU.
overrides = [
    "env=pong", f"device={os.environ['DEVICE']}", "env.num_envs=16", "total_steps=10000000", "replay.capacity=500000",
    "replay.batch_size=128", "replay.n_step=3", "learner.double=true", "algo.learning_starts=20000",
    "algo.train_freq=4", "algo.target_update_interval=2000", "optimizer.lr=2.5e-4",
    "schedule.decay_steps=250000", "schedule.end=0.01", "eval.every=100000", "eval.episodes=8", "eval.max_envs=8",
    "checkpoint.every=0", "checkpoint.save_replay=false", "log.progress=false", "torch_threads=4",
    f"hydra.run.dir={out / 'run'}",
]
t0 = time.time()
# A SIGTERM after the budget: the run finishes its step, saves last.pt and writes results.json (exit 143).
threading.Timer(budget, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
sys.argv = ["dqnrun", "train", *overrides]
from dqnrun.cli import main
try:
    main()
except SystemExit as exc:
    print("train exited with", exc.code)
wall = time.time() - t0
r = json.loads((out / "run" / "results.json").read_text())
summary = {"wall_minutes": wall / 60, "steps": r["steps"], "sps": r["sps"], "updates": r["updates"],
           "best_eval_return": r["best_eval_return"], "final_eval_return": r["final_eval_return"],
           "eval_history": r["eval_history"], "device": r["device"]}
(out / "pong_gpu.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
cp "$OUT/run/train.log" "$OUT/train.log" 2>/dev/null || true
