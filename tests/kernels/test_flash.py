"""The Pallas flash / block-sparse attention kernels (interpret mode on CPU) against the dense references.

JAX's own pattern: one class over a product of shapes (lengths that are and are not multiples of the block),
block sizes, head dims, masks and key padding, checking the forward and all three gradients at fixed float32
tolerances. The full product is marked slow; a cover of it (every value of every axis at least once) runs in
``make test``. Plans (which blocks are visited, FULL or PARTIAL, and their element masks) are checked exactly
against the dense mask, on hypothesis-generated masks too.
"""
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import flash, masks
from tests.kernels._jaxpr import pallas_grids

F32 = dict(rtol=1e-5, atol=1e-5)
F32_GRAD = dict(rtol=1e-4, atol=1e-4)
BF16 = dict(rtol=2e-2, atol=2e-2)

MASKS = {
    "dense": None,
    "local3": masks.Local(3),
    "blocklocal8": masks.BlockLocal(8),
    "global2|local2": masks.Global(2) | masks.Local(2),
    "bigbird8": masks.BigBird(8, 1, 0),
    "strided4": masks.Strided(4),
}
LENGTHS = (32, 40)              # 40: not a multiple of 16 or 32
BLOCKS = ((16, 16), (16, 32))   # (block_q, block_k)
HEAD_DIMS = (8, 20)             # 20: padded to 32 inside
PADDING = (False, True)

