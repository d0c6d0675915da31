"""Flash and block-sparse softmax attention in Pallas, forward and backward.

One kernel serves both: a *plan* lists, for each block of ``block_q`` queries, the blocks of ``block_k`` keys it
visits, and whether each is FULL (every pair allowed: no mask work) or PARTIAL (an element mask is applied).
Dense flash attention is the plan where every query block visits every key block as FULL; a
``kernels.masks.Mask`` gives the plan of its block layout, so EMPTY blocks cost nothing and the work and memory
grow with the number of allowed blocks, not with L x L. Nothing of size L x L is ever materialised: the
forward keeps FlashAttention's online softmax (running maximum, running sum, rescaled accumulator) and stores
the log-sum-exp per query; the backward recomputes the weights block by block (one kernel for dQ over the
query-major plan, one for dK and dV over its transpose; with ``atomic_dq`` the second also adds dQ up with
atomic adds and the first is not run).

Semantics are those of ``kernels.attention``: q [B, Lq, H, D], k/v [B, Lk, H, D] (Lq == Lk), ``kv_valid`` bool
[B, Lk] marks real keys, a query with no allowed key returns zeros (and gets zero gradients), logits and
softmax in float32 whatever the input dtype, the output in q's dtype. Attention dropout (``dropout_rate``,
``dropout_rng``) is applied inside the kernels with the counter-based bits of ``kernels.random_bits`` indexed
as the [B, H, Lq, Lk] weights, so ``impl="pallas"`` drops exactly the weights ``impl="xla"`` drops.

Lengths that are not a multiple of the block are padded in the wrapper (padded keys are invalid, padded
queries are dropped); head dims are padded to a multiple of 16 with zeros, which changes no dot product.
On CPU the kernels run with ``interpret=True`` (compiled by XLA, not a Python loop); on GPU they lower through
Pallas's Triton backend (``backend()`` says which ran): scalar loops over the plan, dot products of [block, D]
tiles, read from and written to the [B, L, H, D] arrays in place (a head's rows are a strided view; in interpret
mode the wrapper transposes to [B, H, L, D] instead, see ``kernel_layout``). ``kernels.flash_mgpu`` has the same
forward and backward for Mosaic GPU (the newer backend: TMA copies, WGMMA; [B, H, L, D]), selected with
``pallas_backend="mosaic_gpu"`` or $LRA_PALLAS_GPU_BACKEND.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from kernels import _pallas, hash_bits
from kernels import masks as masks_lib

NEG = -1e30  # "minus infinity" that keeps exp() and max() finite for rows with nothing allowed yet


# --------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of which blocks are visited (all numpy; hashable by identity through the cache).

    q_major: kidx [nq, S] key-block index per slot, kcnt [nq] slots used, kpart [nq, S] 1 where PARTIAL.
    k_major (for dK/dV): qidx [nk, T] query-block index per slot, qcnt [nk], qslot [nk, T] the slot of that
    (query block, key block) pair in the q-major arrays (to find its element mask), qpart [nk, T].
    emask: int8 [nq, S, block_q, block_k] element masks of the PARTIAL slots (None when there are none);
    emask_k: the same tiles in the k-major order, int8 [nk, T, block_q, block_k] (each program of the dK/dV
    kernel reads only its own row of tiles).
    """

    block_q: int
    block_k: int
    length: int
    kidx: np.ndarray
    kcnt: np.ndarray
    kpart: np.ndarray
    qidx: np.ndarray
    qcnt: np.ndarray
    qslot: np.ndarray
    qpart: np.ndarray
    emask: np.ndarray | None
    emask_k: np.ndarray | None

    @property
    def visited_blocks(self) -> int:
        return int(self.kcnt.sum())


