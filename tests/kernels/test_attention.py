"""kernels.attention and kernels.linear_attention against float64 references, forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import masks

# Fixed per dtype, never loosened: float32 kernels against float64 references.
F32 = dict(rtol=2e-5, atol=2e-6)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)
MASKS = [None, masks.Full(), masks.Local(2), masks.BlockLocal(4), masks.Strided(3), masks.Global(1),
         masks.BigBird(4, 1, 0), masks.Local(1) | masks.Global(2)]


def qkv(b=2, q_len=12, kv_len=12, h=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, q_len, h, d)), rng.standard_normal((b, kv_len, h, d)),
            rng.standard_normal((b, kv_len, h, d)))


def valid_of(b, kv_len, seed=1):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, kv_len + 1, b)
    return np.arange(kv_len)[None] < lengths[:, None]


def jnp_reference(q, k, v, allowed, scale):
    """The textbook formula in jnp (run in float64 for gradients): masked softmax, empty rows -> 0."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = jnp.where(allowed, logits, -jnp.inf)
    row_max = jnp.max(jnp.where(allowed, logits, -1e300), axis=-1, keepdims=True)
    e = jnp.where(allowed, jnp.exp(logits - jax.lax.stop_gradient(row_max)), 0.0)
    denom = e.sum(-1, keepdims=True)
    w = jnp.where(denom > 0, e / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v)


def allowed_array(mask, valid, b, h, q_len, kv_len):
    allowed = np.ones((b, h, q_len, kv_len), bool)
    if mask is not None:
        allowed &= mask.dense(q_len, kv_len)
    if valid is not None:
        allowed &= valid[:, None, None, :]
    return allowed


@pytest.mark.parametrize("mask", MASKS, ids=repr)
@pytest.mark.parametrize("padded", [False, True])
def test_forward_matches_float64(mask, padded):
    q, k, v = qkv()
    valid = valid_of(2, 12) if padded else None
    out = kernels.attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), mask=mask,
                            kv_valid=None if valid is None else jnp.asarray(valid))
    ref = kernels.reference_attention(q, k, v, mask=mask, kv_valid=valid)
    np.testing.assert_allclose(np.asarray(out), ref, **F32)


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_gradients_match_float64(mask):
    q, k, v = qkv(seed=2)
    valid = valid_of(2, 12, seed=3)
    allowed = allowed_array(mask, valid, 2, 2, 12, 12)
    cot = np.random.default_rng(4).standard_normal((2, 12, 2, 8))
    scale = 1 / np.sqrt(8)

    def loss32(q, k, v):
        return (kernels.attention(q, k, v, mask=mask, kv_valid=jnp.asarray(valid)) * cot).sum()

    grads32 = jax.grad(loss32, argnums=(0, 1, 2))(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)))
    with jax.enable_x64(True):
        grads64 = jax.grad(lambda q, k, v: (jnp_reference(q, k, v, allowed, scale) * cot).sum(),
                           argnums=(0, 1, 2))(*(jnp.asarray(x, jnp.float64) for x in (q, k, v)))
        grads64 = [np.asarray(g) for g in grads64]
    for g32, g64, name in zip(grads32, grads64, "qkv"):
        np.testing.assert_allclose(np.asarray(g32), g64, err_msg=f"d{name}", **F32_GRAD)


def test_query_without_allowed_key_returns_zeros():
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv())
    valid = np.ones((2, 12), bool)
    valid[1] = False  # the second example has no real key at all
    out = kernels.attention(q, k, v, kv_valid=jnp.asarray(valid))
    assert np.all(np.asarray(out[1]) == 0.0)
    assert np.all(np.isfinite(np.asarray(out)))
    # A mask row with no allowed key: Strided over a kv prefix shorter than the stride offset.
    mask = np.zeros((12, 12), bool)
    mask[:6, :6] = True
    out = kernels.attention(q, k, v, mask=mask)
    assert np.all(np.asarray(out[:, 6:]) == 0.0) and np.any(np.asarray(out[:, :6]) != 0.0)
    grads = jax.grad(lambda q: kernels.attention(q, k, v, kv_valid=jnp.asarray(valid)).sum())(q)
    assert np.all(np.isfinite(np.asarray(grads))) and np.all(np.asarray(grads[1]) == 0.0)


def test_padding_keys_do_not_matter():
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv())
    valid = jnp.asarray(np.arange(12)[None].repeat(2, 0) < 7)
    out = kernels.attention(q, k, v, kv_valid=valid)
    k2 = k.at[:, 7:].set(100.0)
    v2 = v.at[:, 7:].set(-50.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(kernels.attention(q, k2, v2, kv_valid=valid)))


