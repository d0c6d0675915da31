"""The Mosaic GPU kernels (kernels/flash_mgpu.py) in Pallas's GPU interpret mode on CPU, against the XLA path.

The kernels are written for Hopper (TMA copies into shared memory, WGMMA products, barriers); the interpreter
simulates those on CPU, so their plan walks, double buffering, masking, online softmax and the three gradients
are checked here. bfloat16 only (WGMMA's operand type), at the bfloat16 tolerance of test_flash.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import flash, flash_mgpu, masks

# On a GPU the kernels are compiled (no interpreter needed); on CPU they need Pallas's GPU interpret mode.
pytestmark = pytest.mark.skipif(jax.default_backend() == "cpu" and flash_mgpu.interpret_params() is None,
                                reason="this JAX has no GPU interpret mode")

BF16 = dict(rtol=2e-2, atol=2e-2)


def _inputs(length, d, pad, *, b=2, h=1, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((b, length, h, d)), jnp.bfloat16) for _ in range(3))
    valid = None
    if pad:  # batch row 1 has no valid key at all: its outputs must be zeros
        valid = jnp.asarray(np.arange(length)[None] < np.array([[length - 9], [0]]))
    return q, k, v, valid


def _reference(q, k, v, mask, valid):
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    return kernels.attention(*f32, mask=mask, kv_valid=valid)


CASES = [  # (length, head dim, mask, key padding, blocks)
    (128, 64, None, False, 64),
    (100, 32, masks.Local(20), True, 64),                     # length and head dim padded inside
    (192, 64, masks.Global(4) | masks.Local(10), True, 64),   # FULL, PARTIAL and EMPTY blocks
]
SLOW_CASES = [
    (256, 64, masks.BigBird(64, 1, 0), False, 128),
    (256, 128, masks.BlockLocal(64), True, 64),
    (200, 64, masks.Strided(8), True, 64),
]


def _params(fast, slow):
    """Fast cases run in make test, the others with -m slow."""
    cases = list(fast) + [pytest.param(c, marks=pytest.mark.slow) for c in slow]
    ids = [f"L{c[0]}-d{c[1]}-{type(c[2]).__name__}-pad{c[3]}" for c in [*fast, *slow]]
    return pytest.mark.parametrize("case", cases, ids=ids)


@_params(CASES, SLOW_CASES)
def test_forward_matches_reference(case):
    length, d, mask, pad, block = case
    q, k, v, valid = _inputs(length, d, pad)
    out = flash.flash_attention(q, k, v, mask=mask, kv_valid=valid, block_q=block, block_k=block,
                                pallas_backend="mosaic_gpu")
    assert out.dtype == jnp.bfloat16 and out.shape == q.shape
    ref = _reference(q, k, v, mask, valid)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), **BF16)
    if pad:
        assert not np.asarray(out[1], np.float32).any()


# Causal band: not symmetric, so the dK/dV kernel's transposed bias tiles differ from the forward's.
_BAND = masks.Explicit(np.tril(np.ones((160, 160), bool)) & ~np.tril(np.ones((160, 160), bool), -70))
GRAD_CASES = [  # (length, head dim, mask, key padding)
    (96, 32, masks.Local(16), True),
    (160, 64, _BAND, True),                                   # PARTIAL blocks, asymmetric
]
SLOW_GRAD = [
    (128, 64, None, True),
    (128, 64, masks.Global(4) | masks.Local(10), False),
    (192, 64, masks.BigBird(64, 1, 0), True),
]


@_params(GRAD_CASES, SLOW_GRAD)
def test_gradients_of_the_mosaic_kernels(case):
    length, d, mask, pad = case
    q, k, v, valid = _inputs(length, d, pad)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w)

    ours = jax.grad(loss(lambda q, k, v: flash.flash_attention(
        q, k, v, mask=mask, kv_valid=valid, block_q=64, block_k=64, pallas_backend="mosaic_gpu")), (0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: _reference(q, k, v, mask, valid)), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, ref, strict=True):
        assert a.dtype == jnp.bfloat16, name
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **BF16, err_msg=f"d{name}")


def test_unsupported_calls_say_what_to_do(monkeypatch):
    q, k, v, _ = _inputs(64, 32, False)
    with pytest.raises(ValueError, match="bfloat16 or float16.*pallas_backend='triton'"):
        flash.flash_attention(q.astype(jnp.float32), k, v, pallas_backend="mosaic_gpu")
    with pytest.raises(ValueError, match="dropout"):
        flash.flash_attention(q, k, v, pallas_backend="mosaic_gpu", dropout_rate=0.1, dropout_rng=jax.random.key(0))
    with pytest.raises(ValueError, match="block_q and block_k"):
        flash.flash_attention(q, k, v, pallas_backend="mosaic_gpu", block_q=32, block_k=32)
    q128 = jnp.zeros((1, 64, 1, 128), jnp.bfloat16)
    with pytest.raises(ValueError, match="shared memory.*block_q=block_k=64"):
        flash.flash_attention(q128, q128, q128, pallas_backend="mosaic_gpu", block_q=128, block_k=128)
    monkeypatch.setenv("LRA_PALLAS_GPU_BACKEND", "cuda")
    with pytest.raises(ValueError, match="LRA_PALLAS_GPU_BACKEND"):
        flash.flash_attention(q, k, v)


def test_backend_names(monkeypatch):
    monkeypatch.delenv("LRA_PALLAS_GPU_BACKEND", raising=False)
    assert flash.backend(interpret=False) == "triton"
    assert flash.backend(interpret=True) == "interpret"
    assert flash.backend(interpret=False, pallas_backend="mosaic_gpu") == "mosaic_gpu"
    monkeypatch.setenv("LRA_PALLAS_GPU_BACKEND", "mosaic_gpu")
    assert flash.backend(interpret=True) == "interpret:mosaic_gpu"


def test_plan_bias_marks_exactly_the_masked_pairs_of_partial_blocks():
    plan = flash.mask_plan(masks.Local(3), 32, 32, 16, 16)
    bias = flash_mgpu.plan_bias(plan)
    dense = masks.Local(3).dense(32, 32)
    for i in range(plan.kidx.shape[0]):
        for n in range(plan.kcnt[i]):
            j = plan.kidx[i, n]
            want = np.where(dense[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16], 0.0, flash_mgpu.NEG).astype(np.float32)
            np.testing.assert_array_equal(bias[i, n], want)
    # The k-major tiles of dK/dV are the same pairs, transposed.
    bias_k = flash_mgpu.plan_bias(plan, "k")
    for j in range(plan.qidx.shape[0]):
        for n in range(plan.qcnt[j]):
            i = plan.qidx[j, n]
            want = np.where(dense[i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].T, 0.0, flash_mgpu.NEG)
            np.testing.assert_array_equal(bias_k[j, n], want.astype(np.float32))
    assert flash_mgpu.plan_bias(flash.mask_plan(None, 32, 32, 16, 16)) is None


def test_mosaic_backward_with_blocks_of_its_own():
    # Forward blocks of 128, backward blocks of 64 (flash_attention's block_q_bwd / block_k_bwd).
    q, k, v, valid = _inputs(192, 64, True)
    mask = masks.Global(4) | masks.Local(10)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w)

    ours = jax.grad(loss(lambda q, k, v: flash.flash_attention(
        q, k, v, mask=mask, kv_valid=valid, block_q=128, block_k=128, block_q_bwd=64, block_k_bwd=64,
        pallas_backend="mosaic_gpu")), (0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: _reference(q, k, v, mask, valid)), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, ref, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **BF16, err_msg=f"d{name}")
