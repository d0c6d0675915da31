"""Normalised non-causal linear attention as Pallas kernels (chunked form), with a hand-written backward pass.

With fq = f(q), fk = f(k) (feature map applied in plain jnp, so JAX autodiff differentiates it), per batch row
and head:

    S = sum_j fk_j^T v_j   [F, Dv]        z = sum_j fk_j   [F]
    num_i = fq_i S          den_i = fq_i . z          out_i = num_i / den_i  (0 where den_i == 0)

Forward, two kernels on [batch*heads, length, features] arrays:
  1. key state: one program per (batch, head, split) walks its run of key chunks in a loop and accumulates a
     partial S and z; the partials of a (batch, head) are added up in XLA ([splits, F, Dv], tiny);
  2. readout: one program per (batch, head, query chunk) computes out for its chunk from S and z.
Backward, two kernels (g = d_out, d_num_i = g_i / den_i, d_den_i = -(g_i . out_i) / den_i):
  1. query grads: one program per (batch, head, split) walks its run of query chunks, writes
     d_fq_i = d_num_i S^T + d_den_i z and accumulates partial dS = sum_i fq_i^T d_num_i, dz = sum_i d_den_i fq_i,
     added up in XLA as in the forward;
  2. key grads: one program per (batch, head, key chunk) computes d_fk_j = v_j dS^T + dz and d_v_j = fk_j dS.

The reductions over chunks (S, z, dS, dz) run as a loop inside a program rather than over a grid axis, since
Pallas GPU grids run their programs in parallel (an output block revisited along a grid axis is only safe on
TPU). ``splits`` cuts each sequence into that many runs of chunks reduced by programs of their own
("split-K"): with one program per (batch, head), a benchmark shape such as 1 x 8 heads would occupy 8 of a
GPU's 132 multiprocessors. Lengths are padded to a multiple of chunk x splits with zero feature rows (they add
nothing to S, z, and give den = 0, hence zero output and zero gradient); F and Dv are padded with zero columns
to a power of two >= 16, as Triton wants power-of-two tensors and matmul dims >= 16. Everything is float32; the
output is cast to v.dtype.

Run on CPU in interpret mode, and lowered through Pallas's Triton lowering for a CUDA GPU
(``tests/kernels/test_gpu_lowering.py``); never compiled to PTX or run on a GPU yet, so their speed and the best
chunk and number of splits there are unknown (``scripts/gpu_check.sh`` times them). There is no Mosaic GPU
version; on TPU, the [chunk, F] blocks would want F and Dv padded to 128 lanes instead.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _pallas

__all__ = ["linear_attention_pallas"]

_HIGHEST = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
_MIN_DIM = 16  # Triton matmuls want every dim >= 16


def _dot(a, b, contract_a: int, contract_b: int):
    """float32 2D matmul contracting a's dim ``contract_a`` with b's dim ``contract_b`` (transposes folded in)."""
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=jnp.float32)


def _safe_inverse(den):
    """1/den where den > 0, else 0 (so rows without any key contribute nothing, forward or backward)."""
    positive = den > 0
    return jnp.where(positive, 1.0 / jnp.where(positive, den, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------------- kernels
def _key_state_kernel(fk_ref, v_ref, s_ref, z_ref, *, chunk: int, n_chunks: int):
    """fk [run, F], v [run, Dv] of one (batch, head, split) -> its partial S [F, Dv], z [1, F], summed chunk by
    chunk."""
    def body(c, carry):
        s, z = carry
        rows = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
        fk = fk_ref[rows, :]
        s = s + _dot(fk, v_ref[rows, :], 0, 0)
        z = z + jnp.sum(fk, axis=0, keepdims=True)
        return s, z

    init = (jnp.zeros(s_ref.shape, jnp.float32), jnp.zeros(z_ref.shape, jnp.float32))
    s, z = lax.fori_loop(0, n_chunks, body, init)
    s_ref[...] = s
    z_ref[...] = z


def _readout_kernel(fq_ref, s_ref, z_ref, out_ref):
    """fq [chunk, F], S [F, Dv], z [1, F] -> out [chunk, Dv]."""
    fq = fq_ref[...]
    num = _dot(fq, s_ref[...], 1, 0)
    den = jnp.sum(fq * z_ref[...], axis=1, keepdims=True)
    positive = den > 0
    out_ref[...] = jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _query_grad_kernel(fq_ref, g_ref, s_ref, z_ref, dfq_ref, ds_ref, dz_ref, *, chunk: int, n_chunks: int):
    """One (batch, head, split): d_fq [run, F] chunk by chunk, and partial dS [F, Dv], dz [1, F] summed over its
    query chunks."""
    s = s_ref[...]
    z = z_ref[...]

    def body(c, carry):
        ds, dz = carry
        rows = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
        fq = fq_ref[rows, :]
        g = g_ref[rows, :]
        inv = _safe_inverse(jnp.sum(fq * z, axis=1, keepdims=True))       # [chunk, 1]
        out = _dot(fq, s, 1, 0) * inv
        d_num = g * inv                                                    # [chunk, Dv]
        d_den = -jnp.sum(g * out, axis=1, keepdims=True) * inv             # [chunk, 1]
        dfq_ref[rows, :] = _dot(d_num, s, 1, 1) + d_den * z
        ds = ds + _dot(fq, d_num, 0, 0)
        dz = dz + jnp.sum(d_den * fq, axis=0, keepdims=True)
        return ds, dz

    init = (jnp.zeros(ds_ref.shape, jnp.float32), jnp.zeros(dz_ref.shape, jnp.float32))
    ds, dz = lax.fori_loop(0, n_chunks, body, init)
    ds_ref[...] = ds
    dz_ref[...] = dz


def _key_grad_kernel(fk_ref, v_ref, ds_ref, dz_ref, dfk_ref, dv_ref):
    """fk [chunk, F], v [chunk, Dv], dS [F, Dv], dz [1, F] -> d_fk [chunk, F], d_v [chunk, Dv]."""
    ds = ds_ref[...]
    dfk_ref[...] = _dot(v_ref[...], ds, 1, 1) + dz_ref[...]
    dv_ref[...] = _dot(fk_ref[...], ds, 1, 0)


# ------------------------------------------------------------------------------------------------ pallas calls
def _per_head(shape):
    """BlockSpec of a whole [*shape] slab per (batch, head), for grids whose first axis is batch*heads."""
    return pl.BlockSpec((None, *shape), lambda bh, *_: (bh,) + (0,) * len(shape))


def _per_chunk(chunk: int, width: int):
    """BlockSpec of rows [c*chunk, (c+1)*chunk) of one (batch, head), for grids (batch*heads, chunks or splits)."""
    return pl.BlockSpec((None, chunk, width), lambda bh, c: (bh, c, 0))


def _per_split(shape):
    """BlockSpec of one [*shape] partial sum per (batch, head, split) of a [batch*heads, splits, *shape] array."""
    return pl.BlockSpec((None, None, *shape), lambda bh, g: (bh, g) + (0,) * len(shape))


def _f32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _params(interpret):
    from kernels.flash import compiler_params

    return compiler_params(interpret)


def _key_state(fk, v, chunk, splits, interpret):
    bh, lk, f = fk.shape
    dv = v.shape[-1]
    run = lk // splits
    kernel = functools.partial(_key_state_kernel, chunk=chunk, n_chunks=run // chunk)
    s, z = _pallas.call(
        kernel, out_shape=(_f32(bh, splits, f, dv), _f32(bh, splits, 1, f)), grid=(bh, splits),
        in_specs=[_per_chunk(run, f), _per_chunk(run, dv)],
        out_specs=(_per_split((f, dv)), _per_split((1, f))),
        interpret=interpret, compiler_params=_params(interpret), name="linear_attention_key_state")(fk, v)
    return s.sum(axis=1), z.sum(axis=1)


def _readout(fq, s, z, chunk, interpret):
    bh, lq, f = fq.shape
    dv = s.shape[-1]
    return _pallas.call(
        _readout_kernel, out_shape=_f32(bh, lq, dv), grid=(bh, lq // chunk),
        in_specs=[_per_chunk(chunk, f), _per_head((f, dv)), _per_head((1, f))],
        out_specs=_per_chunk(chunk, dv),
        interpret=interpret, compiler_params=_params(interpret), name="linear_attention_readout")(fq, s, z)


def _query_grads(fq, g, s, z, chunk, splits, interpret):
    bh, lq, f = fq.shape
    dv = s.shape[-1]
    run = lq // splits
    kernel = functools.partial(_query_grad_kernel, chunk=chunk, n_chunks=run // chunk)
    d_fq, ds, dz = _pallas.call(
        kernel, out_shape=(_f32(bh, lq, f), _f32(bh, splits, f, dv), _f32(bh, splits, 1, f)), grid=(bh, splits),
        in_specs=[_per_chunk(run, f), _per_chunk(run, dv), _per_head((f, dv)), _per_head((1, f))],
        out_specs=(_per_chunk(run, f), _per_split((f, dv)), _per_split((1, f))),
        interpret=interpret, compiler_params=_params(interpret), name="linear_attention_query_grads")(fq, g, s, z)
    return d_fq, ds.sum(axis=1), dz.sum(axis=1)


def _key_grads(fk, v, ds, dz, chunk, interpret):
    bh, lk, f = fk.shape
    dv = v.shape[-1]
    return _pallas.call(
        _key_grad_kernel, out_shape=(_f32(bh, lk, f), _f32(bh, lk, dv)), grid=(bh, lk // chunk),
        in_specs=[_per_chunk(chunk, f), _per_chunk(chunk, dv), _per_head((f, dv)), _per_head((1, f))],
        out_specs=(_per_chunk(chunk, f), _per_chunk(chunk, dv)),
        interpret=interpret, compiler_params=_params(interpret), name="linear_attention_key_grads")(fk, v, ds, dz)


# ---------------------------------------------------------------------------------------------- custom VJP
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _chunked_linear(fq, fk, v, q_chunk, k_chunk, q_splits, k_splits, interpret):
    """fq [BH, Lq, F], fk [BH, Lk, F], v [BH, Lk, Dv] (float32, lengths multiples of chunk x splits)."""
    return _chunked_linear_fwd(fq, fk, v, q_chunk, k_chunk, q_splits, k_splits, interpret)[0]


def _chunked_linear_fwd(fq, fk, v, q_chunk, k_chunk, q_splits, k_splits, interpret):
    s, z = _key_state(fk, v, k_chunk, k_splits, interpret)
    return _readout(fq, s, z, q_chunk, interpret), (fq, fk, v, s, z)


def _chunked_linear_bwd(q_chunk, k_chunk, q_splits, k_splits, interpret, residuals, g):
    fq, fk, v, s, z = residuals
    d_fq, ds, dz = _query_grads(fq, g, s, z, q_chunk, q_splits, interpret)
    d_fk, d_v = _key_grads(fk, v, ds, dz, k_chunk, interpret)
    return d_fq, d_fk, d_v


_chunked_linear.defvjp(_chunked_linear_fwd, _chunked_linear_bwd)


# ------------------------------------------------------------------------------------------------- wrapper
def _padded_dim(n: int) -> int:
    return max(_MIN_DIM, pl.next_power_of_2(n))


def _chunk_for(length: int, chunk: int) -> int:
    """The requested chunk, shrunk (to a power of two >= 16 when chunk allows) for sequences shorter than it."""
    return min(chunk, max(_MIN_DIM, pl.next_power_of_2(length)))


# About twice the multiprocessors of an H100/H200 (132): programs per reduction when ``splits`` is None.
_TARGET_PROGRAMS = 256


def _splits_for(requested: int | None, batch_heads: int, n_chunks: int, interpret: bool) -> int:
    """Programs per (batch, head) for a reduction over ``n_chunks`` chunks: the requested number (at most one
    per chunk), or by default 1 in interpret mode (one CPU runs the programs one after another anyway) and
    enough for about _TARGET_PROGRAMS programs in all elsewhere."""
    if requested is None:
        requested = 1 if interpret else -(-_TARGET_PROGRAMS // batch_heads)
    return max(1, min(requested, n_chunks))


def _to_heads_major(x, length: int, width: int):
    """[B, L, H, W] -> [B*H, length, width], zero-padded at the end of the length and width axes."""
    b, n, h, w = x.shape
    x = jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, n, w)
    return jnp.pad(x, ((0, 0), (0, length - n), (0, width - w)))


def linear_attention_pallas(q, k, v, *, feature_map, kv_valid=None, chunk: int = 128, splits: int | None = None,
                            interpret: bool | None = None):
    """Normalised non-causal linear attention through the chunked Pallas kernels; equals
    ``kernels.linear_attention(q, k, v, feature_map=feature_map, kv_valid=kv_valid, impl="xla")``.

    q [B, Lq, H, D], k [B, Lk, H, D], v [B, Lk, H, Dv] -> [B, Lq, H, Dv] in v.dtype.
    feature_map: callable applied (in plain jnp, differentiated by JAX) to q and k; kv_valid: bool [B, Lk],
    False keys get f(k) = 0. A query whose normaliser is zero gets zeros. chunk: rows per kernel step, a power of
    two (>= 16 for GPU); shorter sequences use a smaller one. splits: programs per (batch, head) that share each
    reduction over the sequence (at most one per chunk); None: 1 in interpret mode, else about 256 programs in
    all. interpret: run the kernels in the Pallas interpreter; None means True on CPU, False elsewhere.
    """
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a positive power of two, got {chunk}")
    if splits is not None and (not isinstance(splits, int) or splits < 1):
        raise ValueError(f"splits must be a positive integer or None, got {splits!r}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    b, lq, h, _ = q.shape
    lk = k.shape[1]
    if k.shape[0] != b or k.shape[2] != h or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"expected q [B, Lq, H, D], k [B, Lk, H, D], v [B, Lk, H, Dv]; "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    fq = feature_map(q).astype(jnp.float32)
    fk = feature_map(k).astype(jnp.float32)
    if fq.shape[-1] != fk.shape[-1]:
        raise ValueError(f"feature map gave {fq.shape[-1]} features for q but {fk.shape[-1]} for k")
    if kv_valid is not None:
        if kv_valid.shape != (b, lk):
            raise ValueError(f"kv_valid must be [batch, {lk}] = {(b, lk)}, got {kv_valid.shape}")
        fk = jnp.where(jnp.asarray(kv_valid, bool)[:, :, None, None], fk, 0.0)
    features, dv = _padded_dim(fq.shape[-1]), _padded_dim(v.shape[-1])
    q_chunk, k_chunk = _chunk_for(lq, chunk), _chunk_for(lk, chunk)
    q_splits = _splits_for(splits, b * h, math.ceil(lq / q_chunk), bool(interpret))
    k_splits = _splits_for(splits, b * h, math.ceil(lk / k_chunk), bool(interpret))
    lq_pad = q_chunk * q_splits * math.ceil(lq / (q_chunk * q_splits))
    lk_pad = k_chunk * k_splits * math.ceil(lk / (k_chunk * k_splits))
    out = _chunked_linear(_to_heads_major(fq, lq_pad, features), _to_heads_major(fk, lk_pad, features),
                          _to_heads_major(v.astype(jnp.float32), lk_pad, dv), q_chunk, k_chunk, q_splits, k_splits,
                          bool(interpret))
    out = out[:, :lq, :v.shape[-1]].reshape(b, h, lq, v.shape[-1])
    return jnp.transpose(out, (0, 2, 1, 3)).astype(v.dtype)
