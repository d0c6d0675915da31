"""Sparse-pattern variants equal dense masked attention on their own projections (forward and gradients, padded
batches, lengths that are not block multiples), reduce to full attention when the pattern covers everything, keep
padding invariance where claimed, and never build an L x L array."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kernels
from kernels import masks
from models.attention import REGISTRY, build
from models.attention.full import FullAttention
from models.attention.sparse_patterns import FixedSparse

F32 = dict(rtol=2e-5, atol=2e-6)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)
DIM, HEADS = 16, 2


def make(name, num_heads=HEADS, rng_seed=0, **options):
    return build(name, dim=DIM, num_heads=num_heads, max_len=64, rngs=nnx.Rngs(rng_seed), qkv_dim=DIM, **options)


def inputs(length, lengths, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((len(lengths), length, DIM)), jnp.float32)
    valid = jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])
    return x, valid


def dense_reference(mask):
    """module, x, valid -> kernels.attention with the dense mask on the module's own q/k/v projections."""
    def attend(module, x, valid):
        q, k, v = module.project_qkv(x)
        length = x.shape[1]
        dense = mask(length) if callable(mask) else mask
        if isinstance(dense, masks.Mask):
            dense = dense.dense(length, length)
        return module.project_out(kernels.attention(q, k, v, mask=jnp.asarray(dense), kv_valid=valid))
    return attend


@pytest.fixture(autouse=True, scope="module")
def quick_compiles():
    """These tests compile many tiny programs: skip XLA's expensive passes (numerics and tolerances unchanged)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def values_and_grads(modules, attends, x, valid):
    """For each (module, attend): the output, and the gradients of a fixed projection of it with respect to the
    module's parameters and to x. One compiled program for all."""
    splits = [nnx.split(m, nnx.Param, ...) for m in modules]
    cot = jnp.asarray(np.random.default_rng(7).standard_normal(x.shape), jnp.float32)

    def run(params, x):
        results = []
        for (graphdef, _, rest), p, attend in zip(splits, params, attends):
            def loss(p, x, graphdef=graphdef, rest=rest, attend=attend):
                out = attend(nnx.merge(graphdef, p, rest), x, valid)
                return (out * cot).sum(), out
            (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x)
            results.append((out, grads))
        return results

    results = jax.jit(run)([p for _, p, _ in splits], x)
    return [(out, jax.tree.leaves(grads)) for out, grads in results]


def forward(module, x, valid):
    """module(x, valid), compiled once (eager dispatch compiles every small op separately: slower)."""
    graphdef, state = nnx.split(module)
    return np.asarray(jax.jit(lambda state, x, valid: nnx.merge(graphdef, state)(x, valid))(state, x, valid))


def call(module, x, valid):
    return module(x, valid)


def assert_same(ours, ref):
    (out_a, g_a), (out_b, g_b) = ours, ref
    np.testing.assert_allclose(np.asarray(out_a), np.asarray(out_b), **F32)
    assert len(g_a) == len(g_b)
    for a, b in zip(g_a, g_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD)


def assert_matches(module, reference, x, valid):
    assert_same(*values_and_grads([module, module], [call, reference], x, valid))


# (registry name, options, dense mask as a function of the length, length); lengths are not block multiples.
CASES = [
    ("local", dict(window=3, block=4), lambda n: masks.Local(3), 13),
    ("local", dict(window=5), lambda n: masks.Local(5), 21),                  # default block (8)
    ("block_local", dict(block=5), lambda n: masks.BlockLocal(5), 13),
    ("strided", dict(stride=3), lambda n: masks.Strided(3), 13),
    ("global", dict(n=2), lambda n: masks.Global(2), 13),
    ("longformer", dict(window=2, n=2, block=4), lambda n: masks.Local(2) | masks.Global(2), 13),
    ("longformer", dict(window=2, dilation=2, n=1, block=4),
     lambda n: (masks.Local(4) & masks.Strided(2)) | masks.Global(1), 14),
    ("sparse", dict(block=6, summary=2), lambda n: FixedSparse(6, 2), 15),     # gcd 2: blocks of 6
    ("sparse", dict(block=16, summary=8), lambda n: FixedSparse(16, 8), 37),   # gcd 8: blocks of 8
    ("bigbird", dict(block=3, num_random_blocks=2, seed=5), lambda n: masks.BigBird(3, 2, 5), 20),
]


