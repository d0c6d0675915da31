"""Forward pass of the flash / block-sparse kernel for Pallas's Mosaic GPU backend (Hopper: TMA + WGMMA).

``kernels.flash`` writes its kernels for Pallas's Triton backend, which JAX is deprecating in favour of Mosaic
GPU. This module is the same forward pass for Mosaic GPU: one program per (query block, batch x head), one
warpgroup; the query tile is copied to shared memory once, then for each key block the plan lists (the same
``flash.Plan``: EMPTY blocks skipped) K^T and V tiles are copied by TMA into a double buffer (the next block is
in flight while this one is computed), S = Q K^T and O += P V run on the tensor cores (``plgpu.wgmma``) with
float32 accumulators, and the online softmax (running maximum, running sum, rescaled accumulator) runs in
registers. PARTIAL blocks add a bias tile (0 allowed, -1e30 not) copied alongside K and V; key padding adds a
bias row. It returns the output and the log-sum-exp, so ``flash``'s backward kernels (Triton) complete the VJP.

Limits, checked by ``supported``: bfloat16 or float16 inputs (WGMMA's operand types), block sizes 64 or 128,
no attention dropout. K is passed transposed ([D, L] per head) so both products read their B operand in its
natural layout, and P goes through shared memory, the form Pallas's GPU interpret mode runs on CPU (where the
tests run it). Written without a GPU: on a Hopper card it has not been compiled yet (``scripts/gpu_check.sh``
runs it there); the CPU tests check it in ``InterpretGPUParams`` mode against the XLA reference.
"""
from __future__ import annotations

import functools

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


def supported(dtype, block_q: int, block_k: int, rate: float) -> str | None:
    """None when the Mosaic GPU forward can run this call, else the reason it cannot."""
    if jnp.dtype(dtype) not in [jnp.dtype(t) for t in DTYPES]:
        return f"Mosaic GPU attention needs bfloat16 or float16 inputs, got {jnp.dtype(dtype).name}"
    if block_q not in BLOCKS or block_k not in BLOCKS:
        return f"Mosaic GPU attention needs block_q and block_k in {BLOCKS}, got {block_q} and {block_k}"
    if rate > 0:
        return "Mosaic GPU attention has no attention dropout (use the Triton kernels, the default)"
    return None


def _layout(x, layout, interpret: bool):
    # Register layouts are a compile-time notion of the Mosaic GPU lowering; the interpreter has none.
    return x if interpret else plgpu.layout_cast(x, layout)


def _load(ref, layout, interpret: bool):
    return ref[...] if interpret else plgpu.load(ref, (), layout=layout)


def _kernel(q_gmem, kt_gmem, v_gmem, kbias_gmem, bias_gmem, kidx_gmem, kcnt_gmem, o_gmem, lse_gmem, *,
            scale, block_q, block_k, head_dim, num_heads, has_kbias, has_bias, interpret):
    i = lax.axis_index("q")
    bh = lax.axis_index("bh")
    b = lax.div(bh, jnp.int32(num_heads))
    dtype = q_gmem.dtype
    tiles = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))

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

            def qk(ref):
                plgpu.wgmma(ref, q_smem, kt_smem.at[slot])
                return ref[...]

            s = pl.run_scoped(qk, plgpu.ACC((block_q, block_k), jnp.float32)) * scale
            if has_kbias:
                plgpu.barrier_wait(kbias_bar.at[slot])
                row = _load(kbias_smem.at[slot], plgpu.Layout.WGMMA.reduce(0), interpret)
                s = s + lax.broadcast_in_dim(row, s.shape, [1])
            if has_bias:
                plgpu.barrier_wait(bias_bar.at[slot])
                s = s + _load(bias_smem.at[slot], plgpu.Layout.WGMMA, interpret)
            allowed = s > NEG / 2
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp(m - m_new)
            p = jnp.where(allowed, jnp.exp(s - lax.broadcast_in_dim(m_new, s.shape, [0])), 0.0)
            denom = alpha * denom + p.sum(axis=1)
            p_smem[...] = p.astype(dtype)
            plgpu.commit_smem()
            plgpu.barrier_wait(v_bar.at[slot])

            def pv(ref):
                plgpu.wgmma(ref, p_smem, v_smem.at[slot])
                return ref[...]

            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0]) + pl.run_scoped(
                pv, plgpu.ACC((block_q, head_dim), jnp.float32))
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
        plgpu.SMEM((block_q, head_dim), dtype, transforms=tiles),
        plgpu.SMEM((2, head_dim, block_k), dtype, transforms=tiles),
        plgpu.SMEM((2, block_k, head_dim), dtype, transforms=tiles),
        plgpu.SMEM((block_q, block_k), dtype, transforms=tiles),
        plgpu.SMEM((block_q, head_dim), dtype, transforms=tiles),
        plgpu.SMEM((block_q,), jnp.float32),
        plgpu.SMEM((2, block_k), jnp.float32),
        plgpu.SMEM((2, block_q, block_k), jnp.float32),
        plgpu.Barrier(),
        *[plgpu.Barrier(num_barriers=2) for _ in range(4)],  # K, V, key bias, block bias: one per buffer
    )


def plan_bias(plan) -> np.ndarray | None:
    """float32 [nq, S, block_q, block_k]: 0 where a visited pair is allowed, -1e30 where a PARTIAL block masks
    it; None when the plan has no PARTIAL block."""
    if plan.emask is None:
        return None
    partial = plan.kpart[:, :, None, None] != 0
    return np.where(partial & (plan.emask == 0), NEG, 0.0).astype(np.float32)


def forward(q, k, v, valid, plan, *, scale: float, has_valid: bool, interpret: bool):
    """q/k/v [B, H, L, D] (L a multiple of the blocks), valid int32 [B, L] -> (out [B, H, L, D] in q's dtype,
    lse float32 [B, H, L]), as ``flash._forward`` without dropout."""
    b, h, length, d = q.shape
    dp = -(-d // 64) * 64  # shared-memory tiles are swizzled in rows of 64 two-byte elements
    pad = ((0, 0), (0, 0), (0, 0), (0, dp - d))
    q3 = jnp.pad(q, pad).reshape(b * h, length, dp)
    kt = jnp.swapaxes(jnp.pad(k, pad).reshape(b * h, length, dp), 1, 2)
    v3 = jnp.pad(v, pad).reshape(b * h, length, dp)
    kbias = jnp.where(valid != 0, 0.0, NEG).astype(jnp.float32)
    bias = plan_bias(plan)
    bias_arr = jnp.asarray(bias) if bias is not None else jnp.zeros((1, 1, plan.block_q, plan.block_k), jnp.float32)
    kernel = functools.partial(
        _kernel, scale=scale, block_q=plan.block_q, block_k=plan.block_k, head_dim=dp, num_heads=h,
        has_kbias=has_valid, has_bias=bias is not None, interpret=interpret)
    call = plgpu.kernel(
        kernel,
        out_type=[jax.ShapeDtypeStruct((b * h, length, dp), q.dtype),
                  jax.ShapeDtypeStruct((b * h, length), jnp.float32)],
        grid=(length // plan.block_q, b * h), grid_names=("q", "bh"),
        interpret=interpret_params() if interpret else None,
    )
    out, lse = call(q3, kt, v3, kbias, bias_arr, jnp.asarray(plan.kidx), jnp.asarray(plan.kcnt))
    return out.reshape(b, h, length, dp)[..., :d], lse.reshape(b, h, length)


__all__ = ["forward", "supported", "plan_bias", "interpret_params", "DTYPES", "BLOCKS"]
