"""Train-step throughput of our JAX encoder classifier against an equivalent PyTorch encoder, side by side.

    python scripts/bench_torch.py                 # the default shape (d=64, 2 layers, L=512, batch 32)
    python scripts/bench_torch.py --quick         # a tiny shape, a few steps (what the tests run)
    make bench-torch                              # installs torch 2.13 (CPU) first

One train step = forward + backward + AdamW update, dropout on (0.1) in both. The JAX side is built exactly
like lra.trainer builds it for training (build_model, build_optimizer, Steps: one AOT-compiled jitted step with
donated params and optimiser state); its compile time is reported apart. The PyTorch side is an
nn.TransformerEncoder classifier with the same widths and the same parameter count (see TorchClassifier).

Both get the same random batch (valid lengths uniform in [L/2, L], so there is padding), placed on the device
once. Each framework warms up, then each repeat times ``--steps`` steps, waiting for every step's result; the
frameworks alternate between repeats (J T J T ...) so load drift hits both, and the median steps/s of each is
kept. One JSON line per run is appended to ``--out``.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script from anywhere

DEFAULTS = {"emb_dim": 64, "num_heads": 2, "num_layers": 2, "mlp_dim": 128, "length": 512, "batch_size": 32,
            "steps": 10, "repeats": 5, "warmup": 3, "pooling": "cls"}
QUICK = {"emb_dim": 16, "num_heads": 2, "num_layers": 1, "mlp_dim": 32, "length": 32, "batch_size": 4,
         "steps": 3, "repeats": 2, "warmup": 1, "pooling": "cls"}
VOCAB_SIZE, NUM_CLASSES, DROPOUT, SEED = 16, 10, 0.1, 0
LR, WARMUP_STEPS, WEIGHT_DECAY = 1e-3, 100, 0.0
TORCH_COMPILE_LIMIT_S = 120.0
INSTALL_HINT = ("PyTorch is not installed in this environment. `make bench-torch` installs it "
                "(or run `.venv/bin/pip install torch==2.13.0`: the CPU wheel).")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emb-dim", type=int, help=f"model width d (= qkv_dim) [{DEFAULTS['emb_dim']}]")
    p.add_argument("--num-heads", type=int, help=f"[{DEFAULTS['num_heads']}]")
    p.add_argument("--num-layers", type=int, help=f"[{DEFAULTS['num_layers']}]")
    p.add_argument("--mlp-dim", type=int, help=f"[{DEFAULTS['mlp_dim']}]")
    p.add_argument("--length", type=int, help=f"sequence length L (before the CLS token) [{DEFAULTS['length']}]")
    p.add_argument("--batch-size", type=int, help=f"[{DEFAULTS['batch_size']}]")
    p.add_argument("--steps", type=int, help=f"timed steps per repeat [{DEFAULTS['steps']}]")
    p.add_argument("--repeats", type=int, help=f"timed repeats per framework [{DEFAULTS['repeats']}]")
    p.add_argument("--warmup", type=int, help=f"untimed steps per framework before timing [{DEFAULTS['warmup']}]")
    p.add_argument("--pooling", choices=("cls", "mean"), help=f"[{DEFAULTS['pooling']}]")
    p.add_argument("--out", default="results/bench_torch_cpu.jsonl", help="JSONL file a record is appended to")
    p.add_argument("--quick", action="store_true", help="tiny shape and few steps (for tests); flags still win")
    p.add_argument("--torch-compile", choices=("auto", "off"), default=None,
                   help="also time torch.compile (default: auto, off with --quick); skipped with a note when it "
                        f"fails or its first step takes over {TORCH_COMPILE_LIMIT_S:.0f} s")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads [os.cpu_count()]")
    p.add_argument("--no-torch-1thread", action="store_true",
                   help="skip the secondary single-threaded eager torch timing")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.torch_compile is None:
        args.torch_compile = "off" if args.quick else "auto"
    for key in ("emb_dim", "num_heads", "num_layers", "mlp_dim", "length", "batch_size", "steps", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.emb_dim % args.num_heads:
        p.error(f"--emb-dim ({args.emb_dim}) must be divisible by --num-heads ({args.num_heads})")
    return args


# ----------------------------------------------------------------------------------------------------- inputs

def bench_config(args) -> dict:
    """The resolved run config our trainer would get for this shape (full attention, XLA, dropout 0.1)."""
    return {
        "task": {"name": "bench", "num_classes": NUM_CLASSES, "vocab_size": VOCAB_SIZE, "max_length": args.length},
        "model": {"emb_dim": args.emb_dim, "num_heads": args.num_heads, "num_layers": args.num_layers,
                  "qkv_dim": args.emb_dim, "mlp_dim": args.mlp_dim, "dropout": DROPOUT,
                  "attention_dropout": DROPOUT, "pooling": args.pooling, "positions": "sinusoidal"},
        "attention": {"name": "full", "impl": "xla"},
        "train": {"batch_size": args.batch_size, "eval_batch_size": args.batch_size, "train_steps": 100_000,
                  "eval_every": 1000, "log_every": 100, "lr": LR, "schedule": "cosine",
                  "warmup_steps": WARMUP_STEPS, "weight_decay": WEIGHT_DECAY, "grad_clip": None,
                  "bucket_size": None, "memory_limit_gb": None, "progress": False},
        "seed": SEED,
    }


def random_batch(batch_size: int, length: int, seed: int = SEED) -> dict:
    """A numpy batch like lra.batching.make_batch's, with valid lengths uniform in [length/2, length]."""
    from lra import batching

    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(length // 2, 1), length + 1, size=batch_size)
    inputs = rng.integers(1, VOCAB_SIZE, size=(batch_size, length)).astype(np.int32)
    inputs[np.arange(length)[None, :] >= lengths[:, None]] = 0
    arrays = {"inputs": inputs, "lengths": lengths,
              "targets": rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32)}
    return batching.make_batch(arrays, np.arange(batch_size), length)


