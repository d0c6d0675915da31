"""Attention kernels timed alone: forward and forward+backward of one attention call, per implementation.

    python -m lra.bench_kernels [--lengths 1024 4096] [--dtypes float32 bfloat16] [--impls ...] [--out FILE]
    python -m lra.bench_kernels --lengths 4096 --dtypes bfloat16 --impls pallas_flash \
        --block 64 128 --num-warps 4 8 --num-stages 2 3 --dq kernel atomic   # tuning the Triton kernels (GPU)

Implementations (``--impls``; those that do not apply to the backend or dtype are skipped):
  xla_dense      ``kernels.attention(impl="xla")``: dense softmax attention in plain XLA
  sdpa_xla       ``jax.nn.dot_product_attention(implementation="xla")``
  sdpa_cudnn     ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU only)
  pallas_flash   ``kernels.flash.flash_attention``, dense (every block FULL)
  pallas_local   the same kernel with ``masks.Local(window)``: empty blocks skipped (block-sparse)
  mgpu_flash     ``pallas_flash`` on the Mosaic GPU kernels (``kernels.flash_mgpu``; bf16/f16 only)
  mgpu_local     ``pallas_local`` on the Mosaic GPU kernels
  xla_local      the XLA path of the sparse variants (``kernels.block_sparse``: gathered key blocks)
  xla_linear     ``kernels.linear_attention(impl="xla")`` with elu(x)+1 features (Linear Transformer): O(L)
  pallas_linear  the same through the chunked Pallas kernels (``kernels.linear_pallas``; chunk = ``--block``)
  jax_triton     JAX's own Pallas Triton flash attention (``jax.experimental.pallas.ops.gpu.attention.mha``, its
                 default blocks; GPU only): a yardstick for what Pallas reaches on the card. JAX 0.12.1 no longer
                 ships it: there the impl is skipped with a note (``unavailable``)
  jax_mgpu       JAX's own Mosaic GPU flash attention (``...ops.gpu.attention_mgpu.attention``, blocks 64 x 128
                 forward, 64 backward; bf16/f16, GPU only)

Each (implementation, length, dtype) is compiled once for the forward and once for the forward+backward (the
gradient of sum(out * cotangent) with respect to q, k and v), run ``--warmup`` times, then timed as the median
of ``--repeats`` runs of ``--steps`` calls (``block_until_ready`` after each run). Memory is the compiler's
``memory_analysis()`` of the forward+backward program (temporaries + arguments + outputs), the same number on
every backend; before running, the compiled programs' need (``lra.trainer.memory_needs``) is compared with the
memory available (free memory, or ``--memory-limit-gb``): a program that would not fit is not run, its row has
status ``oom`` and says why. FLOPs count the matmuls of the allowed (visited) blocks: 4 B H L^2 D x fraction for
the forward, 2.5 times that for the backward (FlashAttention's convention, recomputation included); for linear attention
4 B H L D^2 (features = head dim), and again 2.5 times that for the backward, which is exactly what the Pallas
kernels compute. Linear attention computes in float32 whatever the dtype of q, k and v, so its rows use the
float32 matmul precision. ``--matmul`` also times
a square matmul in the same dtype, so TFLOP/s can be read as a fraction of what the card's matmul reaches.
Dtypes (``--dtypes``): float32, bfloat16, float16, each recorded as the dtype the arrays really have. Rows are
appended to ``--out`` (JSON lines, one at a time: a row measured is never lost) and printed as a table; bad
arguments, an ``--out`` that could not be written and unreadable ``--report`` files are refused before anything
is measured. On CPU the Pallas kernels run in interpret
mode (compiled by XLA, not Python-slow). Several ``--block`` values time every block-sized impl at each; several
``--num-warps`` / ``--num-stages`` / ``--dq`` values time the Triton kernels (``pallas_*``) at each combination,
recorded in the row (``--dq atomic``: dQ by atomic adds in the dK/dV kernel; the Mosaic GPU kernels take none of
these).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

from lra.results import device_description

IMPLS = ("xla_dense", "sdpa_xla", "sdpa_cudnn", "jax_triton", "jax_mgpu", "pallas_flash", "pallas_local",
         "xla_local", "mgpu_flash", "mgpu_local", "xla_linear", "pallas_linear")
BLOCK_SIZED = ("pallas_flash", "pallas_local", "mgpu_flash", "mgpu_local", "xla_local", "pallas_linear")
BWD_BLOCKED = ("pallas_flash", "pallas_local", "mgpu_flash", "mgpu_local")   # our flash kernels
TRITON_TUNED = ("pallas_flash", "pallas_local")                             # num_warps, num_stages, dQ
LINEAR = ("xla_linear", "pallas_linear")
# The dtypes rows are computed in. float64 is not one: without jax_enable_x64 JAX computes it in float32.
DTYPES = ("float32", "bfloat16", "float16")
# JAX's own kernels, which a JAX version may not ship (0.12.1 removed the Pallas Triton ops, attention included).
JAX_MODULES = {"jax_triton": "jax.experimental.pallas.ops.gpu.attention",
               "jax_mgpu": "jax.experimental.pallas.ops.gpu.attention_mgpu"}


def unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run with the JAX installed (the module it needs is missing), or None."""
    import importlib.util

    import jax

    module = JAX_MODULES.get(impl)
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        found = False
    return None if found else f"JAX {jax.__version__} does not ship {module}"


