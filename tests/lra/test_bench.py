"""lra.bench: rows for each (variant, length), oom refused from the compiler's figures, errors never stop a sweep."""
import re
import subprocess

import pytest

from lra import bench, results
from tests.conftest import ROOT, cli

TINY = ["model.emb_dim=16", "model.num_heads=2", "model.num_layers=1", "model.qkv_dim=16", "model.mlp_dim=32",
        "warmup=1", "steps=2", "repeats=2"]


def test_bench_cli_rows(tmp_path, subprocess_env):
    """The rows, and with logger=wandb (no API key: offline) a W&B run holding them as a table and the charts."""
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("WANDB_")}
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true")
    r = subprocess.run(cli("lra.bench", "attention=[full]", "lengths=[32,64]", "batch_size=2", "logger=wandb",
                           f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", *TINY),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (table,) = offline.glob("files/media/table/bench/rows*.table.json")
    assert '"steps_per_second"' in table.read_text() and len(list(offline.glob("files/media/images/**/*.png"))) == 2
    rows = results.read_jsonl(tmp_path / "bench.jsonl")
    assert [(row["attention"], row["length"], row["status"]) for row in rows] == [("full", 32, "ok"),
                                                                                  ("full", 64, "ok")]
    for row in rows:
        for field in ("attention", "impl", "length", "batch_size", "steps_per_second", "examples_per_second",
                      "peak_memory_bytes", "memory_method", "compile_seconds", "device", "dtype", "jax_version",
                      "status"):
            assert field in row, field
        assert row["steps_per_second"] > 0 and row["examples_per_second"] == row["steps_per_second"] * 2
        assert row["tokens_per_second"] == row["examples_per_second"] * row["length"]
        assert row["forward_steps_per_second"] > 0 and row["forward_ms"] == 1000.0 / row["forward_steps_per_second"]
        assert row["train_step_flops"] > 0 and row["achieved_flops_per_second"] > 0
        # The forward program has no backward and no update (XLA's count; timings of a tiny step are noise)
        assert 0 < row["forward_step_flops"] < row["train_step_flops"] / 2
    # A step at twice the length does more work (XLA's count, not a timing)
    assert rows[1]["train_step_flops"] > rows[0]["train_step_flops"]


def test_oom_and_errors_do_not_stop_the_sweep(tmp_path, monkeypatch):
    config = {"variants": ["full"], "lengths": [32], "batch_size": 2, "impl": "xla", "warmup": 1, "steps": 1,
              "repeats": 1, "isolate": False, "memory_limit_gb": 1e-6, "results_dir": str(tmp_path),
              "vocab_size": 257, "num_classes": 2,
              "model": {"emb_dim": 16, "num_heads": 2, "num_layers": 1, "qkv_dim": 16, "mlp_dim": 32, "dropout": 0.0,
                        "attention_dropout": 0.0, "pooling": "cls", "positions": "sinusoidal"}}
    rows = bench.run(config)
    assert rows[0]["status"] == "oom" and re.search(r"needs [\d.]+ MiB but 0\.0 MiB is available", rows[0]["message"])
    config.update(memory_limit_gb=None, variants=["local", "full"])
    measure = bench.measure

    def failing(bench_config, name, length):   # an error met while measuring (compiling, running) one variant
        if name == "local":
            raise RuntimeError("XlaRuntimeError: INTERNAL: something went wrong")
        return measure(bench_config, name, length)

    monkeypatch.setattr(bench, "measure", failing)
    rows = bench.run(config)
    assert [(r["attention"], r["status"]) for r in rows] == [("local", "error"), ("full", "ok")]
    assert "something went wrong" in rows[0]["message"] and rows[0]["batch_size"] == 2
    assert len(results.read_jsonl(tmp_path / "bench.jsonl")) == 3
    # A model that cannot be built fails once, before measuring (tests/lra/test_bench_runs.py)
    config.update(model={**config["model"], "num_heads": 3})  # 16 % 3
    with pytest.raises(ValueError, match="divisible"):
        bench.run(config)
    assert len(results.read_jsonl(tmp_path / "bench.jsonl")) == 3


def test_error_rows_quote_the_exception_not_the_traceback_note():
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: length 1025 must be a "
              "multiple of the stride 32\n--------------------\nFor simplicity, JAX has removed its internal frames "
              "from the traceback of the following exception. Set JAX_TRACEBACK_FILTERING=off to include these.\n")
    assert bench.error_line(stderr) == "ValueError: length 1025 must be a multiple of the stride 32"
    assert bench.error_line("killed\n") == "killed" and bench.error_line("") == "no output"


def test_unknown_variant_fails_before_measuring(tmp_path, subprocess_env):
    r = subprocess.run(cli("lra.bench", "attention=[full,nope]", f"results_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'run'}"), cwd=ROOT, env=subprocess_env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "unknown attention 'nope'" in r.stderr and "full" in r.stderr
    out = r.stdout + r.stderr   # logged as the bench's own
    assert "[lra.bench][ERROR]" in out and "[lra.train]" not in out
    assert not (tmp_path / "bench.jsonl").exists()


def tiny_bench(tmp_path, **changes):
    return {"variants": ["full"], "lengths": [32], "batch_size": 2, "impl": "xla", "warmup": 1, "steps": 1,
            "repeats": 1, "isolate": False, "memory_limit_gb": None, "timeout_s": 60, "results_dir": str(tmp_path),
            "vocab_size": 257, "num_classes": 2,
            "model": {"emb_dim": 16, "num_heads": 2, "num_layers": 1, "qkv_dim": 16, "mlp_dim": 32, "dropout": 0.0,
                      "attention_dropout": 0.0, "pooling": "cls", "positions": "sinusoidal"}, **changes}


def test_pallas_for_a_variant_without_a_kernel_fails_before_measuring(tmp_path):
    # The first variant could be measured; the refusal comes first, so no row of a half-done sweep is written.
    with pytest.raises(ValueError, match="attention=linformer has no Pallas kernel"):
        bench.run(tiny_bench(tmp_path, variants=["full", "linformer"], impl="pallas"))
    assert not (tmp_path / "bench.jsonl").exists()


@pytest.mark.parametrize("changes,match", [
    ({"lengths": [1024, 0]}, r"lengths must be positive integers, e\.g\. lengths=\[1024,4096\]; got \[1024, 0\]"),
    ({"lengths": []}, "lengths must be positive integers"),
    ({"variants": []}, r"attention must name variants, e\.g\. attention=\[full,local\]"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"repeats": 0}, "repeats must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"timeout_s": 0}, "timeout_s must be a positive number"),
    ({"memory_limit_gb": -2.0}, "memory_limit_gb must be a positive number or null"),
])
def test_impossible_options_fail_before_measuring(tmp_path, changes, match):
    # Each of these used to be measured: a batch of 0 even gave an "ok" row, steps=0 a division by zero.
    with pytest.raises(ValueError, match=match):
        bench.run(tiny_bench(tmp_path, **changes))
    assert not (tmp_path / "bench.jsonl").exists()


def test_a_results_dir_that_cannot_be_written_fails_before_measuring(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(bench, "measure_isolated", lambda *a, **k: pytest.fail("measured first"))
    with pytest.raises(ValueError, match="a_file is a file, not a folder; set results_dir"):
        bench.run({**tiny_bench(tmp_path), "results_dir": str(tmp_path / "a_file")})
    (tmp_path / "r" / "bench.jsonl").mkdir(parents=True)
    with pytest.raises(ValueError, match="bench.jsonl is a folder"):
        bench.run({**tiny_bench(tmp_path), "results_dir": str(tmp_path / "r")})


def test_one_bare_variant_and_length_and_no_warmup(tmp_path):
    # attention=full lengths=64 on the command line arrive as a string and an int, not lists
    (row,) = bench.run(tiny_bench(tmp_path, variants="full", lengths=32, warmup=0))
    assert (row["attention"], row["length"], row["status"]) == ("full", 32, "ok") and row["steps_per_second"] > 0
