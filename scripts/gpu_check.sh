#!/usr/bin/env bash
# GPU check of the Pallas kernels, one go, under 8 minutes on one H100/H200 (JAX 0.11; Pallas's Triton backend,
# and Mosaic GPU for kernels/flash_mgpu.py). Steps in order of what matters, each with its own timeout (their sum,
# 440 s, plus about 20 s of start-up and report, stays under 8 minutes), each appending its rows as it goes:
#   1. the Triton kernel tests compiled for the GPU (interpret mode is off on a GPU backend), 8 pytest workers
#      so the Triton compiles run in parallel: flash / block-sparse attention, chunked linear attention, and
#      impl=pallas against impl=xla in every variant that has it;
#   2. timings of forward and forward+backward, bf16 and float32 (full float32 in every impl), lengths 1K-16K,
#      head dim 64: our Triton flash and block-sparse Local against jax.nn.dot_product_attention (XLA and cuDNN),
#      our dense XLA path and the XLA block-sparse path of the sparse variants, then (bf16 inputs, in the time
#      left to the bf16 step) the chunked Pallas linear attention against its XLA path; the card's matmul rate
#      (TFLOP/s as a fraction of it) and the per-call launch floor (rows under twice it are launch-bound);
#   3. two tuning sweeps of the Triton flash kernels at 4K bf16 beside cuDNN and JAX's own Pallas Triton flash
#      attention: blocks 64/128 x backward blocks 32/64/128, then num_warps 4/8 x num_stages 2/3 x dQ in its own
#      kernel or by atomic adds (the forward is timed once per forward setting);
#   4. last, in processes of their own (they have never been compiled for a GPU: a crash or hang there cannot
#      take the Triton rows with it): the Mosaic GPU kernels' tests, then their timings (blocks 64, and 128 with
#      a backward of 64) beside JAX's own Mosaic GPU flash attention.
# Usage: OUT=gpu_out scripts/gpu_check.sh   -> $OUT/kernel_tests*.txt, $OUT/results/{bench,tune}_gpu_<card>.jsonl,
#        $OUT/report.md (fastest setting per impl, TFLOP/s as a fraction of the matmul rate, the targets met or not)
# Then copy the two JSONL files into results/ and say in the README what they measured.
# DRY_RUN=1 runs the same steps on any machine in about a minute, no GPU needed (tests collected, not run; one
# tiny timing per impl): it shows that everything the GPU run needs imports and starts. The GPU image has JAX,
# Flax, optax, pytest, pytest-xdist and hypothesis but no Hydra or wandb, which none of these steps need
# (tests/lra/test_gpu_check.py runs the dry run without them).
set -uo pipefail
OUT=${OUT:-gpu_out}
# The project's venv where there is one (a checkout here after `make setup`), else the machine's python3 (the GPU
# image, which has JAX and no venv); PYTHON=... chooses another.
if [[ -z ${PYTHON:-} && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT/results"
# No compilation cache in the tests (tests/conftest.py): every kernel compiled for real.
export LRA_TEST_JAX_CACHE=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# Fail in seconds, not after the timeouts below, when the Python there lacks a package the steps import.
$PY -c "import jax, flax, optax, numpy, pytest, xdist, hypothesis, jax.experimental.pallas" || {
  echo "gpu_check: a package is missing in $PY (see the error above); carry it as a wheel (the device README)"
  exit 2
}
# Pallas's Triton backend is deprecated (JAX 0.12 warns, and 0.12.1 no longer ships JAX's own Triton attention,
# `jax_triton`, which the benchmark then skips). Where a JAX has dropped the backend itself, the Triton steps
# below are skipped and the rest (cuDNN, XLA, the Mosaic GPU kernels) still runs.
TRITON_ATT="pallas_flash pallas_local" TRITON_LIN="pallas_linear"
if ! $PY -c "import jax.experimental.pallas.triton" 2>/dev/null; then
  TRITON_ATT="" TRITON_LIN=""
  echo "gpu_check: $($PY -c "import jax; print('JAX', jax.__version__)") has no Pallas Triton backend" \
    "(jax.experimental.pallas.triton): the Triton kernels' tests, timings and sweeps are skipped" | tee "$OUT/no_triton.txt"
fi
if [ "$DRY_RUN" = 1 ]; then
  CARD=dryrun TESTS="--collect-only" WORKERS="" LENGTHS_BF16="128" LENGTHS_F32="128" MATMUL=128 TUNE_LENGTH=128
  STEPS="--warmup 0 --steps 1 --repeats 1"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '_' | sed 's/_$//')
  CARD=${CARD:-gpu} TESTS="" WORKERS="-n 8" LENGTHS_BF16="1024 4096 16384" LENGTHS_F32="1024 4096" MATMUL=8192 TUNE_LENGTH=4096
  STEPS="--warmup 2 --steps 5 --repeats 3"
fi
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

echo "== kernel tests on the GPU (Triton, not interpret)"
# Full-precision float32 in the XLA references (TF32 would fail the float32 tolerances).
# -v into a log of its own: if a timeout stops pytest before its summary, the log still says which tests passed.
[ -n "$TRITON_ATT" ] && JAX_DEFAULT_MATMUL_PRECISION=highest timeout 110 $PY -m pytest -v -p no:cacheprovider \
  -m "not slow" $TESTS $WORKERS \
  tests/kernels/test_flash.py tests/kernels/test_linear_pallas.py tests/models/attention/test_pallas_variants.py \
  2>&1 | tee "$OUT/kernel_tests.log" | tail -20 | tee "$OUT/kernel_tests.txt"

echo "== timings (Triton, XLA, cuDNN)"
BENCH="$PY -m lra.bench_kernels --batch 1 --heads 8 --head-dim 64 --window 128 --block 128 $STEPS \
  --out $OUT/results/bench_gpu_$CARD.jsonl"
# The target's impls first at each length: a timeout at 16K loses the XLA rows, not theirs. Linear attention
# afterwards, in the same 90 s (one timeout over both runs, whose rows are appended as they come): whatever
# time the attention rows leave.
timeout 90 bash -c "$BENCH --dtypes bfloat16 --lengths $LENGTHS_BF16 --matmul $MATMUL --dispatch \
  --impls sdpa_cudnn $TRITON_ATT xla_dense sdpa_xla xla_local;
  $BENCH --dtypes bfloat16 --lengths $LENGTHS_BF16 --impls $TRITON_LIN xla_linear"
timeout 35 $BENCH --dtypes float32 --lengths $LENGTHS_F32 --matmul $((MATMUL / 2)) --impls xla_dense sdpa_xla $TRITON_ATT

echo "== tuning sweeps (Triton, bf16, L=$TUNE_LENGTH)"
TUNE="$PY -m lra.bench_kernels --batch 1 --heads 8 --head-dim 64 --dtypes bfloat16 --lengths $TUNE_LENGTH $STEPS \
  --out $OUT/results/tune_gpu_$CARD.jsonl"
if [ -n "$TRITON_ATT" ]; then
  timeout 45 $TUNE --impls sdpa_cudnn jax_triton pallas_flash --block 128 64 --bwd-block 64 32 128
  timeout 45 $TUNE --impls pallas_flash --block 128 --bwd-block 64 --num-warps 4 8 --num-stages 2 3 --dq kernel atomic
fi

echo "== Mosaic GPU kernel tests"
timeout 50 $PY -m pytest -v -p no:cacheprovider -m "slow or not slow" $TESTS $WORKERS tests/kernels/test_flash_mgpu.py \
  2>&1 | tee "$OUT/kernel_tests_mgpu.log" | tail -30 | tee "$OUT/kernel_tests_mgpu.txt"
echo "== timings (Mosaic GPU)"
timeout 45 $BENCH --dtypes bfloat16 --lengths $LENGTHS_BF16 --block 64 128 --bwd-block 64 --impls mgpu_flash mgpu_local
timeout 20 $TUNE --impls jax_mgpu
for f in "$OUT"/results/*.jsonl; do echo "rows: $(wc -l < "$f") in $f"; done
echo "== report"
$PY -m lra.bench_kernels --report "$OUT"/results/*.jsonl | tee "$OUT/report.md"