def _fn(impl: str, window: int, block: int, triton: dict | None = None, bwd_block: int | None = None):
    import jax

    import kernels
    from kernels import block_sparse, flash, masks

    if impl == "xla_dense":
        return lambda q, k, v: kernels.attention(q, k, v)
    if impl == "sdpa_xla":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    if impl == "jax_triton":
        from jax.experimental.pallas.ops.gpu import attention as jax_attention

        return lambda q, k, v: jax_attention.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5,
                                                 interpret=jax.default_backend() == "cpu")
    if impl == "jax_mgpu":
        from jax.experimental.pallas.ops.gpu import attention_mgpu

        config = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2, block_q_dkv=64,
                                             block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
        return lambda q, k, v: attention_mgpu.attention(q, k, v, config)
    if impl == "sdpa_cudnn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    if impl in ("pallas_flash", "pallas_local", "mgpu_flash", "mgpu_local"):
        mask = masks.Local(window) if impl.endswith("local") else None
        backend = "mosaic_gpu" if impl.startswith("mgpu") else None  # pallas_*: the configured backend
        return lambda q, k, v: flash.flash_attention(q, k, v, mask=mask, block_q=block, block_k=block,
                                                     block_q_bwd=bwd_block, block_k_bwd=bwd_block,
                                                     pallas_backend=backend, **(triton or {}))
    if impl == "xla_local":
        return lambda q, k, v: block_sparse.block_sparse_attention(q, k, v, masks.Local(window), block=block)
    if impl == "xla_linear":
        return lambda q, k, v: kernels.linear_attention(q, k, v, feature_map="elu1", impl="xla")
    if impl == "pallas_linear":
        from kernels.linear_pallas import linear_attention_pallas

        return lambda q, k, v: linear_attention_pallas(q, k, v, feature_map=kernels.FEATURE_MAPS["elu1"],
                                                       chunk=block)
    raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")


def _fraction(impl: str, length: int, window: int, block: int) -> float:
    """Fraction of the L x L blocks the implementation computes."""
    if impl not in ("pallas_local", "xla_local", "mgpu_local"):
        return 1.0
    from kernels import flash, masks

    padded = -(-length // block) * block
    plan = flash.mask_plan(masks.Local(window), length, padded, block, block)
    return plan.visited_blocks / (padded // block) ** 2


def _time(fn, args, warmup: int, steps: int, repeats: int) -> float:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            out = fn(*args)
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - t0) / steps)
    return statistics.median(runs)


def _precision(dtype: str, f32_precision: str, impl: str | None = None) -> str:
    """The matmul precision a row of ``dtype`` runs at: ``f32_precision`` for float32 (and for linear attention,
    which computes in float32 whatever its inputs), the default otherwise."""
    return f32_precision if dtype == "float32" or impl in LINEAR else "default"


def _flops_fwd(impl: str, batch: int, heads: int, length: int, head_dim: int, fraction: float) -> float:
    """Matmul FLOPs of one forward call (see the module's docstring)."""
    if impl in LINEAR:
        return 4.0 * batch * heads * length * head_dim * head_dim
    return 4.0 * batch * heads * length * length * head_dim * fraction


def _precision_scope(precision: str):
    import jax

    return jax.default_matmul_precision(None if precision == "default" else precision)


