"""Reformer, Routing and Sinkhorn attention against dense references in the limits where they are exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kernels
from kernels import masks
from models.attention import build
from models.attention.clustering import (
    ReformerAttention,
    RoutingAttention,
    SinkhornAttention,
    lsh_buckets,
    reformer_keys,
    sinkhorn,
)
from models.attention.full import FullAttention

F32 = dict(rtol=2e-5, atol=2e-6)
F32_GRAD = dict(rtol=1e-4, atol=1e-5)
DIM, HEADS = 16, 2


def inputs(lengths, length, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((len(lengths), length, DIM)), jnp.float32)
    return x, jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])


def assert_close(a, b, tol=F32):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


def run(module, x, valid, **kwargs):
    """module(x, valid) under jit (one compile beats op-by-op dispatch on a busy CPU)."""
    return jax.jit(lambda x, valid: module(x, valid, **kwargs))(x, valid)


def assert_grads_close(f, g, x):
    """Input gradients of f and g (jitted: eager autodiff is slow on a shared CPU) under a random cotangent."""
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)
    grad = lambda fn: jax.jit(jax.grad(lambda x: (fn(x) * cot).sum()))(x)
    assert_close(grad(f), grad(g), F32_GRAD)


# ------------------------------------------------------------------------------------------------- Reformer


def reformer_reference(module, x, valid):
    """float64 numpy Reformer: dense softmax attention over the union of the keys each round's sort/chunk rule
    allows (every key counted once, however many rounds share it: what the duplicate correction guarantees)."""
    qk, _, v = module.project_qkv(x)
    k = reformer_keys(qk)
    buckets = np.asarray(lsh_buckets(qk, module.rotations(), module.num_buckets))   # [B, H, R, L]
    qk, k, v, valid = (np.asarray(a, np.float64) for a in (qk, k, v, valid))
    valid = valid.astype(bool)
    b, length, h, d = qk.shape
    c = module.chunk_size
    out = np.zeros((b, length, h, d))
    eye = np.eye(length, dtype=bool)
    for bi in range(b):
        for hi in range(h):
            union = np.zeros((length, length), bool)
            for r in range(module.num_hashes):
                bucket = np.where(valid[bi], buckets[bi, hi, r], module.num_buckets)
                order = np.lexsort((np.arange(length), bucket))
                rank = np.empty(length, int)
                rank[order] = np.arange(length)
                chunk = rank // c
                allowed = valid[bi][None, :] & ((chunk[None, :] == chunk[:, None])
                                                | (chunk[None, :] == chunk[:, None] - 1))
                allowed &= ~eye
                allowed |= eye & ~allowed.any(axis=1, keepdims=True)
                union |= allowed
            logits = np.where(union, qk[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(d), -np.inf)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[bi, :, hi] = (e / e.sum(1, keepdims=True)) @ v[bi, :, hi]
    return np.asarray(module.project_out(jnp.asarray(out, jnp.float32)))


def reformer(seed=0, **options):
    return ReformerAttention(dim=DIM, num_heads=HEADS, max_len=64, rngs=nnx.Rngs(seed), **options)


def test_reformer_one_bucket_equals_shared_qk_full_attention():
    """One bucket, one chunk covering the sequence: dense attention with q = qk, k = unit(qk), no self unless alone."""
    module = reformer(num_buckets=1, chunk_size=16, num_hashes=2)
    x, valid = inputs([13, 7, 1], 13)
    eye = jnp.eye(13, dtype=bool)
    others = valid[:, None, None, :] & ~eye
    allowed = others | (eye & ~others.any(axis=-1, keepdims=True))
    dense = lambda x: module.project_out(kernels.attention(module.project_qkv(x)[0], reformer_keys(
        module.project_qkv(x)[0]), module.project_qkv(x)[2], mask=allowed))
    y = jax.jit(lambda x: module(x, valid))(x)
    assert_close(y, jax.jit(dense)(x))
    assert np.abs(np.asarray(y)[2, 0]).sum() > 0  # the lone token attends to itself
    assert_grads_close(lambda x: module(x, valid), dense, x)


@pytest.mark.parametrize("options", [dict(num_buckets=1, chunk_size=4, num_hashes=1),
                                     dict(num_buckets=4, chunk_size=4, num_hashes=1),
                                     dict(num_buckets=6, chunk_size=3, num_hashes=3),
                                     dict(num_buckets=2, chunk_size=4, num_hashes=4)], ids=str)
def test_reformer_equals_sort_and_chunk_reference(options):
    module = reformer(seed=2, **options)
    x, valid = inputs([13, 9], 13, seed=3)
    assert_close(run(module, x, valid), reformer_reference(module, x, valid))


def test_reformer_padding_invariant_and_eval_deterministic():
    assert ReformerAttention.padding_invariant
    module = reformer(num_buckets=4, chunk_size=4, num_hashes=2)
    x, valid = inputs([13, 6], 13)
    y = np.asarray(run(module, x, valid))
    np.testing.assert_array_equal(np.asarray(run(module, x, valid)), y)
    x_pad = jnp.pad(x, ((0, 0), (0, 11), (0, 0)), constant_values=3.0)
    y_pad = np.asarray(run(module, x_pad, jnp.pad(valid, ((0, 0), (0, 11)))))
    for row, n in enumerate([13, 6]):
        assert_close(y_pad[row, :n], y[row, :n])


def test_reformer_hashing_matters_and_resampling_is_training_only():
    x, valid = inputs([13], 13)
    one = run(reformer(num_buckets=1, chunk_size=4), x, valid)
    many = run(reformer(num_buckets=4, chunk_size=4), x, valid)
    assert not np.allclose(np.asarray(one), np.asarray(many))
    module = reformer(num_buckets=4, chunk_size=4, resample_hashes=True)
    train = jax.jit(lambda key: module(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=key)))
    a, b = train(jax.random.key(0)), train(jax.random.key(1))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(run(module, x, valid)), np.asarray(run(module, x, valid)))


def test_reformer_rejects_odd_buckets():
    with pytest.raises(ValueError, match="num_buckets"):
        reformer(num_buckets=3)


# -------------------------------------------------------------------------------------------------- Routing


def test_routing_one_cluster_equals_full_attention():
    x, valid = inputs([11, 4], 11)
    module = RoutingAttention(dim=DIM, num_heads=HEADS, max_len=11, rngs=nnx.Rngs(5), num_clusters=1,
                              local_heads=0)
    full = FullAttention(dim=DIM, num_heads=HEADS, max_len=11, rngs=nnx.Rngs(5))
    assert_close(jax.jit(lambda x: module(x, valid))(x), jax.jit(lambda x: full(x, valid))(x))
    assert_grads_close(lambda x: module(x, valid), lambda x: full(x, valid), x)


def test_routing_equals_per_cluster_reference():
    """Several clusters: each centroid's top-w queries attend to its top-w keys; outputs averaged per query."""
    x, valid = inputs([14, 9], 14, seed=4)
    module = RoutingAttention(dim=DIM, num_heads=HEADS, max_len=14, rngs=nnx.Rngs(1), num_clusters=3,
                              local_heads=0)
    q, k, v = module.project_qkv(x)
    q_idx, k_idx, _, _ = (np.asarray(a) for a in module.route(q, k, valid))
    assert q_idx.shape == (2, HEADS, 3, 5)
    q, k, v, vm = (np.asarray(a, np.float64) for a in (q, k, v, valid))
    out, count = np.zeros(q.shape), np.zeros(q.shape[:3])
    for b in range(2):
        for h in range(HEADS):
            for c in range(3):
                qi, ki = q_idx[b, h, c], k_idx[b, h, c]
                assert vm[b, ki].sum() == min(5, vm[b].sum())  # real keys are taken before padding
                logits = q[b, qi, h] @ k[b, ki, h].T / np.sqrt(q.shape[-1])
                logits = np.where(vm[b, ki][None] > 0, logits, -np.inf)
                w = np.exp(logits - logits.max(1, keepdims=True))
                out[b, qi, h] += (w / w.sum(1, keepdims=True)) @ v[b, ki, h]
                count[b, qi, h] += 1
    ref = module.project_out(jnp.asarray(out / np.maximum(count, 1)[..., None], jnp.float32))
    assert_close(run(module, x, valid), ref)


