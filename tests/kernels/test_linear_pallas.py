"""The chunked Pallas linear attention equals the XLA path, forward and gradients (interpret mode on CPU, the
compiled Triton kernels on a GPU)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.linear_pallas import linear_attention_pallas
from tests.kernels._jaxpr import pallas_grids

F32 = dict(rtol=1e-5, atol=1e-5)
F32_GRAD = dict(rtol=1e-4, atol=1e-4)
CHUNK = 16


def inputs(b=2, lq=32, lk=32, h=2, d=8, dv=None, masked=False, seed=0):
    """Random q, k, v and, when masked, kv_valid with some padded keys in row 0 and no valid key in row 1."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, lq, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, lk, h, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, lk, h, dv or d)), jnp.float32)
    valid = None
    if masked:
        valid = rng.random((b, lk)) < 0.6
        valid[0, :3] = True
        valid[0, -2:] = False
        valid[1] = False
        valid = jnp.asarray(valid)
    return q, k, v, valid


def value_and_grads(fn, q, k, v, cot):
    """fn's output and the gradients of <fn(q, k, v), cot> with respect to q, k and v, all under one jit."""
    def run(q, k, v, cot):
        out, pullback = jax.vjp(fn, q, k, v)
        return out, pullback(cot)
    return jax.jit(run)(q, k, v, cot)


CASES = [dict(lq=length, lk=length, d=d, feature_map=fm, masked=masked)
         for length, d, fm, masked in itertools.product((32, 37), (8, 16), ("elu1", "relu"), (False, True))]
CASES += [dict(lq=20, lk=37, d=8, dv=12, feature_map="relu", masked=True),
          dict(lq=37, lk=32, d=16, dv=8, feature_map="elu1", masked=False)]


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


# The fast suite runs a cover of the product (every value of every axis) and the two ragged cases; the rest
# of the product runs with the slow tests.
COVER = {0, 6, 9, 15, 16, 17}
PARAMS = [pytest.param(c, marks=() if i in COVER else pytest.mark.slow) for i, c in enumerate(CASES)]


class TestMatchesXLA:
    @pytest.mark.parametrize("case", PARAMS, ids=case_id)
    def test_forward_and_gradients(self, case):
        case = dict(case)
        feature_map = kernels.FEATURE_MAPS[case.pop("feature_map")]
        q, k, v, valid = inputs(**case)
        cot = jnp.asarray(np.random.default_rng(1).standard_normal((*q.shape[:3], v.shape[-1])), jnp.float32)

        ours, ours_grads = value_and_grads(
            lambda q, k, v: linear_attention_pallas(q, k, v, feature_map=feature_map, kv_valid=valid, chunk=CHUNK),
            q, k, v, cot)  # interpret mode on CPU, the compiled Triton kernels on a GPU
        ref, ref_grads = value_and_grads(
            lambda q, k, v: kernels.linear_attention(q, k, v, feature_map=feature_map, kv_valid=valid, impl="xla"),
            q, k, v, cot)

        assert ours.shape == ref.shape == (*q.shape[:3], v.shape[-1]) and ours.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), **F32)
        for name, ours_g, ref_g, x in zip("qkv", ours_grads, ref_grads, (q, k, v)):
            assert ours_g.shape == x.shape, name
            np.testing.assert_allclose(np.asarray(ours_g), np.asarray(ref_g), **F32_GRAD, err_msg=f"d{name}")
        if valid is not None:
            # Row 1 has no valid key: zero output, and nothing flows back to its queries, keys or values.
            assert not np.asarray(ours[1]).any()
            for name, ours_g in zip("qkv", ours_grads):
                assert not np.asarray(ours_g[1]).any(), name


def test_default_chunk_longer_than_sequence():
    q, k, v, valid = inputs(lq=37, lk=37, masked=True)
    fm = kernels.FEATURE_MAPS["elu1"]
    ours = linear_attention_pallas(q, k, v, feature_map=fm, kv_valid=valid)
    ref = kernels.linear_attention(q, k, v, feature_map=fm, kv_valid=valid)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), **F32)


