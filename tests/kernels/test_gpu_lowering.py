"""The Pallas kernels lowered for a CUDA GPU on this CPU-only machine (``jax.export`` with platforms=["cuda"]).

Lowering runs Pallas's Triton and Mosaic GPU lowering rules (for Mosaic GPU, with its default lane semantics,
that is where register layouts, shared-memory transforms and WGMMA operand shapes are checked) without a GPU,
so a kernel that would not lower is caught here, before a GPU is lent. Compiling the lowered module (Triton to
PTX, Mosaic GPU to LLVM) and running it still need the GPU: ``scripts/gpu_check.sh``.
"""
import contextlib
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from kernels import flash, masks
from kernels.linear_pallas import linear_attention_pallas

TRITON = "__gpu$xla.gpu.triton"
MOSAIC = "mosaic_gpu_v2"


def _h100():
    """Lower for an H100 (compute capability 9.0). JAX 0.11's Triton lowering asks the device for its compute
    capability and, with no GPU, needs an abstract one; JAX 0.10 assumed 9.0 itself."""
    sh = jax.sharding
    if "abstract_device" not in inspect.signature(sh.AbstractMesh).parameters:
        return contextlib.nullcontext()
    device = sh.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    return sh.use_abstract_mesh(sh.AbstractMesh((), (), abstract_device=device))


def _lowered(fn, *args) -> str:
    with _h100():
        exported = export.export(jax.jit(fn), platforms=["cuda"],
                                 disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)])(*args)
    return exported.mlir_module()


def _custom_calls(fn, *args):
    return re.findall(r"custom_call @([^(\s]+)\(", _lowered(fn, *args))


def _args(length, dtype, d=64):
    x = jax.ShapeDtypeStruct((2, length, 2, d), dtype)
    return x, x, x, jax.ShapeDtypeStruct((2, length), jnp.bool_)


_BAND = masks.Explicit(np.tril(np.ones((192, 192), bool)) & ~np.tril(np.ones((192, 192), bool), -50))
CASES = [  # (backend, dtype, mask, dropout)
    ("triton", jnp.bfloat16, None, 0.0),
    ("triton", jnp.float32, masks.Local(40), 0.1),
    ("triton", jnp.bfloat16, masks.Strided(8), 0.0),
    ("mosaic_gpu", jnp.bfloat16, None, 0.0),
    ("mosaic_gpu", jnp.bfloat16, masks.Local(40), 0.0),
    ("mosaic_gpu", jnp.float16, _BAND, 0.0),
]


@pytest.mark.parametrize("blocks", [(128, 128, 64), (64, 128, 128), (64, 64, 128)])
def test_mosaic_gpu_sizes_that_fit_in_shared_memory_lower(blocks):
    # flash_mgpu.supported accepts these (its shared-memory estimate is under the limit) and Mosaic GPU, which
    # checks the real allocation when lowering, agrees; larger ones are refused before lowering.
    bq, bk, d = blocks

    def loss(q, k, v, valid):
        out = flash.flash_attention(q, k, v, mask=masks.Local(100), kv_valid=valid, block_q=bq, block_k=bk,
                                    interpret=False, pallas_backend="mosaic_gpu")
        return out.astype(jnp.float32).sum()

    assert _custom_calls(jax.grad(loss, (0, 1, 2)), *_args(256, jnp.bfloat16, d)).count(MOSAIC) == 3


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{jnp.dtype(c[1]).name}-{type(c[2]).__name__}")
def test_flash_forward_and_backward_lower_for_cuda(case):
    backend, dtype, mask, rate = case

    def loss(q, k, v, valid):
        out = flash.flash_attention(q, k, v, mask=mask, kv_valid=valid, block_q=64, block_k=64, interpret=False,
                                    pallas_backend=backend, dropout_rate=rate,
                                    dropout_rng=jax.random.key(0) if rate else None)
        return out.astype(jnp.float32).sum()

    calls = _custom_calls(jax.grad(loss, (0, 1, 2)), *_args(192, dtype))
    kernels = [c for c in calls if c in (TRITON, MOSAIC)]
    assert kernels == [TRITON if backend == "triton" else MOSAIC] * 3  # forward, dQ, dK/dV


