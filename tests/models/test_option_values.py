"""Attention options with bad values are refused when the module is built, with a message that names the option
and what it takes: a string for mixed_heads' heads list, NaN / inf / non-positive floats (a NaN passes `x <= 0`),
seeds that JAX cannot take, and bool where an integer is meant."""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from kernels import masks
from models.attention import REGISTRY, build
from models.attention.sparse_patterns import FixedSparse

DIM, HEADS, MAX_LEN = 16, 2, 64


def make(name, **options):
    return build(name, dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0), **options)


# ------------------------------------------------------------------------------------ mixed_heads: heads


@pytest.mark.parametrize("heads", ["local", "global", b"local", 5, {"name": "local"}])
def test_mixed_heads_refuses_heads_that_are_not_a_list(heads):
    # A string used to be read letter by letter: "heads has 5 entries; it must be num_heads (2) or a divisor".
    with pytest.raises(ValueError, match=r"attention\.heads must be a list of pattern names") as err:
        make("mixed_heads", heads=heads)
    message = str(err.value)
    assert "attention.heads=[local,global]" in message and "entries" not in message
    assert repr(heads) in message


@pytest.mark.parametrize("heads", [["local"], ("local", "global"), ["local", {"name": "global", "n": 2}]])
def test_mixed_heads_takes_lists_and_tuples(heads):
    module = make("mixed_heads", heads=heads)
    assert module(jnp.ones((1, 12, DIM))).shape == (1, 12, DIM)


def test_mixed_heads_takes_an_omegaconf_list():
    # What Hydra hands over for attention.heads=[local,global] (before to_container): a ListConfig.
    heads = OmegaConf.create({"heads": ["local", {"name": "global", "n": 1}]}).heads
    assert len(make("mixed_heads", heads=heads).head_patterns) == HEADS


# ------------------------------------------------------------------------------- floats: NaN, inf, range


BAD_RATES = [math.nan, math.inf, -math.inf, -0.1, 1.0, 1.5]


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("rate", BAD_RATES, ids=str)
def test_every_variant_refuses_a_bad_dropout_rate_when_built(name, rate):
    # linear, performer, linformer, reformer, routing and sinkhorn took any value: a NaN rate made
    # `dropout > 0.0` False, so training silently ran without dropout.
    with pytest.raises(ValueError, match="dropout"):
        make(name, dropout=rate)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_variant_takes_a_usual_dropout_rate(name):
    make(name, dropout=0.1)
    make(name, dropout=0)


@pytest.mark.parametrize("temperature", [math.nan, math.inf, 0.0, -1.0], ids=str)
def test_sinkhorn_refuses_a_non_finite_or_non_positive_temperature(temperature):
    # temperature=nan passed `temperature <= 0` and trained to "loss became 2.72 ... grad norm nan".
    with pytest.raises(ValueError, match=r"attention\.temperature must be a finite number > 0"):
        make("sinkhorn", temperature=temperature)


def test_sinkhorn_temperature_still_works():
    module = make("sinkhorn", temperature=0.5, block=4)
    assert module.temperature == 0.5
    assert bool(jnp.isfinite(module(jnp.ones((1, 12, DIM)))).all())


@pytest.mark.parametrize("decay", [math.nan, math.inf, -0.5, 1.0], ids=str)
def test_routing_refuses_a_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        make("routing", decay=decay)


# ------------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed", [10**25, 2**64, 2**63, 2**32, -1])
def test_reformer_refuses_a_hash_seed_out_of_range(seed):
    # 10**25 raised a raw OverflowError from jax.random.key; 2**32 and -1 silently repeated other seeds
    # (jax keeps the low 32 bits without jax_enable_x64).
    with pytest.raises(ValueError, match=r"attention\.hash_seed must be an integer in \[0, 2\*\*32 - 1\]"):
        make("reformer", hash_seed=seed)


def test_reformer_refuses_a_bool_hash_seed_built_directly():
    from models.attention.clustering import ReformerAttention

    with pytest.raises(ValueError, match="hash_seed"):
        ReformerAttention(dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0), hash_seed=True)


@pytest.mark.parametrize("seed", [0, 2**32 - 1, np.uint32(7)])
def test_reformer_takes_every_seed_in_range(seed):
    module = make("reformer", hash_seed=seed) if not isinstance(seed, np.integer) else \
        REGISTRY["reformer"](dim=DIM, num_heads=HEADS, max_len=MAX_LEN, rngs=nnx.Rngs(0), hash_seed=seed)
    assert module.hash_seed == int(seed)
    assert module(jnp.ones((1, 12, DIM))).shape == (1, 12, DIM)


def test_bigbird_takes_a_large_seed():
    # numpy's SeedSequence takes any non-negative integer, so BigBird's seed needs no upper bound.
    module = make("bigbird", block=4, num_random_blocks=1, seed=10**25)
    assert module(jnp.ones((1, 24, DIM))).shape == (1, 24, DIM)


@pytest.mark.parametrize("name,options", [("bigbird", dict(seed=-1)), ("mixed_heads", dict(heads=["bigbird"],
                                                                                            seed=-1))])
def test_bigbird_refuses_a_negative_seed(name, options):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make(name, **options)


# ---------------------------------------------------------------------------------------- bool for an int


@pytest.mark.parametrize("block,summary", [(True, 0), (4, True), (np.int64(4), False)])
def test_fixed_sparse_refuses_bool(block, summary):
    with pytest.raises(ValueError, match="must be"):
        FixedSparse(block, summary)


def test_fixed_sparse_takes_numpy_integers():
    assert FixedSparse(np.int64(4), np.int32(1)).dense(8, 8).any()


def test_bigbird_mask_behind_the_variant_refuses_bool_seed():
    with pytest.raises(ValueError, match="BigBird.seed"):
        masks.BigBird(4, 1, True)


@pytest.mark.parametrize("name, key", [("local", "window"), ("linformer", "k"), ("strided", "stride"),
                                       ("reformer", "chunk_size")])
def test_integer_options_beyond_64_bits_are_refused_by_name(name, key):
    from models.attention import AttentionOptionError, check_options

    with pytest.raises(AttentionOptionError, match=f"attention.{key} of {name} must fit in 64 bits"):
        check_options(name, {key: 10**25})
    check_options(name, {key: 2})


def test_mixed_heads_warns_of_a_shared_option_no_head_uses(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        build("mixed_heads", dim=16, num_heads=2, max_len=32, rngs=nnx.Rngs(0), heads=["local", "global"],
              stride=4, window=2)
    assert "attention.stride applies to none of the heads ['local', 'global'] (stride is used by strided)" \
        in caplog.text and "window" not in caplog.text
