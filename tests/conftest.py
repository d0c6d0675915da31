"""Shared fixtures: config composition through Hydra's compose API, and an isolated data/results layout."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


_CACHE_KEY = pytest.StashKey[str]()


def pytest_configure(config):
    """One persistent JAX compilation cache for the whole run: the pytest workers and every CLI subprocess
    compile the same smoke-sized programs over and over (train steps, kernels), and a program compiled once is
    then loaded (about half the time of the training-CLI tests on 2 cores). The cache is keyed by the program,
    the compile options, the JAX version and the device, so a hit runs the same executable. Set by the
    controlling process before its workers start, so they and their subprocesses inherit it; a
    JAX_COMPILATION_CACHE_DIR set by the user is kept (and not removed). LRA_TEST_JAX_CACHE=0 turns it off
    (the GPU scripts do: a GPU is lent for minutes, and its kernel tests should not depend on the cache)."""
    if (os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("LRA_TEST_JAX_CACHE") == "0"
            or hasattr(config, "workerinput")):
        return
    path = tempfile.mkdtemp(prefix="lra-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    config.stash[_CACHE_KEY] = path


def pytest_unconfigure(config):
    path = config.stash.get(_CACHE_KEY, None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def compose_config(overrides=()) -> dict:
    """The resolved config dict that `python -m lra.train <overrides>` would run."""
    # Imported here, not at the top: the kernel tests run on a GPU machine whose image has no Hydra
    # (scripts/gpu_check.sh), and need none of it.
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=False)
    return OmegaConf.to_container(cfg, resolve=True)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Data, results and run directories under tmp_path; returns the CLI overrides that point there."""
    monkeypatch.setenv("LRA_DATA", str(tmp_path / "data"))
    paths = {"data": tmp_path / "data", "results": tmp_path / "results", "run": tmp_path / "run"}
    overrides = [f"data_dir={paths['data']}", f"results_dir={paths['results']}", f"hydra.run.dir={paths['run']}",
                 "train.progress=false"]
    return paths, overrides


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