PRODUCT = list(itertools.product(LENGTHS, BLOCKS, HEAD_DIMS, MASKS, PADDING))
# A cover of the product for the fast suite: every mask once, padding alternating, the other axes cycling so
# that every value of every axis appears.
COVER = [(LENGTHS[i % 2], BLOCKS[(i // 2) % 2], HEAD_DIMS[(i // 3) % 2], m, PADDING[(i + 1) % 2])
         for i, m in enumerate(MASKS)]


def _id(case):
    length, (bq, bk), d, m, pad = case
    return f"L{length}-b{bq}x{bk}-d{d}-{m}-{'pad' if pad else 'nopad'}"


def inputs(length, d, pad, *, b=2, h=2, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((b, length, h, d)), dtype) for _ in range(3))
    valid = None
    if pad:
        valid = np.arange(length)[None] < np.array([[length - 7], [0]])  # row 1: no valid key at all
        valid = jnp.asarray(valid)
    return q, k, v, valid


class TestFlashAttention:
    def check(self, length, blocks, d, mask_name, pad, atomic_dq=False, bwd_blocks=(None, None)):
        mask = MASKS[mask_name]
        bq, bk = blocks
        q, k, v, valid = inputs(length, d, pad)
        cot = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

        def ours(q, k, v):
            return flash.flash_attention(q, k, v, mask=mask, kv_valid=valid, block_q=bq, block_k=bk,
                                         atomic_dq=atomic_dq, block_q_bwd=bwd_blocks[0], block_k_bwd=bwd_blocks[1])

        def ref(q, k, v):
            return kernels.attention(q, k, v, mask=mask, kv_valid=valid)

        out = ours(q, k, v)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref(q, k, v)), **F32)
        np.testing.assert_allclose(np.asarray(out, np.float64),
                                   kernels.reference_attention(q, k, v, mask=mask, kv_valid=valid), **F32)
        if pad:
            assert not np.asarray(out[1]).any()  # a query with no allowed key returns zeros
        g_ours = jax.grad(lambda *a: (ours(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
        g_ref = jax.grad(lambda *a: (ref(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
        for name, a, b in zip("qkv", g_ours, g_ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=f"d{name}", **F32_GRAD)

    @pytest.mark.parametrize("case", COVER, ids=_id)
    def test_cover(self, case):
        self.check(*case)

    @pytest.mark.slow
    @pytest.mark.parametrize("case", [c for c in PRODUCT if c not in COVER], ids=_id)
    def test_product(self, case):
        self.check(*case)

    @pytest.mark.parametrize("case", COVER, ids=_id)
    def test_cover_in_the_gpu_layout(self, case, monkeypatch):
        # On GPU the Triton kernels read q/k/v in [B, L, H, D] through strided BlockSpecs; here, in interpret
        # mode, they get [B, H, L, D] unless told otherwise.
        if jax.default_backend() != "cpu":
            pytest.skip("on a GPU test_cover runs the Triton kernels in this layout already")
        monkeypatch.setattr(flash, "kernel_layout", lambda interpret, backend: "BLHD")
        self.check(*case)

    @pytest.mark.parametrize("case", COVER, ids=_id)
    def test_cover_with_atomic_dq(self, case):
        # dQ accumulated by atomic adds inside the dK/dV kernel (FlashAttention-2's backward).
        self.check(*case, atomic_dq=True)

    @pytest.mark.parametrize("bwd_blocks, atomic_dq", [((16, 16), False), ((32, 16), False), ((16, 32), True)])
    @pytest.mark.parametrize("mask_name", ["bigbird8", "global2|local2", "strided4"])
    def test_backward_with_blocks_of_its_own(self, mask_name, bwd_blocks, atomic_dq):
        # The backward kernels walk a plan of other blocks than the forward's (32 x 32 here); length 40 pads
        # to a multiple of all of them.
        self.check(40, (32, 32), 20, mask_name, True, atomic_dq=atomic_dq, bwd_blocks=bwd_blocks)


@pytest.mark.parametrize("atomic_dq", [False, True])
def test_dropout_drops_the_weights_the_xla_path_drops(atomic_dq):
    q, k, v, valid = inputs(40, 8, True)
    key = jax.random.PRNGKey(7)
    mask = masks.Local(5)
    cot = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

    def ours(q, k, v):
        if atomic_dq:
            return flash.flash_attention(q, k, v, mask=mask, kv_valid=valid, dropout_rate=0.25, dropout_rng=key,
                                         atomic_dq=True)
        return kernels.attention(q, k, v, mask=mask, kv_valid=valid, impl="pallas", dropout_rate=0.25,
                                 dropout_rng=key)

    def ref(q, k, v):
        return kernels.attention(q, k, v, mask=mask, kv_valid=valid, dropout_rate=0.25, dropout_rng=key)

    out = ours(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref(q, k, v)), **F32)
    no_drop = kernels.attention(q, k, v, mask=mask, kv_valid=valid, impl="pallas")
    assert np.abs(np.asarray(out - no_drop)).max() > 1e-2  # dropout did something
    g_ours = jax.grad(lambda *x: (ours(*x) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *x: (ref(*x) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD)


@pytest.mark.parametrize("pad", [False, True])
def test_strided_length_not_a_multiple_of_the_stride(pad):
    # 42 = 5 * 8 + 2: the permutation needs a multiple of the stride, so the kernel pads (a CLS token makes
    # LRA lengths 1025, 4097). Forward and gradients against the XLA path.
    q, k, v, valid = inputs(42, 8, pad)
    mask = masks.Strided(8)

    def loss(impl):
        return lambda q, k, v: jnp.sum(jnp.sin(kernels.attention(q, k, v, mask=mask, kv_valid=valid, impl=impl)))

    out = kernels.attention(q, k, v, mask=mask, kv_valid=valid, impl="pallas")
    ref = kernels.attention(q, k, v, mask=mask, kv_valid=valid, impl="xla")
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **F32)
    grads = [jax.grad(loss(impl), (0, 1, 2))(q, k, v) for impl in ("pallas", "xla")]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD)


def test_bfloat16_close_to_float32():
    q, k, v, valid = inputs(32, 16, True)
    out = flash.flash_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask=masks.Local(4), kv_valid=valid,
                                block_q=16, block_k=16)
    assert out.dtype == jnp.bfloat16
    ref = kernels.attention(*(x.astype(jnp.bfloat16).astype(jnp.float32) for x in (q, k, v)), mask=masks.Local(4),
                            kv_valid=valid)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), **BF16)


def test_rejects_array_masks_and_bad_blocks():
    q, k, v, _ = inputs(32, 8, False)
    with pytest.raises(ValueError, match="kernels.masks.Mask"):
        kernels.attention(q, k, v, mask=np.ones((32, 32), bool), impl="pallas")
    with pytest.raises(ValueError, match="power of two"):
        flash.flash_attention(q, k, v, block_q=24)


def test_kernel_layout():
    assert flash.kernel_layout(False, "triton") == "BLHD"  # GPU: no transposes around the kernels
    assert flash.kernel_layout(True, "triton") == "BHLD"
    assert flash.kernel_layout(False, "mosaic_gpu") == flash.kernel_layout(True, "mosaic_gpu") == "BHLD"


def test_triton_compiler_parameters_are_checked_and_leave_results_alone():
    q, k, v, valid = inputs(48, 8, True)
    ref = flash.flash_attention(q, k, v, mask=masks.Local(5), kv_valid=valid, block_q=16, block_k=16)
    out = flash.flash_attention(q, k, v, mask=masks.Local(5), kv_valid=valid, block_q=16, block_k=16, num_warps=8,
                                num_stages=3)
    # The same numbers: exactly in interpret mode (the same program); on a GPU, warps may sum in another order.
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), **(F32 if jax.default_backend() == "gpu" else {}))
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        flash.flash_attention(q, k, v, num_warps=6)
    with pytest.raises(ValueError, match="num_stages must be >= 1"):
        flash.flash_attention(q, k, v, num_stages=0)
    for setting in ({"num_warps": 8}, {"atomic_dq": True}):
        with pytest.raises(ValueError, match="Mosaic GPU kernels take none"):
            flash.flash_attention(q, k, v, pallas_backend="mosaic_gpu", **setting)


