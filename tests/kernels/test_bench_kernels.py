"""lra.bench_kernels: rows for every implementation, with the FLOP accounting of the visited blocks."""
import json

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