# ----------------------------------------------------------------------------------------------------- JAX

class JaxBench:
    """Our train step, built the way lra.trainer.train builds it."""

    def __init__(self, config: dict, batch: dict):
        import jax

        from lra import config as config_lib
        from lra import trainer
        from models import count_params

        config_lib.validate(config)
        self.jax = jax
        model = trainer.build_model(config)
        self.num_params = count_params(model)
        graphdef, self.params, self.rest = trainer.split_model(model)
        tx = trainer.build_optimizer(config)
        self.opt_state = tx.init(self.params)
        self.steps = trainer.Steps(graphdef, tx, config["seed"])
        self.batch = jax.device_put(batch)  # once, as the torch side does; training hands numpy per step
        self.step = 0
        self.fn = self.steps.compiled("train", self.params, self.opt_state, self.rest, self.batch, np.int32(0))
        self.compile_seconds = self.steps.compile_seconds
        self.last_loss = None

    def run(self, n: int) -> float:
        """Run n steps, waiting for each; return the elapsed seconds."""
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.opt_state, self.rest, metrics = self.fn(self.params, self.opt_state, self.rest,
                                                                      self.batch, np.int32(self.step))
            self.jax.block_until_ready((self.params, self.opt_state, metrics))
            self.step += 1
        elapsed = time.perf_counter() - start
        if n:
            self.last_loss = float(metrics["loss"])
        return elapsed


# ----------------------------------------------------------------------------------------------------- PyTorch