@pytest.mark.parametrize("name,options,mask,length", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equals_dense_masked_attention(name, options, mask, length):
    module = make(name, **options)
    x, valid = inputs(length, [length, length - 5])
    assert_matches(module, dense_reference(mask), x, valid)


def test_masks_are_not_trivial():
    """The cases above would pass vacuously if a mask allowed everything: check they are really sparse."""
    for _, _, mask, length in CASES:
        dense = mask(length).dense(length, length)
        assert 0 < dense.mean() < 0.9


@pytest.mark.parametrize("name", ["global", "longformer"])
def test_learned_global_tokens(name):
    n, length = 2, 11
    options = dict(n=n, mode="learned") | (dict(window=1, block=4) if name == "longformer" else {})
    module = make(name, **options)
    pattern = masks.Global(n) if name == "global" else masks.Local(1) | masks.Global(n)

    def reference(m, x, valid):
        b = x.shape[0]
        tokens = jnp.broadcast_to(m.global_tokens[...][None], (b, n, DIM))
        x = jnp.concatenate([tokens, x], axis=1)
        valid = jnp.concatenate([jnp.ones((b, n), bool), valid], axis=1)
        return dense_reference(pattern)(m, x, valid)[:, n:]

    x, valid = inputs(length, [length, 4])
    assert_matches(module, reference, x, valid)
    # the learned tokens are parameters that receive gradient
    assert module.global_tokens.shape == (n, DIM)


def test_mixed_heads_equal_per_head_dense_masks():
    length = 17
    heads = ["local", "strided", {"name": "sparse", "block": 6, "summary": 2}, "global"]
    module = make("mixed_heads", num_heads=4, heads=heads, window=2, stride=3, n=1)
    per_head = np.stack([m.dense(length, length) for m in
                         (masks.Local(2), masks.Strided(3), FixedSparse(6, 2), masks.Global(1))])
    x, valid = inputs(length, [length, 9])
    assert_matches(module, dense_reference(per_head[None]), x, valid)
    assert module.complexity == "quadratic" and module.padding_invariant  # strided/sparse heads are quadratic


def test_mixed_heads_entries_cover_head_groups():
    """Two entries for four heads: heads 0-1 run the first pattern, heads 2-3 the second."""
    length = 12
    module = make("mixed_heads", num_heads=4, rng_seed=1, heads=["global", "local"], window=1, n=2)
    per_head = np.stack([masks.Global(2).dense(length, length)] * 2 + [masks.Local(1).dense(length, length)] * 2)
    x, valid = inputs(length, [length, 7])
    assert_matches(module, dense_reference(per_head[None]), x, valid)
    with pytest.raises(ValueError, match="divisor"):
        make("mixed_heads", num_heads=4, heads=["local"] * 3)
    with pytest.raises(ValueError, match="unknown pattern"):
        make("mixed_heads", heads=["nope", "local"])


def test_mixed_heads_learned_global_tokens():
    """mode='learned': n learned tokens lead the sequence every head sees; the global head treats them as global,
    the local head as ordinary leading positions; they are removed from the output and receive gradient."""
    n, length = 2, 12
    module = make("mixed_heads", num_heads=2, heads=["global", "local"], window=1, n=n, mode="learned")
    assert module.global_tokens.shape == (n, DIM)
    total = n + length
    per_head = np.stack([masks.Global(n).dense(total, total), masks.Local(1).dense(total, total)])[None]

    def reference(m, x, valid):
        b = x.shape[0]
        x = jnp.concatenate([jnp.broadcast_to(m.global_tokens[...][None], (b, n, DIM)), x], axis=1)
        valid = jnp.concatenate([jnp.ones((b, n), bool), valid], axis=1)
        return dense_reference(per_head)(m, x, valid)[:, n:]

    x, valid = inputs(length, [length, 5])
    assert_matches(module, reference, x, valid)
    with pytest.raises(ValueError, match="learned"):
        make("mixed_heads", heads=["local", "strided"], mode="learned")


# Patterns that cover every pair at this length equal FullAttention built with the same rngs (same parameters).
COVERING = [
    ("local", dict(window=20, block=4), 13),
    ("longformer", dict(window=20, n=1, block=4), 13),
    ("global", dict(n=13), 13),
    ("sparse", dict(block=6, summary=6), 15),
    ("bigbird", dict(block=8, num_random_blocks=1), 13),      # 2 blocks: both global
    ("bigbird", dict(block=3, num_random_blocks=5), 13),      # random blocks cover the rest
]


@pytest.mark.parametrize("name,options,length", COVERING, ids=[f"{c[0]}-{i}" for i, c in enumerate(COVERING)])
def test_covering_pattern_equals_full_attention(name, options, length):
    module = make(name, rng_seed=3, **options)
    full = FullAttention(dim=DIM, num_heads=HEADS, max_len=64, rngs=nnx.Rngs(3), qkv_dim=DIM)
    x, valid = inputs(length, [length, 6])
    assert_same(*values_and_grads([module, full], [call, call], x, valid))


PADDED = [("local", dict(window=3, block=4)), ("block_local", dict(block=5)), ("strided", dict(stride=3)),
          ("global", dict(n=2)), ("global", dict(n=2, mode="learned")), ("longformer", dict(window=2, n=1, block=4)),
          ("sparse", dict(block=16, summary=8)),
          ("mixed_heads", dict(heads=["local", "strided"], window=2, stride=3))]


@pytest.mark.parametrize("name,options", PADDED, ids=[f"{c[0]}-{i}" for i, c in enumerate(PADDED)])
def test_padding_invariance(name, options):
    module = make(name, **options)
    assert module.padding_invariant
    lengths = [13, 6, 10]
    x, valid = inputs(13, lengths)
    y = forward(module, x, valid)
    x_pad = jnp.pad(x, ((0, 0), (0, 11), (0, 0)), constant_values=5.0)
    valid_pad = jnp.pad(valid, ((0, 0), (0, 11)))
    y_pad = forward(module, x_pad, valid_pad)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(y_pad[row, :n], y[row, :n], **F32)


def test_bigbird_is_not_padding_invariant():
    """The flag is False for a reason: the last (global) block moves with the padded length."""
    assert not REGISTRY["bigbird"].padding_invariant
    module = make("bigbird", block=4, num_random_blocks=1)
    x, valid = inputs(16, [16, 10])
    y = forward(module, x, valid)
    y_pad = forward(module, jnp.pad(x, ((0, 0), (0, 16), (0, 0))), jnp.pad(valid, ((0, 0), (0, 16))))
    assert not np.allclose(y_pad[0, :16], y[0, :16], **F32)


def largest_intermediate(module, length):
    x = jax.ShapeDtypeStruct((1, length, DIM), jnp.float32)
    graphdef, state = nnx.split(module)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    sizes = [np.size(c) for c in jaxpr.consts]

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                sizes.append(int(np.prod(var.aval.shape)))
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jaxpr.jaxpr)
    return max(sizes)


