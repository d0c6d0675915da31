"""Content-based sparse attention: tokens are grouped by what they contain, not where they are.

- ``reformer``: Kitaev, Kaiser and Levskaya (2020), "Reformer: The Efficient Transformer". Angular LSH buckets of
  a shared query/key projection, sort by (bucket, position), attend within chunks and one chunk back.
- ``routing``: Roy, Saffar, Vaswani and Grangier (2021), "Efficient Content-Based Sparse Attention with Routing
  Transformers". Online (EMA) k-means centroids route queries and keys; each centroid takes its w closest.
- ``sinkhorn``: Tay, Bahri, Yang, Metzler and Juan (2020), "Sparse Sinkhorn Attention". A sorting network scores
  block pairs; Sinkhorn normalisation makes a soft permutation of the key blocks; each query block attends to its
  own block and to its (softly) sorted block.

None of them builds an L x L array: Reformer works on [L, 2 x chunk] logits after an O(L log L) sort, Routing on
[clusters, w, w] = L x w logits, Sinkhorn on [L, 2 x block] logits plus a tiny [blocks, blocks] sort matrix.
"""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import errors, nnx

import kernels
from models.attention.base import AttentionBase, check_positive, check_rate, dense_init, register
from models.attention.sparse_patterns import LocalPattern

NEG = jnp.finfo(jnp.float32).min


def _check_impl(impl: str, name: str) -> None:
    if impl == "pallas":
        raise NotImplementedError(f"{name}: impl='pallas' is not implemented for this variant; use impl='xla'")
    if impl != "xla":
        raise ValueError(f"impl must be 'xla' or 'pallas', got {impl!r}")


def _pad_to(a, length: int, axis: int = 1, value=0):
    extra = length - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return jnp.pad(a, widths, constant_values=value)


def _unit(x, eps: float = 1e-6):
    """x / ||x|| along the last axis (computed in float32)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.maximum(jnp.sum(x32 * x32, axis=-1, keepdims=True), eps * eps))).astype(x.dtype)


def _masked_softmax(logits, allowed):
    """Softmax over the last axis restricted to ``allowed``; rows with nothing allowed give zeros."""
    logits = jnp.where(allowed, logits, NEG)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.where(allowed, e, 0.0)
    denom = e.sum(axis=-1, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


def _gather_rows(a, index):
    """a [..., L, D], index int [..., *S] (same leading dims) -> [..., *S, D] (rows of a at index)."""
    lead = a.shape[:-2]
    flat = index.reshape(*lead, -1)
    out = jnp.take_along_axis(a, flat[..., None], axis=-2)
    return out.reshape(*index.shape, a.shape[-1])


# --------------------------------------------------------------------------------------------------- Reformer


def reformer_keys(qk):
    """The Reformer's keys: the shared query/key projection normalised to unit length (paper, section 2.2)."""
    return _unit(qk)


def lsh_buckets(qk, rotations, num_buckets: int):
    """Angular LSH: qk [B, L, H, D], rotations [D, rounds, num_buckets // 2] -> int32 [B, H, rounds, L].

    bucket = argmax([xR, -xR]); with one bucket every token is in bucket 0.
    """
    b, length, h, _ = qk.shape
    rounds = rotations.shape[1]
    if num_buckets == 1:
        return jnp.zeros((b, h, rounds, length), jnp.int32)
    proj = jnp.einsum("blhd,drk->bhrlk", jax.lax.stop_gradient(qk).astype(jnp.float32), rotations)
    return jnp.argmax(jnp.concatenate([proj, -proj], axis=-1), axis=-1).astype(jnp.int32)