def test_routing_local_heads_attend_to_their_window():
    """local_heads=1 of 2: head 0 is sliding-window attention, head 1 routes (one cluster: every key)."""
    x, valid = inputs([11, 6], 11, seed=2)
    module = RoutingAttention(dim=DIM, num_heads=HEADS, max_len=11, rngs=nnx.Rngs(3), num_clusters=1,
                              local_heads=1, local_window=2)
    assert module.centroids[...].shape[0] == HEADS - 1
    mask = jnp.stack([masks.Local(2).dense(11, 11), jnp.ones((11, 11), bool)])[None]     # [1, H, L, L]

    def dense(x):
        q, k, v = module.project_qkv(x)
        return module.project_out(kernels.attention(q, k, v, mask=mask, kv_valid=valid))

    assert_close(run(module, x, valid), jax.jit(dense)(x))
    assert_grads_close(lambda x: module(x, valid), dense, x)
    default = RoutingAttention(dim=DIM, num_heads=4, max_len=11, rngs=nnx.Rngs(3), window=8)
    assert (default.local_heads, default.local.window) == (2, 4)        # the paper's mix by default
    with pytest.raises(ValueError, match="local_heads"):
        RoutingAttention(dim=DIM, num_heads=HEADS, max_len=11, rngs=nnx.Rngs(3), local_heads=HEADS)


