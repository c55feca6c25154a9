#!/usr/bin/env bash
# The wheels the device tool's H200 image lacks (it has torch, numpy, tensorboard, opencv, tqdm, pyyaml, packaging,
# cloudpickle, typing-extensions), for its Python 3.12, into .whl/ (ignored by git through .git/info/exclude), as
# bench/pong_gpu.sh and bench/population_gpu.sh expect them: `run(..., carry=[".whl"])`. Run once, here:
#
#   bash bench/gpu_wheels.sh
#
# Used on 2026-12-04: six wheels, 3.8 MB; `bash bench/population_gpu.sh` then ran there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
for w in gymnasium==1.4.0 ale-py==0.12.1 hydra-core==1.3.8 omegaconf==2.3.1 farama-notifications==0.0.6; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$w"
done
# antlr4's 4.9.3 (hydra-core's pin) is a source distribution only: build its pure-Python wheel here
tmp=$(mktemp -d)
$PY -m pip download -q --no-deps --no-binary=:all: -d "$tmp" antlr4-python3-runtime==4.9.3
$PY -m pip wheel -q --no-deps -w .whl "$tmp"/antlr4-python3-runtime-4.9.3.tar.gz
rm -rf "$tmp"
ls -1 .whl
