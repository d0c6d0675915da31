"""Attention kernels: pure functions on arrays shaped [batch, length, heads, head_dim].

``attention`` is softmax attention over the allowed (query, key) pairs; ``linear_attention`` is normalised
non-causal kernel attention. ``impl="xla"`` is plain jnp that XLA compiles on every backend; ``impl="pallas"``
runs the Pallas kernels: flash / block-sparse attention (``kernels.flash``: dense, or any ``kernels.masks.Mask``
with its empty blocks skipped) and chunked linear attention (``kernels.linear_pallas``), forward and backward,
in interpret mode on CPU.
This package imports nothing else of the project.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernels import masks

__all__ = ["attention", "linear_attention", "check_inputs", "dropout", "random_bits", "masks", "IMPLS",
           "FEATURE_MAPS"]

IMPLS = ("xla", "pallas")


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_inputs(q, k, v, *, kv_valid=None, scale=None, dropout_rate=0.0, dropout_rng=None,
                 same_value_dim: bool = False) -> None:
    """Refuse, at trace time and before any kernel is compiled, inputs the kernels would misread: q, k, v not
    floating [batch, length, heads, head_dim] arrays that agree (batch and heads everywhere, head_dim of q and k,
    length of k and v; v's head_dim too with ``same_value_dim``), ``kv_valid`` not bool [batch, kv_len], a
    scale that is not a finite scalar, a dropout rate outside [0, 1) or one without its key. A Pallas kernel
    given such inputs would read out of bounds or drop columns without a word; plain XLA would cast a scale to
    an integer, or broadcast."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not (q.ndim == k.ndim == v.ndim == 4):
        raise ValueError(f"q, k, v must be [batch, length, heads, head_dim] arrays; got {shapes}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating-point array (float32, bfloat16, ...), got {x.dtype}")
    (b, _, h, d), (bk, lk, hk, dk), (bv, lv, hv, dv) = q.shape, k.shape, v.shape
    if not (b == bk == bv and h == hk == hv and d == dk and lk == lv and (dv == d or not same_value_dim)):
        want = "v [batch, kv_len, heads, head_dim]" if same_value_dim else "v [batch, kv_len, heads, v_dim]"
        raise ValueError(f"expected q [batch, q_len, heads, head_dim], k [batch, kv_len, heads, head_dim], "
                         f"{want}; got {shapes}")
    if kv_valid is not None:
        shape, dtype = getattr(kv_valid, "shape", None), getattr(kv_valid, "dtype", None)
        if shape is None or tuple(shape) != (b, lk) or dtype != jnp.bool_:
            raise ValueError(f"kv_valid must be a bool array [batch, kv_len] = [{b}, {lk}] marking real keys; got "
                             f"{type(kv_valid).__name__} of shape {shape} and dtype {dtype}")
    if scale is not None:
        if isinstance(scale, bool) or not (isinstance(scale, int | float) or getattr(scale, "shape", None) == ()):
            raise ValueError(f"scale must be a number (default 1/sqrt(head_dim)), got {scale!r}")
        try:
            value = float(scale)
        except Exception:   # noqa: BLE001  (a traced scale under jit/grad: its value is not known here; the
            value = 0.0     # kernels fold it into q, see static_scale)
        if not math.isfinite(value):
            raise ValueError(f"scale must be finite, got {scale!r}")
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, int | float) or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout rate must be a number in [0, 1), got {dropout_rate!r}")
    if round(dropout_rate * 2**32) >= 2**32:   # the 32-bit keep threshold would be 2**32: nothing kept
        raise ValueError(f"dropout rate {dropout_rate!r} keeps less than one in 2**32 elements, which the 32-bit "
                         f"dropout mask cannot draw; use a rate of at most 1 - 2**-32")
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError(f"dropout_rate={dropout_rate} needs dropout_rng (a PRNG key); pass dropout_rate=0.0 "
                         f"for no dropout")
    q_len = q.shape[1]
    if dropout_rate > 0.0 and b * h * q_len * lk > _MAX_BITS:
        # XLA's mask and the Pallas kernels' in-kernel mask both count the [B, H, Lq, Lk] weights with a uint32
        # counter: beyond it, the XLA path could not draw the mask and the kernels would repeat their bits.
        raise ValueError(f"attention dropout at batch {b}, {h} heads, length {q_len} x {lk} needs a mask of "
                         f"{b * h * q_len * lk:,} elements (batch x heads x length^2), beyond the 2**32 - 1 "
                         f"that its random bits can index: {_DROPOUT_ADVICE}")


def static_scale(q, scale):
    """(q, scale as a Python float) for kernels that take the scale as a compile-time constant.

    A scale given as a Python number or a concrete scalar is used as is (default 1/sqrt(head_dim)). A traced one
    (``jax.jit(lambda s: attention(q, k, v, scale=s))``, or the scale under ``jax.grad``) has no value at trace
    time: it is folded into the queries instead, q * scale with scale 1.0, which gives the same logits
    (q * s) . k and lets gradients reach it through that product."""
    if scale is None:
        return q, 1.0 / math.sqrt(q.shape[-1])
    try:
        return q, float(scale)
    except jax.errors.ConcretizationTypeError:
        return q * jnp.asarray(scale, q.dtype), 1.0