def test_bfloat16_inputs_give_bfloat16_output():
    q, k, v, valid = inputs(lq=37, lk=37, d=16, masked=True)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    fm = kernels.FEATURE_MAPS["elu1"]
    run = lambda q, k, v: linear_attention_pallas(q, k, v, feature_map=fm, kv_valid=valid, chunk=CHUNK)
    out16 = run(q16, k16, v16)
    assert out16.dtype == jnp.bfloat16
    out32 = run(*(x.astype(jnp.float32) for x in (q16, k16, v16)))
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), rtol=0, atol=2e-2)
    np.testing.assert_allclose(np.asarray(out32), np.asarray(run(q, k, v)), rtol=0, atol=5e-2)
    grads = jax.grad(lambda *a: run(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q16, k16, v16)
    assert all(g.dtype == jnp.bfloat16 for g in grads)


@pytest.mark.parametrize("chunk", [0, 24])
def test_chunk_must_be_a_power_of_two(chunk):
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="power of two"):
        linear_attention_pallas(q, k, v, feature_map=jax.nn.relu, chunk=chunk)


@pytest.mark.parametrize("splits", [2, 3, 8])
def test_split_reductions_give_the_same_result(splits):
    # Lengths 37 and 20 with chunks of 16: 3 and 2 chunks, so 2 and 3 splits pad the sequence to whole runs of
    # chunks, and 8 is cut down to one split per chunk.
    q, k, v, valid = inputs(lq=20, lk=37, d=8, dv=12, masked=True)
    fm = kernels.FEATURE_MAPS["elu1"]
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((*q.shape[:3], v.shape[-1])), jnp.float32)
    one, one_grads = value_and_grads(
        lambda q, k, v: linear_attention_pallas(q, k, v, feature_map=fm, kv_valid=valid, chunk=CHUNK, splits=1),
        q, k, v, cot)
    many, many_grads = value_and_grads(
        lambda q, k, v: linear_attention_pallas(q, k, v, feature_map=fm, kv_valid=valid, chunk=CHUNK, splits=splits),
        q, k, v, cot)
    np.testing.assert_allclose(np.asarray(many), np.asarray(one), **F32)
    for name, a, b in zip("qkv", many_grads, one_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD, err_msg=f"d{name}")


def test_splits_set_the_reduction_grids():
    # Correct values alone would not show that the reductions were split: read the grids off the jaxpr.
    q, k, v, _ = inputs(b=1, lq=37, lk=64, h=2)  # 3 query chunks of 16, 4 key chunks

    def loss(q, k, v, splits):
        return linear_attention_pallas(q, k, v, feature_map=jax.nn.relu, chunk=CHUNK, splits=splits).sum()

    grad = lambda splits: jax.grad(lambda q, k, v: loss(q, k, v, splits), argnums=(0, 1, 2))  # noqa: E731
    # grids are (batch*heads, splits) for the reductions, (batch*heads, chunks) for the per-chunk kernels
    assert pallas_grids(grad(1), q, k, v) == {"linear_attention_key_state": (2, 1), "linear_attention_readout": (2, 3),
                                        "linear_attention_query_grads": (2, 1), "linear_attention_key_grads": (2, 4)}
    # 2 splits: the 3 query chunks are padded to 4, so the readout runs 4 chunk programs
    assert pallas_grids(grad(2), q, k, v) == {"linear_attention_key_state": (2, 2), "linear_attention_readout": (2, 4),
                                        "linear_attention_query_grads": (2, 2), "linear_attention_key_grads": (2, 4)}
    assert pallas_grids(grad(None), q, k, v)["linear_attention_key_state"] == (2, 1)  # interpret mode: 1 by default


def test_default_splits_fill_a_gpu():
    from kernels.linear_pallas import _splits_for

    assert _splits_for(None, 8, 128, interpret=True) == 1
    assert _splits_for(None, 8, 128, interpret=False) == 32      # 8 x 32 = 256 programs
    assert _splits_for(None, 8, 4, interpret=False) == 4         # at most one per chunk
    assert _splits_for(None, 512, 128, interpret=False) == 1     # a big batch fills the card already
    assert _splits_for(3, 8, 2, interpret=True) == 2


@pytest.mark.parametrize("splits", [0, -1, 1.5])
def test_splits_must_be_a_positive_integer(splits):
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="splits must be a positive integer"):
        linear_attention_pallas(q, k, v, feature_map=jax.nn.relu, splits=splits)
