"""What a researcher adding a variant meets: option types checked whatever the module's annotation style, the
options the harness passes to every variant named, the output's shape and dtype checked, a length multiple met
by the encoder's padding."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import Classifier, EncoderConfig
from models.attention import REGISTRY, AttentionOptionError, build, check_options

# A module written without ``from __future__ import annotations``: its annotations are types, not strings.
SOURCE = '''
import jax.numpy as jnp
from flax import nnx
from models.attention.base import AttentionBase, register
from models.attention.full import FullAttention


@register("{name}")
class Variant(FullAttention):
    """A test variant: full attention with an integer option and switches for its mistakes."""

    length_multiple = {multiple}

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", window: int = 3, scale: float | None = None,
                 mistake: str | None = None):
        super().__init__(dim=dim, num_heads=num_heads, max_len=max_len, rngs=rngs, qkv_dim=qkv_dim, dropout=dropout)
        self.mistake = mistake
        self.seen = []

    def __call__(self, x, valid=None, deterministic=True, rngs=None):
        self.seen.append(x.shape[1])
        assert x.shape[1] % self.length_multiple == 0, x.shape
        y = super().__call__(x, valid, deterministic, rngs)
        if self.mistake == "shape":
            return y[:, :1]
        if self.mistake == "float16":
            return y.astype(jnp.float16)
        return y
'''


@pytest.fixture
def variant():
    """Register a test variant from SOURCE (name, length multiple); unregistered afterwards."""
    names = []

    def make(name: str, multiple: int = 1):
        namespace = {}
        exec(compile(SOURCE.format(name=name, multiple=multiple), f"<{name}>", "exec"), namespace)
        names.append(name)
        return namespace["Variant"]

    yield make
    for name in names:
        REGISTRY.pop(name, None)


def test_option_types_are_checked_without_string_annotations(variant):
    variant("t_types")
    for key, value in (("window", "abc"), ("scale", "abc"), ("window", 2.5), ("mistake", 7)):
        with pytest.raises(AttentionOptionError, match=f"attention.{key} of t_types must be"):
            check_options("t_types", {key: value})
    check_options("t_types", {"window": 5, "scale": None, "mistake": None})


def test_the_options_the_harness_passes_are_named():
    from models.attention.full import FullAttention

    class NoQkv(FullAttention):
        def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs):
            super().__init__(dim=dim, num_heads=num_heads, max_len=max_len, rngs=rngs)

    REGISTRY["t_noqkv"] = NoQkv
    try:
        with pytest.raises(AttentionOptionError, match=r"\['dropout', 'qkv_dim'\].*passed to every variant by the "
                                                        r"harness, from model.qkv_dim"):
            check_options("t_noqkv", {"qkv_dim": 32, "dropout": 0.1})
    finally:
        REGISTRY.pop("t_noqkv")


@pytest.mark.parametrize("mistake", ["shape", "float16"])
def test_an_output_of_another_shape_or_a_narrower_dtype_is_refused(variant, mistake):
    variant("t_out")
    module = build("t_out", dim=16, num_heads=2, max_len=8, rngs=nnx.Rngs(0), mistake=mistake)
    with pytest.raises(ValueError, match="t_out|Variant returned shape .* must return x's shape"):
        module(jnp.ones((2, 8, 16)), jnp.ones((2, 8), bool))
    wider = build("t_out", dim=16, num_heads=2, max_len=8, rngs=nnx.Rngs(0))
    assert wider(jnp.ones((2, 8, 16), jnp.bfloat16)).dtype == jnp.float32   # float32 parameters: wider, allowed


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_encoder_pads_to_a_variants_length_multiple(variant, pooling):
    # max_length 20 (+1 with CLS) for a variant that needs multiples of 8: padded to 24 with invalid positions.
    variant("t_multiple", multiple=8)
    cfg = dict(vocab_size=16, num_classes=3, max_length=20, emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16,
               mlp_dim=16, pooling=pooling)
    model = Classifier(EncoderConfig(**cfg, attention="t_multiple"), nnx.Rngs(params=0))
    reference = Classifier(EncoderConfig(**cfg, attention="full"), nnx.Rngs(params=0))
    nnx.update(reference, nnx.state(model, nnx.Param))   # the same weights: the variant is full attention
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 16, (2, 20)), jnp.int32)
    valid = jnp.arange(20)[None] < jnp.array([[20], [13]])
    logits, _ = model(tokens, valid)
    assert all(n % 8 == 0 for n in model.encoder.blocks[0].attention.seen)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference(tokens, valid)[0]), rtol=2e-5, atol=2e-6)