def test_a_jax_without_the_triton_backend_names_mosaic_gpu(monkeypatch):
    """JAX deprecated Pallas's Triton backend (0.11) and will remove it: then the kernels that need it (GPU
    compiler parameters, atomic dQ) say which backend to use instead of failing on an import."""
    from jax.experimental import pallas

    monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)  # makes the import raise
    monkeypatch.delattr(pallas, "triton", raising=False)  # once imported, `from pallas import triton` reads this
    with pytest.raises(ImportError, match="LRA_PALLAS_GPU_BACKEND=mosaic_gpu"):
        flash.compiler_params(interpret=False)
    q, k, v, _ = inputs(32, 8, False)
    with pytest.raises(ImportError, match="no Pallas Triton backend"):
        jax.grad(lambda q: flash.flash_attention(q, k, v, block_q=16, block_k=16, atomic_dq=True).sum())(q)
    assert flash.compiler_params(interpret=True) is None  # interpret mode never needed it


# --------------------------------------------------------------------------- plans, exactly


def dense_from_plan(plan: flash.Plan, length: int) -> np.ndarray:
    """The allowed pairs a plan makes the kernels visit, as a dense bool [length, length] array."""
    bq, bk = plan.block_q, plan.block_k
    out = np.zeros((plan.length, plan.length), bool)
    for i in range(plan.kidx.shape[0]):
        for n in range(plan.kcnt[i]):
            j = plan.kidx[i, n]
            tile = plan.emask[i, n].astype(bool) if plan.kpart[i, n] else np.ones((bq, bk), bool)
            out[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk] = tile
    return out[:length, :length]


