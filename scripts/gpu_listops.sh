#!/usr/bin/env bash
# GPU check of the foundation (about 5 minutes on one H100/H200 with JAX 0.11):
#   1. the fast tests on the GPU (float32 matmuls at full precision, so the float64 comparisons hold),
#   2. the smoke profile from the command line,
#   3. a throughput probe of the official ListOps config (profile=lra): 300 train steps at batch 32, length
#      2000, on a smaller generated train set (the data size does not change the step). Its accuracy means
#      nothing; its steps/s, compile time and peak memory are what it measures.
# Usage: OUT=gpu_out scripts/gpu_listops.sh     (records land in $OUT/results/runs.jsonl)
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Tests start subprocesses: do not let each one grab 75% of the GPU memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, orbax.checkpoint, hydra; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'hydra', hydra.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

echo "== tests on the GPU"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 300 $PY -m pytest -q -x -m "not slow" -p no:cacheprovider \
  tests/kernels tests/models tests/lra tests/data 2>&1 | tail -15 | tee "$OUT/tests.txt"

echo "== smoke profile"
timeout 120 $PY -m lra.train task=listops attention=full profile=smoke train.progress=false \
  results_dir="$OUT/results" data_dir="$OUT/data" hydra.run.dir="$OUT/runs/smoke" 2>&1 | grep -v absl | tail -3

echo "== profile=lra throughput probe (300 steps)"
timeout 300 $PY -m lra.train task=listops attention=full profile=lra train.train_steps=300 train.eval_every=300 \
  train.log_every=50 train.progress=false task.data.generate.num_train=10000 \
  results_dir="$OUT/results" data_dir="$OUT/data" hydra.run.dir="$OUT/runs/lra_probe" 2>&1 | grep -v absl | tail -8
cat "$OUT/runs/lra_probe/metrics.jsonl" 2>/dev/null | tail -4