@register("reformer")
class ReformerAttention(AttentionBase):
    """Reformer LSH attention (Kitaev, Kaiser and Levskaya 2020, "Reformer: The Efficient Transformer").

    Queries and keys share one projection (the q slice of the fused projection; the k slice is unused) and keys
    are normalised to unit length. For each of ``num_hashes`` rounds, tokens are hashed into ``num_buckets``
    angular-LSH buckets with a random rotation, sorted by (bucket, position), cut into chunks of ``chunk_size``,
    and each chunk attends to itself and to the previous chunk (look-one-back; the first chunk has no previous
    chunk, so no wrap-around). A token does not attend to itself unless no other key is available; padded keys are
    masked. With several rounds, a key that shares a window with the query in m rounds has its logit lowered by
    log m in each (the paper's duplicate correction, section 2.3, counted exactly from every round's chunks), and
    the rounds are combined with weights softmax(logsumexp of each round's logits): the result is softmax
    attention over the union of the rounds' key sets, each key counted once.

    Padding tokens are hashed into an extra last bucket, so the real tokens' sorted order, chunks and windows do
    not depend on how much padding follows: the layer is padding invariant.

    Rotations are fixed: drawn from ``hash_seed`` (default: a seed drawn from ``rngs.params()`` at init) and
    regenerated inside the computation, so they need no state. ``resample_hashes=True`` draws fresh rotations
    from ``rngs.dropout()`` in each training call (eval keeps the fixed ones, so it stays deterministic).
    Memory is O(L x chunk_size x num_hashes); the sort makes the cost O(L log L).
    """

    padding_invariant = True
    complexity = "n log n"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", num_hashes: int = 1, num_buckets: int = 10,
                 chunk_size: int = 10, hash_seed: int | None = None, resample_hashes: bool = False):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "reformer")
        if num_hashes < 1 or chunk_size < 1 or num_buckets < 1:
            raise ValueError(f"num_hashes, num_buckets and chunk_size must be positive, got {num_hashes}, "
                             f"{num_buckets}, {chunk_size}")
        if num_buckets > 1 and num_buckets % 2:
            raise ValueError(f"num_buckets must be 1 or even (angular LSH takes argmax over [xR, -xR]), "
                             f"got {num_buckets}")
        dropout = check_rate("reformer", "dropout", dropout)
        if hash_seed is not None and (isinstance(hash_seed, bool) or not isinstance(hash_seed, int | np.integer)
                                      or not 0 <= hash_seed < 2**32):
            # jax.random.key takes at most a signed 64-bit seed (beyond: a raw OverflowError) and, without
            # jax_enable_x64, keeps only its low 32 bits: a larger or negative seed would repeat another one.
            raise ValueError(f"reformer: attention.hash_seed must be an integer in [0, 2**32 - 1] = [0, "
                             f"{2**32 - 1}] (the seed of the fixed LSH rotations; null draws one from the init "
                             f"rngs), got {hash_seed!r}")
        if hash_seed is None:
            key = rngs.params()
            try:
                hash_seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
            except jax.errors.ConcretizationTypeError:  # built under tracing (eval_shape): any fixed seed will do
                hash_seed = 0
        self.dropout, self.impl = dropout, impl
        self.num_hashes, self.num_buckets, self.chunk_size = num_hashes, num_buckets, chunk_size
        self.hash_seed, self.resample_hashes = int(hash_seed), resample_hashes

    def rotations(self, key=None):
        """float32 [head_dim, num_hashes, max(num_buckets // 2, 1)] random rotations (fixed unless key given)."""
        key = jax.random.key(self.hash_seed) if key is None else key
        return jax.random.normal(key, (self.head_dim, self.num_hashes, max(self.num_buckets // 2, 1)), jnp.float32)

    def _duplicate_counts(self, inverse, alone, s_pos, w_pos, is_self):
        """For each (round, query, window key) pair: in how many rounds that key is among the query's keys.

        inverse [B, H, R, Lp]: sorted position of each token per round; alone [B, H, R, n, c]: queries (sorted
        order) with no key but themselves; s_pos [B, H, R, n, c] and w_pos [B, H, R, n, 2c]: original positions of
        the sorted queries and of their window keys (-1: no previous chunk). Key j is among query i's keys in
        round r' when its chunk there is i's chunk or the one before (the same rule as the attention itself), and
        i is among its own keys in the rounds where it is alone. Returns float32 counts >= 1 where allowed.
        """
        b, h, r, n, c = s_pos.shape
        chunk = jnp.transpose(inverse // self.chunk_size, (0, 1, 3, 2))                # [B, H, Lp, R']
        q_chunk = _gather_rows(chunk, s_pos)                                           # [B, H, R, n, c, R']
        k_chunk = _gather_rows(chunk, jnp.maximum(w_pos, 0))                           # [B, H, R, n, 2c, R']
        gap = q_chunk[..., :, None, :] - k_chunk[..., None, :, :]                       # [B, H, R, n, c, 2c, R']
        together = ((gap == 0) | (gap == 1)).sum(axis=-1)
        alone_orig = jnp.take_along_axis(alone.reshape(b, h, r, n * c), inverse, axis=-1)   # [B, H, R', Lp]
        self_rounds = _gather_rows(jnp.transpose(alone_orig, (0, 1, 3, 2)).astype(jnp.int32), s_pos).sum(-1)
        counts = jnp.where(is_self, self_rounds[..., None], together)
        return jnp.maximum(counts, 1).astype(jnp.float32)

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        b, length, _ = x.shape
        use_dropout = not deterministic and self.dropout > 0.0
        resample = not deterministic and self.resample_hashes
        if (use_dropout or resample) and rngs is None:
            raise ValueError("reformer with dropout or resample_hashes needs rngs when deterministic=False")
        qk, _, v = self.project_qkv(x)
        valid = jnp.ones((b, length), bool) if valid is None else jnp.asarray(valid, bool)
        c = self.chunk_size
        padded = -(-length // c) * c
        n = padded // c
        qk, v, valid = _pad_to(qk, padded), _pad_to(v, padded), _pad_to(valid, padded, value=False)
        k = reformer_keys(qk)
        buckets = lsh_buckets(qk, self.rotations(rngs.dropout() if resample else None), self.num_buckets)
        buckets = jnp.where(valid[:, None, None, :], buckets, self.num_buckets)   # padding sorts last
        positions = jnp.arange(padded, dtype=jnp.int32)
        perm = jnp.argsort(buckets * padded + positions, axis=-1)                 # [B, H, R, Lp]
        r = self.num_hashes

        def sort(a):  # [B, Lp, H, D] -> [B, H, R, n, c, D] in sorted order
            a = jnp.broadcast_to(jnp.transpose(a, (0, 2, 1, 3))[:, :, None], (b, self.num_heads, r, padded,
                                                                              a.shape[-1]))
            return _gather_rows(a, perm).reshape(b, self.num_heads, r, n, c, a.shape[-1])

        sq, sk, sv = sort(qk), sort(k), sort(v)
        s_valid = jnp.take_along_axis(jnp.broadcast_to(valid[:, None, None], perm.shape), perm, axis=-1)
        s_pos, s_valid = perm.reshape(*perm.shape[:-1], n, c), s_valid.reshape(*perm.shape[:-1], n, c)

        def with_previous(a, fill):  # [..., n, c, ...] -> [..., n, 2c, ...]: own chunk then the previous one
            axis = 3
            prev = jnp.concatenate([jnp.full_like(jax.lax.slice_in_dim(a, 0, 1, axis=axis), fill),
                                    jax.lax.slice_in_dim(a, 0, n - 1, axis=axis)], axis=axis)
            return jnp.concatenate([a, prev], axis=axis + 1)

        wk, wv = with_previous(sk, 0), with_previous(sv, 0)
        w_pos, w_valid = with_previous(s_pos, -1), with_previous(s_valid, False)  # chunk 0 has no previous
        scale = 1.0 / math.sqrt(self.head_dim)
        logits = jnp.einsum("bhrnqd,bhrnkd->bhrnqk", sq * jnp.asarray(scale, sq.dtype), wk).astype(jnp.float32)
        is_self = s_pos[..., :, None] == w_pos[..., None, :]
        allowed = w_valid[..., None, :] & ~is_self
        alone = ~jnp.any(allowed, axis=-1)                                           # [B, H, R, n, c]
        allowed = allowed | (is_self & alone[..., None])                             # self only as last resort
        inverse = jnp.argsort(perm, axis=-1)                                         # sorted position of token
        if r > 1:
            logits = logits - jnp.log(self._duplicate_counts(inverse, alone, s_pos, w_pos, is_self))
        logits = jnp.where(allowed, logits, NEG)
        lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)                       # every row has a key
        weights = jnp.where(allowed, jnp.exp(logits - lse), 0.0)
        if use_dropout:
            weights = kernels.dropout(weights, self.dropout, rngs.dropout())
        out = jnp.einsum("bhrnqk,bhrnkd->bhrnqd", weights.astype(sv.dtype), wv)
        # Back to original positions, then combine rounds by their normalisers.
        out = _gather_rows(out.reshape(b, self.num_heads, r, padded, -1), inverse)   # [B, H, R, Lp, D]
        lse = jnp.take_along_axis(lse.reshape(b, self.num_heads, r, padded), inverse, axis=-1)
        round_weights = jax.nn.softmax(lse, axis=2)
        y = jnp.einsum("bhrl,bhrld->blhd", round_weights.astype(out.dtype), out)
        return self.project_out(y[:, :length])


# ---------------------------------------------------------------------------------------------------- Routing


class ClusterCentroids(nnx.Variable):
    """Routing Transformer's k-means centroids: state updated by EMA during training, never by gradients."""


@register("routing")
class RoutingAttention(AttentionBase):
    """Routing Transformer attention (Roy, Saffar, Vaswani and Grangier 2021, "Efficient Content-Based Sparse
    Attention with Routing Transformers").

    Queries and keys (unit-normalised) are compared with ``num_clusters`` centroids per head. Balanced routing as
    in the paper's implementation: each centroid takes the w = ceil(L / num_clusters) queries and the w keys with
    the highest cosine score (top-k), so shapes are static; the gathered queries attend to the gathered keys of the
    same centroid (padded keys masked, and ranked last), and outputs are scattered back (averaged over the
    centroids that picked a query; zeros for a query no centroid picked). Attention logits use the raw q and k.

    ``num_clusters`` defaults to ceil(max_len / window), so the cost is O(L x window) at the module's length
    (the routing scores add a small [num_clusters, L] term). Centroids are a ``ClusterCentroids`` variable (not a
    parameter), updated by an exponential moving average with ``decay`` toward the mean of the (normalised)
    queries and keys assigned to them, in training calls only (``deterministic=False``); eval never changes them.
    For the update to persist through a functional train step, split with ``nnx.split(model, nnx.Param, ...)``,
    merge inside the traced function with ``nnx.merge(graphdef, params, rest, copy=True)`` and return the new
    non-Param state; centroids that belong to an outer trace cannot be written, so that call skips the update
    (with a RuntimeWarning).
    Local heads: as in the paper's models, which mix routing heads with local-attention heads in each layer,
    ``local_heads`` of the heads (the first ones; default None: num_heads // 2) attend to a sliding window of
    ``local_window`` keys on each side (default None: window // 2, so a local head sees about as many keys as a
    cluster holds); the others route. ``local_heads=0`` makes every head a routing head.
    Not padding invariant: w depends on the padded length.
    """

    padding_invariant = False
    complexity = "n k"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", num_clusters: int | None = None, window: int = 128,
                 decay: float = 0.999, local_heads: int | None = None, local_window: int | None = None):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "routing")
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        local_heads = num_heads // 2 if local_heads is None else local_heads
        if not 0 <= local_heads < num_heads:
            raise ValueError(f"routing: local_heads must be in [0, num_heads={num_heads}) so that at least one head "
                             f"routes, got {local_heads} (for local attention alone use attention=local)")
        self.local_heads = int(local_heads)
        self.local = LocalPattern(window=max(window // 2, 1) if local_window is None else local_window)
        if num_clusters is None:
            num_clusters = max(1, -(-max_len // window))
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {num_clusters}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.dropout, self.impl = check_rate("routing", "dropout", dropout), impl
        self.num_clusters, self.window, self.decay = num_clusters, window, decay
        init = jax.random.normal(rngs.params(), (num_heads - self.local_heads, num_clusters, self.head_dim),
                                 jnp.float32)
        self.centroids = ClusterCentroids(_unit(init))

    def route(self, q, k, valid):
        """Top-w query and key indices per centroid: two int32 [B, H, C, w], and the cosine scores [B, H, C, L]
        (q, k [B, L, H, D]: the routing heads only)."""
        length = q.shape[1]
        w = -(-length // self.num_clusters)
        mu = _unit(self.centroids[...])
        qn, kn = _unit(jax.lax.stop_gradient(q)), _unit(jax.lax.stop_gradient(k))
        q_scores = jnp.einsum("blhd,hcd->bhcl", qn.astype(jnp.float32), mu)
        k_scores = jnp.einsum("blhd,hcd->bhcl", kn.astype(jnp.float32), mu)
        ranked = valid[:, None, None, :]
        _, q_idx = jax.lax.top_k(jnp.where(ranked, q_scores, -3.0), w)   # padding after every real token
        _, k_idx = jax.lax.top_k(jnp.where(ranked, k_scores, -3.0), w)
        return q_idx, k_idx, q_scores, k_scores

    def update_centroids(self, q_scores, k_scores, q, k, valid):
        """One EMA k-means step toward the mean normalised query/key assigned to each centroid."""
        mu = self.centroids[...]
        qn = _unit(jax.lax.stop_gradient(q)).astype(jnp.float32)
        kn = _unit(jax.lax.stop_gradient(k)).astype(jnp.float32)
        weight = valid.astype(jnp.float32)[:, None, :, None]
        q_assign = jax.nn.one_hot(jnp.argmax(q_scores, axis=2), self.num_clusters) * weight   # [B, H, L, C]
        k_assign = jax.nn.one_hot(jnp.argmax(k_scores, axis=2), self.num_clusters) * weight
        sums = jnp.einsum("bhlc,blhd->hcd", q_assign, qn) + jnp.einsum("bhlc,blhd->hcd", k_assign, kn)
        counts = (q_assign.sum(axis=(0, 2)) + k_assign.sum(axis=(0, 2)))[..., None]            # [H, C, 1]
        mean = sums / jnp.maximum(counts, 1.0)
        new = jnp.where(counts > 0, self.decay * mu + (1.0 - self.decay) * mean, mu)
        try:
            self.centroids[...] = jax.lax.stop_gradient(new)
        except errors.TraceContextError:
            # The centroids belong to an outer trace (state merged without copy=True inside jax.grad/jit): the
            # update cannot be written from here, so this call leaves them unchanged.
            warnings.warn("routing: centroid EMA update skipped (centroids belong to an outer trace); merge the "
                          "module inside the traced function with nnx.merge(..., copy=True) and return its "
                          "non-Param state to keep the updates", RuntimeWarning, stacklevel=2)

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        b, length, _ = x.shape
        use_dropout = not deterministic and self.dropout > 0.0
        if use_dropout and rngs is None:
            raise ValueError("routing with dropout needs rngs when deterministic=False")
        q, k, v = self.project_qkv(x)
        valid = jnp.ones((b, length), bool) if valid is None else jnp.asarray(valid, bool)
        local_rng, rng = jax.random.split(rngs.dropout()) if use_dropout else (None, None)
        nl = self.local_heads
        local = None
        if nl:
            local = self.local(q[:, :, :nl], k[:, :, :nl], v[:, :, :nl], valid, self.dropout if use_dropout else 0.0,
                               local_rng)
            q, k, v = q[:, :, nl:], k[:, :, nl:], v[:, :, nl:]
        q_idx, k_idx, q_scores, k_scores = self.route(q, k, valid)
        h = self.num_heads - nl

        def heads_first(a):
            return jnp.transpose(a, (0, 2, 1, 3))   # [B, L, H, D] -> [B, H, L, D]

        qg = _gather_rows(heads_first(q), q_idx)                                       # [B, H, C, w, D]
        kg, vg = _gather_rows(heads_first(k), k_idx), _gather_rows(heads_first(v), k_idx)
        kv_valid = jnp.take_along_axis(jnp.broadcast_to(valid[:, None, None], (b, h, 1, length)),
                                       k_idx.reshape(b, h, 1, -1), axis=-1).reshape(k_idx.shape)
        scale = 1.0 / math.sqrt(self.head_dim)
        logits = jnp.einsum("bhcqd,bhckd->bhcqk", qg * jnp.asarray(scale, qg.dtype), kg).astype(jnp.float32)
        weights = _masked_softmax(logits, kv_valid[..., None, :])
        if use_dropout:
            weights = kernels.dropout(weights, self.dropout, rng)
        out = jnp.einsum("bhcqk,bhckd->bhcqd", weights.astype(vg.dtype), vg)
        # Scatter back: sum over the centroids that picked each query, then average.
        flat = (q_idx + (jnp.arange(b * h, dtype=jnp.int32) * length).reshape(b, h, 1, 1)).reshape(-1)
        summed = jnp.zeros((b * h * length, self.head_dim), out.dtype).at[flat].add(out.reshape(-1, self.head_dim))
        counts = jnp.zeros((b * h * length,), jnp.float32).at[flat].add(1.0)
        y = summed / jnp.maximum(counts, 1.0)[:, None].astype(summed.dtype)
        y = jnp.transpose(y.reshape(b, h, length, self.head_dim), (0, 2, 1, 3))
        if not deterministic:
            self.update_centroids(q_scores, k_scores, q, k, valid)
        if local is not None:
            y = jnp.concatenate([local.astype(y.dtype), y], axis=2)
        return self.project_out(y)


# --------------------------------------------------------------------------------------------------- Sinkhorn


def sinkhorn(log_scores, iters: int):
    """Log-space Sinkhorn normalisation over the last two axes: alternately normalise rows and columns."""
    for _ in range(iters):
        log_scores = log_scores - jax.nn.logsumexp(log_scores, axis=-1, keepdims=True)
        log_scores = log_scores - jax.nn.logsumexp(log_scores, axis=-2, keepdims=True)
    return jnp.exp(log_scores)


@register("sinkhorn")
class SinkhornAttention(AttentionBase):
    """Sparse Sinkhorn attention (Tay, Bahri, Yang, Metzler and Juan 2020, "Sparse Sinkhorn Attention").

    The sequence is cut into blocks of ``block`` tokens (padded internally to a multiple; padding is masked). A
    sorting network (block-wise mean of the layer input over real tokens, then Dense-ReLU-Dense to one score per
    head and key block) gives block-to-block scores; ``sinkhorn_iters`` log-space Sinkhorn iterations at
    ``temperature`` turn them into a soft permutation P (doubly stochastic, [blocks, blocks] per head). Query
    block i attends to its own block and to the sorted block sum_j P[i, j] (K_j, V_j); a sorted key's weight is
    scaled by its soft validity sum_j P[i, j] valid_j (exact masking when P is a permutation).

    Memory O(L x block) plus the [L / block]^2 sort matrix. The sorting network's output width is the number of
    blocks at ``max_len`` (sliced to the actual length). Not padding invariant: padding changes the blocks.
    """

    padding_invariant = False
    complexity = "n b"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", block: int = 50, sinkhorn_iters: int = 7,
                 temperature: float = 0.75):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "sinkhorn")
        if block < 1 or sinkhorn_iters < 0:
            raise ValueError(f"need block >= 1, sinkhorn_iters >= 0; got {block}, {sinkhorn_iters}")
        # math.isfinite: a NaN passed `temperature <= 0` and trained to a NaN loss; inf made every sort uniform.
        temperature = check_positive("sinkhorn", "temperature", temperature)
        self.dropout, self.impl = check_rate("sinkhorn", "dropout", dropout), impl
        self.block, self.sinkhorn_iters, self.temperature = block, sinkhorn_iters, temperature
        self.max_blocks = max(1, -(-max_len // block))
        self.sort_hidden = nnx.Linear(dim, dim, kernel_init=dense_init, rngs=rngs)
        self.sort_out = nnx.Linear(dim, num_heads * self.max_blocks, kernel_init=dense_init, rngs=rngs)

    def sort_logits(self, pooled):
        """pooled [B, n, dim] block summaries -> scores [B, H, n (query block), n (key block)]."""
        b, n, _ = pooled.shape
        if n > self.max_blocks:
            raise ValueError(f"sequence needs {n} blocks but the module was built for {self.max_blocks} "
                             f"(max_len too small)")
        scores = self.sort_out(jax.nn.relu(self.sort_hidden(pooled)))
        scores = scores.reshape(b, n, self.num_heads, self.max_blocks)[..., :n]
        return jnp.transpose(scores, (0, 2, 1, 3)).astype(jnp.float32)

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        b, length, _ = x.shape
        use_dropout = not deterministic and self.dropout > 0.0
        if use_dropout and rngs is None:
            raise ValueError("sinkhorn with dropout needs rngs when deterministic=False")
        q, k, v = self.project_qkv(x)
        valid = jnp.ones((b, length), bool) if valid is None else jnp.asarray(valid, bool)
        blk = self.block
        padded = -(-length // blk) * blk
        n, h, d = padded // blk, self.num_heads, self.head_dim
        q, k, v = (_pad_to(a, padded).reshape(b, n, blk, h, d) for a in (q, k, v))
        valid = _pad_to(valid, padded, value=False).reshape(b, n, blk)
        vf = valid.astype(jnp.float32)
        xb = _pad_to(x, padded).reshape(b, n, blk, -1).astype(jnp.float32)
        pooled = (xb * vf[..., None]).sum(axis=2) / jnp.maximum(vf.sum(axis=2), 1.0)[..., None]
        perm = sinkhorn(self.sort_logits(pooled.astype(x.dtype)) / self.temperature, self.sinkhorn_iters)
        ks = jnp.einsum("bhij,bjthd->bithd", perm.astype(k.dtype), k)
        vs = jnp.einsum("bhij,bjthd->bithd", perm.astype(v.dtype), v)
        sorted_valid = jnp.einsum("bhij,bjt->bhit", perm, vf)                          # [B, H, n, blk]
        scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
        local = jnp.einsum("bnqhd,bnkhd->bnhqk", q * scale, k).astype(jnp.float32)
        sorted_ = jnp.einsum("bnqhd,bnkhd->bnhqk", q * scale, ks).astype(jnp.float32)
        sorted_valid = jnp.transpose(sorted_valid, (0, 2, 1, 3))[:, :, :, None, :]      # [B, n, H, 1, blk]
        # A soft validity below 1e-30 counts as masked: keeps log's gradient away from subnormals.
        sorted_allowed = sorted_valid > 1e-30
        sorted_ = sorted_ + jnp.log(jnp.where(sorted_allowed, sorted_valid, 1.0))
        logits = jnp.concatenate([local, sorted_], axis=-1)
        allowed = jnp.concatenate([jnp.broadcast_to(valid[:, :, None, None, :], local.shape),
                                   jnp.broadcast_to(sorted_allowed, sorted_.shape)], axis=-1)
        weights = _masked_softmax(logits, allowed)
        if use_dropout:
            weights = kernels.dropout(weights, self.dropout, rngs.dropout())
        weights = weights.astype(v.dtype)
        out = (jnp.einsum("bnhqk,bnkhd->bnqhd", weights[..., :blk], v)
               + jnp.einsum("bnhqk,bnkhd->bnqhd", weights[..., blk:], vs))
        return self.project_out(out.reshape(b, padded, h, d)[:, :length])


__all__ = ["ReformerAttention", "RoutingAttention", "SinkhornAttention", "ClusterCentroids", "lsh_buckets",
           "reformer_keys", "sinkhorn"]