# Attention dropout draws its mask with random_bits, whose uint32 counter indexes fewer than 2**32 elements.
_MAX_BITS = 2**32 - 1
_DROPOUT_ADVICE = ("set model.attention_dropout=0 (no attention dropout), use a smaller batch_size or length, or "
                   "a variant that does not form the L x L matrix (e.g. attention=local, block_local, bigbird, "
                   "linear or performer)")


def _allowed_pairs(mask, kv_valid, q_len: int, kv_len: int):
    """Boolean array broadcastable to [batch, heads, q_len, kv_len], or None when every pair is allowed."""
    allowed = None
    if mask is not None:
        if isinstance(mask, masks.Mask):
            if not isinstance(mask, masks.Full):
                allowed = jnp.asarray(mask.dense(q_len, kv_len))[None, None]
        else:
            m = jnp.asarray(mask, dtype=bool)
            if m.ndim == 2:
                m = m[None, None]
            if m.ndim != 4 or m.shape[-2:] != (q_len, kv_len):
                raise ValueError(f"mask array must be [q_len, kv_len] or [batch, heads|1, q_len, kv_len] with "
                                 f"q_len={q_len}, kv_len={kv_len}; got shape {m.shape}")
            allowed = m
    if kv_valid is not None:
        if kv_valid.shape[-1] != kv_len:
            raise ValueError(f"kv_valid must be [batch, {kv_len}], got {kv_valid.shape}")
        kvm = jnp.asarray(kv_valid, dtype=bool)[:, None, None, :]
        allowed = kvm if allowed is None else allowed & kvm
    return allowed


def attention(q, k, v, *, mask=None, kv_valid=None, scale: float | None = None, impl: str = "xla",
              dropout_rate: float = 0.0, dropout_rng=None):
    """Softmax attention. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    mask: a ``kernels.masks.Mask`` or a boolean array [Lq, Lk] / [B, H|1, Lq, Lk]; kv_valid: bool [B, Lk]
    marking real keys. A query with no allowed key returns zeros. scale defaults to 1/sqrt(D).
    dropout_rate/dropout_rng: dropout on the attention weights (training only).
    """
    _check_impl(impl)
    if impl == "pallas":   # flash_attention checks its inputs (check_inputs) itself
        from kernels.flash import flash_attention

        return flash_attention(q, k, v, mask=mask, kv_valid=kv_valid, scale=scale, dropout_rate=dropout_rate,
                               dropout_rng=dropout_rng)
    check_inputs(q, k, v, kv_valid=kv_valid, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    q_len, kv_len = q.shape[1], k.shape[1]
    rate = float(dropout_rate) if dropout_rng is not None else 0.0
    q, scale = static_scale(q, scale)
    allowed = _allowed_pairs(mask, kv_valid, q_len, kv_len)
    return _softmax_attention(q, k, v, allowed, dropout_rng if rate > 0.0 else None, scale, rate)


# Dense softmax attention with a hand-written backward pass. Autodiff of the forward would run one more pass
# over the [B, H, Lq, Lk] weights (the softmax Jacobian's row sums); here that sum is taken on the output
# instead: sum_k dW_k W_k = dO . O (FlashAttention's identity), and masked entries need no extra select
# because their weights are exactly zero.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _softmax_attention(q, k, v, allowed, rng, scale, rate):
    return _softmax_attention_fwd(q, k, v, allowed, rng, scale, rate)[0]


def _softmax_weights(q, k, allowed, scale):
    # Logits and softmax in float32 whatever the input dtype (bf16 logits lose the small weights).
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k).astype(jnp.float32)
    if allowed is not None:
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    if allowed is not None:
        e = jnp.where(allowed, e, 0.0)  # a row with no allowed key ends all zeros, hence a zero output
    denom = e.sum(axis=-1, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


def _softmax_attention_fwd(q, k, v, allowed, rng, scale, rate):
    weights = _softmax_weights(q, k, allowed, scale)
    dropped = dropout(weights, rate, rng) if rate > 0.0 else weights
    out = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(v.dtype), v)
    return out, (q, k, v, allowed, rng, weights, out)


