"""The flash / block-sparse kernels for Pallas's Mosaic GPU backend (Hopper: TMA + WGMMA), forward and backward.

``kernels.flash`` writes its kernels for Pallas's Triton backend, which JAX is deprecating in favour of Mosaic
GPU. This module runs the same plans (``flash.Plan``: EMPTY blocks skipped, FULL blocks unmasked, PARTIAL blocks
masked) on Mosaic GPU, one warpgroup per program:

* forward, one program per (query block, batch x head): the query tile is copied to shared memory once, then
  for each visited key block K^T and V tiles are copied by TMA into a double buffer (the next block is in flight
  while this one is computed), S = Q K^T and O += P V run on the tensor cores (``plgpu.wgmma``) with float32
  accumulators, the online softmax (running maximum, running sum, rescaled accumulator) in registers; it
  stores the output and the log-sum-exp.
* dQ, one program per query block, over the same q-major plan: S = Q K^T, P = exp(S - lse), dP = dO V^T,
  dQ += (P (dP - delta)) K.
* dK/dV, one program per key block, over the k-major plan, in the transposed orientation (S^T = K Q^T) so
  that every product reads natural layouts: dV += P^T dO, dK += dS^T Q.
PARTIAL blocks add a bfloat16 bias tile (0 allowed, -1e30 not; transposed for dK/dV) copied with the tiles;
key padding adds a bias row. Selected with ``flash_attention(..., pallas_backend="mosaic_gpu")`` or
$LRA_PALLAS_GPU_BACKEND=mosaic_gpu.

Limits, checked by ``supported``: bfloat16 or float16 inputs (WGMMA's operand types), block sizes 64 or 128,
no attention dropout. Operands that a product needs transposed (K^T, V^T, Q^T, dO^T) are passed transposed
from XLA, and P and dS go through shared memory: the form Pallas's GPU interpret mode runs on CPU, where the
tests run these kernels (``InterpretGPUParams``) against the XLA reference. The backward streams single
buffered tiles (it keeps more of them in shared memory). Written without a GPU: on a Hopper card they have
not been compiled yet (``scripts/gpu_check.sh`` runs their tests and timings there).
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

NEG = -1e30
DTYPES = (jnp.bfloat16, jnp.float16)
BLOCKS = (64, 128)


def interpret_params():
    """Pallas's GPU interpret mode (simulated shared memory, barriers and TMA on CPU), or None where this JAX
    has none."""
    try:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    except ImportError:  # pragma: no cover - depends on the JAX version
        return None
    return InterpretGPUParams()


SMEM_BYTES = 232448  # shared memory one Hopper block may use (what Mosaic GPU checks against)
SMEM_SLACK = 4096    # barriers and alignment on top of the tiles


def smem_bytes(block_q: int, block_k: int, head_dim: int) -> int:
    """Shared memory of the largest of the three kernels (forward, dQ, dK/dV) for these sizes (tiles only;
    barriers and alignment add a little)."""
    d = -(-head_dim // 64) * 64
    fwd = 2 * (2 * block_q * d + 4 * d * block_k + 3 * block_q * block_k) + 4 * (block_q + 2 * block_k)
    dq = 2 * (3 * block_q * d + 3 * d * block_k + 2 * block_q * block_k) + 4 * (2 * block_q + block_k)
    dkdv = 2 * (3 * block_k * d + 4 * d * block_q + 3 * block_k * block_q) + 4 * (block_k + 2 * block_q)
    return max(fwd, dq, dkdv)


def supported(dtype, block_q: int, block_k: int, rate: float, head_dim: int = 64) -> str | None:
    """None when the Mosaic GPU kernels can run this call, else the reason they cannot."""
    if jnp.dtype(dtype) not in [jnp.dtype(t) for t in DTYPES]:
        return f"Mosaic GPU attention needs bfloat16 or float16 inputs, got {jnp.dtype(dtype).name}"
    if block_q not in BLOCKS or block_k not in BLOCKS:
        return f"Mosaic GPU attention needs block_q and block_k in {BLOCKS}, got {block_q} and {block_k}"
    if rate > 0:
        return "Mosaic GPU attention has no attention dropout (use the Triton kernels, the default)"
    need = smem_bytes(block_q, block_k, head_dim) + SMEM_SLACK
    if need > SMEM_BYTES:
        return (f"Mosaic GPU attention with blocks {block_q}x{block_k} and head dim {head_dim} needs about "
                f"{need // 1024} KiB of shared memory (at most {SMEM_BYTES // 1024}); use block_q=block_k=64")
    return None


def _layout(x, layout, interpret: bool):
    # Register layouts are a compile-time notion of the Mosaic GPU lowering; the interpreter has none.
    return x if interpret else plgpu.layout_cast(x, layout)


# JAX 0.10's plgpu.load takes the index as a required argument; JAX 0.11 deprecates passing it and JAX 0.12
# has no such parameter.
_LOAD_IDX = inspect.signature(plgpu.load).parameters.get("idx")
_LOAD_NEEDS_INDEX = _LOAD_IDX is not None and _LOAD_IDX.default is inspect.Parameter.empty


def _load(ref, layout, interpret: bool):
    if interpret:
        return ref[...]
    return plgpu.load(ref, (), layout=layout) if _LOAD_NEEDS_INDEX else plgpu.load(ref, layout=layout)


def _tile(shape, dtype):
    """A shared-memory tile in the layout TMA and WGMMA read: 8 x 64 tiling, 128-byte swizzle."""
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)))


def _program(axis: str, num_heads: int):
    """(block index along ``axis``, batch x head index, batch index) of this program."""
    bh = lax.axis_index("bh")
    return lax.axis_index(axis), bh, lax.div(bh, jnp.int32(num_heads))


def _mma(a_smem, b_smem, shape):
    """a @ b of two shared-memory tiles on the tensor cores, float32 result in registers."""
    def run(acc):
        plgpu.wgmma(acc, a_smem, b_smem)
        return acc[...]

    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def _kernel(q_gmem, kt_gmem, v_gmem, kbias_gmem, bias_gmem, kidx_gmem, kcnt_gmem, o_gmem, lse_gmem, *,
            scale, block_q, block_k, head_dim, num_heads, has_kbias, has_bias, interpret):
    i, bh, b = _program("q", num_heads)
    dtype = q_gmem.dtype

    def scoped(q_smem, kt_smem, v_smem, p_smem, o_smem, lse_smem, kbias_smem, bias_smem,
               q_bar, k_bar, v_bar, kbias_bar, bias_bar):
        count = kcnt_gmem[i]

        def issue(n, slot):
            k0 = kidx_gmem[i, n] * block_k
            plgpu.copy_gmem_to_smem(kt_gmem.at[bh, :, pl.ds(k0, block_k)], kt_smem.at[slot], k_bar.at[slot])
            plgpu.copy_gmem_to_smem(v_gmem.at[bh, pl.ds(k0, block_k)], v_smem.at[slot], v_bar.at[slot])
            if has_kbias:
                plgpu.copy_gmem_to_smem(kbias_gmem.at[b, pl.ds(k0, block_k)], kbias_smem.at[slot],
                                        kbias_bar.at[slot])
            if has_bias:
                plgpu.copy_gmem_to_smem(bias_gmem.at[i, n], bias_smem.at[slot], bias_bar.at[slot])

        plgpu.copy_gmem_to_smem(q_gmem.at[bh, pl.ds(i * block_q, block_q)], q_smem, q_bar)

        @pl.when(count > 0)
        def _():
            issue(0, 0)

        plgpu.barrier_wait(q_bar)

        def step(n, carry):
            acc, m, denom = carry
            slot = lax.rem(n, 2)

            @pl.when(n + 1 < count)
            def _():  # the other buffer was released when step n - 1 finished its products
                issue(n + 1, 1 - slot)

            plgpu.barrier_wait(k_bar.at[slot])

            s = _mma(q_smem, kt_smem.at[slot], (block_q, block_k)) * scale
            if has_kbias:
                plgpu.barrier_wait(kbias_bar.at[slot])
                row = _load(kbias_smem.at[slot], plgpu.Layout.WGMMA.reduce(0), interpret)
                s = s + lax.broadcast_in_dim(row, s.shape, [1])
            if has_bias:
                plgpu.barrier_wait(bias_bar.at[slot])
                s = s + _load(bias_smem.at[slot], plgpu.Layout.WGMMA, interpret).astype(jnp.float32)
            allowed = s > NEG / 2
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp(m - m_new)
            p = jnp.where(allowed, jnp.exp(s - lax.broadcast_in_dim(m_new, s.shape, [0])), 0.0)
            denom = alpha * denom + p.sum(axis=1)
            p_smem[...] = p.astype(dtype)
            plgpu.commit_smem()
            plgpu.barrier_wait(v_bar.at[slot])

            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0]) + _mma(p_smem, v_smem.at[slot],
                                                                           (block_q, head_dim))
            return acc, m_new, denom

        rows = plgpu.Layout.WGMMA.reduce(1)
        init = (_layout(jnp.zeros((block_q, head_dim), jnp.float32), plgpu.Layout.WGMMA, interpret),
                _layout(jnp.full((block_q,), NEG, jnp.float32), rows, interpret),
                _layout(jnp.zeros((block_q,), jnp.float32), rows, interpret))
        acc, m, denom = lax.fori_loop(0, count, step, init)
        ok = denom > 0
        safe = jnp.where(ok, denom, 1.0)
        o_smem[...] = jnp.where(lax.broadcast_in_dim(ok, acc.shape, [0]),
                                acc / lax.broadcast_in_dim(safe, acc.shape, [0]), 0.0).astype(dtype)
        lse_smem[...] = jnp.where(ok, m + jnp.log(safe), 0.0)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[bh, pl.ds(i * block_q, block_q)])
        plgpu.copy_smem_to_gmem(lse_smem, lse_gmem.at[bh, pl.ds(i * block_q, block_q)])
        plgpu.wait_smem_to_gmem(0)

    pl.run_scoped(
        scoped,
        _tile((block_q, head_dim), dtype),
        _tile((2, head_dim, block_k), dtype),
        _tile((2, block_k, head_dim), dtype),
        _tile((block_q, block_k), dtype),
        _tile((block_q, head_dim), dtype),
        plgpu.SMEM((block_q,), jnp.float32),
        plgpu.SMEM((2, block_k), jnp.float32),
        _tile((2, block_q, block_k), jnp.bfloat16),
        plgpu.Barrier(),
        *[plgpu.Barrier(num_barriers=2) for _ in range(4)],  # K, V, key bias, block bias: one per buffer
    )


def _fetch(copies, bars, first: int = 0):
    """Copy each (gmem view, smem ref) pair by TMA, each on its own barrier (bars[first], bars[first + 1], ...),
    then wait for all of them."""
    for c, (src, dst) in enumerate(copies):
        plgpu.copy_gmem_to_smem(src, dst, bars.at[first + c])
    for c in range(len(copies)):
        plgpu.barrier_wait(bars.at[first + c])


def _dq_kernel(q_gmem, do_gmem, lse_gmem, delta_gmem, kt_gmem, vt_gmem, k_gmem, kbias_gmem, bias_gmem, kidx_gmem,
               kcnt_gmem, dq_gmem, *, scale, block_q, block_k, head_dim, num_heads, has_kbias, has_bias,
               interpret):
    """dQ of one query block: over its visited key blocks, S = Q K^T, P = exp(S - lse), dP = dO V^T,
    dS = P (dP - delta), dQ += dS K."""
    i, bh, b = _program("q", num_heads)
    dtype = q_gmem.dtype
    rows = plgpu.Layout.WGMMA.reduce(1)

    def scoped(q_smem, do_smem, lse_smem, delta_smem, kt_smem, vt_smem, k_smem, kbias_smem, bias_smem, ds_smem,
               dq_smem, bars):
        qs = pl.ds(i * block_q, block_q)
        _fetch([(q_gmem.at[bh, qs], q_smem), (do_gmem.at[bh, qs], do_smem), (lse_gmem.at[bh, qs], lse_smem),
                (delta_gmem.at[bh, qs], delta_smem)], bars)
        lse = _load(lse_smem, rows, interpret)
        delta = _load(delta_smem, rows, interpret)

        def step(n, dq):
            ks = pl.ds(kidx_gmem[i, n] * block_k, block_k)
            copies = [(kt_gmem.at[bh, :, ks], kt_smem), (vt_gmem.at[bh, :, ks], vt_smem), (k_gmem.at[bh, ks], k_smem)]
            if has_kbias:
                copies.append((kbias_gmem.at[b, ks], kbias_smem))
            if has_bias:
                copies.append((bias_gmem.at[i, n], bias_smem))
            _fetch(copies, bars, 4)
            s = _mma(q_smem, kt_smem, (block_q, block_k)) * scale
            if has_kbias:
                s = s + lax.broadcast_in_dim(_load(kbias_smem, plgpu.Layout.WGMMA.reduce(0), interpret), s.shape, [1])
            if has_bias:
                s = s + _load(bias_smem, plgpu.Layout.WGMMA, interpret).astype(jnp.float32)
            p = jnp.where(s > NEG / 2, jnp.exp(s - lax.broadcast_in_dim(lse, s.shape, [0])), 0.0)
            dp = _mma(do_smem, vt_smem, (block_q, block_k))
            ds_smem[...] = (p * (dp - lax.broadcast_in_dim(delta, s.shape, [0]))).astype(dtype)
            plgpu.commit_smem()
            return dq + _mma(ds_smem, k_smem, (block_q, head_dim))

        init = _layout(jnp.zeros((block_q, head_dim), jnp.float32), plgpu.Layout.WGMMA, interpret)
        dq = lax.fori_loop(0, kcnt_gmem[i], step, init)
        dq_smem[...] = (dq * scale).astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dq_smem, dq_gmem.at[bh, qs])
        plgpu.wait_smem_to_gmem(0)

    pl.run_scoped(
        scoped, _tile((block_q, head_dim), dtype), _tile((block_q, head_dim), dtype),
        plgpu.SMEM((block_q,), jnp.float32), plgpu.SMEM((block_q,), jnp.float32),
        _tile((head_dim, block_k), dtype), _tile((head_dim, block_k), dtype), _tile((block_k, head_dim), dtype),
        plgpu.SMEM((block_k,), jnp.float32), _tile((block_q, block_k), jnp.bfloat16), _tile((block_q, block_k), dtype),
        _tile((block_q, head_dim), dtype), plgpu.Barrier(num_barriers=9),
    )


def _dkdv_kernel(k_gmem, v_gmem, kbias_gmem, qt_gmem, dot_gmem, q_gmem, do_gmem, lse_gmem, delta_gmem, bias_gmem,
                 qidx_gmem, qcnt_gmem, dk_gmem, dv_gmem, *, scale, block_q, block_k, head_dim, num_heads,
                 has_kbias, has_bias, interpret):
    """dK and dV of one key block, in the transposed orientation so every product reads natural layouts: over
    its visited query blocks, S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
    dV += P^T dO, dK += dS^T Q."""
    j, bh, b = _program("k", num_heads)
    dtype = k_gmem.dtype
    cols = plgpu.Layout.WGMMA.reduce(0)
    shape = (block_k, block_q)

    def scoped(k_smem, v_smem, kbias_smem, qt_smem, dot_smem, q_smem, do_smem, lse_smem, delta_smem, bias_smem,
               pt_smem, dst_smem, out_smem, bars):
        ks = pl.ds(j * block_k, block_k)
        resident = [(k_gmem.at[bh, ks], k_smem), (v_gmem.at[bh, ks], v_smem)]
        if has_kbias:
            resident.append((kbias_gmem.at[b, ks], kbias_smem))
        _fetch(resident, bars)
        if has_kbias:
            key_bias = lax.broadcast_in_dim(_load(kbias_smem, plgpu.Layout.WGMMA.reduce(1), interpret), shape, [0])

        def step(n, carry):
            dk, dv = carry
            qs = pl.ds(qidx_gmem[j, n] * block_q, block_q)
            copies = [(qt_gmem.at[bh, :, qs], qt_smem), (dot_gmem.at[bh, :, qs], dot_smem), (q_gmem.at[bh, qs], q_smem),
                      (do_gmem.at[bh, qs], do_smem), (lse_gmem.at[bh, qs], lse_smem),
                      (delta_gmem.at[bh, qs], delta_smem)]
            if has_bias:
                copies.append((bias_gmem.at[j, n], bias_smem))
            _fetch(copies, bars, 3)
            st = _mma(k_smem, qt_smem, shape) * scale
            if has_kbias:
                st = st + key_bias
            if has_bias:
                st = st + _load(bias_smem, plgpu.Layout.WGMMA, interpret).astype(jnp.float32)
            lse = lax.broadcast_in_dim(_load(lse_smem, cols, interpret), shape, [1])
            delta = lax.broadcast_in_dim(_load(delta_smem, cols, interpret), shape, [1])
            pt = jnp.where(st > NEG / 2, jnp.exp(st - lse), 0.0)
            dpt = _mma(v_smem, dot_smem, shape)
            pt_smem[...] = pt.astype(dtype)
            dst_smem[...] = (pt * (dpt - delta)).astype(dtype)
            plgpu.commit_smem()
            dv = dv + _mma(pt_smem, do_smem, (block_k, head_dim))
            dk = dk + _mma(dst_smem, q_smem, (block_k, head_dim))
            return dk, dv

        zeros = _layout(jnp.zeros((block_k, head_dim), jnp.float32), plgpu.Layout.WGMMA, interpret)
        dk, dv = lax.fori_loop(0, qcnt_gmem[j], step, (zeros, zeros))
        for value, dst in ((dk * scale, dk_gmem), (dv, dv_gmem)):
            out_smem[...] = value.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(out_smem, dst.at[bh, ks])
            plgpu.wait_smem_to_gmem(0)

    pl.run_scoped(
        scoped, _tile((block_k, head_dim), dtype), _tile((block_k, head_dim), dtype),
        plgpu.SMEM((block_k,), jnp.float32),
        _tile((head_dim, block_q), dtype), _tile((head_dim, block_q), dtype), _tile((block_q, head_dim), dtype),
        _tile((block_q, head_dim), dtype), plgpu.SMEM((block_q,), jnp.float32), plgpu.SMEM((block_q,), jnp.float32),
        _tile(shape, jnp.bfloat16), _tile(shape, dtype), _tile(shape, dtype), _tile((block_k, head_dim), dtype),
        plgpu.Barrier(num_barriers=10),
    )


def plan_bias(plan, major: str = "q") -> np.ndarray | None:
    """Bias tiles of the PARTIAL blocks: 0 where a visited pair is allowed, -1e30 where the block's element mask
    forbids it (bfloat16 holds that; float16 would not). major "q": [nq, S, block_q, block_k] in the q-major
    slot order of the forward and dQ; "k": [nk, T, block_k, block_q], transposed, in the k-major order of dK/dV.
    None when the plan has no PARTIAL block."""
    if plan.emask is None:
        return None
    if major == "q":
        partial, emask = plan.kpart[:, :, None, None] != 0, plan.emask
    else:
        partial, emask = plan.qpart[:, :, None, None] != 0, np.swapaxes(plan.emask_k, 2, 3)
    return np.where(partial & (emask == 0), NEG, 0.0).astype(np.float32)


def _prep(q, valid):
    b, h, length, d = q.shape
    dp = -(-d // 64) * 64  # shared-memory tiles are swizzled in rows of 64 two-byte elements

    def flat(x):
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, dp - d))).reshape(b * h, length, dp)

    kbias = jnp.where(valid != 0, 0.0, NEG).astype(jnp.float32)
    return dp, flat, kbias


def _bias_array(plan, major):
    bias = plan_bias(plan, major)
    if bias is None:
        return jnp.zeros((1, 1, 64, 64), jnp.bfloat16)
    return jnp.asarray(bias, jnp.bfloat16)


def forward(q, k, v, valid, plan, *, scale: float, has_valid: bool, interpret: bool):
    """q/k/v [B, H, L, D] (L a multiple of the blocks), valid int32 [B, L] -> (out [B, H, L, D] in q's dtype,
    lse float32 [B, H, L]), as ``flash._forward`` without dropout."""
    b, h, length, d = q.shape
    dp, flat, kbias = _prep(q, valid)
    kernel = functools.partial(
        _kernel, scale=scale, block_q=plan.block_q, block_k=plan.block_k, head_dim=dp, num_heads=h,
        has_kbias=has_valid, has_bias=plan.emask is not None, interpret=interpret)
    call = plgpu.kernel(
        kernel,
        out_type=[jax.ShapeDtypeStruct((b * h, length, dp), q.dtype),
                  jax.ShapeDtypeStruct((b * h, length), jnp.float32)],
        grid=(length // plan.block_q, b * h), grid_names=("q", "bh"),
        interpret=interpret_params() if interpret else None,
    )
    out, lse = call(flat(q), jnp.swapaxes(flat(k), 1, 2), flat(v), kbias, _bias_array(plan, "q"),
                    jnp.asarray(plan.kidx), jnp.asarray(plan.kcnt))
    return out.reshape(b, h, length, dp)[..., :d], lse.reshape(b, h, length)


def backward(q, k, v, out, lse, do, valid, plan, *, scale: float, has_valid: bool, interpret: bool):
    """(dq, dk, dv) [B, H, L, D] of ``forward``'s output for the cotangent ``do``, as ``flash._backward``."""
    b, h, length, d = q.shape
    dp, flat, kbias = _prep(q, valid)
    delta = jnp.einsum("bhld,bhld->bhl", do.astype(jnp.float32), out.astype(jnp.float32)).reshape(b * h, length)
    lse = lse.reshape(b * h, length)
    qf, kf, vf, dof = flat(q), flat(k), flat(v), flat(do)
    t = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
    kw = dict(scale=scale, block_q=plan.block_q, block_k=plan.block_k, head_dim=dp, num_heads=h,
              has_kbias=has_valid, has_bias=plan.emask is not None, interpret=interpret)
    params = interpret_params() if interpret else None
    tile = jax.ShapeDtypeStruct((b * h, length, dp), q.dtype)
    dq = plgpu.kernel(functools.partial(_dq_kernel, **kw), out_type=tile, grid=(length // plan.block_q, b * h),
                      grid_names=("q", "bh"), interpret=params)(
        qf, dof, lse, delta, t(kf), t(vf), kf, kbias, _bias_array(plan, "q"), jnp.asarray(plan.kidx),
        jnp.asarray(plan.kcnt))
    dk, dv = plgpu.kernel(functools.partial(_dkdv_kernel, **kw), out_type=[tile, tile],
                          grid=(length // plan.block_k, b * h), grid_names=("k", "bh"), interpret=params)(
        kf, vf, kbias, t(qf), t(dof), qf, dof, lse, delta, _bias_array(plan, "k"), jnp.asarray(plan.qidx),
        jnp.asarray(plan.qcnt))
    return tuple(x.reshape(b, h, length, dp)[..., :d] for x in (dq, dk, dv))


__all__ = ["forward", "backward", "supported", "plan_bias", "interpret_params", "DTYPES", "BLOCKS"]