def plan_from_layout(layout: np.ndarray, block_q: int, block_k: int, length: int, tiles=None) -> Plan:
    """Plan of an int8 block layout [nq, nk] of EMPTY/PARTIAL/FULL over a (padded) sequence of ``length``;
    ``tiles[i]`` (bool [block_q, nk, block_k]) holds the element mask of query block i, needed for the query
    blocks with a PARTIAL block."""
    nq, nk = layout.shape
    q_lists = [np.flatnonzero(layout[i] != masks_lib.EMPTY) for i in range(nq)]
    s = max(1, max(len(x) for x in q_lists))
    kidx = np.zeros((nq, s), np.int32)
    kcnt = np.zeros(nq, np.int32)
    kpart = np.zeros((nq, s), np.int32)
    slot_of = {}
    for i, used in enumerate(q_lists):
        kidx[i, : len(used)] = used
        kcnt[i] = len(used)
        kpart[i, : len(used)] = layout[i, used] == masks_lib.PARTIAL
        slot_of.update({(i, int(j)): n for n, j in enumerate(used)})
    emask = None
    if kpart.any():
        emask = np.zeros((nq, s, block_q, block_k), np.int8)
        for i in np.flatnonzero(kpart.any(axis=1)):
            for n in np.flatnonzero(kpart[i]):
                emask[i, n] = tiles[i][:, kidx[i, n], :]
    k_lists = [np.flatnonzero(layout[:, j] != masks_lib.EMPTY) for j in range(nk)]
    t = max(1, max(len(x) for x in k_lists))
    qidx = np.zeros((nk, t), np.int32)
    qcnt = np.zeros(nk, np.int32)
    qslot = np.zeros((nk, t), np.int32)
    qpart = np.zeros((nk, t), np.int32)
    for j, used in enumerate(k_lists):
        qidx[j, : len(used)] = used
        qcnt[j] = len(used)
        qslot[j, : len(used)] = [slot_of[(int(i), j)] for i in used]
        qpart[j, : len(used)] = layout[used, j] == masks_lib.PARTIAL
    emask_k = None
    if emask is not None:
        emask_k = np.zeros((nk, t, block_q, block_k), np.int8)
        for j in range(nk):
            for n in np.flatnonzero(qpart[j]):
                emask_k[j, n] = emask[qidx[j, n], qslot[j, n]]
    return Plan(block_q, block_k, length, kidx, kcnt, kpart, qidx, qcnt, qslot, qpart, emask, emask_k)


@functools.lru_cache(maxsize=64)
def mask_plan(mask: masks_lib.Mask | None, length: int, padded: int, block_q: int, block_k: int) -> Plan:
    """Plan of ``mask`` (None: dense) on a sequence of ``length``, laid on a grid padded to ``padded`` (a
    multiple of both blocks): the mask is evaluated at ``length`` (a BigBird pattern depends on it) and the
    padding is not allowed. Walks the mask one block of query rows at a time: O(block_q x L) memory."""
    nq, nk = padded // block_q, padded // block_k
    if mask is None or isinstance(mask, masks_lib.Full):  # padded keys are masked by kv_valid instead
        return plan_from_layout(np.full((nq, nk), masks_lib.FULL, np.int8), block_q, block_k, padded)
    layout = np.zeros((nq, nk), np.int8)
    tiles = {}
    for i in range(nq):
        q0, q1 = i * block_q, min((i + 1) * block_q, length)
        if q0 >= length:
            continue  # padded queries: nothing to compute, their output is dropped
        rows = np.zeros((block_q, padded), bool)
        rows[: q1 - q0, :length] = mask.rows(q0, q1, length, length)
        blocks = rows.reshape(block_q, nk, block_k)
        any_, all_ = blocks.any(axis=(0, 2)), blocks.all(axis=(0, 2))
        layout[i] = np.where(all_, masks_lib.FULL, np.where(any_, masks_lib.PARTIAL, masks_lib.EMPTY))
        if (layout[i] == masks_lib.PARTIAL).any():
            tiles[i] = blocks
    return plan_from_layout(layout, block_q, block_k, padded, tiles)


# --------------------------------------------------------------------------- in-kernel helpers


def _keep(seed_ref, b, h, q0, k0, block_q, block_k, num_heads, q_len, kv_len, threshold):
    """Dropout keep mask of the [block_q, block_k] tile at (q0, k0) of head h, batch b: the bits
    ``kernels.random_bits`` gives element (b, h, i, j) of a [B, H, q_len, kv_len] array."""
    i = lax.broadcasted_iota(jnp.uint32, (block_q, block_k), 0) + q0.astype(jnp.uint32)
    j = lax.broadcasted_iota(jnp.uint32, (block_q, block_k), 1) + k0.astype(jnp.uint32)
    row = (b * num_heads + h).astype(jnp.uint32)
    index = (row * jnp.uint32(q_len) + i) * jnp.uint32(kv_len) + j
    return hash_bits(index, seed_ref[0], seed_ref[1]) >= jnp.uint32(threshold)


