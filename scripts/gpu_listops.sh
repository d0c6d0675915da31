#!/usr/bin/env bash
# GPU check of the foundation (about 5 minutes on one H100/H200 with JAX 0.11):
#   1. the fast tests on the GPU (float32 matmuls at full precision, so the float64 comparisons hold),
#   2. the smoke profile from the command line,
#   3. a throughput probe of the official ListOps config (profile=lra): 300 train steps at batch 32, length
#      2000, on a smaller generated train set (the data size does not change the step). Its accuracy means
#      nothing; its steps/s, compile time and peak memory are what it measures.
# Usage: OUT=gpu_out scripts/gpu_listops.sh     (records land in $OUT/results/runs.jsonl)
# The GPU image has no Hydra: make its wheels here with scripts/gpu_wheels.sh and carry them (see that script).
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
# No compilation cache in the tests (tests/conftest.py): every kernel compiled for real.
export LRA_TEST_JAX_CACHE=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Tests start subprocesses: do not let each one grab 75% of the GPU memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, orbax.checkpoint, hydra; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'hydra', hydra.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

echo "== tests on the GPU"
# Full-precision float32 matmuls (TF32 would fail the float64 comparisons) and deterministic reductions (the
# resume test expects bitwise-equal parameters, which GPU atomics do not give by default).
DET="--xla_gpu_deterministic_ops=true"
XLA_FLAGS="$DET" $PY -c "import jax.numpy as jnp; jnp.ones(1).block_until_ready()" 2>/dev/null \
  || { echo "this XLA does not know $DET; tests run without it"; DET=""; }
JAX_DEFAULT_MATMUL_PRECISION=highest XLA_FLAGS="$DET" timeout 300 \
  $PY -m pytest -q -m "not slow" -p no:cacheprovider tests/kernels tests/models tests/lra tests/data 2>&1 \
  | tail -15 | tee "$OUT/tests.txt"

echo "== smoke profile"
timeout 120 $PY -m lra.train task=listops attention=full profile=smoke train.progress=false \
  results_dir="$OUT/results" data_dir="$OUT/data" hydra.run.dir="$OUT/runs/smoke" 2>&1 | grep -v absl | tail -3

echo "== profile=lra throughput probe (${PROBE_STEPS:=300} steps)"
timeout 300 $PY -m lra.train task=listops attention=full profile=lra train.train_steps=$PROBE_STEPS \
  train.eval_every=$PROBE_STEPS \
  train.log_every=50 train.progress=false task.data.generate.num_train=10000 \
  results_dir="$OUT/results" data_dir="$OUT/data" hydra.run.dir="$OUT/runs/lra_probe" 2>&1 | grep -v absl | tail -8
cat "$OUT/runs/lra_probe/metrics.jsonl" 2>/dev/null | tail -4
