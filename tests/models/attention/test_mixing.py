"""Synthesizer, MLP-Mixer token mixing and FNet: references, masking, padding, gradients, parameter counts."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from models import count_params
from models.attention import REGISTRY, build
from models.attention.full import FullAttention
from models.attention.mixing import FNetMixing, MixerTokenMixing, SynthesizerAttention

F32 = dict(rtol=2e-5, atol=2e-6)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)
DIM, HEADS, MAX_LEN = 16, 2, 24
CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs" / "attention"
SYNTH_OPTIONS = [dict(mode="random"), dict(mode="random", mix_with_dot_product=False),
                 dict(mode="factorized_random", rank=3),
                 dict(mode="factorized_random", rank=3, mix_with_dot_product=False),
                 dict(mode="dense", hidden=5), dict(mode="dense", mix_with_dot_product=False),
                 dict(mode="random", trainable_random=False)]


def inputs(b=3, length=12, seed=0, lengths=None):
    rng = np.random.default_rng(seed)
    b = b if lengths is None else len(lengths)
    x = jnp.asarray(rng.standard_normal((b, length, DIM)), jnp.float32)
    lengths = rng.integers(1, length + 1, b) if lengths is None else np.asarray(lengths)
    return x, jnp.asarray(np.arange(length)[None] < lengths[:, None])


def synth(seed=0, **options):
    return SynthesizerAttention(dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(seed), **options)


def np_params(module):
    return {"/".join(map(str, path)): np.asarray(v[...], np.float64)
            for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def synth_reference(module, x, valid):
    """float64 numpy forward of the synthesizer, straight from the formulas in its docstring."""
    p, x = np_params(module), np.asarray(x, np.float64)
    b, length, _ = x.shape
    h, dh, qd = module.num_heads, module.head_dim, module.qkv_dim
    qkv = x @ p["qkv/kernel"] + p["qkv/bias"]
    q, k, v = (qkv[..., i * qd:(i + 1) * qd].reshape(b, length, h, dh) for i in range(3))
    if module.mode == "random":
        logits = np.broadcast_to(p["random_logits"][None, :, :length, :length], (b, h, length, length))
    elif module.mode == "factorized_random":
        a, bb = p["factor_a"][:, :length], p["factor_b"][:, :length]
        logits = np.broadcast_to(np.einsum("hqr,hkr->hqk", a, bb)[None], (b, h, length, length))
    else:
        hid = np.maximum(x @ p["dense_in/kernel"] + p["dense_in/bias"], 0.0).reshape(b, length, h, -1)
        logits = np.einsum("bqhf,hfk->bhqk", hid, p["dense_out"][:, :, :length])
        logits = logits + p["dense_out_bias"][None, :, None, :length]
    if module.mix_with_dot_product:
        logits = logits + np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
    valid = np.asarray(valid)[:, None, None, :]
    logits = np.where(valid, logits, -np.inf)
    m = logits.max(-1, keepdims=True)
    e = np.where(valid, np.exp(logits - np.where(np.isfinite(m), m, 0.0)), 0.0)
    denom = e.sum(-1, keepdims=True)
    w = e / np.where(denom > 0, denom, 1.0)
    y = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, length, qd)
    return y @ p["out/kernel"] + p["out/bias"]


def input_grad(module, x, valid, cot):
    """d/dx sum(module(x, valid) * cot), jitted (eager autodiff compiles every op separately: slow on CPU)."""
    graphdef, state = nnx.split(module)
    return jax.jit(jax.grad(lambda x, s: (nnx.merge(graphdef, s)(x, valid) * cot).sum()))(x, state)


def randomise(module, seed=1):
    """Replace every synthetic parameter (zero-initialised biases included) with N(0, 1) values."""
    rng = np.random.default_rng(seed)
    for name in ("random_logits", "factor_a", "factor_b", "dense_out", "dense_out_bias"):
        if hasattr(module, name):
            param = getattr(module, name)
            param[...] = jnp.asarray(rng.standard_normal(param.shape), jnp.float32)
    return module


# ---------------------------------------------------------------------------------------------- synthesizer


def test_random_zero_logits_with_dot_product_is_full_attention():
    x, valid = inputs(seed=2, lengths=[12, 5, 1])
    ours = synth(seed=7, mode="random", mix_with_dot_product=True)
    ours.random_logits[...] = jnp.zeros_like(ours.random_logits[...])
    full = FullAttention(dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(7))
    np.testing.assert_allclose(np.asarray(ours(x, valid)), np.asarray(full(x, valid)), **F32)
    cot = jnp.asarray(np.random.default_rng(3).standard_normal(x.shape), jnp.float32)
    g_ours, g_full = (input_grad(module, x, valid, cot) for module in (ours, full))
    np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_full), **F32_GRAD)
    # a nonzero random table must change the output (the comparison above can fail)
    randomise(ours)
    assert not np.allclose(np.asarray(ours(x, valid)), np.asarray(full(x, valid)), **F32)


@pytest.mark.parametrize("options", SYNTH_OPTIONS, ids=str)
def test_synthesizer_matches_float64_reference(options):
    module = randomise(synth(**options))
    x, valid = inputs(seed=4, lengths=[12, 7, 1, 0])  # an all-padding example: no real key, zero attention output
    y = module(x, valid)
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), synth_reference(module, x, valid), **F32)


@pytest.mark.parametrize("options", SYNTH_OPTIONS[:6], ids=str)
def test_synthesizer_padded_keys_get_exactly_zero_weight(options):
    module = randomise(synth(**options))
    x, valid = inputs(seed=5, lengths=[12, 6, 3])
    garbage = jnp.where(valid[..., None], x, 1e3 * jnp.ones_like(x))
    a, b = np.asarray(module(x, valid)), np.asarray(module(garbage, valid))
    real = np.asarray(valid)
    np.testing.assert_array_equal(a[real], b[real])
    # without the mask the padded keys would matter
    c = np.asarray(module(garbage, jnp.ones_like(valid)))
    assert not np.allclose(a[real], c[real], **F32)


@pytest.mark.parametrize("options", SYNTH_OPTIONS[:6], ids=str)
def test_synthesizer_padding_invariant(options):
    assert SynthesizerAttention.padding_invariant
    module = randomise(synth(**options))
    x, valid = inputs(seed=6, length=10, lengths=[10, 4])
    y = np.asarray(module(x, valid))
    xp, vp = jnp.pad(x, ((0, 0), (0, 9), (0, 0)), constant_values=5.0), jnp.pad(valid, ((0, 0), (0, 9)))
    yp = np.asarray(module(xp, vp))
    real = np.asarray(valid)
    np.testing.assert_allclose(yp[:, :10][real], y[real], **F32)


def test_synthetic_alone_reads_only_the_value_projection():
    module = synth(mode="random", mix_with_dot_product=False)
    x, valid = inputs(seed=8)
    before = np.asarray(module(x, valid))
    kernel = np.asarray(module.qkv.kernel[...]).copy()
    kernel[:, :2 * module.qkv_dim] = np.random.default_rng(0).standard_normal((DIM, 2 * module.qkv_dim))
    module.qkv.kernel[...] = jnp.asarray(kernel)
    np.testing.assert_array_equal(np.asarray(module(x, valid)), before)
    kernel[:, 2 * module.qkv_dim:] += 1.0  # the v columns do matter
    module.qkv.kernel[...] = jnp.asarray(kernel)
    assert not np.allclose(np.asarray(module(x, valid)), before, **F32)


def test_synthesizer_shapes_and_parameter_counts():
    full = count_params(FullAttention(dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0)))
    random = synth(mode="random")
    assert random.random_logits.shape == (HEADS, MAX_LEN, MAX_LEN)
    assert count_params(random) == full + HEADS * MAX_LEN * MAX_LEN
    factorized = synth(mode="factorized_random", rank=4)
    assert factorized.factor_a.shape == factorized.factor_b.shape == (HEADS, MAX_LEN, 4)
    assert count_params(factorized) == full + 2 * HEADS * MAX_LEN * 4
    dense = synth(mode="dense")  # hidden defaults to head_dim
    hid = DIM // HEADS
    assert dense.dense_out.shape == (HEADS, hid, MAX_LEN)
    assert count_params(dense) == full + (DIM * HEADS * hid + HEADS * hid) + HEADS * hid * MAX_LEN + HEADS * MAX_LEN
    x, valid = inputs(length=9)
    for module in (random, factorized, dense):
        assert module.synthetic_logits(x).shape[1:] == (HEADS, 9, 9)
        assert module(x, valid).shape == x.shape


def test_fixed_random_gets_no_gradient_and_trainable_does():
    x, valid = inputs(seed=9)
    for trainable in (True, False):
        module = synth(mode="random", trainable_random=trainable)
        graphdef, params = nnx.split(module, nnx.Param)
        grads = jax.jit(jax.grad(lambda p, g=graphdef: (nnx.merge(g, p)(x, valid) ** 2).sum()))(params)
        g = np.asarray(grads["random_logits"][...])
        assert np.any(g != 0) == trainable
        assert np.any(np.asarray(grads["qkv"]["kernel"][...]) != 0)


def test_synthesizer_dropout():
    module = randomise(synth(mode="factorized_random", dropout=0.3))
    x, valid = inputs(seed=10)
    a, b = module(x, valid), module(x, valid)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = module(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=1))
    d = module(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=1))
    e = module(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(d))
    assert not np.allclose(np.asarray(c), np.asarray(a)) and not np.allclose(np.asarray(c), np.asarray(e))
    with pytest.raises(ValueError, match="rngs"):
        module(x, valid, deterministic=False)


def test_synthesizer_rejects_bad_options_and_lengths():
    with pytest.raises(ValueError, match="mode"):
        synth(mode="dense+random")
    with pytest.raises(ValueError, match="rank"):
        synth(mode="factorized_random", rank=0)
    with pytest.raises(NotImplementedError, match="pallas"):
        synth(impl="pallas")
    with pytest.raises(ValueError, match="max_len"):
        synth()(jnp.zeros((1, MAX_LEN + 1, DIM)))


# ---------------------------------------------------------------------------------------------- mixer


def mixer(seed=0, hidden=6):
    return MixerTokenMixing(dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(seed), hidden=hidden)


def mixer_reference(module, x, valid):
    p, length = np_params(module), x.shape[1]
    x0 = np.where(np.asarray(valid)[..., None], np.asarray(x, np.float64), 0.0)
    pre = np.einsum("bjc,jf->bfc", x0, p["token_in"][:length]) + p["token_in_bias"][None, :, None]
    hid = 0.5 * pre * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (pre + 0.044715 * pre ** 3)))  # jax.nn.gelu (tanh)
    return np.einsum("bfc,fi->bic", hid, p["token_out"][:, :length]) + p["token_out_bias"][None, :length, None]


def test_mixer_matches_einsum_reference():
    module = mixer()
    rng = np.random.default_rng(0)
    for name in ("token_in_bias", "token_out_bias"):  # nonzero biases so the test sees their slicing
        getattr(module, name)[...] = jnp.asarray(rng.standard_normal(getattr(module, name).shape), jnp.float32)
    x, valid = inputs(seed=11, lengths=[12, 7, 2])
    y = module(x, valid)
    assert y.shape == x.shape
    np.testing.assert_allclose(np.asarray(y), mixer_reference(module, x, valid), **F32)
    # padded tokens are zeroed first: their values are irrelevant everywhere
    garbage = jnp.where(valid[..., None], x, 7.0)
    np.testing.assert_array_equal(np.asarray(module(garbage, valid)), np.asarray(y))
    # and the mixing really crosses tokens: changing token 0 changes position 1's output
    assert not np.allclose(np.asarray(module(x.at[:, 0].add(1.0), None))[:, 1], np.asarray(module(x, None))[:, 1])


def test_mixer_padding_invariant_and_parameters():
    assert MixerTokenMixing.padding_invariant and MixerTokenMixing.complexity == "linear"
    module = mixer()
    module.token_out_bias[...] = jnp.arange(MAX_LEN, dtype=jnp.float32)
    x, valid = inputs(seed=12, length=10, lengths=[10, 3])
    y = np.asarray(module(x, valid))
    yp = np.asarray(module(jnp.pad(x, ((0, 0), (0, 8), (0, 0)), constant_values=3.0), jnp.pad(valid, ((0, 0), (0, 8)))))
    real = np.asarray(valid)
    np.testing.assert_allclose(yp[:, :10][real], y[real], **F32)
    # no q/k/v/out projections: only the token MLP
    assert not hasattr(module, "qkv") and not hasattr(module, "out")
    assert count_params(module) == 2 * MAX_LEN * 6 + 6 + MAX_LEN
    assert module.dim == DIM and module.num_heads == HEADS and module.qkv_dim == DIM


# ---------------------------------------------------------------------------------------------- fnet


def fnet():
    return FNetMixing(dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0))


def test_fnet_equals_numpy_fft2():
    module = fnet()
    x, valid = inputs(seed=13, lengths=[12, 6, 1])
    y = module(x, valid)
    assert y.shape == x.shape and y.dtype == jnp.float32
    x0 = np.where(np.asarray(valid)[..., None], np.asarray(x, np.float64), 0.0)
    np.testing.assert_allclose(np.asarray(y), np.fft.fft2(x0, axes=(1, 2)).real, **F32)
    np.testing.assert_allclose(np.asarray(module(x)), np.fft.fft2(np.asarray(x, np.float64), axes=(1, 2)).real,
                               **F32)
    garbage = jnp.where(valid[..., None], x, -4.0)
    np.testing.assert_array_equal(np.asarray(module(garbage, valid)), np.asarray(y))
    assert count_params(module) == 0 and not hasattr(module, "qkv") and not hasattr(module, "out")


def test_fnet_is_honestly_not_padding_invariant():
    assert not FNetMixing.padding_invariant and FNetMixing.complexity == "n log n"
    module = fnet()
    x, valid = inputs(seed=14, length=8, lengths=[8, 8])
    y = np.asarray(module(x, valid))
    yp = np.asarray(module(jnp.pad(x, ((0, 0), (0, 4), (0, 0))), jnp.pad(valid, ((0, 0), (0, 4)))))
    assert not np.allclose(yp[:, :8], y, **F32)


def test_fnet_bfloat16_input():
    x, _ = inputs(seed=15)
    y = fnet()(x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.fft.fft2(np.asarray(x.astype(jnp.bfloat16), np.float64),
                                                                      axes=(1, 2)).real, rtol=2e-2, atol=0.15)


# ---------------------------------------------------------------------------------------------- all of them


ALL = [("synthesizer", o) for o in SYNTH_OPTIONS] + [("mixer", dict(hidden=6)), ("fnet", {})]


@pytest.mark.parametrize("name,options", ALL, ids=str)
def test_finite_gradients(name, options):
    module = build(name, dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0), qkv_dim=DIM, dropout=0.1,
                   **options)
    x, valid = inputs(seed=16, lengths=[12, 4, 1])
    graphdef, params = nnx.split(module, nnx.Param)

    def loss(params, x):
        y = nnx.merge(graphdef, params)(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=0))
        return (jnp.where(valid[..., None], y, 0.0) ** 2).mean()

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    leaves = jax.tree.leaves(g_params) + [g_x]
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert np.any(np.asarray(g_x) != 0)


def test_configs_hold_lra_defaults_and_build():
    """The yaml files build, and their values are the constructor defaults (LRA's where LRA ran the variant)."""
    expected = {"synthesizer": dict(impl="xla", mode="random", mix_with_dot_product=True, rank=32, hidden=None,
                                    trainable_random=True),
                "mixer": dict(impl="xla", hidden=256), "fnet": dict(impl="xla")}
    for name, options in expected.items():
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert config.pop("name") == name and config == options
        module = build(name, dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0), qkv_dim=DIM, dropout=0.1,
                       **config)
        assert isinstance(module, REGISTRY[name]) and REGISTRY[name].__doc__
    module = build("synthesizer", dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0))
    assert module.mode == "random" and module.mix_with_dot_product and module.trainable_random