def test_cross_lengths_and_scale():
    q, k, v = qkv(q_len=5, kv_len=9)
    out = kernels.attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), scale=0.3)
    np.testing.assert_allclose(np.asarray(out), kernels.reference_attention(q, k, v, scale=0.3), **F32)


def test_bad_arguments():
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv())
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.attention(q, k, v, impl="cuda")
    with pytest.raises(ValueError, match="impl='xla' for array masks"):
        kernels.attention(q, k, v, mask=np.ones((3, 3), bool), impl="pallas")
    with pytest.raises(ValueError, match="mask array"):
        kernels.attention(q, k, v, mask=np.ones((3, 3), bool))


def _misread_inputs():
    """(name, q, k, v, keyword arguments, error, message) of inputs a kernel would misread."""
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv(b=2, q_len=8, kv_len=8, h=2, d=4))
    wide = jnp.concatenate([k, k], axis=-1)
    valid = jnp.ones((2, 8), bool)
    shape = "expected q \\[batch, q_len, heads, head_dim\\]"
    return [
        ("int", q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32), {}, TypeError, "floating-point"),
        ("head_dim of k", q, wide, v, {}, ValueError, shape),
        ("batch of k", q, k[:1], v[:1], {}, ValueError, shape),
        ("heads of k", q, k[:, :, :1], v[:, :, :1], {}, ValueError, shape),
        ("rank 3", q[..., 0], k[..., 0], v[..., 0], {}, ValueError, "must be \\[batch, length, heads, head_dim\\]"),
        ("kv_valid batch", q, k, v, {"kv_valid": jnp.ones((3, 8), bool)}, ValueError, "kv_valid must be a bool"),
        ("kv_valid length", q, k, v, {"kv_valid": valid[:, :7]}, ValueError, "kv_valid must be a bool"),
        ("kv_valid int", q, k, v, {"kv_valid": valid.astype(jnp.int32)}, ValueError, "kv_valid must be a bool"),
        ("kv_valid list", q, k, v, {"kv_valid": [[True] * 8] * 2}, ValueError, "kv_valid must be a bool"),
        ("scale inf", q, k, v, {"scale": float("inf")}, ValueError, "scale must be finite"),
        ("scale array", q, k, v, {"scale": jnp.ones(2)}, ValueError, "scale must be a number"),
    ]


@pytest.mark.parametrize("impl", kernels.IMPLS)
def test_inputs_the_kernels_would_misread_are_refused(impl):
    # Each of these used to run: the Pallas kernel read out of bounds or dropped v's columns, XLA cast the scale
    # of integer inputs to 0; or they failed deep inside Pallas or an einsum.
    for _name, q, k, v, kwargs, error, message in _misread_inputs():
        with pytest.raises(error, match=message):
            kernels.attention(q, k, v, impl=impl, **kwargs)
        if "scale" not in kwargs:
            with pytest.raises(error, match=message):
                kernels.linear_attention(q, k, v, impl=impl, **kwargs)
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv(b=2, q_len=8, kv_len=8, h=2, d=4))
    with pytest.raises(ValueError, match="dropout_rate=0.5 needs dropout_rng"):   # used to skip dropout silently
        kernels.attention(q, k, v, impl=impl, dropout_rate=0.5)
    wide_v = jnp.concatenate([v, v], axis=-1)   # XLA attends with a wider v; the flash kernel would drop half
    if impl == "pallas":
        with pytest.raises(ValueError, match="v \\[batch, kv_len, heads, head_dim\\]"):
            kernels.attention(q, k, wide_v, impl=impl)
    else:
        assert kernels.attention(q, k, wide_v, impl=impl).shape == (2, 8, 2, 8)


def linear_reference(q, k, v, valid, fmap):
    fq, fk = fmap(q), fmap(k)
    if valid is not None:
        fk = fk * valid[:, :, None, None]
    scores = np.einsum("bqhf,bkhf->bhqk", fq, fk)  # the explicit quadratic formula
    num = np.einsum("bhqk,bkhd->bqhd", scores, v)
    den = scores.sum(-1).transpose(0, 2, 1)[..., None]
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def elu1_np(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


@pytest.mark.parametrize("feature_map,fmap", [("elu1", elu1_np), ("relu", lambda x: np.maximum(x, 0.0))])
@pytest.mark.parametrize("padded", [False, True])
def test_linear_attention_matches_quadratic_formula(feature_map, fmap, padded):
    q, k, v = qkv(q_len=10, kv_len=14, seed=5)
    valid = valid_of(2, 14, seed=6) if padded else None
    out = kernels.linear_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), feature_map=feature_map,
                                   kv_valid=None if valid is None else jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(out), linear_reference(q, k, v, valid, fmap), **F32)