def build_torch_model(args):
    """The PyTorch twin of models.Classifier at this shape (see TorchClassifier)."""
    import torch
    from torch import nn

    from models.encoder import sinusoidal_positions

    class TorchClassifier(nn.Module):
        """Embedding + fixed sinusoidal positions (+ zero-init learned CLS), a pre-LN nn.TransformerEncoder with
        a final LayerNorm, CLS or masked-mean pooling, head Linear(d, mlp)-ReLU-Linear(mlp, classes).

        Matches models.Classifier: same parameter count (torch's MultiheadAttention keeps q/k/v as one fused
        [3d, d] in_proj like our qkv Dense), LayerNorm eps 1e-6 (flax's), tanh-approximate GELU (jax.nn.gelu's
        default), dropout on the embeddings, attention weights, both residual branches and the MLP hidden layer.
        Initialisation differs (torch defaults), which does not matter for speed.
        """

        def __init__(self):
            super().__init__()
            d = args.emb_dim
            self.use_cls = args.pooling == "cls"
            self.embed = nn.Embedding(VOCAB_SIZE, d)
            self.register_buffer("positions", torch.from_numpy(sinusoidal_positions(args.length, d)),
                                 persistent=False)
            if self.use_cls:
                self.cls = nn.Parameter(torch.zeros(1, 1, d))
            self.dropout = nn.Dropout(DROPOUT)
            layer = nn.TransformerEncoderLayer(d, args.num_heads, args.mlp_dim, DROPOUT,
                                               activation=nn.GELU(approximate="tanh"), layer_norm_eps=1e-6,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, args.num_layers, norm=nn.LayerNorm(d, eps=1e-6),
                                                 enable_nested_tensor=False)
            self.head_hidden = nn.Linear(d, args.mlp_dim)
            self.head_out = nn.Linear(args.mlp_dim, NUM_CLASSES)

        def forward(self, tokens, valid):
            b, length = tokens.shape
            x = self.embed(tokens) + self.positions[:length]
            if self.use_cls:
                x = torch.cat([self.cls.expand(b, 1, -1), x], dim=1)
                valid = torch.cat([valid.new_ones(b, 1), valid], dim=1)
            x = self.encoder(self.dropout(x), src_key_padding_mask=~valid)
            if self.use_cls:
                pooled = x[:, 0]
            else:
                w = valid.to(x.dtype).unsqueeze(-1)
                pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
            return self.head_out(torch.relu(self.head_hidden(pooled)))

    return TorchClassifier()


class TorchBench:
    """One eager (or torch.compile'd) train step of the torch twin with torch.optim.AdamW."""

    def __init__(self, args, batch: dict, *, threads: int, compiled: bool = False, state_dict=None):
        import torch

        self.torch, self.threads = torch, threads
        torch.manual_seed(SEED)
        self.model = build_torch_model(args)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.model.train()  # dropout on; nn.TransformerEncoder's fast path is inference-only anyway
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-9,
                                     weight_decay=WEIGHT_DECAY)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.tokens = torch.from_numpy(np.asarray(batch["inputs"])).long()
        self.valid = torch.from_numpy(np.asarray(batch["valid"]))
        self.targets = torch.from_numpy(np.asarray(batch["targets"])).long()
        self.last_loss = None

    def run(self, n: int) -> float:
        torch = self.torch
        torch.set_num_threads(self.threads)  # the benches share one process; each runs with its own count
        start = time.perf_counter()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.forward(self.tokens, self.valid), self.targets)
            loss.backward()
            self.opt.step()
        elapsed = time.perf_counter() - start  # CPU ops are synchronous: the step is done when step() returns
        if n:
            self.last_loss = float(loss.detach())
        return elapsed


class _Timeout(Exception):
    pass


