"""Block-sparse softmax attention in plain XLA: gather the key blocks each query block may see.

For a mask from ``kernels.masks`` and a block size, every query block gets the (static) list of key blocks whose
layout is not EMPTY, padded to the longest list. Keys and values are gathered per query block, so the
logits are [batch, q_blocks, heads, block, slots, block]: memory and work grow with L x (slots x block), not
L x L. Inside the gathered blocks the element mask is applied exactly (precomputed in numpy, also linear in L).
This is the XLA path of the sparse variants; the Pallas kernel of the kernels issue replaces the gather.
"""
from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from kernels import masks as masks_lib


@functools.lru_cache(maxsize=64)
def block_plan(mask: masks_lib.Mask, length: int, block: int):
    """Static plan: (key_blocks int [nq, S] with -1 for unused slots, element mask bool [nq, S, block, block]).

    Built row of blocks by row of blocks, so planning needs O(block x L) memory at a time.
    """
    if length % block:
        raise ValueError(f"length {length} must be a multiple of the block size {block}")
    n = length // block
    rows, element_rows = [], []
    for qb in range(n):
        per_block = mask.rows(qb * block, (qb + 1) * block, length, length).reshape(block, n, block)
        used = np.flatnonzero(per_block.any(axis=(0, 2)))
        rows.append(used)
        element_rows.append(np.transpose(per_block[:, used, :], (1, 0, 2)))
    slots = max(1, max(len(r) for r in rows))
    key_blocks = np.full((n, slots), -1, np.int32)
    element = np.zeros((n, slots, block, block), bool)
    for qb, (used, elem) in enumerate(zip(rows, element_rows)):
        key_blocks[qb, :len(used)] = used
        element[qb, :len(used)] = elem
    return key_blocks, element


def block_sparse_attention(q, k, v, mask: masks_lib.Mask, *, block: int, kv_valid=None, scale: float | None = None,
                           dropout_rate: float = 0.0, dropout_rng=None):
    """Softmax attention over the pairs ``mask`` allows, computed on gathered key blocks.

    q, k, v [B, L, H, D] with L a multiple of ``block``; kv_valid bool [B, L]. Equals
    ``kernels.attention(q, k, v, mask=mask, kv_valid=kv_valid)`` (rows with no allowed key give zeros).
    """
    from kernels import check_inputs
    from kernels import dropout as dropout_fn

    check_inputs(q, k, v, kv_valid=kv_valid, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                 same_value_dim=True)
    b, length, h, d = q.shape
    if k.shape[1] != length or length % block:
        raise ValueError(f"block-sparse attention needs keys as long as queries and a length that is a multiple "
                         f"of block={block}; got q {q.shape}, k {k.shape}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    key_blocks, element = block_plan(mask, length, block)
    n, slots = key_blocks.shape
    gather = np.maximum(key_blocks, 0)
    kb = k.reshape(b, n, block, h, d)[:, gather]            # [B, n, S, block, H, D]
    vb = v.reshape(b, n, block, h, d)[:, gather]
    qb = q.reshape(b, n, block, h, d)
    logits = jnp.einsum("bnqhd,bnskhd->bnhqsk", qb * jnp.asarray(scale, q.dtype), kb).astype(jnp.float32)
    allowed = jnp.asarray(element & (key_blocks >= 0)[:, :, None, None])   # [n, S, block_q, block_k]
    allowed = jnp.transpose(allowed, (0, 2, 1, 3))[None, :, None]          # [1, n, 1, block_q, S, block_k]
    if kv_valid is not None:
        valid_blocks = jnp.asarray(kv_valid, bool).reshape(b, n, block)[:, gather]  # [B, n, S, block_k]
        allowed = allowed & valid_blocks[:, :, None, None, :, :]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    flat = logits.reshape(*logits.shape[:4], slots * block)
    e = jnp.exp(flat - jnp.max(flat, axis=-1, keepdims=True)).reshape(logits.shape)
    e = jnp.where(allowed, e, 0.0)
    denom = e.sum(axis=(-2, -1), keepdims=True)
    weights = e / jnp.where(denom > 0, denom, 1.0)
    if dropout_rate > 0.0 and dropout_rng is not None:
        weights = dropout_fn(weights, dropout_rate, dropout_rng)
    out = jnp.einsum("bnhqsk,bnskhd->bnqhd", weights.astype(v.dtype), vb)
    return out.reshape(b, length, h, d)


def strided_permutation(length: int, stride: int) -> np.ndarray:
    """Order that puts each residue class i % stride in one contiguous run (class r at [r*L/s, (r+1)*L/s))."""
    if length % stride:
        raise ValueError(f"length {length} must be a multiple of the stride {stride}")
    return np.argsort(np.arange(length) % stride, kind="stable")


def strided_attention(q, k, v, *, stride: int, kv_valid=None, scale: float | None = None, dropout_rate: float = 0.0,
                      dropout_rng=None):
    """Attention over (i - j) % stride == 0: permute so each stride class is contiguous, then attend within
    blocks of L / stride (cost L x L / stride), and permute back."""
    length = q.shape[1]
    perm = strided_permutation(length, stride)
    inverse = np.argsort(perm)
    valid = None if kv_valid is None else kv_valid[:, perm]
    out = block_sparse_attention(q[:, perm], k[:, perm], v[:, perm], masks_lib.BlockLocal(length // stride),
                                 block=length // stride, kv_valid=valid, scale=scale, dropout_rate=dropout_rate,
                                 dropout_rng=dropout_rng)
    return out[:, inverse]


__all__ = ["block_plan", "block_sparse_attention", "strided_attention", "strided_permutation"]