def _dot(a, b, contract_a: int, contract_b: int):
    """a . b contracting the given axes of two 2-d tiles, accumulated in float32. Tiles keep the input dtype
    (bf16 tiles use the tensor cores); float32 tiles are multiplied at full precision (no TF32)."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 and b.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def _allowed(valid_ref, emask_ref, part, slot_or_pair, k0, block_q, block_k, has_valid, has_mask):
    allowed = jnp.ones((block_q, block_k), jnp.bool_)
    if has_mask:
        elem = emask_ref[slot_or_pair] != 0
        allowed = jnp.where(part != 0, elem, allowed)
    if has_valid:
        allowed = allowed & (valid_ref[pl.ds(k0, block_k)] != 0)[None, :]
    return allowed


# --------------------------------------------------------------------------- kernels


def _fwd_kernel(q_ref, k_ref, v_ref, valid_ref, kidx_ref, kcnt_ref, kpart_ref, emask_ref, seed_ref, o_ref, lse_ref,
                *, scale, block_q, block_k, has_valid, has_mask, rate, num_heads, q_len, kv_len):
    b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q = q_ref[...]
    d = q.shape[-1]
    threshold = int(round(rate * 2**32))
    factor = 2**32 / (2**32 - threshold) if rate > 0 else 1.0

    def body(n, carry):
        m, denom, acc = carry
        kb = kidx_ref[n]
        k0 = kb * block_k
        k = k_ref[pl.ds(k0, block_k), :]
        v = v_ref[pl.ds(k0, block_k), :]
        s = _dot(q, k, 1, 1) * scale
        allowed = _allowed(valid_ref, emask_ref, kpart_ref[n] if has_mask else 0, n, k0, block_q, block_k,
                           has_valid, has_mask)
        s = jnp.where(allowed, s, NEG)
        m_new = jnp.maximum(m, s.max(axis=-1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(allowed, jnp.exp(s - m_new[:, None]), 0.0)
        denom = alpha * denom + p.sum(axis=-1)
        if rate > 0:
            keep = _keep(seed_ref, b, h, i * block_q, k0, block_q, block_k, num_heads, q_len, kv_len, threshold)
            p = jnp.where(keep, p * factor, 0.0)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, 1, 0)
        return m_new, denom, acc

    init = (jnp.full((block_q,), NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
            jnp.zeros((block_q, d), jnp.float32))
    m, denom, acc = lax.fori_loop(0, kcnt_ref[0], body, init)
    ok = denom > 0
    safe = jnp.where(ok, denom, 1.0)
    o_ref[...] = jnp.where(ok[:, None], acc / safe[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(ok, m + jnp.log(safe), 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, valid_ref, kidx_ref, kcnt_ref, kpart_ref, emask_ref,
               seed_ref, dq_ref, *, scale, block_q, block_k, has_valid, has_mask, rate, num_heads, q_len, kv_len):
    b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q = q_ref[...]
    do = do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    threshold = int(round(rate * 2**32))
    factor = 2**32 / (2**32 - threshold) if rate > 0 else 1.0

    def body(n, dq):
        k0 = kidx_ref[n] * block_k
        k = k_ref[pl.ds(k0, block_k), :]
        v = v_ref[pl.ds(k0, block_k), :]
        s = _dot(q, k, 1, 1) * scale
        allowed = _allowed(valid_ref, emask_ref, kpart_ref[n] if has_mask else 0, n, k0, block_q, block_k,
                           has_valid, has_mask)
        p = jnp.where(allowed, jnp.exp(s - lse[:, None]), 0.0)
        dp = _dot(do, v, 1, 1)
        if rate > 0:
            keep = _keep(seed_ref, b, h, i * block_q, k0, block_q, block_k, num_heads, q_len, kv_len, threshold)
            dp = jnp.where(keep, dp * factor, 0.0)
        ds = p * (dp - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k, 1, 0)

    dq = lax.fori_loop(0, kcnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, valid_ref, qidx_ref, qcnt_ref, qpart_ref,
                 emask_ref, seed_ref, *outs, scale, block_q, block_k, has_valid, has_mask, rate, num_heads, q_len,
                 kv_len, atomic_dq=False):
    """dK and dV of one key block over its visited query blocks; with ``atomic_dq`` it also adds each block's
    share of dQ (dS K) into a float32 dQ accumulator with atomic adds (FlashAttention-2's backward: five
    products per block pair instead of the seven of a separate dQ kernel, which recomputes S and dP)."""
    if atomic_dq:
        pltriton = _triton_module()  # its atomics also run in interpret mode
        _, dk_ref, dv_ref, dq_ref = outs  # the first is the zero-filled accumulator's input, aliased to dq_ref
    else:
        dk_ref, dv_ref = outs
    b, h, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    k0 = j * block_k
    k = k_ref[...]
    v = v_ref[...]
    threshold = int(round(rate * 2**32))
    factor = 2**32 / (2**32 - threshold) if rate > 0 else 1.0
    if has_valid:
        key_ok = (valid_ref[pl.ds(k0, block_k)] != 0)[None, :]

    def body(n, carry):
        dk, dv = carry
        qb = qidx_ref[n]
        q0 = qb * block_q
        q = q_ref[pl.ds(q0, block_q), :]
        do = do_ref[pl.ds(q0, block_q), :]
        lse = lse_ref[pl.ds(q0, block_q)]
        delta = delta_ref[pl.ds(q0, block_q)]
        s = _dot(q, k, 1, 1) * scale
        allowed = jnp.ones((block_q, block_k), jnp.bool_)
        if has_mask:
            allowed = jnp.where(qpart_ref[n] != 0, emask_ref[n] != 0, allowed)
        if has_valid:
            allowed = allowed & key_ok
        p = jnp.where(allowed, jnp.exp(s - lse[:, None]), 0.0)
        dp = _dot(do, v, 1, 1)
        if rate > 0:
            keep = _keep(seed_ref, b, h, q0, k0, block_q, block_k, num_heads, q_len, kv_len, threshold)
            p_drop = jnp.where(keep, p * factor, 0.0)
            dp = jnp.where(keep, dp * factor, 0.0)
        else:
            p_drop = p
        dv = dv + _dot(p_drop.astype(do.dtype), do, 0, 0)
        ds = p * (dp - delta[:, None])
        dk = dk + _dot(ds.astype(q.dtype), q, 0, 0)
        if atomic_dq:
            pltriton.atomic_add(dq_ref, (pl.ds(q0, block_q), slice(None)), _dot(ds.astype(k.dtype), k, 1, 0) * scale)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, qcnt_ref[0], body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# --------------------------------------------------------------------------- pallas_call wrappers


@dataclasses.dataclass(frozen=True)
class _Static:
    plan: Plan
    scale: float
    rate: float
    q_len: int        # the unpadded lengths (dropout bits are indexed on them)
    kv_len: int
    has_valid: bool
    interpret: bool
    forward: str = "triton"  # which kernels run: "triton" (this module's) or "mosaic_gpu" (kernels.flash_mgpu)
    num_warps: int = 4       # Triton compiler parameters of the three kernels (GPU only)
    num_stages: int = 2
    atomic_dq: bool = False  # Triton backward: dQ by atomic adds in the dK/dV kernel instead of its own kernel
    layout: str = "BHLD"     # of q/k/v, out and the gradients (``kernel_layout``)
    plan_bwd: Plan | None = None  # the backward kernels' plan when their blocks differ from the forward's

    @property
    def backward_plan(self) -> Plan:
        return self.plan if self.plan_bwd is None else self.plan_bwd

    def _key(self):
        return (self.scale, self.rate, self.q_len, self.kv_len, self.has_valid, self.interpret, self.forward,
                self.num_warps, self.num_stages, self.atomic_dq, self.layout)

    def compiler_params(self):
        return compiler_params(self.interpret, self.num_warps, self.num_stages)

    def __hash__(self):
        return id(self.plan) ^ id(self.plan_bwd) ^ hash(self._key())

    def __eq__(self, other):
        return (isinstance(other, _Static) and self.plan is other.plan and self.plan_bwd is other.plan_bwd
                and self._key() == other._key())


def _common_kwargs(st: _Static, num_heads: int, plan: Plan):
    return dict(scale=st.scale, block_q=plan.block_q, block_k=plan.block_k, has_valid=st.has_valid,
                has_mask=plan.emask is not None, rate=st.rate, num_heads=num_heads, q_len=st.q_len,
                kv_len=st.kv_len)


def _full(shape):
    """BlockSpec of a whole [B, H, ...] array's (b, h) slice."""
    return pl.BlockSpec((None, None, *shape), lambda b, h, i: (b, h) + (0,) * len(shape))


