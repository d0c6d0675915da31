"""Block-sparse attention on gathered key blocks equals dense masked attention, and is linear in memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import block_sparse, masks

F32 = dict(rtol=2e-5, atol=2e-6)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)


def inputs(b=2, length=32, h=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((b, length, h, d)), jnp.float32) for _ in range(3))
    valid = jnp.asarray(np.arange(length)[None] < rng.integers(1, length + 1, b)[:, None])
    return q, k, v, valid


CASES = [(masks.Local(3), 8), (masks.Local(9), 4), (masks.BlockLocal(8), 8), (masks.Global(2), 8),
         (masks.Local(2) | masks.Global(3), 8), (masks.BigBird(8, 1, 0), 8), (masks.Full(), 16),
         (masks.Local(1) & masks.Strided(2), 8)]


@pytest.mark.parametrize("mask,block", CASES, ids=lambda x: repr(x))
def test_equals_dense_masked_attention(mask, block):
    q, k, v, valid = inputs()
    ours = block_sparse.block_sparse_attention(q, k, v, mask, block=block, kv_valid=valid)
    dense = kernels.attention(q, k, v, mask=mask, kv_valid=valid)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(dense), **F32)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    g1 = jax.grad(lambda *a: (block_sparse.block_sparse_attention(*a, mask, block=block, kv_valid=valid) * cot).sum(),
                  argnums=(0, 1, 2))(q, k, v)
    g2 = jax.grad(lambda *a: (kernels.attention(*a, mask=mask, kv_valid=valid) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD)


def test_plan_skips_empty_blocks():
    key_blocks, element = block_sparse.block_plan(masks.Local(4), 64, 8)
    assert key_blocks.shape == (8, 3)  # each query block sees its neighbours only
    layout = masks.Local(4).block_layout(64, 64, 8, 8)
    for qb in range(8):
        used = sorted(int(x) for x in key_blocks[qb] if x >= 0)
        assert used == sorted(np.flatnonzero(layout[qb] != masks.EMPTY).tolist())


@pytest.mark.parametrize("stride", [2, 4])
def test_strided_equals_dense(stride):
    q, k, v, valid = inputs(length=32, seed=3)
    ours = block_sparse.strided_attention(q, k, v, stride=stride, kv_valid=valid)
    dense = kernels.attention(q, k, v, mask=masks.Strided(stride), kv_valid=valid)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(dense), **F32)


def temp_bytes(fn, length):
    q = jax.ShapeDtypeStruct((1, length, 2, 16), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2)))
    analysis = grad.lower(q, q, q).compile().memory_analysis()
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


def test_memory_grows_linearly():
    local = lambda q, k, v: block_sparse.block_sparse_attention(q, k, v, masks.Local(32), block=32)
    full = lambda q, k, v: kernels.attention(q, k, v)
    local_ratio = temp_bytes(local, 2048) / temp_bytes(local, 512)
    full_ratio = temp_bytes(full, 2048) / temp_bytes(full, 512)
    assert local_ratio < 5.0, local_ratio
    assert full_ratio > 10.0, full_ratio