def dispatch_floor(shape: tuple, dtype: str, warmup: int, steps: int, repeats: int) -> dict:
    """Per-call time of a jitted program that does next to nothing with the same three arguments: below about
    twice this, a row's time is the cost of launching it from Python, not of its kernels."""
    import jax
    import jax.numpy as jnp

    args = [jnp.zeros(shape, dtype) for _ in range(3)]
    f = jax.jit(lambda q, k, v: q[:1, :1] + k[:1, :1] + v[:1, :1]).lower(*args).compile()
    sec = _time(f, args, warmup, steps, repeats)
    return {"impl": "dispatch", "dtype": dtype, "ms": 1e3 * sec, "device": device_description(),
            "jax": jax.__version__, "status": "ok"}


def _memory(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def _does_not_fit(programs: list[tuple[str, object]], limit_gb: float | None, advice: str) -> str | None:
    """Why one of the (name, compiled program) pairs would not fit in the memory available (free memory, or
    ``limit_gb``), or None: ``lra.trainer.check_fits`` on ``lra.trainer.memory_needs``, the training check."""
    from lra import trainer

    try:
        needs = trainer.memory_needs(programs)
    except Exception:  # noqa: BLE001  (not every backend reports memory_analysis())
        return None
    try:
        trainer.check_fits(needs, limit_gb, "before running", limit_name="--memory-limit-gb", advice=advice)
    except trainer.DoesNotFit as e:
        return str(e)
    return None


def measure(impl: str, length: int, dtype: str, *, batch: int, heads: int, head_dim: int, window: int, block: int,
            warmup: int, steps: int, repeats: int, num_warps: int | None = None,
            num_stages: int | None = None, dq: str = "kernel", bwd_block: int | None = None,
            f32_precision: str = "highest", forward_times: dict | None = None,
            memory_limit_gb: float | None = None) -> dict:
    """One row: the forward and forward+backward times of ``impl``. ``forward_times`` (a dict kept across
    calls) reuses the forward's time for settings that change only the backward (``dq``, ``bwd_block``).
    float32 products run at ``f32_precision`` in every impl ("highest": full float32, what the Pallas kernels
    do; "default": TF32 on a GPU's tensor cores in the XLA and cuDNN paths). After compiling and before running,
    the programs' memory is compared with what is available (``memory_limit_gb``, or free memory): a row that
    would not fit gets status "oom" and is not run."""
    import jax
    import jax.numpy as jnp

    from kernels import flash

    row = {"impl": impl, "length": length, "dtype": dtype, "batch": batch, "heads": heads, "head_dim": head_dim,
           "window": window if "local" in impl else None,
           "block": block if impl in BLOCK_SIZED else None,
           "bwd_block": bwd_block if impl in BWD_BLOCKED and bwd_block not in (None, block) else None,
           "matmul_precision": _precision(dtype, f32_precision, impl),
           "device": device_description(), "jax": jax.__version__,
           "pallas_backend": flash.backend(pallas_backend="triton") if impl == "pallas_linear" else
           flash.backend() if impl.startswith("pallas") else
           flash.backend(pallas_backend="mosaic_gpu") if impl.startswith("mgpu") else None}
    triton = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None}
    if dq == "atomic":
        triton["atomic_dq"] = True
    if impl in TRITON_TUNED:
        row.update(num_warps=num_warps, num_stages=num_stages, dq=dq)
    reason = unavailable(impl)
    if reason:
        return {**row, "status": "unavailable", "error": reason}
    try:
        dt = jnp.dtype(dtype)
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        shape = (batch, length, heads, head_dim)
        q, k, v, cot = (jax.random.normal(key, shape, jnp.float32).astype(dt) for key in keys)
        if q.dtype != dt:  # e.g. float64 without jax_enable_x64: it would be timed in float32 under its name
            raise ValueError(f"{dtype} arrays are {q.dtype} with this JAX configuration; valid: {', '.join(DTYPES)}")
        f = _fn(impl, window, block, triton, bwd_block)
        # The cotangent is an argument, not a constant folded into the program.
        train = jax.jit(jax.grad(lambda q, k, v, cot: (f(q, k, v).astype(jnp.float32) * cot.astype(jnp.float32)).sum(),
                                 argnums=(0, 1, 2)))
        fwd_key = (impl, length, dtype, batch, heads, head_dim, window, block, num_warps, num_stages, f32_precision)
        cached = (forward_times or {}).get(fwd_key)
        with _precision_scope(row["matmul_precision"]):
            t0 = time.perf_counter()
            fwd_c = None if cached else jax.jit(f).lower(q, k, v).compile()
            train_c = train.lower(q, k, v, cot).compile()
            row["compile_s"] = round(time.perf_counter() - t0, 3)
        row["memory_bytes"] = _memory(train_c)
        at = f"L={length}, batch={batch}, heads={heads}, head_dim={head_dim}, {dtype}"
        refusal = _does_not_fit([(f"the forward+backward of {impl} ({at})", train_c)]
                                + ([(f"the forward of {impl} ({at})", fwd_c)] if fwd_c is not None else []),
                                memory_limit_gb, "not run: time a shorter length, a smaller --batch or --heads, or "
                                "an impl whose memory grows linearly (pallas_local, xla_local, xla_linear, "
                                "pallas_linear)")
        if refusal:
            return {**row, "status": "oom", "error": refusal}
        row["fwd_ms"] = cached or 1e3 * _time(fwd_c, (q, k, v), warmup, steps, repeats)
        if forward_times is not None:
            forward_times[fwd_key] = row["fwd_ms"]
        row["fwd_bwd_ms"] = 1e3 * _time(train_c, (q, k, v, cot), warmup, steps, repeats)
        frac = _fraction(impl, length, window, block)
        flops = _flops_fwd(impl, batch, heads, length, head_dim, frac)
        # The backward visits the blocks of its own block size (--bwd-block) where it has one.
        frac_bwd = _fraction(impl, length, window, row["bwd_block"]) if row["bwd_block"] else frac
        flops_all = flops + 2.5 * _flops_fwd(impl, batch, heads, length, head_dim, frac_bwd)
        row.update(block_fraction=None if impl in LINEAR else round(frac, 5), flops_fwd=flops,
                   flops_fwd_bwd=flops_all, tflops_fwd=flops / (row["fwd_ms"] * 1e-3) / 1e12,
                   tflops_fwd_bwd=flops_all / (row["fwd_bwd_ms"] * 1e-3) / 1e12, status="ok")
    except Exception as e:  # one failure must not stop the sweep
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        row.update(status="oom" if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower() else "error",
                   error=msg)
    return row