@pytest.mark.parametrize("name,options", [("local", {}), ("block_local", {}), ("global", {}),
                                          ("global", dict(mode="learned")), ("longformer", dict(window=32)),
                                          ("bigbird", {}), ("mixed_heads", {})])
def test_no_length_squared_array(name, options):
    """At L=4096 (batch 1, 2 heads) no intermediate or constant of the forward reaches L x L / 2 elements."""
    length = 4096
    assert largest_intermediate(make(name, **options), length) < length * length // 2
    assert REGISTRY[name].complexity != "quadratic"


def test_quadratic_reference_detects_dense():
    """The check above can fail: full attention's logits are H x L x L."""
    assert largest_intermediate(make("full"), 256) >= 256 * 256


def test_dropout_keys_and_eval():
    module = make("longformer", window=2, n=1, block=4, dropout=0.3)
    x, valid = inputs(13, [13, 8])
    a = forward(module, x, valid)
    np.testing.assert_array_equal(forward(module, x, valid), a)
    graphdef, state = nnx.split(module)
    train = jax.jit(lambda state, key: nnx.merge(graphdef, state)(x, valid, deterministic=False,
                                                                   rngs=nnx.Rngs(dropout=key)))
    c, d, e = (np.asarray(train(state, jax.random.key(seed))) for seed in (1, 1, 2))
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(c, a) and not np.allclose(c, e)
    with pytest.raises(ValueError, match="rngs"):
        module(x, valid, deterministic=False)


def test_options_are_checked():
    with pytest.raises(ValueError):
        make("local", window=-1)
    with pytest.raises(ValueError):
        make("sparse", block=4, summary=5)
    with pytest.raises(ValueError, match="mode"):
        make("global", mode="middle")
    with pytest.raises(ValueError, match="impl must be"):
        make("local", impl="cuda")


def test_longformer_and_local_defaults_are_those_of_lras_runs():
    # LRA's runs: Longformer with a 512-key window and no global tokens; "Local Attention" = blocks of 50.
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[3] / "configs" / "attention"
    longformer = yaml.safe_load((root / "longformer.yaml").read_text())
    assert longformer["n"] == 0 and longformer["window"] == 256
    assert yaml.safe_load((root / "block_local.yaml").read_text())["block"] == 50
    built = build("longformer", dim=16, num_heads=2, max_len=64, rngs=nnx.Rngs(0))
    assert built.pattern.n == 0
    assert np.array_equal(built.pattern.mask().dense(600, 600), masks.Local(256).dense(600, 600))