def check_plan(mask, length, bq, bk):
    padded = -(-length // max(bq, bk)) * max(bq, bk)
    plan = flash.mask_plan(mask, length, padded, bq, bk)
    dense = mask.dense(length, length)
    np.testing.assert_array_equal(dense_from_plan(plan, length), dense)
    # Exactly the non-empty blocks are visited, FULL ones without a mask; the k-major lists are the transpose.
    grid = np.zeros((padded, padded), bool)
    grid[:length, :length] = dense
    blocks = grid.reshape(padded // bq, bq, padded // bk, bk)
    layout = np.where(blocks.all(axis=(1, 3)), masks.FULL, np.where(blocks.any(axis=(1, 3)), masks.PARTIAL,
                                                                     masks.EMPTY))
    for i in range(layout.shape[0]):
        used = plan.kidx[i, : plan.kcnt[i]]
        assert used.tolist() == np.flatnonzero(layout[i]).tolist()
        assert plan.kpart[i, : plan.kcnt[i]].tolist() == (layout[i, used] == masks.PARTIAL).tolist()
    for j in range(layout.shape[1]):
        used = plan.qidx[j, : plan.qcnt[j]]
        assert used.tolist() == np.flatnonzero(layout[:, j]).tolist()
        assert all(plan.kidx[i, s] == j for i, s in zip(used, plan.qslot[j, : plan.qcnt[j]]))
        for n, (i, s) in enumerate(zip(used, plan.qslot[j, : plan.qcnt[j]])):
            if plan.qpart[j, n]:
                np.testing.assert_array_equal(plan.emask_k[j, n], plan.emask[i, s])
    assert plan.visited_blocks == int((layout != masks.EMPTY).sum())


@pytest.mark.parametrize("mask", [m for m in MASKS.values() if m is not None], ids=repr)
@pytest.mark.parametrize("length,bq,bk", [(32, 16, 16), (40, 16, 32), (64, 32, 16)])
def test_plan_exact(mask, length, bq, bk):
    check_plan(mask, length, bq, bk)


def test_local_plan_is_linear_in_length():
    """Local(128) with blocks of 128 visits 3 blocks per row (2 at the ends): work and memory linear in L."""
    for length in (1024, 2048, 4096):
        plan = flash.mask_plan(masks.Local(128), length, length, 128, 128)
        assert plan.visited_blocks == 3 * (length // 128) - 2
        assert plan.emask.nbytes == plan.emask_k.nbytes == (length // 128) * 3 * 128 * 128


@st.composite
def random_masks(draw):
    length = draw(st.sampled_from([16, 24, 32, 48]))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    dense = rng.random((length, length)) < density
    # Some structure as well: whole blocks on or off.
    if draw(st.booleans()):
        dense |= np.kron(rng.random((length // 8, length // 8)) < 0.3, np.ones((8, 8), bool))
    return length, masks.Explicit(dense)


@settings(max_examples=40, deadline=None)
@given(random_masks(), st.sampled_from([(16, 16), (16, 32), (32, 16)]))
def test_plan_exact_on_random_masks(case, blocks):
    length, mask = case
    check_plan(mask, length, *blocks)


@settings(max_examples=4, deadline=None)
@given(random_masks())
def test_kernel_on_random_masks(case):
    length, mask = case
    q, k, v, _ = inputs(length, 8, False, b=1, h=1)
    out = flash.flash_attention(q, k, v, mask=mask, block_q=16, block_k=16)
    np.testing.assert_allclose(np.asarray(out, np.float64), kernels.reference_attention(q, k, v, mask=mask), **F32)


def test_default_block_follows_a_local_window():
    assert flash.default_block(4096) == 128 and flash.default_block(40) == 64 and flash.default_block(3) == 16
    assert flash.default_block(4096, masks.Local(32)) == 32 and flash.default_block(4096, masks.Local(200)) == 128
    assert flash.default_block(4096, masks.Local(3)) == 16  # Triton's smallest dot
    assert flash.default_block(4096, masks.Local(32), minimum=64) == 64  # Mosaic GPU's WGMMA tiles
    assert flash.default_block(4096, masks.BlockLocal(32)) == 128


def test_backward_kernels_run_on_their_own_blocks():
    # Correct gradients alone would not show which blocks the backward used: read the grids off the jaxpr.
    q = jnp.ones((1, 40, 2, 20))

    def grids(**blocks):
        def loss(q):
            return flash.flash_attention(q, q, q, mask=masks.Local(3), block_q=32, block_k=32, **blocks).sum()

        return pallas_grids(jax.grad(loss), q)

    # length 40 pads to 64: 2 blocks of 32, 4 of 16; grids are (batch, heads, blocks)
    assert grids() == {"flash_fwd": (1, 2, 2), "flash_dq": (1, 2, 2), "flash_dkdv": (1, 2, 2)}
    assert grids(block_q_bwd=16) == {"flash_fwd": (1, 2, 2), "flash_dq": (1, 2, 4), "flash_dkdv": (1, 2, 2)}
    assert grids(block_k_bwd=16) == {"flash_fwd": (1, 2, 2), "flash_dq": (1, 2, 2), "flash_dkdv": (1, 2, 4)}
    with pytest.raises(ValueError, match="block_k_bwd must be a power of two"):
        flash.flash_attention(q, q, q, block_k_bwd=24)


def test_a_strided_mask_runs_on_the_blocks_given():
    # Strided attention is a permuted BlockLocal call: the blocks passed reach it (they used to be dropped for the
    # default, so an invalid one was accepted and Mosaic GPU's smaller-block advice could not be followed).
    q = jnp.ones((1, 64, 1, 8))

    def grid(**blocks):
        return pallas_grids(lambda q: flash.flash_attention(q, q, q, mask=masks.Strided(4), **blocks), q)["flash_fwd"]

    assert [grid(block_q=b, block_k=b) for b in (16, 32, 64)] == [(1, 1, 4), (1, 1, 2), (1, 1, 1)]
    with pytest.raises(ValueError, match="block_q must be a power of two"):
        flash.flash_attention(q, q, q, mask=masks.Strided(4), block_q=24, block_k=24)