def matmul_rate(dtype: str, n: int, f32_precision: str = "highest", memory_limit_gb: float | None = None) -> dict:
    import jax
    import jax.numpy as jnp

    precision = _precision(dtype, f32_precision)
    row = {"impl": "matmul", "dtype": dtype, "n": n, "matmul_precision": precision, "device": device_description(),
           "jax": jax.__version__}
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    if a.dtype != jnp.dtype(dtype):
        return {**row, "status": "error", "error": f"{dtype} arrays are {a.dtype} with this JAX configuration"}
    with _precision_scope(precision):
        f = jax.jit(lambda a: a @ a).lower(a).compile()
    refusal = _does_not_fit([(f"the {n} x {n} {dtype} matmul", f)], memory_limit_gb, "not run: time a smaller --matmul")
    if refusal:
        return {**row, "status": "oom", "error": refusal}
    sec = _time(f, (a,), 2, 5, 3)
    return {**row, "ms": 1e3 * sec, "tflops": 2 * n**3 / sec / 1e12, "status": "ok"}


def _settings(impl: str, a) -> list[tuple[int, int | None, int | None, str, int | None]]:
    """(block, num_warps, num_stages, dq, backward block) combinations to time ``impl`` at: every block for the
    block-sized impls (one for the others), every backward block for our Pallas kernels, every Triton setting
    for the Triton kernels (``pallas_*``)."""
    blocks = a.block if impl in BLOCK_SIZED else a.block[:1]
    bwd = a.bwd_block if impl in BWD_BLOCKED else [None]
    if impl not in TRITON_TUNED:
        return [(b, None, None, "kernel", bb) for b in blocks for bb in bwd]
    return [(b, w, s, dq, bb) for b in blocks for w in a.num_warps for s in a.num_stages for bb in bwd
            for dq in a.dq]


def _setting(row: dict) -> str:
    unit = "chunk" if row.get("impl") in LINEAR else "block"
    parts = [f"{unit} {row['block']}"] if row.get("block") else []
    if row.get("bwd_block"):
        parts.append(f"backward block {row['bwd_block']}")
    parts += [f"{k} {row[k]}" for k in ("num_warps", "num_stages") if row.get(k) is not None]
    if row.get("dq") == "atomic":
        parts.append("atomic dQ")
    return ", ".join(parts) or "-"


