"""lra.bench_kernels: rows for every implementation, with the FLOP accounting of the visited blocks."""
import json

import jax
import pytest

from lra import bench_kernels


def test_rows_and_block_fraction(tmp_path, capsys):
    out = tmp_path / "k.jsonl"
    rc = bench_kernels.main(["--lengths", "64", "--impls", "xla_dense", "pallas_flash", "pallas_local", "xla_local",
                             "--heads", "1", "--head-dim", "16", "--block", "16", "--window", "4", "--warmup", "0",
                             "--steps", "1", "--repeats", "1", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["xla_dense", "pallas_flash", "pallas_local", "xla_local"]
    assert all(r["status"] == "ok" and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows), rows
    by = {r["impl"]: r for r in rows}
    assert by["pallas_flash"]["block_fraction"] == 1.0 and by["pallas_flash"]["pallas_backend"] == "interpret"
    # Local(4) with blocks of 16 over 4 blocks: the diagonal and its two neighbours, 10 of 16 blocks.
    assert by["pallas_local"]["block_fraction"] == 10 / 16
    assert by["pallas_local"]["flops_fwd"] == 4 * 64 * 64 * 16 * 10 / 16
    assert "pallas_local" in capsys.readouterr().out


def test_unsupported_impl_gets_an_error_row():
    row = bench_kernels.measure("nope", 64, "float32", batch=1, heads=1, head_dim=16, window=4, block=16, warmup=0,
                                steps=1, repeats=1)
    assert row["status"] == "error" and "unknown impl" in row["error"]


def test_mosaic_gpu_rows_only_on_a_gpu_and_in_16_bit(tmp_path):
    out = tmp_path / "b.jsonl"
    assert bench_kernels.main(["--lengths", "64", "--impls", "xla_dense", "mgpu_flash", "mgpu_local", "--dtypes",
                               "float32", "bfloat16", "--warmup", "0", "--steps", "1", "--repeats", "1",
                               "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["xla_dense", "xla_dense"]  # CPU: the Mosaic GPU kernels are not timed


def test_mosaic_gpu_impl_runs_where_forced():
    # On CPU the Mosaic GPU kernels run in the GPU interpreter when asked for directly; the row names it.
    row = bench_kernels.measure("mgpu_local", 256, "bfloat16", batch=1, heads=1, head_dim=64, window=16, block=64,
                                warmup=0, steps=1, repeats=1)
    assert row["status"] == "ok", row.get("error")
    assert row["pallas_backend"] == "interpret:mosaic_gpu" and row["block_fraction"] == 10 / 16


def test_tuning_sweep_times_every_setting_once(tmp_path):
    out = tmp_path / "s.jsonl"
    assert bench_kernels.main(["--lengths", "64", "--impls", "xla_dense", "pallas_flash", "--heads", "1",
                               "--head-dim", "16", "--block", "16", "32", "--num-warps", "4", "8", "--dq", "kernel",
                               "atomic", "--warmup", "0", "--steps", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["xla_dense"] + ["pallas_flash"] * 8  # xla_dense has no block
    assert [(r["block"], r["num_warps"], r["num_stages"], r["dq"]) for r in rows[1:]] == [
        (b, w, None, dq) for b in (16, 32) for w in (4, 8) for dq in ("kernel", "atomic")]
    assert "num_warps" not in rows[0] and all(r["status"] == "ok" for r in rows)


def test_bad_tuning_values_are_refused_before_any_work(capsys):
    for args, says in ((["--num-warps", "6"], "must be"), (["--num-stages", "0"], "must be"),
                       (["--block", "16", "24"], "must be"), (["--dq", "both"], "invalid choice")):
        with pytest.raises(SystemExit):
            bench_kernels.main(["--lengths", "64", *args])
        assert says in capsys.readouterr().err


def _row(impl, ms, *, dtype="bfloat16", length=4096, fwd=None, **extra):
    return {"impl": impl, "dtype": dtype, "length": length, "batch": 1, "heads": 8, "head_dim": 64,
            "fwd_ms": fwd or ms / 3, "fwd_bwd_ms": ms,
            "tflops_fwd_bwd": 100.0 / ms, "memory_bytes": 2**20, "device": "gpu: test card", "status": "ok",
            "block": extra.pop("block", None), **extra}


def test_report_takes_the_fastest_setting_and_judges_the_targets():
    rows = [
        {"impl": "matmul", "dtype": "bfloat16", "n": 8192, "tflops": 500.0, "device": "gpu: test card",
         "status": "ok"},
        _row("sdpa_cudnn", 1.0),
        _row("pallas_flash", 1.6, block=128, num_warps=4, num_stages=2, dq="kernel"),
        _row("pallas_flash", 1.2, block=128, num_warps=8, num_stages=3, dq="atomic"),   # the fastest: 0.83x
        _row("pallas_flash", 9.0, block=64, num_warps=4, num_stages=2, dq="kernel"),
        {"impl": "mgpu_flash", "dtype": "bfloat16", "length": 4096, "status": "error", "error": "boom"},
        _row("pallas_flash", 40.0, length=16384, block=128),
        _row("pallas_local", 10.0, length=16384, block=128),                              # 4x: short of 5x
    ]
    text = bench_kernels.report(rows)
    fastest = ("| bfloat16 | 4096 | pallas_flash | - | 1 x 8 x 64 | block 128, num_warps 8, num_stages 3, "
               "atomic dQ | 0.400 | 1.200 |")
    assert fastest in text and text.count("| pallas_flash |") == 2  # one row per (dtype, length, impl, shape)
    assert "| 83.33 | 17% |" in text  # 100 / 1.2 TFLOP/s of the 500 the matmul reached
    assert "flash fwd+bwd vs cuDNN (bfloat16, L=4096): 0.83x, target >= 0.8x: met" in text
    assert "(Mosaic GPU) (bfloat16, L=4096): not measured (mgpu_flash missing)" in text  # error rows are not timings
    assert "block-sparse Local vs flash (bfloat16, L=16384): 4.00x, target >= 5.0x: NOT met" in text
    assert "(CPU target) (float32, L=4096): not judged here (a CPU target)" in text   # GPU rows only


def test_report_from_the_command_line(tmp_path, capsys):
    f = tmp_path / "rows.jsonl"
    cpu = "cpu: test machine"
    f.write_text("\n".join(json.dumps(r) for r in [
        _row("xla_dense", 1400.0, dtype="float32", device=cpu),
        _row("pallas_local", 115.0, dtype="float32", block=128, device=cpu)]) + "\n")
    assert bench_kernels.main(["--report", str(f)]) == 0
    out = capsys.readouterr().out
    assert "(CPU target) (float32, L=4096): 12.17x, target >= 4.0x and linear memory: met" in out
    assert "memory growth not measured (one length)" in out
    with pytest.raises(SystemExit):
        bench_kernels.main(["--report", str(tmp_path / "none.jsonl")])
    assert "no such file" in capsys.readouterr().err


def test_jax_reference_kernels_are_wired():
    # JAX's own Pallas Triton flash attention runs in interpret mode on CPU: the call and its gradient work.
    # (Timed only on a GPU; the Mosaic GPU one needs CUDA even to trace.) JAX 0.12.1 removed it: the row says so.
    row = bench_kernels.measure("jax_triton", 128, "float32", batch=1, heads=2, head_dim=64, window=4, block=64,
                                warmup=0, steps=1, repeats=1)
    if jax.__version_info__ < (0, 12, 1):
        assert row["status"] == "ok", row.get("error")
        assert row["pallas_backend"] is None and row["block_fraction"] == 1.0
    else:
        assert row["status"] == "unavailable"
        assert row["error"] == f"JAX {jax.__version__} does not ship jax.experimental.pallas.ops.gpu.attention"


def test_impls_this_jax_does_not_ship_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    assert bench_kernels.unavailable("xla_dense") is None and bench_kernels.unavailable("jax_mgpu") is None
    monkeypatch.setitem(bench_kernels.JAX_MODULES, "xla_dense", "jax.experimental.no_such_ops.attention")
    monkeypatch.setitem(bench_kernels.JAX_MODULES, "sdpa_xla", "no_such_package.attention")
    reason = f"JAX {jax.__version__} does not ship jax.experimental.no_such_ops.attention"
    assert bench_kernels.unavailable("xla_dense") == reason
    row = bench_kernels.measure("xla_dense", 64, "float32", batch=1, heads=1, head_dim=16, window=4, block=32,
                                warmup=0, steps=1, repeats=1)
    assert (row["status"], row["error"]) == ("unavailable", reason)
    out = tmp_path / "u.jsonl"
    assert bench_kernels.main(["--lengths", "64", "--impls", "xla_dense", "sdpa_xla", "xla_linear", "--heads", "1",
                               "--head-dim", "16", "--warmup", "0", "--steps", "1", "--repeats", "1",
                               "--out", str(out)]) == 0
    assert [json.loads(line)["impl"] for line in out.read_text().splitlines()] == ["xla_linear"]
    printed = capsys.readouterr().out
    assert f"skipped xla_dense: {reason}" in printed
    assert "skipped sdpa_xla: JAX" in printed and "no_such_package.attention" in printed


def test_gpu_only_impls_are_skipped_on_cpu(tmp_path):
    out = tmp_path / "g.jsonl"
    assert bench_kernels.main(["--lengths", "64", "--impls", "sdpa_cudnn", "jax_triton", "jax_mgpu", "xla_dense",
                               "--heads", "1", "--head-dim", "16", "--warmup", "0", "--steps", "1", "--repeats", "1",
                               "--out", str(out)]) == 0
    assert [json.loads(line)["impl"] for line in out.read_text().splitlines()] == ["xla_dense"]


def test_backward_blocks_reuse_the_forward_timing(tmp_path):
    out = tmp_path / "bb.jsonl"
    assert bench_kernels.main(["--lengths", "64", "--impls", "pallas_flash", "--heads", "1", "--head-dim", "16",
                               "--block", "32", "--bwd-block", "16", "32", "--dq", "kernel", "atomic", "--warmup",
                               "0", "--steps", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows), rows
    # a backward block equal to the forward's is the default and recorded as None
    assert [(r["bwd_block"], r["dq"]) for r in rows] == [(16, "kernel"), (16, "atomic"), (None, "kernel"),
                                                          (None, "atomic")]
    assert len({r["fwd_ms"] for r in rows}) == 1  # the forward is the same program: timed once
    assert len({r["fwd_bwd_ms"] for r in rows}) == 4
    assert bench_kernels._setting(rows[0]) == "block 32, backward block 16"  # as the report names the fastest


def test_float32_precision_is_the_same_in_every_impl_and_recorded(tmp_path):
    out = tmp_path / "p.jsonl"
    assert bench_kernels.main(["--lengths", "32", "--impls", "xla_dense", "--dtypes", "float32", "bfloat16",
                               "--heads", "1", "--head-dim", "16", "--matmul", "32", "--warmup", "0", "--steps", "1",
                               "--repeats", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["dtype"], r["matmul_precision"]) for r in rows] == [
        ("matmul", "float32", "highest"), ("xla_dense", "float32", "highest"),
        ("matmul", "bfloat16", "default"), ("xla_dense", "bfloat16", "default")]
    with pytest.raises(SystemExit):
        bench_kernels.main(["--f32-precision", "tf32"])


def test_dispatch_floor_marks_launch_bound_rows(tmp_path):
    out = tmp_path / "d.jsonl"
    assert bench_kernels.main(["--lengths", "32", "--impls", "xla_dense", "--heads", "1", "--head-dim", "16",
                               "--dispatch", "--warmup", "0", "--steps", "2", "--repeats", "1",
                               "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["dispatch", "xla_dense"] and rows[0]["ms"] > 0
    floor = {"impl": "dispatch", "dtype": "bfloat16", "ms": 0.05, "device": "gpu: test card", "status": "ok"}
    text = bench_kernels.report([floor, _row("sdpa_cudnn", 0.3, length=1024, fwd=0.08),
                                 _row("sdpa_cudnn", 1.0, fwd=0.3)])
    assert "dispatch floor: bfloat16 0.050 ms" in text
    assert "| 1024 | sdpa_cudnn | - | 1 x 8 x 64 | - | 0.080* |" in text
    assert "| 4096 | sdpa_cudnn | - | 1 x 8 x 64 | - | 0.300 |" in text


def test_linear_attention_rows(tmp_path):
    out = tmp_path / "lin.jsonl"
    assert bench_kernels.main(["--lengths", "64", "--impls", "xla_linear", "pallas_linear", "--dtypes", "bfloat16",
                               "--heads", "2", "--head-dim", "16", "--block", "16", "32", "--num-warps", "4", "8",
                               "--bwd-block", "16", "32", "--warmup", "0", "--steps", "1", "--repeats", "1",
                               "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the chunk is the only setting of the Pallas linear kernels: one row per --block, no Triton or backward knobs
    assert [(r["impl"], r["block"]) for r in rows] == [("xla_linear", None), ("pallas_linear", 16),
                                                      ("pallas_linear", 32)]
    assert all(r["status"] == "ok" and "num_warps" not in r and r["bwd_block"] is None for r in rows), rows
    # O(L) FLOPs: 4 B H L D^2, and float32 products (linear attention computes in float32 even for bf16 inputs)
    assert all(r["flops_fwd"] == 4 * 2 * 64 * 16 * 16 and r["block_fraction"] is None for r in rows)
    assert all(r["matmul_precision"] == "highest" for r in rows)
    assert rows[1]["pallas_backend"] == "interpret" and rows[0]["pallas_backend"] is None


def test_report_keeps_devices_backends_and_shapes_apart():
    cpu = "cpu: test machine"
    rows = [
        # A GPU run that also timed the CPU target's impls: they are the GPU's, not the CPU's target.
        _row("xla_dense", 15.0, dtype="float32"), _row("pallas_local", 5.0, dtype="float32", window=128),
        _row("xla_dense", 1400.0, dtype="float32", device=cpu),
        _row("pallas_local", 115.0, dtype="float32", window=128, device=cpu, memory_bytes=4 * 2**20),
        _row("pallas_local", 29.0, dtype="float32", length=1024, window=128, device=cpu, memory_bytes=2**20),
        # Mosaic GPU's pallas_flash row is not the Triton target's; another head dim is not compared either.
        _row("sdpa_cudnn", 1.0), _row("pallas_flash", 0.8, pallas_backend="mosaic_gpu"),
        _row("pallas_flash", 1.2, pallas_backend="triton"), _row("pallas_flash", 0.5, head_dim=32),
        # The card's rate is its best matmul, not the last one; a float32 row uses the bfloat16 floor.
        {"impl": "matmul", "dtype": "bfloat16", "n": 8192, "tflops": 700.0, "device": "gpu: test card", "status": "ok"},
        {"impl": "matmul", "dtype": "bfloat16", "n": 256, "tflops": 5.0, "device": "gpu: test card", "status": "ok"},
        {"impl": "dispatch", "dtype": "bfloat16", "ms": 0.02, "device": "gpu: test card", "status": "ok"},
        _row("xla_dense", 0.05, dtype="float32", length=1024, fwd=0.015),
    ]
    text = bench_kernels.report(rows)
    cpu_part, gpu = text.split("Device: gpu: test card")   # devices in order: cpu first
    assert "(CPU target) (float32, L=4096): 12.17x, target >= 4.0x and linear memory: met" in cpu_part
    assert "memory grows as L^1.00 from L=1024 to 4096" in cpu_part
    assert "(CPU target) (float32, L=4096): not judged here (a CPU target)" in gpu
    assert "vs cuDNN (bfloat16, L=4096): 0.83x, target >= 0.8x: met (pallas_flash on triton 1.200 ms" in gpu
    assert "matmul rate: bfloat16 700.0 TFLOP/s" in gpu
    assert "| float32 | 1024 | xla_dense | - | 1 x 8 x 64 | - | 0.015* |" in gpu
    assert "| bfloat16 | 4096 | pallas_flash | mosaic_gpu |" in gpu and "| 1 x 8 x 32 |" in gpu


def test_report_says_just_under_a_target():
    text = bench_kernels.report([_row("sdpa_cudnn", 0.7996), _row("pallas_flash", 1.0)])
    assert "0.7996x, target >= 0.8x: NOT met" in text


def test_backward_flops_count_the_backward_blocks():
    row = bench_kernels.measure("pallas_local", 256, "float32", batch=1, heads=1, head_dim=16, window=16,
                                block=128, bwd_block=32, warmup=0, steps=1, repeats=1)
    fwd, bwd = (bench_kernels._fraction("pallas_local", 256, 16, b) for b in (128, 32))
    assert bwd < fwd and row["flops_fwd_bwd"] == pytest.approx(row["flops_fwd"] * (1 + 2.5 * bwd / fwd))
