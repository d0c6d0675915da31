"""scripts/bench_torch.py: the side-by-side JAX / PyTorch train-step benchmark (tiny shapes only)."""
from __future__ import annotations

import json
import sys

import pytest

from tests._scripts import load_script

bench_torch = load_script("bench_torch")


def test_without_torch_exits_2_and_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    out = tmp_path / "bench.jsonl"
    assert bench_torch.main(["--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "make bench-torch" in err and "torch==2.13.0" in err
    assert not out.exists()


def test_quick_run_appends_a_record(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "sub" / "bench.jsonl"
    assert bench_torch.main(["--quick", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["jax_steps_per_second"] > 0
    assert record["torch_steps_per_second"] > 0
    assert record["ratio"] == pytest.approx(record["jax_steps_per_second"] / record["torch_steps_per_second"])
    assert record["jax_compile_seconds"] > 0
    assert record["jax_params"] == record["torch_params"]
    assert record["quick"] is True and record["torch_compile"] is None  # --quick does not try torch.compile
    for key in ("emb_dim", "num_heads", "num_layers", "mlp_dim", "length", "batch_size", "pooling", "device",
                "jax_version", "torch_version", "torch_threads", "git_commit", "date"):
        assert key in record, key
    assert 0.5 <= record["valid_fraction"] < 1.0  # lengths in [L/2, L]: there is padding


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_torch_twin_has_our_parameter_count(pooling):
    """Equal widths give equal counts: torch's MultiheadAttention keeps q/k/v as one fused [3d, d] in_proj (+3d
    bias) like our qkv Dense, out_proj/linear1/linear2/norm1/norm2 match out/mlp_in/mlp_out/the two LayerNorms,
    the encoder's final norm matches final_norm, and the sinusoidal table is a buffer (not a parameter) on both
    sides. Only the CLS vector depends on pooling."""
    pytest.importorskip("torch")
    import jax
    from flax import nnx

    from lra import trainer
    from models import count_params

    args = bench_torch.parse_args(["--quick", "--pooling", pooling])
    ours = count_params(trainer.build_model(bench_torch.bench_config(args)))
    torch_model = bench_torch.build_torch_model(args)
    theirs = sum(p.numel() for p in torch_model.parameters())
    assert theirs == ours

    # The same count by parameter shape, so a mismatch in one place cannot hide behind another.
    model = trainer.build_model(bench_torch.bench_config(args))
    ours_shapes = sorted(tuple(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # flax keeps kernels as [in, out] and the CLS vector as [1, 1, d]; torch keeps weights as [out, in].
    theirs_shapes = sorted(tuple(reversed(p.shape)) if p.ndim == 2 and not name.startswith("embed.") else tuple(p.shape)
                           for name, p in torch_model.named_parameters())
    assert ours_shapes == theirs_shapes


def test_quick_shape_flags_override():
    args = bench_torch.parse_args(["--quick", "--length", "48", "--steps", "5"])
    assert (args.length, args.steps, args.emb_dim) == (48, 5, bench_torch.QUICK["emb_dim"])
    defaults = bench_torch.parse_args([])
    assert (defaults.emb_dim, defaults.num_heads, defaults.num_layers, defaults.mlp_dim, defaults.length,
            defaults.batch_size, defaults.pooling) == (64, 2, 2, 128, 512, 32, "cls")
    assert defaults.out == "results/bench_torch_cpu.jsonl"
    with pytest.raises(SystemExit):
        bench_torch.parse_args(["--emb-dim", "65", "--num-heads", "2"])
