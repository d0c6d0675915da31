"""Linear Transformer, Performer and Linformer: exact formulas, limits where they equal full attention, the
Performer's convergence to softmax attention, padding invariance, gradients and memory growth.

Module calls go through ``jax.jit`` (``call``/``grad_x``): one compile per test is much cheaper on CPU than
compiling every eager op."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kernels
from models.attention import build
from models.attention.low_rank import RandomFeatures, favor_features, orthogonal_gaussian, performer_attention

F32 = dict(rtol=2e-5, atol=2e-6)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)
DIM, HEADS, MAX_LEN = 16, 2, 24

VARIANTS = [("linear", {}), ("performer", {}), ("performer", {"kernel": "relu", "num_features": 16}),
            ("linformer", {}), ("linformer", {"share_kv": False, "k": 5}),
            ("linformer", {"reduction": "conv", "k": 6}), ("linformer", {"reduction": "conv", "share_kv": False})]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in VARIANTS]


def make(name, max_len=MAX_LEN, seed=0, **options):
    return build(name, dim=DIM, num_heads=HEADS, max_len=max_len, rngs=nnx.Rngs(seed), **options)


@functools.partial(jax.jit, static_argnums=0)
def _run(graphdef, state, x, valid, key):
    m = nnx.merge(graphdef, state)
    if key is None:
        return m(x, valid)
    return m(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=key))


def call(module, x, valid=None, key=None):
    """module(x, valid) under jit (cached per module structure and shapes); with ``key``, in training mode."""
    graphdef, state = nnx.split(module)
    return np.asarray(_run(graphdef, state, x, valid, key))


def grad_x(fn, x, seed=1):
    """Gradient of sum(fn(x) * cotangent) with respect to x, under jit."""
    cot = jnp.asarray(np.random.default_rng(seed).standard_normal(x.shape), jnp.float32)
    return np.asarray(jax.jit(jax.grad(lambda x: (fn(x) * cot).sum()))(x))


def inputs(lengths, length, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((len(lengths), length, DIM)), jnp.float32)
    valid = jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])
    return x, valid


def projected(module, x):
    """q, k, v [B, L, H, Dh] in float64 from the module's fused projection."""
    w = np.asarray(module.qkv.kernel[...], np.float64)
    bias = np.asarray(module.qkv.bias[...], np.float64)
    b, length = x.shape[:2]
    qkv = (np.asarray(x, np.float64) @ w + bias).reshape(b, length, 3, module.num_heads, module.head_dim)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def out_projection(module, y):
    b, length = y.shape[:2]
    return y.reshape(b, length, -1) @ np.asarray(module.out.kernel[...], np.float64) + np.asarray(module.out.bias[...])


def kernel_reference(fq, fk, v, valid):
    """The explicit quadratic formula sum_j f(q_i).f(k_j) v_j / sum_j f(q_i).f(k_j) over valid keys (float64)."""
    w = np.einsum("bqhf,bkhf->bhqk", fq, fk) * np.asarray(valid, bool)[:, None, None, :]
    return np.einsum("bhqk,bkhd->bqhd", w, v) / w.sum(-1).transpose(0, 2, 1)[..., None]


def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


def test_linear_equals_quadratic_formula_with_padding():
    module = make("linear")
    x, valid = inputs([12, 5], 12)
    q, k, v = projected(module, x)
    ref = out_projection(module, kernel_reference(elu1(q), elu1(k), v, valid))
    np.testing.assert_allclose(call(module, x, valid), ref, **F32)

    def dense(x):  # the same formula written densely in jnp, for the gradients
        q, k, v = module.project_qkv(x)
        fq, fk = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
        w = jnp.einsum("bqhf,bkhf->bhqk", fq, fk) * valid[:, None, None, :]
        return module.project_out(jnp.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v))

    np.testing.assert_allclose(grad_x(lambda x: module(x, valid), x), grad_x(dense, x), **F32_GRAD)


def test_orthogonal_random_features():
    w = np.asarray(orthogonal_gaussian(jax.random.key(0), 4096, 8), np.float64)
    assert w.shape == (4096, 8)
    for block in (w[:8], w[8:16]):  # rows within a block are orthogonal, with chi-distributed lengths
        gram = block @ block.T
        np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-4)
    norms = np.linalg.norm(w, axis=-1)
    assert abs(np.mean(norms**2) - 8.0) < 0.5 and np.std(norms) > 0.3  # chi(8): E|w|^2 = 8; not unit rows
    # directions are uniform (Haar blocks): the mean of sign-sensitive statistics is near zero
    assert np.abs((w / norms[:, None]).mean(0)).max() < 0.05


