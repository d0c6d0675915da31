"""The memory check's figure against what a train step really takes on CPU (peak RSS of a fresh process).

XLA's CPU runtime computes a dot fused with elementwise consumers into a buffer of its own that
memory_analysis() leaves out; lra.trainer.required_bytes adds it. Without attention dropout, full attention's
softmax backward is such a fusion, as large as the [batch, heads, L, L] scores."""
import json
import subprocess
import sys
import textwrap

import jax
import pytest

from lra import trainer
from tests.conftest import ROOT

# One layer, 2 heads, no dropout (the Path-X cpu model's shape) at 4096 tokens, batch 2: memory_analysis()
# says about 0.5 GiB, the fused dot is [2, 2, 4096, 4096] float32 = 0.25 GiB.
MEASURE = textwrap.dedent("""
    import json
    import numpy as np, jax
    from lra import batching, trainer
    from lra.bench import attention_config
    L, B = 4096, 2
    config = {"task": {"name": "pathx", "num_classes": 2, "vocab_size": 256, "max_length": L}, "seed": 0,
              "model": dict(emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=32, dropout=0.0,
                            attention_dropout=0.0, pooling="mean", positions="learned"),
              "attention": attention_config("full"),
              "train": {"batch_size": B, "eval_batch_size": B, "lr": 1e-3, "schedule": "constant", "train_steps": 10,
                        "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": None}}
    graphdef, params, rest = trainer.split_model(trainer.build_model(config))
    tx = trainer.build_optimizer(config)
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    arrays = {"inputs": rng.integers(1, 256, (B, L)).astype(np.int32), "lengths": np.full(B, L, np.int32),
              "targets": rng.integers(0, 2, B).astype(np.int32)}
    batch = batching.make_batch(arrays, np.arange(B), L)
    fn = trainer.Steps(graphdef, tx, 0).compiled("train", params, opt_state, rest, batch, np.int32(0))
    want, extra = trainer.required_bytes(fn)
    rss = trainer.peak_rss_bytes
    base_peak, base = rss(), int(open("/proc/self/statm").read().split()[1]) * 4096
    params, opt_state, rest, metrics = fn(params, opt_state, rest, batch, np.int32(0))
    jax.block_until_ready(metrics)
    print(json.dumps({"analysis": trainer.compiled_bytes(fn), "want": want, "extra": extra, "base": base,
                      "base_peak": base_peak, "peak": rss()}))
""")


def test_peak_rss_is_this_process_s_own():
    """Not the parent's: getrusage's ru_maxrss survives exec, so a small child of a 1 GiB parent would say 1 GiB."""
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux's")
    code = ("import numpy as np, subprocess, sys; a = np.ones(2**27); "   # a 1 GiB parent
            "print(subprocess.run([sys.executable, '-c', 'from lra import trainer; print(trainer.peak_rss_bytes())'], "
            "capture_output=True, text=True, check=True).stdout)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) < 2**29, r.stdout


@pytest.mark.skipif(jax.devices()[0].platform != "cpu" or not sys.platform.startswith("linux"),
                    reason="the CPU runtime's host memory, read from /proc")
def test_required_bytes_cover_a_cpu_train_step(subprocess_env):
    # Compiled here, not loaded from the suite's compilation cache: the measured process is a plain run.
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("JAX_PERSISTENT_CACHE")
           and k != "JAX_COMPILATION_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-c", MEASURE], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    used = m["peak"] - m["base"]
    assert m["peak"] > m["base_peak"], "the step's peak must not be hidden by the compile's"
    slack = 64 * 2**20   # allocator and runtime noise of a fresh process
    # What the step really took is covered by the check's figure, and not grossly over-estimated ...
    assert used <= m["want"] + slack, m
    assert m["want"] <= used + slack, m
    # ... while memory_analysis() alone falls short by the fused dot, [2, 2, 4096, 4096] float32.
    assert m["extra"] == 2 * 2 * 4096 * 4096 * 4 and m["want"] == m["analysis"] + m["extra"]
    assert used > m["analysis"] + m["extra"] // 2, m


def test_fused_dot_scratch_is_read_from_the_hlo():
    """Hand-written HLO: only a dot that a fusion body computes as an intermediate counts, at its dtype's size."""
    hlo = textwrap.dedent("""
        HloModule m

        %fused_computation.1 (p0: bf16[2,3,5], p1: bf16[2,5,7]) -> bf16[2,3,7] {
          %p0 = bf16[2,3,5]{2,1,0} parameter(0)
          %p1 = bf16[2,5,7]{2,1,0} parameter(1)
          %dot.1 = bf16[2,3,7]{2,1,0} dot(%p0, %p1), lhs_batch_dims={0}, lhs_contracting_dims={2}
          ROOT %neg.1 = bf16[2,3,7]{2,1,0} negate(%dot.1)
        }

        %fused_computation.2 (p0: f32[64,64], p1: f32[64,64]) -> f32[64,64] {
          %p0 = f32[64,64]{1,0} parameter(0)
          %p1 = f32[64,64]{1,0} parameter(1)
          ROOT %dot.2 = f32[64,64]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
        }

        %not_a_fusion (p0: f32[100,100]) -> f32[100,100] {
          %p0 = f32[100,100]{1,0} parameter(0)
          %dot.3 = f32[100,100]{1,0} dot(%p0, %p0), lhs_contracting_dims={1}, rhs_contracting_dims={0}
          ROOT %neg.3 = f32[100,100]{1,0} negate(%dot.3)
        }

        ENTRY %main (a: bf16[2,3,5], b: bf16[2,5,7], c: f32[64,64]) -> bf16[2,3,7] {
          %a = bf16[2,3,5]{2,1,0} parameter(0)
          %b = bf16[2,5,7]{2,1,0} parameter(1)
          %c = f32[64,64]{1,0} parameter(2)
          %f2 = f32[64,64]{1,0} fusion(%c, %c), kind=kOutput, calls=%fused_computation.2
          ROOT %f1 = bf16[2,3,7]{2,1,0} fusion(%a, %b), kind=kOutput, calls=%fused_computation.1
        }
    """)
    assert trainer.fused_dot_scratch_bytes(hlo) == 2 * 3 * 7 * 2
    assert trainer.fused_dot_scratch_bytes(hlo.replace("%dot.1 = bf16", "ROOT %dot.1 = bf16")
                                           .replace("ROOT %neg.1", "%neg.1")) == 0