@dataclasses.dataclass(frozen=True)
class Target:
    """One of the issue's targets: ``impl``'s forward+backward at least ``least`` times as fast as ``ref``'s, on
    a device of ``kind`` (cpu or gpu), the Pallas rows run by ``backend``, at ``head_dim`` (None: any) and, for
    the Local impls, ``window``; ``linear_memory``: the impl's memory must also grow linearly in L."""
    label: str
    impl: str
    ref: str
    dtype: str
    length: int
    least: float
    kind: str
    backend: str
    head_dim: int | None = 64
    window: int | None = 128
    linear_memory: bool = False


TARGETS = [
    Target("flash fwd+bwd vs cuDNN", "pallas_flash", "sdpa_cudnn", "bfloat16", 4096, 0.8, "gpu", "triton"),
    Target("flash fwd+bwd vs cuDNN (Mosaic GPU)", "mgpu_flash", "sdpa_cudnn", "bfloat16", 4096, 0.8, "gpu",
           "mosaic_gpu"),
    Target("block-sparse Local vs flash", "pallas_local", "pallas_flash", "bfloat16", 16384, 5.0, "gpu", "triton"),
    Target("block-sparse Local vs flash (Mosaic GPU)", "mgpu_local", "mgpu_flash", "bfloat16", 16384, 5.0, "gpu",
           "mosaic_gpu"),
    Target("block-sparse Local vs XLA dense (CPU target)", "pallas_local", "xla_dense", "float32", 4096, 4.0, "cpu",
           "interpret", head_dim=None, linear_memory=True),
]


def _kind(device: str) -> str:
    return "cpu" if str(device).startswith("cpu") else "gpu"


def _shape(row: dict) -> tuple:
    """What two rows must share to be compared: batch, heads, head dim and, for float32, the matmul precision."""
    return row.get("batch"), row.get("heads"), row.get("head_dim"), row.get("matmul_precision")


def _fits(row: dict, target: Target, impl: str) -> bool:
    return (row["impl"] == impl and row["dtype"] == target.dtype
            and row.get("pallas_backend") in (None, target.backend)
            and (target.head_dim is None or row.get("head_dim") == target.head_dim)
            and ("local" not in impl or row.get("window") in (None, target.window)))


def _ratio(value: float, least: float) -> str:
    """``value`` with 2 decimals, more where 2 would round it across ``least`` (0.7996 is not '0.80x: NOT met')."""
    text = f"{value:.2f}"
    return text if (float(text) >= least) == (value >= least) else f"{value:.4f}"


def _memory_growth(rows: list[dict]) -> tuple[float, int, int] | None:
    """(exponent of L in the memory, shortest, longest length) over rows of one impl and shape: the least memory
    at each length; None with fewer than two lengths measured."""
    least: dict[int, float] = {}
    for r in rows:
        if _positive(r.get("memory_bytes")):
            least[r["length"]] = min(least.get(r["length"], math.inf), r["memory_bytes"])
    if len(least) < 2:
        return None
    lo, hi = min(least), max(least)
    return math.log(least[hi] / least[lo]) / math.log(hi / lo), lo, hi