def _softmax_attention_bwd(scale, rate, residuals, d_out):
    q, k, v, allowed, rng, weights, out = residuals
    d_dropped = jnp.einsum("bqhd,bkhd->bhqk", d_out, v).astype(jnp.float32)
    if rate > 0.0:
        keep, factor = _keep_mask(rng, rate, weights.shape)
        dropped = jnp.where(keep, weights * factor, 0.0)
        d_weights = jnp.where(keep, d_dropped * factor, 0.0)
    else:
        dropped, d_weights = weights, d_dropped
    d_v = jnp.einsum("bhqk,bqhd->bkhd", dropped.astype(v.dtype), d_out)
    row = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))[..., None]
    d_logits = weights * (d_weights - row)
    d_q = jnp.einsum("bhqk,bkhd->bqhd", d_logits, k.astype(jnp.float32)) * scale
    d_k = jnp.einsum("bhqk,bqhd->bkhd", d_logits, q.astype(jnp.float32)) * scale
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None, None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def random_bits(rng, shape) -> jax.Array:
    """uint32 random bits of ``shape`` from a counter-based hash, seeded by the JAX key ``rng``.

    Element i gets lowbias32(i * 0x9E3779B9 + s0 ^ s1), with (s0, s1) drawn from ``rng``: a Weyl sequence
    through an avalanching integer hash (SplitMix-style). On CPU this is about 7x faster than
    ``jax.random.bits`` (threefry or rbg), which made dropout masks a third of a train step; its quality is
    ample for dropout (tests check rates, uniformity and neighbour independence), not for cryptography.
    """
    size = math.prod(shape)
    if size > _MAX_BITS:
        raise ValueError(f"random_bits draws at most 2**32 - 1 elements (a uint32 counter), got shape {tuple(shape)} "
                         f"= {size:,} elements. As an attention-dropout mask that is batch x heads x the L x L "
                         f"weights: {_DROPOUT_ADVICE}")
    seed = jax.random.bits(rng, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return hash_bits(index, seed[0], seed[1])


def hash_bits(index, s0, s1):
    """uint32 bits of element ``index`` (uint32) for seed words (s0, s1): lowbias32(index * 0x9E3779B9 + s0 ^ s1).
    Shared by ``random_bits`` and the Pallas kernels' in-kernel dropout, which must draw the same bits."""
    x = (index * jnp.uint32(0x9E3779B9) + s0) ^ s1
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _keep_mask(rng, rate: float, shape):
    """(keep bool array, scale 1/realised keep rate) for inverted dropout at ``rate``."""
    threshold = int(round(rate * 2**32))
    return random_bits(rng, shape) >= jnp.uint32(threshold), 2**32 / (2**32 - threshold)


def dropout(x, rate: float, rng):
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by 1/(1 - rate).

    The keep mask compares 32 hashed random bits (``random_bits``) with round(rate * 2**32); the scale uses
    that realised rate, so the expectation is exact.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return x
    keep, factor = _keep_mask(rng, rate, x.shape)
    return jnp.where(keep, x * jnp.asarray(factor, x.dtype), jnp.zeros((), x.dtype))


def _elu1(x):
    return jax.nn.elu(x) + 1.0


FEATURE_MAPS: dict[str, Callable] = {"elu1": _elu1, "relu": jax.nn.relu}


def linear_attention(q, k, v, *, feature_map: str | Callable = "elu1", kv_valid=None, impl: str = "xla"):
    """Normalised non-causal kernel attention, O(L) in length.

    out_i = sum_j f(q_i).f(k_j) v_j / sum_j f(q_i).f(k_j) with q/k [B, L, H, D], v [B, Lk, H, Dv].
    feature_map: "elu1" (elu(x)+1), "relu", or a callable applied to q and k. kv_valid: bool [B, Lk].
    A query whose normaliser is zero (no valid key) returns zeros.
    """
    _check_impl(impl)
    check_inputs(q, k, v, kv_valid=kv_valid)
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)} or a callable, got {feature_map!r}")
        feature_map = FEATURE_MAPS[feature_map]
    if impl == "pallas":
        from kernels.linear_pallas import linear_attention_pallas

        return linear_attention_pallas(q, k, v, feature_map=feature_map, kv_valid=kv_valid)
    fq = feature_map(q).astype(jnp.float32)
    fk = feature_map(k).astype(jnp.float32)
    if kv_valid is not None:
        fk = jnp.where(jnp.asarray(kv_valid, bool)[:, :, None, None], fk, 0.0)
    kv = jnp.einsum("bkhf,bkhd->bhfd", fk, v.astype(jnp.float32))
    normaliser = jnp.einsum("bqhf,bhf->bqh", fq, fk.sum(axis=1))
    out = jnp.einsum("bqhf,bhfd->bqhd", fq, kv)
    safe = jnp.where(normaliser > 0, normaliser, 1.0)
    out = jnp.where((normaliser > 0)[..., None], out / safe[..., None], 0.0)
    return out.astype(v.dtype)


def reference_attention(q, k, v, *, mask=None, kv_valid=None, scale=None):
    """float64 numpy reference of ``attention`` (for tests): direct formula, no tricks."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    b, q_len, h, d = q.shape
    kv_len = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    allowed = np.ones((b, h, q_len, kv_len), dtype=bool)
    if mask is not None:
        dense = mask.dense(q_len, kv_len) if isinstance(mask, masks.Mask) else np.asarray(mask, bool)
        allowed &= np.broadcast_to(dense, allowed.shape)
    if kv_valid is not None:
        allowed &= np.asarray(kv_valid, bool)[:, None, None, :]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = np.where(allowed, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(allowed, np.exp(logits - row_max), 0.0)
    denom = e.sum(-1, keepdims=True)
    w = np.where(denom > 0, e / np.where(denom > 0, denom, 1.0), 0.0)
    return np.einsum("bhqk,bkhd->bqhd", w, v)
