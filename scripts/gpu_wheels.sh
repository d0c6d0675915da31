#!/usr/bin/env bash
# Wheels of what the lent GPU machines' image lacks for lra.train (Hydra, OmegaConf and its ANTLR runtime, at
# requirements.lock's versions), for scripts/gpu_listops.sh. scripts/gpu_check.sh needs none of them.
# Run here (it needs PyPI), then name .whl in the run tool's `carry` and start the command there with
#   python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
lock() { grep -i "^$1==" requirements.lock | cut -d= -f3; }
rm -rf .whl && mkdir .whl
$PY -m pip download -q --no-deps --only-binary=:all: -d .whl \
  "hydra-core==$(lock hydra-core)" "omegaconf==$(lock omegaconf)"
$PY -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(lock antlr4-python3-runtime)"  # sdist only
ls .whl