def test_linear_attention_gradients_match_float64():
    q, k, v = qkv(q_len=10, kv_len=10, seed=7)
    valid = valid_of(2, 10, seed=8)
    cot = np.random.default_rng(9).standard_normal((2, 10, 2, 8))

    def explicit(q, k, v):
        fq, fk = jax.nn.elu(q) + 1, (jax.nn.elu(k) + 1) * valid[:, :, None, None]
        scores = jnp.einsum("bqhf,bkhf->bhqk", fq, fk)
        return jnp.einsum("bhqk,bkhd->bqhd", scores, v) / scores.sum(-1).transpose(0, 2, 1)[..., None]

    g32 = jax.grad(lambda q, k, v: (kernels.linear_attention(q, k, v, kv_valid=jnp.asarray(valid)) * cot).sum(),
                   argnums=(0, 1, 2))(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)))
    with jax.enable_x64(True):
        g64 = [np.asarray(g) for g in jax.grad(lambda q, k, v: (explicit(q, k, v) * cot).sum(), argnums=(0, 1, 2))(
            *(jnp.asarray(x, jnp.float64) for x in (q, k, v)))]
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(np.asarray(a), b, **F32_GRAD)


def test_linear_attention_no_valid_key_is_zero():
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv())
    valid = np.ones((2, 12), bool)
    valid[0] = False
    out = np.asarray(kernels.linear_attention(q, k, v, kv_valid=jnp.asarray(valid)))
    assert np.all(out[0] == 0.0) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="feature_map"):
        kernels.linear_attention(q, k, v, feature_map="cosh")


def test_dropout_rate_scale_and_keys():
    x = jnp.ones((400, 500), jnp.float32)
    y = np.asarray(kernels.dropout(x, 0.1, jax.random.key(0)))
    kept = y != 0
    assert abs(1.0 - kept.mean() - 0.1) < 0.004  # 200k Bernoulli(0.1) draws: 5 sigma is about 0.0034
    np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.006  # unbiased in expectation
    assert not np.array_equal(y, np.asarray(kernels.dropout(x, 0.1, jax.random.key(1))))
    np.testing.assert_array_equal(y, np.asarray(kernels.dropout(x, 0.1, jax.random.key(0))))
    assert kernels.dropout(x, 0.0, jax.random.key(0)) is x
    with pytest.raises(ValueError, match="dropout rate"):
        kernels.dropout(x, 1.0, jax.random.key(0))


def test_random_bits_quality():
    bits = np.asarray(kernels.random_bits(jax.random.key(3), (512, 512)))
    assert bits.dtype == np.uint32
    # every byte lane is uniform: chi-square over 256 buckets (df 255; 99.99% quantile about 360)
    for shift in (0, 8, 16, 24):
        counts = np.bincount(((bits >> shift) & 0xFF).ravel(), minlength=256)
        expected = bits.size / 256
        assert ((counts - expected) ** 2 / expected).sum() < 360, shift
    # neighbours along both axes and across keys are uncorrelated (n = 262k: 5 sigma is about 0.01)
    top = (bits >> 31).astype(np.float64)
    other = (np.asarray(kernels.random_bits(jax.random.key(4), (512, 512))) >> 31).astype(np.float64)
    for a, b in ((top[:, 1:], top[:, :-1]), (top[1:], top[:-1]), (top, other)):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
    # each bit is fair
    for bit in range(32):
        assert abs(((bits >> bit) & 1).mean() - 0.5) < 0.005, bit


def test_attention_dropout_forward_and_gradients():
    """With dropout, the hand-written backward equals autodiff of the plain formula with the same mask."""
    q, k, v = (jnp.asarray(x, jnp.float32) for x in qkv(seed=11))
    valid = jnp.asarray(valid_of(2, 12, seed=12))
    rng = jax.random.key(5)
    cot = jnp.asarray(np.random.default_rng(13).standard_normal((2, 12, 2, 8)), jnp.float32)

    def plain(q, k, v):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
        w = jax.nn.softmax(jnp.where(valid[:, None, None, :], logits, -jnp.inf), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", kernels.dropout(w, 0.3, rng), v)

    ours = kernels.attention(q, k, v, kv_valid=valid, dropout_rate=0.3, dropout_rng=rng)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain(q, k, v)), **F32)
    assert not np.allclose(np.asarray(ours), np.asarray(kernels.attention(q, k, v, kv_valid=valid)))
    g_ours = jax.grad(lambda *a: (kernels.attention(*a, kv_valid=valid, dropout_rate=0.3, dropout_rng=rng)
                                  * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    g_plain = jax.grad(lambda *a: (plain(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_ours, g_plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD)