def _judge(target: Target, ok: list[dict]) -> str:
    where = f"{target.dtype}, L={target.length}"
    ours = [r for r in ok if r.get("length") == target.length and _fits(r, target, target.impl)]
    refs = [r for r in ok if r.get("length") == target.length and _fits(r, target, target.ref)]
    pairs = [(a, min((b for b in refs if b["device"] == a["device"] and _shape(b) == _shape(a)),
                     key=lambda b: b["fwd_bwd_ms"], default=None)) for a in ours]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if not pairs:
        missing = " and ".join(x for x, rows in ((target.impl, ours), (target.ref, refs)) if not rows) \
            or f"no {target.impl} and {target.ref} rows of the same shape"
        return f"- {target.label} ({where}): not measured ({missing}{'' if ' of the same ' in missing else ' missing'})"
    a, b = min(pairs, key=lambda p: p[0]["fwd_bwd_ms"])
    speedup = b["fwd_bwd_ms"] / a["fwd_bwd_ms"]
    met = speedup >= target.least
    memory = ""
    if target.linear_memory:
        growth = _memory_growth([r for r in ok if r["device"] == a["device"] and _fits(r, target, target.impl)
                                 and _shape(r) == _shape(a)])
        if growth is None:
            memory = "; memory growth not measured (one length)"
        else:
            exponent, lo, hi = growth
            met = met and exponent <= 1.25   # linear, with room for fixed costs
            memory = f"; memory grows as L^{exponent:.2f} from L={lo} to {hi} (linear: at most L^1.25)"
    backend = a.get("pallas_backend") or "-"
    return (f"- {target.label} ({where}): {_ratio(speedup, target.least)}x, target >= {target.least}x"
            f"{' and linear memory' if target.linear_memory else ''}: {'met' if met else 'NOT met'} "
            f"({target.impl} on {backend} {a['fwd_bwd_ms']:.3f} ms with {_setting(a)}; {target.ref} "
            f"{b['fwd_bwd_ms']:.3f} ms; forward alone {b['fwd_ms'] / a['fwd_ms']:.2f}x{memory})")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def timing_row(row) -> bool:
    """Whether ``row`` is a timing of this tool that ``report`` reads: status ok with the fields of its kind (a row
    of lra.bench, or a failed row, is not)."""
    if not isinstance(row, dict) or row.get("status") != "ok" or not isinstance(row.get("dtype"), str):
        return False
    impl = row.get("impl")
    if impl == "matmul":
        return _positive(row.get("tflops"))
    if impl == "dispatch":
        return _positive(row.get("ms"))
    return (impl in IMPLS and isinstance(row.get("length"), int) and not isinstance(row.get("length"), bool)
            and all(_positive(row.get(k)) for k in ("fwd_ms", "fwd_bwd_ms"))
            and isinstance(row.get("tflops_fwd_bwd"), (int, float)) and not isinstance(row.get("tflops_fwd_bwd"), bool))


