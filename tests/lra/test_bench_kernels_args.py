"""lra.bench_kernels refuses bad input before measuring, never loses a measured row, and refuses (status "oom")
a program that would not fit instead of running it."""
import json

import pytest

from lra import bench_kernels

TINY = ["--lengths", "64", "--heads", "1", "--head-dim", "16", "--warmup", "0", "--steps", "1", "--repeats", "1"]


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail the test if anything is measured."""
    def boom(*args, **kwargs):
        raise AssertionError("measured before the arguments were checked")

    for name in ("measure", "matmul_rate", "dispatch_floor"):
        monkeypatch.setattr(bench_kernels, name, boom)


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        bench_kernels.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_out_that_could_not_be_written_is_refused_before_measuring(tmp_path, capsys, no_measuring):
    folder = tmp_path / "adir"
    folder.mkdir()
    err = _refused(capsys, [*TINY, "--impls", "xla_dense", "--out", str(folder)])
    assert f"--out: {folder} is a folder" in err and "give --out a file" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _refused(capsys, [*TINY, "--impls", "xla_dense", "--out", str(afile / "k.jsonl")])
    assert f"{afile} is a file, not a folder" in err and "give --out a file in a folder" in err


def test_rows_are_appended_whole_after_a_cut_line(tmp_path):
    # written through results.append_jsonl: a line cut off by an earlier crash does not swallow the new row
    out = tmp_path / "k.jsonl"
    out.write_text('{"impl": "xla_dense", "cut')
    assert bench_kernels.main([*TINY, "--impls", "xla_dense", "--out", str(out)]) == 0
    lines = out.read_text().split("\n")
    assert lines[0] == '{"impl": "xla_dense", "cut' and json.loads(lines[1])["status"] == "ok"


@pytest.mark.parametrize("args, says", [
    (["--lengths", "0"], "--lengths must be >= 1, got 0"),
    (["--lengths", "64", "-8"], "--lengths must be >= 1, got -8"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--dispatch", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--warmup", "-3"], "--warmup must be >= 0 (0: no warm-up runs), got -3"),
    (["--window", "0"], "--window must be >= 1, got 0"),
    (["--window", "-4"], "--window must be >= 1, got -4"),
    (["--matmul", "-1"], "--matmul must be >= 0 (0: no matmul), got -1"),
    (["--memory-limit-gb", "0"], "--memory-limit-gb must be a positive number"),
    (["--memory-limit-gb", "nan"], "--memory-limit-gb must be a positive number"),
    (["--dtypes", "bf16"], "invalid choice: 'bf16' (choose from"),
    (["--dtypes", "float32", "float64"], "invalid choice: 'float64'"),
])
def test_bad_numbers_and_dtypes_are_refused_before_measuring(capsys, no_measuring, args, says):
    argv = [*TINY, "--impls", "xla_dense", "pallas_local"]
    # the later of repeated options wins in argparse: the bad value goes last
    err = _refused(capsys, [*argv, *args])
    assert says in err, err
    if "--dtypes" in args:
        assert "float32" in err and "bfloat16" in err and "float16" in err  # says what is allowed


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
def test_recorded_dtype_is_the_dtype_computed_in():
    # float64 without jax_enable_x64 would run in float32: measure() refuses to label it float64
    row = bench_kernels.measure("xla_dense", 64, "float64", batch=1, heads=1, head_dim=16, window=4, block=16,
                                warmup=0, steps=1, repeats=1)
    assert row["status"] == "error" and "float64 arrays are float32" in row["error"] and "fwd_ms" not in row


def test_float16_rows_are_float16(tmp_path):
    out = tmp_path / "h.jsonl"
    assert bench_kernels.main([*TINY, "--impls", "xla_dense", "--dtypes", "float16", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["dtype"], r["status"]) for r in rows] == [("float16", "ok")]


def _timing(impl="xla_dense", ms=10.0, **extra):
    return {"impl": impl, "dtype": "float32", "length": 4096, "fwd_ms": ms / 3, "fwd_bwd_ms": ms,
            "tflops_fwd_bwd": 1.0, "device": "cpu: test", "status": "ok", "block": None, **extra}


def test_report_skips_rows_of_other_tools(tmp_path, capsys):
    bench_rows = tmp_path / "bench.jsonl"  # what lra.bench writes: status ok, no kernel timings
    bench_rows.write_text(json.dumps({"attention": "full", "impl": "xla", "length": 1024, "dtype": "float32",
                                      "status": "ok", "steps_per_second": 3.0, "device": "cpu: test"}) + "\n")
    err = _refused(capsys, ["--report", str(bench_rows)])
    assert f"{bench_rows} (no lra.bench_kernels rows" in err and "give --report the --out file" in err
    kernels = tmp_path / "k.jsonl"
    kernels.write_text("\n".join(json.dumps(r) for r in [
        _timing("xla_dense", 1400.0), _timing("pallas_local", 115.0, block=128),
        {"impl": "xla_dense", "dtype": "float32", "length": 8192, "status": "oom", "error": "too big"}]) + "\n")
    assert bench_kernels.main(["--report", str(bench_rows), str(kernels)]) == 0
    captured = capsys.readouterr()
    assert "(CPU target) (float32, L=4096): 12.17x" in captured.out
    assert f"left out {bench_rows}" in captured.err


def test_report_of_failed_rows_only_says_so(tmp_path, capsys):
    f = tmp_path / "k.jsonl"
    f.write_text(json.dumps({"impl": "xla_dense", "dtype": "float32", "length": 8192, "status": "oom"}) + "\n")
    err = _refused(capsys, ["--report", str(f)])
    assert f"{f} (1 lra.bench_kernels rows, none timed: status oom)" in err


def test_malformed_report_file_is_a_clear_error(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(_timing()) + "\n{not json\n")
    err = _refused(capsys, ["--report", str(f)])
    assert f"{f}:2: not a JSON record" in err and "Traceback" not in err
    f.write_text("[1, 2]\n")
    assert f"{f}:1: a JSON list, not a record" in _refused(capsys, ["--report", str(f)])
    f.write_text(json.dumps(_timing(fwd_bwd_ms="fast")) + "\n")  # a timing field of the wrong type: left out
    assert "none timed" in _refused(capsys, ["--report", str(f)])


def test_a_program_that_does_not_fit_is_not_run(tmp_path, monkeypatch, capsys):
    timed = []
    real_time = bench_kernels._time
    monkeypatch.setattr(bench_kernels, "_time", lambda *a, **k: timed.append(1) or real_time(*a, **k))
    out = tmp_path / "m.jsonl"
    assert bench_kernels.main([*TINY, "--impls", "xla_dense", "--matmul", "64", "--memory-limit-gb", "1e-6",
                               "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["status"]) for r in rows] == [("matmul", "oom"), ("xla_dense", "oom")]
    assert not timed  # neither was run
    err = rows[1]["error"]
    assert "the forward+backward of xla_dense (L=64, batch=1, heads=1, head_dim=16, float32) needs" in err
    assert "(--memory-limit-gb=1e-06, before running)" in err and "grows linearly" in err
    assert rows[1]["memory_bytes"] > 0 and "fwd_ms" not in rows[1]
    assert "smaller --matmul" in rows[0]["error"]
    printed = capsys.readouterr().out
    assert "oom: the forward+backward of xla_dense" in printed
    assert "matmul n=64" in printed and "oom: " in printed.split("matmul n=64")[1]   # printed, not only in --out
    # a limit that holds it: measured as usual
    assert bench_kernels.main([*TINY, "--impls", "xla_dense", "--memory-limit-gb", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text().splitlines()[-1])["status"] == "ok"
