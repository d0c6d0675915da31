"""Shared fixtures: config composition through Hydra's compose API, and an isolated data/results layout."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


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
