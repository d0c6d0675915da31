"""Kernel inputs: a traced scale, dropout masks beyond random_bits' counter, BigBird's element-wise pattern on a
subset of rows, and bool where a mask takes an integer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import masks

F32 = dict(rtol=2e-5, atol=2e-6)


def qkv(b=2, length=16, h=2, d=8, seed=0):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.normal(size=(b, length, h, d)), jnp.float32) for _ in range(3))


# ------------------------------------------------------------------------------------------ traced scale


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("mask", [None, masks.Local(3), masks.Strided(4)], ids=str)
def test_traced_scale_under_jit(impl, mask):
    # Used to raise a raw ConcretizationTypeError from float(scale).
    q, k, v = qkv()
    valid = jnp.asarray(np.arange(16)[None] < np.array([[16], [9]]))
    out = jax.jit(lambda s: kernels.attention(q, k, v, mask=mask, kv_valid=valid, scale=s, impl=impl))(0.5)
    want = kernels.reference_attention(q, k, v, mask=mask, kv_valid=valid, scale=0.5)
    np.testing.assert_allclose(np.asarray(out), want, **F32)
    static = kernels.attention(q, k, v, mask=mask, kv_valid=valid, scale=0.5, impl=impl)
    np.testing.assert_allclose(np.asarray(out), np.asarray(static), **F32)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_gradient_reaches_a_traced_scale(impl):
    q, k, v = qkv(seed=1)
    cot = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

    def loss(s, q):
        return (kernels.attention(q, k, v, scale=s, impl=impl) * cot).sum()

    d_scale, d_q = jax.grad(loss, argnums=(0, 1))(0.4, q)
    eps = 1e-3
    ref = lambda s: float((kernels.reference_attention(q, k, v, scale=s) * np.asarray(cot, np.float64)).sum())
    np.testing.assert_allclose(float(d_scale), (ref(0.4 + eps) - ref(0.4 - eps)) / (2 * eps), rtol=1e-3, atol=1e-4)
    # d/dq is the same whether the scale is static or traced.
    d_q_static = jax.grad(lambda q: (kernels.attention(q, k, v, scale=0.4, impl=impl) * cot).sum())(q)
    np.testing.assert_allclose(np.asarray(d_q), np.asarray(d_q_static), rtol=1e-4, atol=1e-5)


def test_static_scale_keeps_python_and_concrete_scales():
    q = jnp.ones((1, 2, 1, 16))
    assert kernels.static_scale(q, None) == (q, 0.25)
    assert kernels.static_scale(q, jnp.float32(0.5))[1] == 0.5
    assert kernels.static_scale(q, np.float64(2.0))[1] == 2.0


# ------------------------------------------------------------------------------- dropout beyond 2**32 bits


def test_random_bits_beyond_its_counter_says_what_to_do():
    with pytest.raises(ValueError) as err:
        kernels.random_bits(jax.random.key(0), (1, 4, 65537, 65537))
    message = str(err.value)
    for part in ("(1, 4, 65537, 65537)", "attention-dropout", "model.attention_dropout=0", "batch_size",
                 "does not form the L x L matrix"):
        assert part in message, (part, message)


def test_attention_refuses_a_dropout_mask_beyond_the_counter_before_any_work():
    q = jax.ShapeDtypeStruct((1, 65537, 4, 8), jnp.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"batch x heads x length\^2.*model\.attention_dropout=0"):
        jax.eval_shape(lambda q, k, v: kernels.attention(q, k, v, dropout_rate=0.1, dropout_rng=key), q, q, q)
    # the Pallas kernels count their in-kernel mask the same way: refused too, not repeated bits
    with pytest.raises(ValueError, match=r"batch x heads x length\^2.*model\.attention_dropout=0"):
        jax.eval_shape(lambda q, k, v: kernels.attention(q, k, v, dropout_rate=0.1, dropout_rng=key, impl="pallas"),
                       q, q, q)
    # without dropout the same shape is fine (nothing to draw)
    jax.eval_shape(lambda q, k, v: kernels.attention(q, k, v), q, q, q)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_a_dropout_rate_the_32_bit_mask_cannot_draw_is_refused(impl):
    # Below 1 but rounding to a keep threshold of 2**32: an OverflowError (xla) or ZeroDivisionError (pallas).
    q, key = jnp.ones((1, 16, 1, 8)), jax.random.key(0)
    with pytest.raises(ValueError, match=r"keeps less than one in 2\*\*32 elements.*at most 1 - 2\*\*-32"):
        kernels.attention(q, q, q, dropout_rate=1 - 1e-10, dropout_rng=key, impl=impl)
    out = kernels.attention(q, q, q, dropout_rate=1 - 2**-32, dropout_rng=key, impl=impl)   # the largest: drawn
    assert bool(jnp.isfinite(out).all())


def test_attention_dropout_at_the_largest_counter_is_still_drawn():
    q = jax.ShapeDtypeStruct((1, 65535, 1, 8), jnp.float32)   # 65535**2 < 2**32
    out = jax.eval_shape(lambda q: kernels.attention(q, q, q, dropout_rate=0.1, dropout_rng=jax.random.key(0)), q)
    assert out.shape == q.shape


def test_random_bits_unchanged_below_the_limit():
    key = jax.random.key(5)
    shape = (2, 3, 5, 7)
    s0, s1 = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
    index = jnp.arange(np.prod(shape), dtype=jnp.uint32).reshape(shape)
    np.testing.assert_array_equal(np.asarray(kernels.random_bits(key, shape)),
                                  np.asarray(kernels.hash_bits(index, jnp.uint32(s0), jnp.uint32(s1))))


# -------------------------------------------------------------------------------------- BigBird._allowed


@pytest.mark.parametrize("block,num_random,seed,length", [(4, 1, 0, 40), (3, 2, 5, 20), (8, 3, 1, 41),
                                                          (1, 2, 7, 9), (4, 0, 0, 13)])
def test_bigbird_allowed_agrees_with_dense_on_any_rows(block, num_random, seed, length):
    mask = masks.BigBird(block, num_random, seed)
    dense = mask.dense(length, length)
    j = np.arange(length)[None]
    for start, stop in [(8, 12), (0, 1), (length - 1, length), (2, length - 3), (0, length)]:
        start, stop = min(start, length - 1), max(min(stop, length), min(start, length - 1) + 1)
        np.testing.assert_array_equal(mask._allowed(np.arange(start, stop)[:, None], j), dense[start:stop],
                                      err_msg=f"rows {start}:{stop}")
    # element-wise, with the rows and keys in another order
    i = np.array([[5], [0], [length - 1]])
    np.testing.assert_array_equal(mask._allowed(i, j[:, ::-1]), dense[i[:, 0]][:, ::-1])


def test_bigbird_allowed_issue_example():
    mask = masks.BigBird(4, 1, 0)
    np.testing.assert_array_equal(mask._allowed(np.arange(8, 12)[:, None], np.arange(40)[None]),
                                  mask.dense(40, 40)[8:12])


def test_bigbird_inside_a_composite_mask_elementwise():
    # Union._allowed reaches BigBird._allowed: rows of the composite agree with its dense.
    mask = masks.BigBird(4, 1, 3) | masks.Local(1)
    dense = mask.dense(32, 32)
    np.testing.assert_array_equal(mask._allowed(np.arange(12, 20)[:, None], np.arange(32)[None]), dense[12:20])


# ---------------------------------------------------------------------------------------- bool for an int


@pytest.mark.parametrize("make", [lambda: masks.Strided(True), lambda: masks.Local(True), lambda: masks.Local(False),
                                  lambda: masks.BlockLocal(True), lambda: masks.Global(False),
                                  lambda: masks.BigBird(True), lambda: masks.BigBird(4, True),
                                  lambda: masks.BigBird(4, 1, False)])
def test_mask_constructors_refuse_bool(make):
    # Strided(True) used to be stride 1; the model options already refuse bool.
    with pytest.raises(ValueError, match="integer, got (True|False)"):
        make()


def test_mask_constructors_take_numpy_integers():
    assert masks.Strided(np.int64(2)).dense(4, 4)[0, 2]
    assert masks.BigBird(np.int32(2), np.int64(1), np.uint8(3)).dense(8, 8).any()