def test_routing_centroids_update_in_training_only():
    x, valid = inputs([12, 5], 12)
    module = RoutingAttention(dim=DIM, num_heads=HEADS, max_len=12, rngs=nnx.Rngs(0), num_clusters=1, decay=0.0,
                              local_heads=0)
    assert "centroids" not in nnx.state(module, nnx.Param)
    before = np.asarray(module.centroids[...])
    module(x, valid)
    np.testing.assert_array_equal(np.asarray(module.centroids[...]), before)
    q, k, _ = module.project_qkv(x)
    module(x, valid, deterministic=False)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    q, k, m = np.asarray(q), np.asarray(k), np.asarray(valid)
    expected = (unit(q)[m].sum(0) + unit(k)[m].sum(0)) / (2 * m.sum())   # [H, D]: mean of real unit q and k
    np.testing.assert_allclose(np.asarray(module.centroids[...])[:, 0], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- Sinkhorn


def forced_sort(monkeypatch, target):
    """Make the sorting network output a huge score on ``target`` (query block -> key block)."""
    def sort_logits(self, pooled):
        n = pooled.shape[1]
        scores = jnp.asarray(1e4 * np.eye(n)[np.asarray(target(n))], jnp.float32)
        return jnp.broadcast_to(scores, (pooled.shape[0], self.num_heads, n, n))
    monkeypatch.setattr(SinkhornAttention, "sort_logits", sort_logits)


def test_sinkhorn_identity_sort_equals_block_local(monkeypatch):
    forced_sort(monkeypatch, lambda n: np.arange(n))
    module = SinkhornAttention(dim=DIM, num_heads=HEADS, max_len=16, rngs=nnx.Rngs(0), block=4)
    x, valid = inputs([14, 5], 14)
    dense = lambda x: module.project_out(kernels.attention(*module.project_qkv(x), mask=masks.BlockLocal(4),
                                                           kv_valid=valid))
    assert_close(jax.jit(lambda x: module(x, valid))(x), jax.jit(dense)(x))
    assert_grads_close(lambda x: module(x, valid), dense, x)


def test_sinkhorn_hard_permutation_attends_to_sorted_block(monkeypatch):
    perm = lambda n: np.roll(np.arange(n), 1)   # query block i sees key block i - 1 (mod n)
    forced_sort(monkeypatch, perm)
    module = SinkhornAttention(dim=DIM, num_heads=HEADS, max_len=16, rngs=nnx.Rngs(0), block=4)
    x, valid = inputs([14, 10], 14)
    qb, kb = np.arange(14)[:, None] // 4, np.arange(14)[None, :] // 4
    mask = (qb == kb) | (perm(4)[qb] == kb)
    ref = module.project_out(kernels.attention(*module.project_qkv(x), mask=mask, kv_valid=valid))
    assert_close(run(module, x, valid), ref)


def test_sinkhorn_normalisation_is_doubly_stochastic():
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5, 5)), jnp.float32)
    p = np.asarray(sinkhorn(scores, 50))
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(p.sum(-2), 1.0, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- all


@pytest.mark.parametrize("name", ["reformer", "routing", "sinkhorn"])
def test_gradients_finite_and_eval_deterministic(name):
    module = build(name, dim=DIM, num_heads=HEADS, max_len=23, rngs=nnx.Rngs(0), dropout=0.1)
    x, valid = inputs([23, 9], 23)
    forward = jax.jit(lambda x: module(x, valid))
    y = np.asarray(forward(x))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    np.testing.assert_array_equal(np.asarray(forward(x)), y)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, x):  # a functional train step: non-Param state goes in and comes back out
        m = nnx.merge(graphdef, params, rest, copy=True)
        out = m(x, valid, deterministic=False, rngs=nnx.Rngs(dropout=0))
        return (out * jnp.sin(jnp.arange(out.size).reshape(out.shape))).sum(), nnx.state(m, nnx.Not(nnx.Param))

    grads, new_rest = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert np.any(np.asarray(grads[1]) != 0)
    if name == "routing":  # the EMA update leaves the step; nothing else has state
        assert np.all(np.isfinite(np.asarray(new_rest["centroids"][...])))
        assert not np.allclose(np.asarray(new_rest["centroids"][...]), np.asarray(rest["centroids"][...]))
    else:
        assert not jax.tree.leaves(new_rest)