def _tile(rows: int, d: int, layout: str):
    """BlockSpec of rows [i * rows, (i + 1) * rows) of head h, batch b, of a q/k/v-shaped array in ``layout``."""
    if layout == "BLHD":
        return pl.BlockSpec((None, rows, None, d), lambda b, h, i: (b, i, h, 0))
    return pl.BlockSpec((None, None, rows, d), lambda b, h, i: (b, h, i, 0))


def kernel_layout(interpret: bool, backend: str) -> str:
    """The layout of q/k/v (and of the output and gradients) that the kernels read and write. "BLHD", the model's
    own, for the Triton kernels on GPU: a head's rows are a strided view, so no transposes run around the
    kernels. "BHLD" (transposed in the wrapper) for Mosaic GPU, whose TMA tiles are taken from [B*H, L, D], and
    in interpret mode, where strided slices cost more than the transposes (on the 2-core CPU, Local window 128
    at 4K, forward+backward, two runs back to back: 102 and 112 ms in BHLD, 116 and 127 ms in BLHD)."""
    return "BLHD" if backend == "triton" and not interpret else "BHLD"


def _meta_specs(plan: Plan, major: str):
    """Specs of the plan arrays, the element masks and the seed: each program gets row i (query block) of the
    q-major arrays or row j (key block) of the k-major ones."""
    if major == "q":
        s = plan.kidx.shape[1]
        emask_tile = plan.emask.shape[1:] if plan.emask is not None else (1, 1, 1)
        row = pl.BlockSpec((None, s), lambda b, h, i: (i, 0))
        specs = [row, pl.BlockSpec((1,), lambda b, h, i: (i,)), row]
    else:
        t = plan.qidx.shape[1]
        emask_tile = plan.emask_k.shape[1:] if plan.emask_k is not None else (1, 1, 1)
        row = pl.BlockSpec((None, t), lambda b, h, j: (j, 0))
        specs = [row, pl.BlockSpec((1,), lambda b, h, j: (j,)), row]
    specs.append(pl.BlockSpec((None, *emask_tile), lambda b, h, i: (i if plan.emask is not None else 0, 0, 0, 0)))
    specs.append(pl.BlockSpec((2,), lambda b, h, i: (0,)))
    return specs


