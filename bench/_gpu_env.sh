# Sourced by bench/pong_gpu.sh and bench/population_gpu.sh on the device machine (bench/gpu_wheels.sh brings
# the wheels it lacks into .whl/): makes $OUT, installs those wheels into /tmp/site, sets PYTHONPATH, names the GPU.
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then  # NO_WHEELS=1: a dry run here, where pip has them
  # dqnrun runs there from this checkout, not installed: its configs ship inside the package as dqnrun.conf
  # (pyproject.toml maps conf/ there), so the checkout there gets that name as a link
  [ -e dqnrun/conf ] || ln -s ../conf dqnrun/conf
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