def try_torch_compile(args, batch: dict, state_dict, threads: int) -> tuple[TorchBench | None, dict]:
    """A torch.compile'd TorchBench and a note; (None, note) when it fails or compiling takes too long."""
    info = {"status": "skipped", "limit_seconds": TORCH_COMPILE_LIMIT_S}
    use_alarm = hasattr(signal, "SIGALRM") and _in_main_thread()

    def on_alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    start = time.perf_counter()
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, TORCH_COMPILE_LIMIT_S)
        bench = TorchBench(args, batch, threads=threads, compiled=True, state_dict=state_dict)
        bench.run(2)  # the first step compiles forward and backward; the second checks nothing recompiles
        seconds = time.perf_counter() - start
        if seconds > TORCH_COMPILE_LIMIT_S:  # no SIGALRM here: finished, but too slow by the rule
            raise _Timeout()
        info.update(status="ok", compile_seconds=seconds)
        return bench, info
    except _Timeout:
        info["note"] = f"torch.compile skipped: compiling took over {TORCH_COMPILE_LIMIT_S:.0f} s"
    except Exception as e:  # noqa: BLE001 - any failure of inductor here just means "no compiled baseline"
        info["note"] = f"torch.compile skipped: it failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return None, info


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    import jax

    from lra import results

    torch_threads = args.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(torch_threads)
    load_before = os.getloadavg()
    config = bench_config(args)
    batch = random_batch(args.batch_size, args.length)
    print(f"shape: d={args.emb_dim} heads={args.num_heads} layers={args.num_layers} mlp={args.mlp_dim} "
          f"L={args.length} batch={args.batch_size} pooling={args.pooling}; {args.steps} steps x {args.repeats} "
          f"repeats; {results.device_description()}; load average {load_before[0]:.2f}", flush=True)

    jb = JaxBench(config, batch)
    print(f"jax: compiled the train step in {jb.compile_seconds:.2f} s", flush=True)
    tb = TorchBench(args, batch, threads=torch_threads)
    if tb.num_params != jb.num_params:
        print(f"warning: parameter counts differ: jax {jb.num_params:,}, torch {tb.num_params:,}", file=sys.stderr)

    benches = {"jax": jb, "torch": tb}
    if torch_threads > 1 and not args.no_torch_1thread:
        # Secondary: torch's OpenMP regions need every thread scheduled at once, so on a shared machine one
        # thread can beat two; this shows how much of the eager number is thread contention.
        benches["torch_1thread"] = TorchBench(args, batch, threads=1, state_dict=tb.model.state_dict())
    compile_info = None
    if args.torch_compile == "auto":
        cb, compile_info = try_torch_compile(args, batch, tb.model.state_dict(), torch_threads)
        if cb is not None:
            benches["torch_compile"] = cb
            print(f"torch.compile: the first two steps (compiling) took {compile_info['compile_seconds']:.1f} s",
                  flush=True)
        else:
            print(compile_info["note"], flush=True)

    for bench in benches.values():
        bench.run(args.warmup)
    rates = {name: [] for name in benches}
    for repeat in range(args.repeats):  # alternate the frameworks so load drift affects both
        for name, bench in benches.items():
            rates[name].append(args.steps / bench.run(args.steps))
        print(f"repeat {repeat + 1}/{args.repeats}: "
              + ", ".join(f"{name} {r[-1]:.2f}" for name, r in rates.items()) + " steps/s", flush=True)
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, bench in benches.items():
        if bench.last_loss is not None and not math.isfinite(bench.last_loss):
            print(f"warning: {name} loss is {bench.last_loss}", file=sys.stderr)

    ratio = median["jax"] / median["torch"]
    if compile_info is not None and "torch_compile" in median:
        compile_info.update(steps_per_second=median["torch_compile"], repeats=rates["torch_compile"],
                            ratio=median["jax"] / median["torch_compile"])
    record = {
        "benchmark": "bench_torch", "quick": args.quick,
        "emb_dim": args.emb_dim, "qkv_dim": args.emb_dim, "num_heads": args.num_heads,
        "num_layers": args.num_layers, "mlp_dim": args.mlp_dim, "length": args.length,
        "batch_size": args.batch_size, "vocab_size": VOCAB_SIZE, "num_classes": NUM_CLASSES,
        "pooling": args.pooling, "dropout": DROPOUT, "attention": "full", "impl": "xla",
        "valid_fraction": float(np.mean(batch["valid"])),
        "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
        "jax_params": jb.num_params, "torch_params": tb.num_params,
        "jax_steps_per_second": median["jax"], "torch_steps_per_second": median["torch"], "ratio": ratio,
        "jax_repeats": rates["jax"], "torch_repeats": rates["torch"],
        "torch_1thread_steps_per_second": median.get("torch_1thread"),
        "torch_1thread_repeats": rates.get("torch_1thread"),
        "jax_compile_seconds": jb.compile_seconds, "torch_compile": compile_info,
        "device": results.device_description(), "jax_version": jax.__version__,
        "torch_version": torch.__version__, "torch_threads": torch_threads,
        "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0],
        "git_commit": results.git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results.append_jsonl(args.out, record)

    print(f"jax   (jit, XLA):     {median['jax']:8.2f} steps/s  (compile {jb.compile_seconds:.2f} s, apart)")
    print(f"torch (eager):        {median['torch']:8.2f} steps/s  ({torch_threads} threads)")
    if "torch_1thread" in median:
        print(f"torch (eager, 1 thr): {median['torch_1thread']:8.2f} steps/s  (secondary)")
    if "torch_compile" in median:
        print(f"torch (compile):      {median['torch_compile']:8.2f} steps/s  "
              f"(first two steps {compile_info['compile_seconds']:.1f} s)")
    print(f"ratio jax/torch eager: {ratio:.2f}x ({'JAX' if ratio >= 1 else 'PyTorch'} faster); "
          f"{jb.num_params:,} parameters each; load average {load_before[0]:.2f} before, "
          f"{record['load_average_after']:.2f} after; appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