def _meta_arrays(plan: Plan, major: str):
    none = jnp.zeros((1, 1, 1, 1), jnp.int8)
    if major == "q":
        emask = jnp.asarray(plan.emask) if plan.emask is not None else none
        return [jnp.asarray(plan.kidx), jnp.asarray(plan.kcnt), jnp.asarray(plan.kpart), emask]
    emask = jnp.asarray(plan.emask_k) if plan.emask_k is not None else none
    return [jnp.asarray(plan.qidx), jnp.asarray(plan.qcnt), jnp.asarray(plan.qpart), emask]


def _dims(x, layout: str):
    """(B, L, H, D) of a q/k/v-shaped array in ``layout``."""
    b, one, two, d = x.shape
    return (b, one, two, d) if layout == "BLHD" else (b, two, one, d)


def _forward(q, k, v, valid, seed, st: _Static):
    """q/k/v padded, in ``st.layout``, valid int32 [B, L], seed uint32 [2] -> (out in q's layout, lse f32
    [B, H, L])."""
    if st.forward == "mosaic_gpu":
        from kernels import flash_mgpu

        return flash_mgpu.forward(q, k, v, valid, st.plan, scale=st.scale, has_valid=st.has_valid,
                                  interpret=st.interpret)
    b, length, h, d = _dims(q, st.layout)
    plan = st.plan
    bq = plan.block_q
    grid = (b, h, length // bq)
    kernel = functools.partial(_fwd_kernel, **_common_kwargs(st, h, plan))
    whole = _tile(length, d, st.layout)
    in_specs = [_tile(bq, d, st.layout), whole, whole, pl.BlockSpec((None, length), lambda b, h, i: (b, 0)),
                *_meta_specs(plan, "q")]
    out_specs = [_tile(bq, d, st.layout), pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, length), jnp.float32)]
    call = _pallas.call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                        interpret=st.interpret, compiler_params=st.compiler_params(), name="flash_fwd")
    return call(q, k, v, valid, *_meta_arrays(plan, "q"), seed)


