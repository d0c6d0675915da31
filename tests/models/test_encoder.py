"""The NNX encoder classifier: shapes, parameter count, padding invariance, determinism, dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import Classifier, EncoderConfig, count_params
from models.attention import REGISTRY, build

SMALL = dict(vocab_size=16, num_classes=10, max_length=40, emb_dim=32, num_heads=2, num_layers=2, qkv_dim=32,
             mlp_dim=48)


def make(**overrides):
    cfg = EncoderConfig(**{**SMALL, **overrides})
    return Classifier(cfg, nnx.Rngs(params=0)), cfg


def tokens_and_valid(lengths, length, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.arange(length)[None] < np.asarray(lengths)[:, None]
    tokens = np.where(valid, rng.integers(1, 16, (len(lengths), length)), 0)
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)


def expected_params(cfg):
    d, m, qkv = cfg.emb_dim, cfg.mlp_dim, cfg.qkv_dim
    block = 2 * 2 * d + (d * 3 * qkv + 3 * qkv) + (qkv * d + d) + (d * m + m) + (m * d + d)
    total = cfg.vocab_size * d + cfg.num_layers * block + 2 * d + (d * m + m) + (m * cfg.num_classes + cfg.num_classes)
    total += d if cfg.pooling == "cls" else 0
    total += cfg.max_length * d if cfg.positions == "learned" else 0
    return total


@pytest.mark.parametrize("pooling", ["cls", "mean", "first"])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_shapes_and_parameter_count(pooling, positions):
    model, cfg = make(pooling=pooling, positions=positions)
    tokens, valid = tokens_and_valid([40, 17, 3], 40)
    logits, aux = model(tokens, valid)
    assert logits.shape == (3, 10) and aux["pooled"].shape == (3, 32)
    assert count_params(model) == expected_params(cfg)


@pytest.mark.parametrize("pooling", ["cls", "mean", "first"])
def test_padding_invariance(pooling):
    """Appending padding does not change the logits of real examples (positions are absolute)."""
    model, _ = make(pooling=pooling)
    tokens, valid = tokens_and_valid([11, 20, 7], 20)
    logits, _ = model(tokens, valid)
    padded_tokens = jnp.pad(tokens, ((0, 0), (0, 20)))
    padded_valid = jnp.pad(valid, ((0, 0), (0, 20)))
    padded_logits, _ = model(padded_tokens, padded_valid)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(padded_logits), rtol=2e-5, atol=2e-6)
    # and the padded tokens' values are irrelevant
    garbage = jnp.where(padded_valid, padded_tokens, 9)
    np.testing.assert_allclose(np.asarray(model(garbage, padded_valid)[0]), np.asarray(padded_logits),
                               rtol=2e-5, atol=2e-6)


def test_eval_deterministic_and_dropout_random():
    model, _ = make(dropout=0.3, attention_dropout=0.3)
    tokens, valid = tokens_and_valid([40, 30], 40)
    a, _ = model(tokens, valid, deterministic=True)
    b, _ = model(tokens, valid, deterministic=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c, _ = model(tokens, valid, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    d, _ = model(tokens, valid, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    e, _ = model(tokens, valid, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(2)))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(d))
    assert not np.allclose(np.asarray(c), np.asarray(a)) and not np.allclose(np.asarray(c), np.asarray(e))


def test_gradients_finite():
    model, _ = make()
    tokens, valid = tokens_and_valid([40, 5], 40)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens, valid, deterministic=False,
                                                rngs=nnx.Rngs(dropout=jax.random.key(0)))
        return jax.nn.log_softmax(logits)[:, 3].sum()

    grads = jax.grad(loss)(params)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(np.any(np.asarray(g) != 0) for g in leaves)


def test_too_long_input_and_bad_config():
    model, _ = make()
    tokens, valid = tokens_and_valid([41], 41)
    with pytest.raises(ValueError, match="exceeds the model's max_length"):
        model(tokens, valid)
    with pytest.raises(ValueError, match="model.qkv_dim .* divisible by model.num_heads"):
        EncoderConfig(**{**SMALL, "num_heads": 3})
    with pytest.raises(ValueError, match="model.pooling"):
        EncoderConfig(**{**SMALL, "pooling": "max"})
    with pytest.raises(ValueError, match="model.emb_dim must be a positive integer"):
        EncoderConfig(**{**SMALL, "emb_dim": -4})


def test_attention_registry_contract():
    for name, cls in REGISTRY.items():
        for flag in ("padding_invariant", "complexity", "length_multiple", "pallas"):
            assert hasattr(cls, flag), (name, flag)
    module = build("full", dim=16, num_heads=2, max_len=8, rngs=nnx.Rngs(0))
    assert module(jnp.ones((1, 8, 16))).shape == (1, 8, 16)
    with pytest.raises(ValueError, match="valid names: .*full"):
        build("nope", dim=16, num_heads=2, max_len=8, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="unknown options \\['window'\\]"):
        build("full", dim=16, num_heads=2, max_len=8, rngs=nnx.Rngs(0), window=3)


def test_full_attention_module_matches_kernel_reference():
    """The module is the projections around kernels.attention: check it against the float64 formula."""
    import kernels

    module = build("full", dim=16, num_heads=2, max_len=8, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 16)), jnp.float32)
    valid = jnp.asarray(np.arange(8)[None] < np.array([[8], [5]]))
    out = module(x, valid)
    xn = np.asarray(x, np.float64)
    w = np.asarray(module.qkv.kernel[...], np.float64)
    bias = np.asarray(module.qkv.bias[...], np.float64)
    qkv = (xn @ w + bias).reshape(2, 8, 3, 2, 8)
    y = kernels.reference_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], kv_valid=np.asarray(valid))
    ref = y.reshape(2, 8, 16) @ np.asarray(module.out.kernel[...], np.float64) + np.asarray(module.out.bias[...])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("pair,parts", [("paper", 4), ("concat", 2)])
def test_dual_encoder_pair_combination(pair, parts):
    """Pair tasks: one shared encoder reads each document separately (its own CLS); the head sees
    [X1, X2, X1*X2, X1-X2] (paper) or [X1, X2] (official code)."""
    model, cfg = make(pair=pair, num_classes=2)
    single, _ = make(num_classes=2)
    assert count_params(model) == count_params(single) + (parts - 1) * cfg.emb_dim * cfg.mlp_dim
    t1, v1 = tokens_and_valid([40, 9, 3], 40, seed=1)
    t2, v2 = tokens_and_valid([5, 40, 22], 40, seed=2)
    tokens, valid = jnp.stack([t1, t2], axis=1), jnp.stack([v1, v2], axis=1)
    logits, aux = model(tokens, valid)
    assert logits.shape == (3, 2) and aux["pooled"].shape == (3, 2, 32)
    # Each document is encoded on its own: the same as running the encoder on it alone.
    x1 = model.pool(*model.encoder(t1, v1))
    x2 = model.pool(*model.encoder(t2, v2))
    np.testing.assert_allclose(np.asarray(aux["pooled"][:, 0]), np.asarray(x1), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(aux["pooled"][:, 1]), np.asarray(x2), rtol=2e-5, atol=2e-6)
    expected = [x1, x2, x1 * x2, x1 - x2][:parts]
    np.testing.assert_allclose(np.asarray(aux["combined"]), np.asarray(jnp.concatenate(expected, -1)),
                               rtol=2e-5, atol=2e-6)
    # No cross attention: changing document 2 leaves X1 alone.
    _, aux2 = model(jnp.stack([t1, t2[::-1]], axis=1), jnp.stack([v1, v2[::-1]], axis=1))
    np.testing.assert_allclose(np.asarray(aux2["pooled"][:, 0]), np.asarray(x1), rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="pair"):
        model(t1, v1)
    with pytest.raises(ValueError, match="pair"):
        make(pair="sum")


def test_first_pooling_reads_the_first_token_as_the_official_dual_encoder():
    # LRA's code prepends no CLS vector to a Retrieval document: its "CLS" pooling reads the first byte's output.
    model, _ = make(pooling="first")
    assert not hasattr(model.encoder, "cls")
    tokens, valid = tokens_and_valid([40, 17, 3], 40)
    encoded, _ = model.encoder(tokens, valid)
    assert encoded.shape[1] == 40   # nothing prepended
    np.testing.assert_array_equal(np.asarray(model(tokens, valid)[1]["pooled"]), np.asarray(encoded[:, 0]))
