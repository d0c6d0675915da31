#!/usr/bin/env bash
# The whole LRA table for one profile: tasks x attention variants x seeds, one Hydra multirun.
#
#   scripts/sweep_lra.sh PROFILE [--tasks a,b] [--variants x,y] [--seeds 0,1,2] [--launcher local|slurm] [-- ARGS]
#
#   scripts/sweep_lra.sh smoke --tasks listops --variants full,local --seeds 0,1          # seconds, on a laptop
#   scripts/sweep_lra.sh lra --launcher slurm -- hydra.launcher.partition=gpu              # the benchmark on Slurm
#
# Defaults: every task, every registered variant, seeds 0,1,2, Hydra's basic launcher (one run after another).
# Every run appends its record to results/runs.jsonl; rerunning the script resumes unfinished runs and skips
# finished ones. Summarise with: python -m lra.results --summary [--profile PROFILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

# The comment block above, up to its first line that is not a comment.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit "${1:-0}"; }
value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }; }
[[ $# -ge 1 ]] || usage 2
case "$1" in -h|--help) usage 0 ;; esac
profile="$1"; shift
tasks="listops,text,retrieval,image,pathfinder,pathx"
variants="$(ls configs/attention | sed 's/\.yaml$//' | paste -sd, -)"
seeds="0,1,2"
launcher=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tasks) value "$@"; tasks="$2"; shift 2 ;;
    --variants) value "$@"; variants="$2"; shift 2 ;;
    --seeds) value "$@"; seeds="$2"; shift 2 ;;
    --launcher) value "$@"; launcher="hydra/launcher=$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -f "configs/profile/$profile.yaml" ]] || { echo "error: no profile '$profile' (configs/profile/: $(ls configs/profile | sed 's/\.yaml$//' | paste -sd' ' -))" >&2; exit 2; }
# Every name and seed before the first run: a typo would otherwise fail a run of every combination it is in.
for pair in "task:$tasks" "attention:$variants"; do
  group="${pair%%:*}"; IFS=, read -ra names <<< "${pair#*:}"
  [[ ${#names[@]} -gt 0 ]] || { echo "error: no $group named (an empty list)" >&2; exit 2; }
  for name in "${names[@]}"; do
    [[ -f "configs/$group/$name.yaml" ]] || { echo "error: no $group '$name' (configs/$group/: $(ls "configs/$group" | sed 's/\.yaml$//' | paste -sd' ' -))" >&2; exit 2; }
  done
done
[[ "$seeds" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: --seeds takes non-negative integers separated by commas, got '$seeds'" >&2; exit 2; }

echo "sweep: profile=$profile tasks=$tasks variants=$variants seeds=$seeds ${launcher}"
exec "$PY" -m lra.train -m "task=$tasks" "attention=$variants" "profile=$profile" "seed=$seeds" \
  ${launcher:+"$launcher"} "train.progress=false" "$@"
