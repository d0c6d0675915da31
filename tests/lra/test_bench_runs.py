"""lra.bench as a process: a measuring child never outlives the benchmark, a child killed by a signal is recorded
as such, a model that cannot be built fails once before measuring, and one bad benchmark never stops a sweep."""
import signal
import subprocess
import time

import psutil
import pytest

from lra import bench, results
from tests.conftest import ROOT, cli

WHAT = ["attention=[full]", "lengths=[64]"]
HOW = ["warmup=0", "steps=1", "repeats=1", "forward=false"]


def tiny_bench(tmp_path, **overrides) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("bench", overrides=["variants=[full]", "lengths=[64]", "batch_size=1", "warmup=0", "steps=1",
                                          "repeats=1", f"results_dir={tmp_path / 'results'}"])
    return {**OmegaConf.to_container(cfg, resolve=True), **overrides}


def test_a_measuring_child_dies_with_the_benchmark(tmp_path, subprocess_env):
    # warmup=10**9: the child measures until it is stopped. SIGTERM to the benchmark (a scheduler's cancel,
    # `timeout`) must not leave it running, holding memory, with nobody to read its row.
    parent = subprocess.Popen(cli("lra.bench", *WHAT, "batch_size=1", "warmup=1000000000",
                                  f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'h'}"),
                              cwd=ROOT, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, children = time.monotonic() + 120, []
        while time.monotonic() < deadline and not children:
            children = [c for c in psutil.Process(parent.pid).children() if "--one" in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert children, "the benchmark never started its measuring process"
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, "the measuring process outlived the benchmark"
    finally:
        parent.kill()
        for child in psutil.Process().children(recursive=True):
            child.kill()


def test_a_child_killed_by_a_signal_is_recorded_as_such(tmp_path, monkeypatch):
    # A stand-in for the measuring process that logs a line, as the real one does, then is SIGKILLed (what the
    # kernel's out-of-memory killer does): the row says so, not the log line.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '[lra.train][INFO] - memory before running: needs 9.9 GiB' >&2\nkill -9 $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(bench.sys, "executable", str(fake))
    row = bench.measure_isolated(tiny_bench(tmp_path), "full", 64, timeout=60)
    assert row["status"] == "oom" and "killed by SIGKILL" in row["message"] and "INFO" not in row["message"]
    fake.write_text("#!/bin/sh\nkill -TERM $$\n")
    row = bench.measure_isolated(tiny_bench(tmp_path), "full", 64, timeout=60)
    assert row["status"] == "error" and row["message"] == "the measuring process was killed by SIGTERM"


@pytest.mark.parametrize("override, message", [({"model": {"num_heads": 3}}, "divisible by model.num_heads"),
                                               ({"model": {"dropout": float("nan")}}, "model.dropout must be")])
def test_a_model_that_cannot_be_built_fails_once_before_measuring(tmp_path, monkeypatch, override, message):
    config = tiny_bench(tmp_path)
    config["model"] = {**config["model"], **override["model"]}
    config["variants"], config["lengths"] = ["full", "local"], [64, 128]
    measured = []
    monkeypatch.setattr(bench, "measure_isolated", lambda *a, **k: measured.append(a) or {})
    with pytest.raises(ValueError, match=message):
        bench.run(config)
    assert measured == [] and not (tmp_path / "results" / "bench.jsonl").exists()


@pytest.mark.slow   # the same mechanism as lra.train's (lra.train.fail_run), which the fast suite runs
def test_a_bad_benchmark_does_not_stop_the_sweep(tmp_path, subprocess_env):
    r = subprocess.run(cli("lra.bench", "-m", "batch_size=0,1", *WHAT, *HOW, "isolate=false",
                           f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 's'}"),
                       cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "1 run(s) of this sweep failed" in r.stderr and "batch_size must be an integer >= 1, got 0" in r.stderr
    rows = results.read_jsonl(tmp_path / "results" / "bench.jsonl")
    assert [(row["batch_size"], row["status"]) for row in rows] == [(1, "ok")]


def test_a_bad_logger_mode_fails_before_measuring(tmp_path, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "WANDB_MODE"}
    r = subprocess.run(cli("lra.bench", *WHAT, "batch_size=1", *HOW, "logger=wandb", "logger.mode=bogus",
                           f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'h'}"),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "logger.mode must be one of" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()



def test_options_nothing_reads_are_refused_and_repeats_measured_once(tmp_path, caplog):
    config = tiny_bench(tmp_path)
    with pytest.raises(ValueError, match=r"unknown benchmark option\(s\) attention \(attention=\[\.\.\.\] names"):
        bench.check_bench({**config, "attention": "full"})   # `+attention=full` composes this, measured nothing
    with pytest.raises(ValueError, match="isolate must be true or false, got 'maybe'"):
        bench.check_bench({**config, "isolate": "maybe"})
    checked = bench.check_bench({**config, "variants": ["full", "local", "full"], "lengths": [64, 64, 128]})
    assert checked["variants"] == ["full", "local"] and checked["lengths"] == [64, 128]
    assert "more than once" in caplog.text