def _backward(q, k, v, out, lse, do, valid, seed, st: _Static):
    if st.forward == "mosaic_gpu":
        from kernels import flash_mgpu

        return flash_mgpu.backward(q, k, v, out, lse, do, valid, st.backward_plan, scale=st.scale,
                                   has_valid=st.has_valid, interpret=st.interpret)
    b, length, h, d = _dims(q, st.layout)
    plan = st.backward_plan
    bq, bk = plan.block_q, plan.block_k
    delta = jnp.einsum("blhd,blhd->bhl" if st.layout == "BLHD" else "bhld,bhld->bhl", do.astype(jnp.float32),
                       out.astype(jnp.float32))
    kw = _common_kwargs(st, h, plan)
    tile_q, tile_k, whole = (_tile(n, d, st.layout) for n in (bq, bk, length))
    row_q = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    valid_spec = pl.BlockSpec((None, length), lambda b, h, i: (b, 0))
    dkdv_in = [whole, tile_k, tile_k, whole, _full((length,)), _full((length,)), valid_spec,
               *_meta_specs(plan, "k")]
    dkdv_args = [q, k, v, do, lse, delta, valid, *_meta_arrays(plan, "k"), seed]
    if st.atomic_dq:
        n_in = len(dkdv_in)
        dk, dv, dq = _pallas.call(
            functools.partial(_dkdv_kernel, **kw, atomic_dq=True), grid=(b, h, length // bk),
            in_specs=[*dkdv_in, whole], out_specs=[tile_k, tile_k, whole],
            out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2 + [jax.ShapeDtypeStruct(q.shape, jnp.float32)],
            input_output_aliases={n_in: 2}, interpret=st.interpret, compiler_params=st.compiler_params(),
            name="flash_dkdv_dq",
        )(*dkdv_args, jnp.zeros(q.shape, jnp.float32))
        return dq.astype(q.dtype), dk, dv
    dq = _pallas.call(
        functools.partial(_dq_kernel, **kw), grid=(b, h, length // bq),
        in_specs=[tile_q, whole, whole, tile_q, row_q, row_q, valid_spec, *_meta_specs(plan, "q")],
        out_specs=tile_q, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=st.interpret,
        compiler_params=st.compiler_params(), name="flash_dq",
    )(q, k, v, do, lse, delta, valid, *_meta_arrays(plan, "q"), seed)
    dk, dv = _pallas.call(
        functools.partial(_dkdv_kernel, **kw), grid=(b, h, length // bk), in_specs=dkdv_in,
        out_specs=[tile_k, tile_k], out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
        interpret=st.interpret, compiler_params=st.compiler_params(), name="flash_dkdv",
    )(*dkdv_args)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, valid, seed, st):
    return _forward(q, k, v, valid, seed, st)[0]


def _flash_fwd(q, k, v, valid, seed, st):
    out, lse = _forward(q, k, v, valid, seed, st)
    return out, (q, k, v, valid, seed, out, lse)


def _flash_bwd(st, res, do):
    q, k, v, valid, seed, out, lse = res
    dq, dk, dv = _backward(q, k, v, out, lse, do, valid, seed, st)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
# Called outside jit (tests, notebooks), a pallas_call is traced and compiled again at every call; under this
# jit, keyed by the static settings (whose plans mask_plan caches), it compiles once per shape and setting.
_flash_jit = jax.jit(_flash, static_argnums=(5,))


# --------------------------------------------------------------------------- public entry point


GPU_BACKENDS = ("triton", "mosaic_gpu")


def gpu_backend(name: str | None = None) -> str:
    """The kernels' GPU backend: ``name``, else $LRA_PALLAS_GPU_BACKEND, else "triton" (this module's kernels).
    "mosaic_gpu" runs ``kernels.flash_mgpu``'s forward and backward (bf16/f16, blocks 64 or 128, no dropout)."""
    name = name or os.environ.get("LRA_PALLAS_GPU_BACKEND") or "triton"
    if name not in GPU_BACKENDS:
        raise ValueError(f"Pallas GPU backend must be one of {GPU_BACKENDS}, got {name!r} "
                         "(argument pallas_backend or $LRA_PALLAS_GPU_BACKEND)")
    return name


def backend(interpret: bool | None = None, pallas_backend: str | None = None) -> str:
    """Which Pallas backend the kernels use here: "interpret" (CPU), "triton" (GPU), "mosaic_gpu" (GPU, the
    kernels of ``kernels.flash_mgpu``) or "interpret:mosaic_gpu" (those in Pallas's GPU interpreter on CPU)."""
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    name = gpu_backend(pallas_backend)
    if interpret:
        return "interpret" if name == "triton" else "interpret:" + name
    return name


def compiler_params(interpret: bool, num_warps: int = 4, num_stages: int = 2):
    """Triton compiler parameters on GPU (so the Triton backend is used even where Mosaic GPU is the
    default); None in interpret mode."""
    if interpret:
        return None
    return _triton_module().CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _triton_module():
    """``jax.experimental.pallas.triton``, or an error that says what to use where a JAX no longer has it
    (JAX 0.11 deprecated the Triton backend; 0.12 still has it)."""
    try:
        from jax.experimental.pallas import triton as pltriton
    except ImportError as e:
        raise ImportError(f"JAX {jax.__version__} has no Pallas Triton backend ({e}); run the Mosaic GPU kernels "
                          "instead: LRA_PALLAS_GPU_BACKEND=mosaic_gpu (or pallas_backend='mosaic_gpu'), or "
                          "impl=xla") from e
    return pltriton


def default_block(length: int, mask: masks_lib.Mask | None = None, minimum: int = 16) -> int:
    """128, or the next power of two >= length for shorter sequences; for a Local(window) mask the next power
    of two >= window when smaller (a 128-wide block around a window of 32 visits about twice the pairs a 32-wide
    one does: 90 vs 55 ms forward+backward at 4K on the 2-core CPU). Never below ``minimum``."""
    block = min(128, 1 << max(0, math.ceil(math.log2(max(length, 1)))))
    if isinstance(mask, masks_lib.Local):
        block = min(block, 1 << max(0, math.ceil(math.log2(max(mask.window, 1)))))
    return max(minimum, 16, block)


def flash_attention(q, k, v, *, mask: masks_lib.Mask | None = None, kv_valid=None, scale: float | None = None,
                    block_q: int | None = None, block_k: int | None = None, dropout_rate: float = 0.0,
                    dropout_rng=None, interpret: bool | None = None, pallas_backend: str | None = None,
                    num_warps: int | None = None, num_stages: int | None = None, atomic_dq: bool = False,
                    block_q_bwd: int | None = None, block_k_bwd: int | None = None):
    """Softmax attention with the Pallas kernels: dense (``mask`` None or Full) or block-sparse (any other
    ``kernels.masks.Mask``; a Strided mask is first permuted so each stride class is contiguous, and its
    dropout bits then index the permuted order).

    q, k, v [B, L, H, D] with the same L; kv_valid bool [B, L]; returns [B, L, H, D] in q's dtype. Equals
    ``kernels.attention(..., impl="xla")`` with the same arguments. ``interpret`` defaults to True on CPU.
    ``pallas_backend`` ("triton" or "mosaic_gpu", default $LRA_PALLAS_GPU_BACKEND or "triton") picks the
    kernels (see ``gpu_backend``); in interpret mode the Mosaic GPU ones run in Pallas's GPU interpreter.
    ``num_warps`` and ``num_stages`` (default 4 and 2) are the Triton kernels' compiler parameters, for tuning
    on a GPU (``python -m lra.bench_kernels --num-warps 4 8 --num-stages 2 3``); the Mosaic GPU kernels have a
    fixed layout (one warpgroup per program) and take neither. ``atomic_dq`` computes dQ inside the dK/dV kernel
    with float32 atomic adds instead of in a kernel of its own (fewer products, not bitwise reproducible on a GPU;
    Triton only). ``block_q_bwd`` / ``block_k_bwd`` (default: the forward's blocks) are the backward kernels'
    blocks: its tiles hold more float32 state per pair than the forward's (scores, probabilities and their
    gradients), so smaller blocks can avoid register spills on a GPU.
    """
    from kernels import check_inputs, static_scale

    check_inputs(q, k, v, kv_valid=kv_valid, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                 same_value_dim=True)
    b, length, h, d = q.shape
    if k.shape[1] != length or v.shape[1] != length:
        raise ValueError(f"impl='pallas' needs keys as long as queries; got q {q.shape}, k {k.shape}, v {v.shape}")
    if mask is not None and not isinstance(mask, masks_lib.Mask):
        raise ValueError("impl='pallas' takes a kernels.masks.Mask (a static pattern), not a mask array; use "
                         "impl='xla' for array masks")
    if isinstance(mask, masks_lib.Strided):
        return _strided(q, k, v, mask.stride, kv_valid=kv_valid, scale=scale, dropout_rate=dropout_rate,
                        dropout_rng=dropout_rng, interpret=interpret, pallas_backend=pallas_backend,
                        block_q=block_q, block_k=block_k, num_warps=num_warps, num_stages=num_stages,
                        atomic_dq=atomic_dq, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    q, scale = static_scale(q, scale)   # a traced scale is folded into q (the kernels take a constant)
    rate = float(dropout_rate) if dropout_rng is not None else 0.0   # in [0, 1): check_inputs
    forward = gpu_backend(pallas_backend)
    smallest = 64 if forward == "mosaic_gpu" else 16  # WGMMA tiles: 64 rows
    bq = block_q or default_block(length, mask, smallest)
    bk = block_k or default_block(length, mask, smallest)
    bqb, bkb = block_q_bwd or bq, block_k_bwd or bk
    for name, blk in (("block_q", bq), ("block_k", bk), ("block_q_bwd", bqb), ("block_k_bwd", bkb)):
        if blk < 1 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two, got {blk}")
    if forward == "mosaic_gpu" and (num_warps is not None or num_stages is not None or atomic_dq):
        raise ValueError("num_warps, num_stages and atomic_dq are settings of the Triton kernels; the Mosaic GPU "
                         "kernels take none (leave them unset)")
    if num_warps is not None and (num_warps < 1 or num_warps & (num_warps - 1)):
        raise ValueError(f"num_warps must be a power of two, got {num_warps}")
    if num_stages is not None and num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if forward == "mosaic_gpu":
        from kernels import flash_mgpu

        reason = flash_mgpu.supported(q.dtype, bq, bk, rate, d) or flash_mgpu.supported(q.dtype, bqb, bkb, rate, d)
        if reason:
            raise ValueError(f"{reason}; or use the Triton kernels: pallas_backend='triton' (or unset "
                             "$LRA_PALLAS_GPU_BACKEND)")
    multiple = math.lcm(bq, bk, bqb, bkb)
    padded = -(-length // multiple) * multiple
    plan = mask_plan(mask, length, padded, bq, bk)
    plan_bwd = None if (bqb, bkb) == (bq, bk) else mask_plan(mask, length, padded, bqb, bkb)
    has_valid = kv_valid is not None or padded != length
    valid = jnp.ones((b, length), jnp.int32) if kv_valid is None else jnp.asarray(kv_valid, bool).astype(jnp.int32)
    valid = jnp.pad(valid, ((0, 0), (0, padded - length)))
    seed = jax.random.bits(dropout_rng, (2,), jnp.uint32) if rate > 0 else jnp.zeros((2,), jnp.uint32)
    dp = max(16, 1 << (d - 1).bit_length())  # Triton tiles are powers of two
    layout = kernel_layout(bool(interpret), forward)

    def prep(x):
        x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, dp - d)))
        return x if layout == "BLHD" else jnp.transpose(x, (0, 2, 1, 3))

    st = _Static(plan, scale, rate, length, length, has_valid, bool(interpret), forward,
                 4 if num_warps is None else int(num_warps), 2 if num_stages is None else int(num_stages),
                 bool(atomic_dq), layout, plan_bwd)
    out = _flash_jit(prep(q), prep(k), prep(v), valid, seed, st)
    if layout == "BHLD":
        out = jnp.transpose(out, (0, 2, 1, 3))
    return out[:, :length, :, :d]


def _strided(q, k, v, stride, *, kv_valid, scale, dropout_rate, dropout_rng, interpret, pallas_backend, **triton):
    from kernels.block_sparse import strided_permutation

    length = q.shape[1]
    # Pad at the end to a multiple of the stride: every position keeps its residue class, padded keys are
    # invalid and padded queries are dropped.
    padded = -(-length // stride) * stride
    if padded != length:
        widths = ((0, 0), (0, padded - length), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        real = jnp.ones((q.shape[0], length), bool) if kv_valid is None else jnp.asarray(kv_valid, bool)
        kv_valid = jnp.pad(real, ((0, 0), (0, padded - length)))
    perm = strided_permutation(padded, stride)
    inverse = np.argsort(perm)
    valid = None if kv_valid is None else jnp.asarray(kv_valid)[:, perm]
    out = flash_attention(q[:, perm], k[:, perm], v[:, perm], mask=masks_lib.BlockLocal(padded // stride),
                          kv_valid=valid, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                          interpret=interpret, pallas_backend=pallas_backend, **triton)
    return out[:, inverse][:, :length]


__all__ = ["Plan", "plan_from_layout", "mask_plan", "flash_attention", "default_block", "backend", "gpu_backend",
           "kernel_layout",
           "GPU_BACKENDS", "compiler_params"]