def test_favor_features_positive_and_finite():
    rng = np.random.default_rng(0)
    w = orthogonal_gaussian(jax.random.key(0), 256, 8)
    x = jnp.asarray(rng.standard_normal((2, 10, 2, 8)) * 20.0, jnp.float32)  # huge logits: stabiliser needed
    valid = jnp.asarray(np.arange(10)[None] < np.array([[10], [4]]))
    features = jax.jit(lambda x, w, valid: (favor_features(x, w, is_query=True),
                                            favor_features(x, w, is_query=False, valid=valid),
                                            favor_features(x, w, is_query=False)))
    for feats in features(x, w, valid):
        f = np.asarray(feats)
        assert f.shape == (2, 10, 2, 256) and np.all(np.isfinite(f)) and np.all(f > 0)


def test_performer_converges_to_softmax_attention():
    """Mean |FAVOR+ - softmax attention| on the same q/k/v (with padding), over 4 feature draws, shrinks like
    1/sqrt(m): about 4x per 16x features once m is past the variance's tail (small logits here). A bias (such as
    non-Haar orthogonal blocks, or a stabiliser that does not cancel) levels the error off and fails the ratios."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 16, 2, 8)), jnp.float32) for _ in range(3))
    q, k = 0.5 * q, 0.5 * k
    valid = jnp.asarray(np.arange(16)[None] < np.array([[16], [9]]))
    exact = np.asarray(kernels.attention(q, k, v, kv_valid=valid))
    keys = jax.random.split(jax.random.key(0), 4)

    @jax.jit
    def error(w):
        return jnp.abs(performer_attention(q, k, v, w, kv_valid=valid) - exact).mean()

    errors = {m: float(np.mean([error(orthogonal_gaussian(key, m, 8)) for key in keys])) for m in (16, 256, 4096)}
    assert errors[256] < 0.45 * errors[16], errors
    assert errors[4096] < 0.45 * errors[256], errors
    assert errors[4096] < 0.04 * np.abs(exact).mean(), errors


def test_performer_module_approximates_full_attention():
    """Same parameters as FullAttention (built from the same seed): the module's error drops with num_features."""
    x, valid = inputs([16, 9], 16, seed=3)
    full = make("full")
    exact = call(full, 0.5 * x, valid)
    errors = {}
    for m in (16, 4096):
        perf = make("performer", num_features=m)
        np.testing.assert_array_equal(np.asarray(full.qkv.kernel[...]), np.asarray(perf.qkv.kernel[...]))
        errors[m] = np.abs(call(perf, 0.5 * x, valid) - exact)[np.asarray(valid)].mean()
    assert errors[4096] < 0.25 * errors[16], errors
    assert errors[4096] < 0.03 * np.abs(exact).mean(), errors


