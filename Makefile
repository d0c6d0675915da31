# The harness's entry points. `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-slow test-tfds lint contract bench-torch lock clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the locked versions (the other targets do this themselves)

DEMO_VARIANTS ?= full local linformer
DEMO := outputs/demo
demo: setup ## ListOps generated, three variants trained (cpu profile, ~25 min on 2 cores), benchmarked, charted
	for v in $(DEMO_VARIANTS); do \
	  $(BIN)/python -m lra.train task=listops attention=$$v profile=cpu results_dir=$(DEMO) || exit 1; done
	$(BIN)/python -m lra.bench attention=[$(shell echo $(DEMO_VARIANTS) | tr ' ' ',')] lengths=[1024,2048] \
	  batch_size=2 warmup=1 steps=2 repeats=3 results_dir=$(DEMO)
	$(BIN)/python -m lra.plot --results $(DEMO)
	$(BIN)/python -m lra.results --results $(DEMO)

# pytest-xdist workers for `make test`: 2 fits CI's 2 cores. A bigger machine can take more (each worker is one
# JAX process); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
# The fast suite's tiny programs spend far longer compiling than running, so XLA's CPU backend optimises the
# generated code less (LLVM's level 0): the same HLO programs, computed at the same precision and checked at the
# same tolerances, compiled in less time. Not for the slow tests, which train for real. tests/conftest.py adds
# a compilation cache shared by the whole run; with both, the suite took 10:54 instead of 16:46 (README, Tests).
FAST_XLA_FLAGS := --xla_backend_optimization_level=0
test: setup ## the test suite: tiny shapes and the smoke profile, no GPU, no network
	XLA_FLAGS="$(FAST_XLA_FLAGS) $$XLA_FLAGS" $(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --durations=15

test-slow: setup ## the slow tests too (real cpu-profile training)
	$(BIN)/python -m pytest -q

test-tfds: setup ## install the tfds extra (TensorFlow, ~600 MB); check --via tfds and our data against LRA's TF pipeline
	$(BIN)/python -m pip install -q "tensorflow-cpu==2.21.0" "tensorflow-datasets==4.9.10" importlib_resources
	$(BIN)/python -m pytest -q -m "slow or not slow" tests/data/test_tfds.py

lint: setup ## ruff
	$(BIN)/ruff check .

contract: setup ## check the contracts of ../shared/DESIGN.md by name and shape, with a smoke run (needs ../shared/)
	@test -f ../shared/contract_check.py || { echo "make contract: ../shared/contract_check.py not found: the contract \
	check lives in the workspace's shared/ folder beside this checkout (a plain clone has none)"; exit 2; }
	$(BIN)/python ../shared/contract_check.py --run

bench-torch: setup ## train-step throughput against an equivalent PyTorch encoder, side by side (installs torch 2.13 CPU)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python scripts/bench_torch.py

lock: ## rewrite requirements.lock from a fresh resolve of pyproject.toml
	rm -rf /tmp/lra-lock && $(PYTHON) -m venv /tmp/lra-lock && /tmp/lra-lock/bin/pip install -q ".[dev]"
	{ head -2 requirements.lock; /tmp/lra-lock/bin/pip freeze --exclude-editable | grep -v '^lra-harness'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean: ## remove caches (keeps .venv, data/, outputs/ and results/)
	rm -rf .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