def report(rows: list[dict]) -> str:
    """A Markdown report of timing rows (those of several files together), one section per device: the card's
    matmul rate and dispatch floor, per dtype and length the fastest setting of each impl (and backend, shape,
    window) with its TFLOP/s as a fraction of the same device and dtype's matmul rate, then each of the issue's
    targets for that kind of device (speedup of forward+backward against the reference impl, met or not; rows
    compared only within one device and shape)."""
    ok = [{**r, "device": str(r.get("device", "unknown device"))} for r in rows if timing_row(r)]
    sections = []
    for device in sorted({r["device"] for r in ok}):
        mine = [r for r in ok if r["device"] == device]
        rate: dict[str, float] = {}
        floor: dict[str, float] = {}
        for r in mine:   # the card's rate is its best matmul; the floor its quickest empty call
            if r["impl"] == "matmul":
                rate[r["dtype"]] = max(rate.get(r["dtype"], 0.0), r["tflops"])
            elif r["impl"] == "dispatch":
                floor[r["dtype"]] = min(floor.get(r["dtype"], math.inf), r["ms"])
        any_floor = min(floor.values(), default=None)   # the floor hardly depends on the dtype
        best: dict[tuple, dict] = {}
        for r in mine:
            if r["impl"] in ("matmul", "dispatch"):
                continue
            key = (r["dtype"], r["length"], r["impl"], r.get("pallas_backend") or "-", _shape(r), r.get("window"))
            if key not in best or r["fwd_bwd_ms"] < best[key]["fwd_bwd_ms"]:
                best[key] = r
        lines = [f"Device: {device}; matmul rate: "
                 + (", ".join(f"{d} {t:.1f} TFLOP/s" for d, t in sorted(rate.items())) or "not measured")
                 + "; per-call dispatch floor: "
                 + (", ".join(f"{d} {t:.3f} ms" for d, t in sorted(floor.items())) or "not measured")
                 + " (a time marked * is under twice the floor: launch-bound, not a kernel time)", "",
                 "| dtype | length | impl | backend | batch x heads x head dim | fastest setting | fwd ms | "
                 "fwd+bwd ms | TFLOP/s (fwd+bwd) | of matmul | memory MiB |", "|" + "---|" * 11]
        order = sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1], IMPLS.index(kv[0][2]), str(kv[0][3:])))
        for (dtype, length, impl, backend, shape, _), r in order:
            frac = f"{r['tflops_fwd_bwd'] / rate[dtype]:.0%}" if rate.get(dtype) else "-"
            mem = f"{r['memory_bytes'] / 2**20:.0f}" if _positive(r.get("memory_bytes")) else "-"
            limit = floor.get(dtype, any_floor)
            star = "*" if limit and r["fwd_ms"] < 2 * limit else ""
            setting = _setting(r) + (f", window {r['window']}" if r.get("window") else "")
            lines.append(f"| {dtype} | {length} | {impl} | {backend} | {' x '.join(str(x) for x in shape[:3])} | "
                         f"{setting} | {r['fwd_ms']:.3f}{star} | {r['fwd_bwd_ms']:.3f} | {r['tflops_fwd_bwd']:.2f} "
                         f"| {frac} | {mem} |")
        lines += ["", "Targets (forward+backward time of the reference over that of the impl):"]
        lines += [_judge(t, mine) if t.kind == _kind(device) else
                  f"- {t.label} ({t.dtype}, L={t.length}): not judged here (a {t.kind.upper()} target)"
                  for t in TARGETS]
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lra.bench_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=DTYPES,
                   help="dtype(s) of q, k and v (float64 is not offered: JAX computes it in float32 by default)")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, default=128, help="one-sided window of the Local mask")
    p.add_argument("--block", type=int, nargs="+", default=[128], help="block size(s) of the block-sized impls")
    p.add_argument("--num-warps", type=int, nargs="+", default=[None], help="Triton num_warps value(s) (GPU)")
    p.add_argument("--num-stages", type=int, nargs="+", default=[None], help="Triton num_stages value(s) (GPU)")
    p.add_argument("--bwd-block", type=int, nargs="+", default=[None],
                   help="backward block size(s) of our Pallas kernels (default: the forward's --block)")
    p.add_argument("--f32-precision", default="highest", choices=("highest", "default"),
                   help="float32 products in every impl: full float32 (as the Pallas kernels), or the backend's "
                        "default (TF32 on a GPU's tensor cores)")
    p.add_argument("--dispatch", action="store_true",
                   help="also time a trivial jitted call per dtype: the per-call launch floor")
    p.add_argument("--dq", nargs="+", default=["kernel"], choices=("kernel", "atomic"),
                   help="Triton backward: dQ in its own kernel, or by atomic adds in the dK/dV kernel")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matmul", type=int, default=0, help="also time an n x n matmul per dtype (0: skip)")
    p.add_argument("--out", default=None, help="JSONL file to append the rows to")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="refuse (status oom, not run) a program that needs more than this (default: free memory)")
    p.add_argument("--report", nargs="+", metavar="JSONL", default=None,
                   help="time nothing: print the Markdown report (fastest settings, targets) of these row files")
    a = p.parse_args(argv)
    if a.report:
        from lra.results import read_jsonl

        missing = [f for f in a.report if not Path(f).is_file()]
        if missing:
            p.error(f"no such file: {', '.join(missing)} (python -m lra.bench_kernels ... --out FILE writes one)")
        rows, empty = [], []
        for f in a.report:
            try:
                found = read_jsonl(f)
            except ValueError as e:  # names the file and line
                p.error(f"--report: {e}")
            except OSError as e:
                p.error(f"--report: cannot read {f} ({e.strerror or e}); give a readable file")
            timed = [r for r in found if timing_row(r)]
            if not timed:
                ours = [r for r in found if r.get("impl") in (*IMPLS, "matmul", "dispatch")]
                statuses = sorted({str(r.get("status")) for r in ours})
                empty.append(f"{f} ({len(ours)} lra.bench_kernels rows, none timed: status {', '.join(statuses)})"
                             if ours else f"{f} (no lra.bench_kernels rows: {len(found)} other rows)")
            rows += timed
        if not rows:
            p.error(f"nothing to report: {'; '.join(empty)}; give --report the --out file of "
                    f"python -m lra.bench_kernels (a bench.jsonl of lra.bench holds other rows)")
        for note in empty:
            print(f"left out {note}", file=sys.stderr)
        print(report(rows), end="")
        return 0
    stages = [n for n in a.num_stages if n is not None]
    for name, value, least in (("--batch", a.batch, 1), ("--heads", a.heads, 1), ("--head-dim", a.head_dim, 1),
                               ("--window", a.window, 1), ("--steps", a.steps, 1), ("--repeats", a.repeats, 1),
                               ("--warmup", a.warmup, 0), ("--matmul", a.matmul, 0),
                               *(("--lengths", n, 1) for n in a.lengths), *(("--block", b, 1) for b in a.block),
                               *(("--num-stages", n, 1) for n in stages)):
        if value < least:
            what = {"--matmul": " (0: no matmul)", "--warmup": " (0: no warm-up runs)"}.get(name, "")
            p.error(f"{name} must be >= {least}{what}, got {value}")
    if a.memory_limit_gb is not None and not (math.isfinite(a.memory_limit_gb) and a.memory_limit_gb > 0):
        p.error(f"--memory-limit-gb must be a positive number of GiB (leave it out: free memory), "
                f"got {a.memory_limit_gb}")
    for name, values in (("--block", a.block), ("--num-warps", [w for w in a.num_warps if w is not None]),
                         ("--bwd-block", [b for b in a.bwd_block if b is not None])):
        if any(v < 1 or v & (v - 1) for v in values):
            p.error(f"{name} must be a power of two, got {values}")
    out = Path(a.out) if a.out else None
    if out:
        from lra import results

        try:  # before anything is measured: a sweep must not run and then fail to record
            results.check_appendable(out, hint="give --out a file in a folder this process can write")
        except ValueError as e:
            p.error(f"--out: {e}")
    import jax

    gpu = jax.default_backend() == "gpu"
    # cuDNN, the Mosaic GPU kernels and JAX's reference kernels need a GPU (on CPU the Pallas ones would run in a
    # simulator or interpreter, not worth timing).
    impls = [i for i in a.impls if gpu or not i.startswith(("sdpa_cudnn", "mgpu", "jax_"))]
    for impl, reason in [(i, unavailable(i)) for i in impls]:
        if reason:
            print(f"skipped {impl}: {reason}", flush=True)
            impls.remove(impl)
    rows = []

    def emit(row):
        rows.append(row)
        if out:
            results.append_jsonl(out, row)  # one whole line under a lock, as soon as the row is measured
        if row["impl"] in ("matmul", "dispatch"):   # the timing rows print their own lines below
            what = f"matmul n={row['n']}" if row["impl"] == "matmul" else "dispatch floor"
            print(f"{row['dtype']:9s} {what:22s} " + (
                (f"{row['ms']:9.3f} ms" + (f"  {row['tflops']:7.1f} TFLOP/s" if "tflops" in row else ""))
                if row.get("status", "ok") == "ok" else f"{row['status']}: {row.get('error')}"), flush=True)

    forward_times: dict = {}
    for dtype in a.dtypes:
        if a.matmul:
            emit(matmul_rate(dtype, a.matmul, a.f32_precision, a.memory_limit_gb))
        if a.dispatch:
            emit(dispatch_floor((a.batch, min(a.lengths), a.heads, a.head_dim), dtype, a.warmup, a.steps, a.repeats))
        for length in a.lengths:
            for impl in impls:
                if impl.startswith(("mgpu", "jax_mgpu")) and dtype not in ("bfloat16", "float16"):
                    continue  # WGMMA operands are 16-bit
                for block, warps, stages, dq, bwd in _settings(impl, a):
                    row = measure(impl, length, dtype, batch=a.batch, heads=a.heads, head_dim=a.head_dim,
                                  window=a.window, block=block, warmup=a.warmup, steps=a.steps, repeats=a.repeats,
                                  num_warps=warps, num_stages=stages, dq=dq, bwd_block=bwd,
                                  f32_precision=a.f32_precision, forward_times=forward_times,
                                  memory_limit_gb=a.memory_limit_gb)
                    emit(row)
                    tags = (("b", row["block"] if len(a.block) > 1 else None), ("bb", row.get("bwd_block")),
                            ("w", warps), ("s", stages), ("dq:", "atomic" if dq == "atomic" else None))
                    name = impl + "".join(f" {k}{v}" for k, v in tags if v is not None)
                    if row["status"] == "ok":
                        mem = row["memory_bytes"]
                        print(f"{dtype:9s} L={length:6d} {name:13s} fwd {row['fwd_ms']:9.2f} ms  fwd+bwd "
                              f"{row['fwd_bwd_ms']:9.2f} ms  {row['tflops_fwd_bwd']:7.3f} TFLOP/s  "
                              f"mem {mem / 2**20 if mem else math.nan:8.1f} MiB", flush=True)
                    else:
                        print(f"{dtype:9s} L={length:6d} {name:13s} {row['status']}: {row['error']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