@pytest.mark.parametrize("triton", [{}, {"num_warps": 8, "num_stages": 3}])
def test_triton_compiler_parameters_reach_every_kernel(triton):
    def loss(q, k, v, valid):
        out = flash.flash_attention(q, k, v, kv_valid=valid, block_q=64, block_k=64, interpret=False,
                                    pallas_backend="triton", **triton)
        return out.astype(jnp.float32).sum()

    module = _lowered(jax.grad(loss, (0, 1, 2)), *_args(192, jnp.bfloat16))
    found = re.findall(r'name = "(flash_\w+)", num_stages = (\d+) : i32, num_warps = (\d+) : i32', module)
    warps, stages = triton.get("num_warps", 4), triton.get("num_stages", 2)  # the defaults
    assert sorted(found) == [(name, str(stages), str(warps)) for name in ("flash_dkdv", "flash_dq", "flash_fwd")]


def test_triton_kernels_read_the_model_layout_without_transposes():
    # [B, L, H, D] in and out, forward and backward: the only transposes would be the wrapper's.
    def loss(q, k, v, valid):
        out = flash.flash_attention(q, k, v, kv_valid=valid, block_q=64, block_k=64, interpret=False,
                                    pallas_backend="triton")
        return out.astype(jnp.float32).sum()

    assert "stablehlo.transpose" not in _lowered(jax.grad(loss, (0, 1, 2)), *_args(192, jnp.bfloat16))
    mosaic = _lowered(lambda q, k, v, valid: flash.flash_attention(q, k, v, interpret=False, block_q=64,
                                                                   block_k=64, pallas_backend="mosaic_gpu"),
                      *_args(192, jnp.bfloat16))
    assert "stablehlo.transpose" in mosaic  # the check can fail: the Mosaic GPU kernels do take [B, H, L, D]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_atomic_dq_backward_lowers_for_cuda(dtype):
    # dQ by atomic adds inside the dK/dV kernel: two Triton kernels in all, the second with the atomics.
    def loss(q, k, v, valid):
        out = flash.flash_attention(q, k, v, mask=masks.Local(40), kv_valid=valid, block_q=64, block_k=64,
                                    interpret=False, pallas_backend="triton", atomic_dq=True)
        return out.astype(jnp.float32).sum()

    module = _lowered(jax.grad(loss, (0, 1, 2)), *_args(192, dtype))
    assert re.findall(r'name = "(flash_\w+)"', module) == ["flash_fwd", "flash_dkdv_dq"]
    assert re.findall(r"custom_call @([^(\s]+)\(", module).count(TRITON) == 2


@pytest.mark.parametrize("length,dtype,splits", [(128, jnp.float32, None), (384, jnp.bfloat16, None),
                                                (384, jnp.bfloat16, 1), (384, jnp.bfloat16, 2)])
def test_linear_attention_lowers_for_cuda(length, dtype, splits):
    # At 384, 3 chunks of 128: by default (not interpret) one program per chunk for the reductions (runs of 128
    # rows); 1 split: runs of 384 rows, not a power of two (only the [chunk, F] tiles loaded must be); 2 splits
    # pad to 4 chunks (runs of 256). The partial sums are added outside the kernels.
    q, k, v, valid = _args(length, dtype, d=32)

    def loss(q, k, v, valid):
        fmap = lambda x: jax.nn.elu(x) + 1  # noqa: E731
        out = linear_attention_pallas(q, k, v, feature_map=fmap, kv_valid=valid, splits=splits, interpret=False)
        return jnp.square(out.astype(jnp.float32)).sum()  # needs the output (a plain sum would not run the readout)

    module = _lowered(jax.grad(loss, (0, 1, 2)), q, k, v, valid)
    assert re.findall(r"custom_call @([^(\s]+)\(", module).count(TRITON) == 4
    assert sorted(re.findall(r'name = "(linear_attention_\w+)"', module)) == [
        "linear_attention_key_grads", "linear_attention_key_state", "linear_attention_query_grads",
        "linear_attention_readout"]