def test_performer_features_are_fixed_and_not_trained():
    module = make("performer", num_features=16)
    assert isinstance(module.features, RandomFeatures) and not isinstance(module.features, nnx.Param)
    assert module.features[...].shape == (16, DIM // HEADS)
    assert all(leaf.shape != (16, DIM // HEADS) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
    np.testing.assert_array_equal(np.asarray(module.features[...]),
                                  np.asarray(make("performer", num_features=16).features[...]))


def test_performer_relu_kernel_equals_its_formula():
    module = make("performer", seed=2, kernel="relu", num_features=16)
    x, valid = inputs([10, 3], 10, seed=1)
    q, k, v = projected(module, x)
    w = np.asarray(module.features[...], np.float64)
    phi = lambda a: np.maximum(a @ w.T, 0.0) + 1e-3
    ref = out_projection(module, kernel_reference(phi(q), phi(k), v, valid))
    np.testing.assert_allclose(call(module, x, valid), ref, **F32)


@pytest.mark.parametrize("share_kv", [True, False])
def test_linformer_identity_projection_equals_full_attention(share_kv):
    length = 10
    full = make("full", max_len=length, seed=4)
    lin = make("linformer", max_len=length, seed=4, k=length, share_kv=share_kv)
    lin.proj_k[...] = jnp.eye(length)
    if not share_kv:
        lin.proj_v[...] = jnp.eye(length)
    x, _ = inputs([length, length], length, seed=5)
    np.testing.assert_allclose(call(lin, x), call(full, x), **F32)
    np.testing.assert_allclose(grad_x(lin, x), grad_x(full, x), **F32_GRAD)
    # a random projection is not the identity: the comparison can fail
    other = make("linformer", max_len=length, seed=4, k=length)
    assert not np.allclose(call(other, x), call(full, x), **F32)


def test_linformer_conv_stride_one_equals_full_attention_with_padding():
    """k = max_len gives stride 1; with unit weights each reduced key is its key, and padded ones are masked."""
    full = make("full", max_len=9, seed=6)
    lin = make("linformer", max_len=9, seed=6, k=9, reduction="conv")
    assert lin.stride == 1
    lin.proj_k[...] = jnp.ones_like(lin.proj_k[...])
    x, valid = inputs([9, 4, 1], 9, seed=6)
    np.testing.assert_allclose(call(lin, x, valid), call(full, x, valid), **F32)


def test_linformer_conv_reduction_shape_and_gradients():
    lin = make("linformer", max_len=50, reduction="conv", share_kv=False)
    assert lin.stride == 4 and lin.proj_k[...].shape == (4, HEADS, DIM // HEADS)
    x, valid = inputs([37, 20], 37, seed=7)
    _, k, _ = lin.project_qkv(x)
    assert lin._reduce(k, lin.proj_k[...]).shape == (2, 10, HEADS, DIM // HEADS)  # ceil(37 / 4) keys
    graphdef, params = nnx.split(lin, nnx.Param)
    y, grads = jax.jit(jax.value_and_grad(lambda p: (nnx.merge(graphdef, p)(x, valid) ** 2).sum()))(params)
    assert np.isfinite(float(y))
    for name in ("proj_k", "proj_v"):
        g = np.asarray(grads[name][...])
        assert np.all(np.isfinite(g)) and np.any(g != 0)


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_padding_invariance(name, options):
    module = make(name, seed=1, **options)
    assert module.padding_invariant
    x, valid = inputs([13, 6, 9], 13, seed=2)
    out = call(module, x, valid)
    garbage = jnp.asarray(np.random.default_rng(9).standard_normal((3, 11, DIM)) * 5.0, jnp.float32)
    padded_x = jnp.concatenate([jnp.where(valid[..., None], x, 3.0), garbage], axis=1)
    padded = call(module, padded_x, jnp.pad(valid, ((0, 0), (0, 11))))
    real = np.asarray(valid)
    np.testing.assert_allclose(padded[:, :13][real], out[real], **F32)


@pytest.mark.parametrize("name,options", [VARIANTS[i] for i in (0, 1, 3, 6)], ids=[IDS[i] for i in (0, 1, 3, 6)])
def test_gradients_finite_and_dropout(name, options):
    module = make(name, dropout=0.3, **options)
    x, valid = inputs([20, 3], 20, seed=4)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, key):
        m = nnx.merge(graphdef, params, rest)
        return (m(x * 4.0, valid, deterministic=False, rngs=nnx.Rngs(dropout=key)) ** 2).sum()

    leaves = jax.tree.leaves(jax.jit(jax.grad(loss))(params, jax.random.key(0)))
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    det = call(module, x, valid)
    a, b = call(module, x, valid, jax.random.key(1)), call(module, x, valid, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    if name == "linformer":  # attention-weight dropout; linear / performer have no weights to drop
        assert not np.allclose(a, det)
    else:
        np.testing.assert_allclose(a, det, **F32)


@pytest.mark.parametrize("name,options", [("linformer", {"reduction": "conv"}), ("performer", {"kernel": "relu"})])
def test_memory_grows_linearly(name, options):
    """Options other than the configs' (tests/models/test_attention_registry.py checks those)."""
    def temp_bytes(length):
        module = nnx.eval_shape(lambda: make(name, max_len=length, **options))
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        x = jax.ShapeDtypeStruct((1, length, DIM), jnp.float32)
        valid = jax.ShapeDtypeStruct((1, length), jnp.bool_)
        fn = jax.jit(jax.grad(lambda p, r, x, v: nnx.merge(graphdef, p, r)(x, v).sum()))
        analysis = fn.lower(params, rest, x, valid).compile().memory_analysis()
        return analysis.temp_size_in_bytes + analysis.output_size_in_bytes

    small, large = temp_bytes(512), temp_bytes(2048)
    assert large <= 5 * small, (small, large)


def test_bad_options():
    with pytest.raises(ValueError, match="kernel must be one of"):
        make("performer", kernel="softmax")
    with pytest.raises(ValueError, match="reduction must be one of"):
        make("linformer", reduction="pool")
    with pytest.raises(NotImplementedError, match="pallas"):
        make("linformer", impl="pallas")
    with pytest.raises(ValueError, match="impl must be"):
        make("linear", impl="cuda")
    with pytest.raises(ValueError, match="exceeds max_len"):
        make("linformer", max_len=8)(jnp.ones((1, 9, DIM)))
