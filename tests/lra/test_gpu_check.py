"""scripts/gpu_check.sh in its dry-run mode, in the environment of the GPU image.

A GPU is lent for about 15 minutes at a time, so the script must not fail there on something a CPU could have
shown: an import the image lacks (it has JAX, Flax, optax, pytest and hypothesis, but no Hydra, OmegaConf or
wandb), a test that no longer collects, a benchmark flag that no longer parses. The dry run collects the same
tests and times every impl and every setting of the tuning sweep once at a tiny size; here it runs with those
three packages made unimportable.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT_ON_GPU_IMAGE = ("hydra", "omegaconf", "wandb")


@pytest.fixture
def gpu_image_env(tmp_path):
    """An environment in which the packages the GPU image lacks fail to import."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ABSENT_ON_GPU_IMAGE:
        (stubs / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU image')\n")
    env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", OUT=str(tmp_path / "out"), PYTHONPATH=str(stubs),
               # Hydra's pytest plugin, installed here with Hydra, does not exist where Hydra is not installed.
               PYTEST_ADDOPTS="-p no:hydra_pytest")
    return env, tmp_path / "out"


def test_dry_run_collects_the_gpu_tests_and_times_every_impl(gpu_image_env):
    env, out = gpu_image_env
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    for name in ("kernel_tests.txt", "kernel_tests_mgpu.txt"):
        text = (out / name).read_text()
        assert "tests collected" in text and "error" not in text.lower(), text
    rows = [json.loads(line) for line in (out / "results" / "bench_gpu_dryrun.jsonl").read_text().splitlines()]
    timed = {(r["impl"], r["dtype"]) for r in rows if r["status"] == "ok" and r["impl"] != "matmul"}
    for impl in ("xla_dense", "sdpa_xla", "pallas_flash", "pallas_local"):
        assert {(impl, "bfloat16"), (impl, "float32")} <= timed, (impl, timed)
    assert {("pallas_linear", "bfloat16"), ("xla_linear", "bfloat16")} <= timed, timed
    assert {r["dtype"] for r in rows if r["impl"] == "matmul"} == {"bfloat16", "float32"}
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    tune = [json.loads(line) for line in (out / "results" / "tune_gpu_dryrun.jsonl").read_text().splitlines()]
    settings = {(r["block"], r["bwd_block"], r["num_warps"], r["num_stages"], r["dq"])
                for r in tune if r["status"] == "ok" and r["impl"] == "pallas_flash"}
    blocks = {(128, 64), (128, 32), (128, None), (64, None), (64, 32), (64, 128)}  # None: the forward's block
    assert settings == {(b, bb, None, None, "kernel") for b, bb in blocks} | {
        (128, 64, w, s, dq) for w in (4, 8) for s in (2, 3) for dq in ("kernel", "atomic")}
    assert {r["impl"] for r in rows if r["status"] == "ok"} >= {"dispatch", "matmul"}
    report = (out / "report.md").read_text()  # on CPU the GPU targets are not judged, and the backend is named
    assert "| bfloat16 | 128 | pallas_flash | interpret |" in report
    assert "vs cuDNN (bfloat16, L=4096): not judged here (a GPU target)" in report


def test_the_stubs_do_block_the_imports(gpu_image_env):
    # The test above would prove nothing if the stubs did not shadow the installed packages.
    env, _ = gpu_image_env
    proc = subprocess.run([sys.executable, "-c", "import hydra"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "not on the GPU image" in proc.stderr


NO_TRITON = """import importlib.abc, sys


class _NoPallasTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jax.experimental.pallas.triton":
            raise ImportError("this JAX has no Pallas Triton backend (test stub)")
        return None


sys.meta_path.insert(0, _NoPallasTriton())
"""


def test_a_jax_without_pallas_triton_still_runs_the_rest(gpu_image_env):
    # JAX deprecates Pallas's Triton backend; where it is gone, the check must not stop at its package check but
    # skip the Triton steps and still time cuDNN/XLA and run the Mosaic GPU steps.
    env, out = gpu_image_env
    (Path(env["PYTHONPATH"]) / "sitecustomize.py").write_text(NO_TRITON)
    blocked = subprocess.run([sys.executable, "-c", "import jax.experimental.pallas.triton"], env=env,
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "test stub" in blocked.stderr  # the stub is in force
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "has no Pallas Triton backend" in (out / "no_triton.txt").read_text()
    assert not (out / "kernel_tests.txt").exists()
    text = (out / "kernel_tests_mgpu.txt").read_text()
    assert "tests collected" in text and "error" not in text.lower(), text
    rows = [json.loads(line) for line in (out / "results" / "bench_gpu_dryrun.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    timed = {(r["impl"], r["dtype"]) for r in rows}
    assert {("xla_dense", "bfloat16"), ("xla_dense", "float32"), ("xla_linear", "bfloat16")} <= timed, timed
    assert not [i for i, _ in timed if i.startswith("pallas")], timed
    assert not (out / "results" / "tune_gpu_dryrun.jsonl").exists()  # on CPU the sweep's other impls are GPU-only
    assert (out / "report.md").exists()


def test_missing_package_stops_the_script_at_once(gpu_image_env, tmp_path):
    env, out = gpu_image_env
    (Path(env["PYTHONPATH"]) / "hypothesis.py").write_text("raise ImportError('hypothesis is missing')\n")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "carry it as a wheel" in proc.stdout
    assert not (out / "kernel_tests.txt").exists()


def test_the_python_is_the_venvs_where_there_is_one(tmp_path):
    # A checkout here after `make setup` runs the check with its .venv (the machine's python3 lacks JAX); the GPU
    # image has no .venv and uses python3; PYTHON chooses. A stand-in python records that it was the one called.
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho called > {tmp_path / 'venv_called'}\nexit 3\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(DRY_RUN="1", OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and (tmp_path / "venv_called").exists()
    assert "a package is missing in .venv/bin/python" in proc.stdout
