"""Speed and memory of one train step per (attention variant, length): the LRA efficiency benchmark.

    python -m lra.bench attention=[full,local,linear] lengths=[1024,2048] batch_size=8 [impl=xla] [bench=cpu]

One step = forward, backward and AdamW update of the Text-task backbone (configs/bench.yaml, LRA's Text model),
built and compiled exactly as lra.trainer does for training. Each (variant, length) is measured in a fresh
subprocess so one variant's allocations never count against the next: compile (timed apart), check the
compiled program's memory against what the device has (lra.trainer.check_fits: status "oom" without running
when it cannot fit), warm up, then time ``repeats`` x ``steps`` steps blocking on each repeat's result and keep
the median. Memory: on GPU/TPU the device's peak_bytes_in_use; on CPU the compiler's memory_analysis() (temp + arguments
+ outputs - aliased) with the process peak RSS beside it. A failing variant gets a row with status "error" and
the message; the sweep goes on. Rows are appended to <results_dir>/bench.jsonl.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
log = logging.getLogger("lra.bench")


def attention_config(name: str) -> dict:
    path = CONFIG_DIR / "attention" / f"{name}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in (CONFIG_DIR / "attention").glob("*.yaml"))
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(valid)}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def run_config(bench: dict, name: str, length: int) -> dict:
    """The resolved training config whose train step is measured."""
    attention = attention_config(name)
    if bench.get("impl"):
        attention["impl"] = bench["impl"]
    return {
        "task": {"name": "text", "num_classes": bench["num_classes"], "vocab_size": bench["vocab_size"],
                 "max_length": length},
        "model": dict(bench["model"]), "attention": attention, "seed": 0,
        "train": {"batch_size": bench["batch_size"], "eval_batch_size": bench["batch_size"], "train_steps": 1000,
                  "eval_every": 1000, "log_every": 100, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0,
                  "weight_decay": 0.0, "grad_clip": None, "bucket_size": None, "memory_limit_gb": None,
                  "progress": False},
    }


def measure(bench: dict, name: str, length: int) -> dict:
    """Measure one (variant, length) in this process; returns a bench row."""
    import jax
    import numpy as np

    from lra import batching, results, trainer

    config = run_config(bench, name, length)
    row = {"attention": name, "impl": config["attention"].get("impl", "xla"),
           "pallas_backend": trainer.pallas_backend(config), "length": length,
           "batch_size": bench["batch_size"], "dtype": "float32", "device": results.device_description(),
           "jax_version": jax.__version__, "git_commit": results.git_commit(), "model": config["model"]}
    model = trainer.build_model(config)
    row["params"] = trainer.count_params(model)
    graphdef, params, rest = trainer.split_model(model)
    tx = trainer.build_optimizer(config)
    opt_state = tx.init(params)
    steps = trainer.Steps(graphdef, tx, 0)
    rng = np.random.default_rng(0)
    b = bench["batch_size"]
    arrays = {"inputs": rng.integers(1, bench["vocab_size"], (b, length)).astype(np.int32),
              "targets": rng.integers(0, bench["num_classes"], b).astype(np.int32),
              "lengths": np.full(b, length, np.int32)}
    batch = batching.make_batch(arrays, np.arange(b), length)
    step_fn = steps.compiled("train", params, opt_state, rest, batch, np.int32(0))
    row["compile_seconds"] = steps.compile_seconds
    need = trainer.compiled_bytes(step_fn)
    try:
        trainer.check_fits(trainer.memory_needs([("the train step", step_fn)]), bench.get("memory_limit_gb"),
                           "before running", limit_name="memory_limit_gb",
                           advice="lower batch_size or the length, or measure an attention whose memory grows "
                                  "linearly (local, linear, performer, ...)")
    except trainer.DoesNotFit as e:
        return {**row, "status": "oom", "peak_memory_bytes": need, "memory_method": "compiled_memory_analysis",
                "message": str(e)}
    for i in range(bench["warmup"]):
        params, opt_state, rest, _ = step_fn(params, opt_state, rest, batch, np.int32(i))
    jax.block_until_ready(params)   # (warmup=0: nothing to wait for)
    rates = []
    for _ in range(bench["repeats"]):
        start = time.perf_counter()
        for i in range(bench["steps"]):
            params, opt_state, rest, metrics = step_fn(params, opt_state, rest, batch, np.int32(i))
        jax.block_until_ready(metrics)
        rates.append(bench["steps"] / (time.perf_counter() - start))
    sps = float(np.median(rates))
    peak, method = trainer.peak_memory(need)
    row = {**row, "status": "ok", "steps_per_second": sps, "examples_per_second": sps * b,
           "tokens_per_second": sps * b * length, "repeats": rates, "peak_memory_bytes": peak,
           "memory_method": method}
    flops = step_flops(step_fn)
    if flops:   # what XLA's cost model counts for the compiled step (the backend's figure, not ours)
        row.update(train_step_flops=flops, achieved_flops_per_second=flops * sps)
    if bench.get("forward", True):
        fwd = steps.compiled("eval", params, rest, batch)
        out = fwd(params, rest, batch)
        jax.block_until_ready(out)
        fwd_rates = []
        for _ in range(bench["repeats"]):
            start = time.perf_counter()
            for _ in range(bench["steps"]):
                out = fwd(params, rest, batch)
            jax.block_until_ready(out)
            fwd_rates.append(bench["steps"] / (time.perf_counter() - start))
        row["forward_steps_per_second"] = float(np.median(fwd_rates))
        row["forward_ms"] = 1000.0 / row["forward_steps_per_second"]
        fwd_flops = step_flops(fwd)
        if fwd_flops:
            row["forward_step_flops"] = fwd_flops
    return {**row, "peak_rss_bytes": trainer.peak_rss_bytes(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}


def step_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled program by XLA's cost analysis, where the backend reports them."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without a cost model)
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def measure_isolated(bench: dict, name: str, length: int, timeout: float) -> dict:
    """Run ``measure`` in a fresh Python process; failures and timeouts become rows with a message."""
    spec = json.dumps({"bench": bench, "name": name, "length": length})
    base = {"attention": name, "length": length, "batch_size": bench["batch_size"], "impl": bench.get("impl")}
    try:
        r = subprocess.run([sys.executable, "-m", "lra.bench", "--one", spec], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                           preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        return {**base, "status": "error", "message": f"timed out after {timeout:.0f} s"}
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode < 0:   # killed by a signal: its stderr's last line says nothing about why
        sig = signal.Signals(-r.returncode).name if -r.returncode in signal.valid_signals() else -r.returncode
        killed = sig == "SIGKILL"
        return {**base, "status": "oom" if killed else "error",
                "message": f"the measuring process was killed by {sig}" + (
                    " (most likely the kernel's out-of-memory killer: lower batch_size or the length, or set "
                    "memory_limit_gb below what this machine has)" if killed else "")}
    if r.returncode or not lines:
        tail = error_line(r.stderr)
        status = "oom" if "RESOURCE_EXHAUSTED" in r.stderr or "Out of memory" in r.stderr else "error"
        return {**base, "status": status, "message": tail[-500:]}
    return json.loads(lines[-1])


def _die_with_parent() -> None:
    """In the measuring child before it runs (Linux): SIGKILL it when the benchmark process dies (a SIGTERM from
    a scheduler or `timeout`), so that no measurement goes on holding memory with nobody to read its row."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG


def error_line(stderr: str) -> str:
    """The exception line of a failed measurement's stderr (JAX appends a note about filtered frames after
    it), else its last line."""
    lines = stderr.strip().splitlines() or ["no output"]
    errors = [x.strip() for x in lines if re.match(r"[\w.]+(Error|Exception|Exhausted)\b", x.strip())]
    return errors[-1] if errors else lines[-1]


# The options of configs/bench.yaml (and its bench/ presets): any other key is a typo or a '+' that nothing reads.
BENCH_KEYS = {"variants", "lengths", "batch_size", "impl", "warmup", "steps", "repeats", "forward", "isolate",
              "timeout_s", "memory_limit_gb", "results_dir", "vocab_size", "num_classes", "model", "logger", "preset"}


def check_bench(bench: dict) -> dict:
    """The benchmark's options, checked before any measurement (ValueError naming the option and a valid form).
    One variant or one length may be given bare (``attention=full``, ``lengths=1024``)."""
    from lra.config import _is_int

    b = dict(bench)
    unknown = sorted(set(b) - BENCH_KEYS)
    if unknown:
        hint = " (attention=[...] names the variants: without '+')" if "attention" in unknown else ""
        raise ValueError(f"unknown benchmark option(s) {', '.join(unknown)}{hint}; "
                         f"valid: {', '.join(sorted(BENCH_KEYS))}")
    for key in ("variants", "lengths"):
        if isinstance(b.get(key), str) or _is_int(b.get(key)):
            b[key] = [b[key]]
        if isinstance(b.get(key), list):   # each measured once
            try:
                unique = list(dict.fromkeys(b[key]))
            except TypeError:   # not names or numbers: refused below
                unique = b[key]
            if len(unique) < len(b[key]):
                log.warning("%s lists %s more than once: each is measured once", key,
                            sorted({str(x) for x in b[key] if b[key].count(x) > 1}))
                b[key] = unique
    names = b.get("variants")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"attention must name variants, e.g. attention=[full,local]; got {bench.get('variants')!r}")
    lengths = b.get("lengths")
    if not isinstance(lengths, list) or not lengths or not all(_is_int(n) and n > 0 for n in lengths):
        raise ValueError(f"lengths must be positive integers, e.g. lengths=[1024,4096]; got {bench.get('lengths')!r}")
    for key, low in (("batch_size", 1), ("steps", 1), ("repeats", 1), ("warmup", 0)):
        if not _is_int(b.get(key)) or b[key] < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {b.get(key)!r}")
    for key in ("isolate", "forward"):
        if key in b and not isinstance(b[key], bool):
            raise ValueError(f"{key} must be true or false, got {b[key]!r}")
    for key, optional in (("timeout_s", False), ("memory_limit_gb", True)):
        v = b.get(key)
        if key in b and not (v is None and optional) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                          or not v > 0):
            raise ValueError(f"{key} must be a positive number{' or null' if optional else ''}, got {v!r}")
    return b


def run(bench: dict) -> list[dict]:
    from lra import config as config_lib
    from lra import results
    from models import EncoderConfig
    from models.attention import check_options

    bench = check_bench(bench)
    names = list(bench["variants"])
    for name in names:  # unknown names, impl=pallas for a variant without a kernel, a model that cannot be built:
        config = run_config(bench, name, bench["lengths"][0])   # each fails once, before measuring, not as an
        config_lib.validate(config)                              # error row per measurement (impl checked too)
        options = {k: v for k, v in config["attention"].items() if k != "name"}
        check_options(name, options)
        EncoderConfig(vocab_size=bench["vocab_size"], num_classes=bench["num_classes"], max_length=1,
                      attention=name, attention_options=options, **bench["model"])
    rows = []
    out = Path(bench["results_dir"]) / "bench.jsonl"
    results.check_appendable(out)   # before the first measurement
    for length in bench["lengths"]:
        for name in names:
            if bench.get("isolate", True):
                row = measure_isolated(bench, name, int(length), bench.get("timeout_s", 900))
            else:
                try:
                    row = measure(bench, name, int(length))
                except Exception as e:  # one failing variant never stops the sweep
                    row = {"attention": name, "length": length, "batch_size": bench["batch_size"],
                           "impl": bench.get("impl"), "status": "error", "message": repr(e)[-500:]}
            row["bench"] = bench.get("preset")
            results.append_jsonl(out, row)
            rows.append(row)
            sps = row.get("steps_per_second")
            log.info("%-12s L=%-6d %-6s %s", name, length, row["status"],
                     f"{sps:.2f} steps/s, {row.get('peak_memory_bytes', 0) / 2**20:.0f} MiB" if sps else
                     row.get("message", ""))
    return rows


def log_to_wandb(bench: dict, rows: list[dict], out_dir: Path) -> None:
    """The rows as a wandb.Table and the speed/memory-vs-length charts as images, in one W&B run (offline
    without an API key, like training runs: see lra.loggers)."""
    import wandb

    from lra import loggers, plot

    options = bench.get("logger") or {}
    mode = loggers.resolve_mode(options.get("mode", "auto"))
    run, _ = loggers.init_wandb(mode, float(options.get("init_timeout", 60)), project=options.get("project") or "lra",
                                entity=options.get("entity"), group="bench", job_type="bench",
                                tags=[f"bench:{bench.get('preset')}", f"impl:{bench.get('impl')}"],
                                config={k: v for k, v in bench.items() if k != "logger"}, dir=str(out_dir))
    columns = sorted({k for r in rows for k in r if not isinstance(r[k], (dict, list))})
    run.log({"bench/rows": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
    ok = [r for r in rows if r.get("status") == "ok"]
    if ok:
        speed, memory = out_dir / "speed_vs_length.png", out_dir / "memory_vs_length.png"
        plot.draw_curves(ok, speed, memory)
        run.log({"bench/speed_vs_length": wandb.Image(str(speed)), "bench/memory_vs_length": wandb.Image(str(memory))})
    run.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    from lra.train import fail_run

    bench = OmegaConf.to_container(cfg, resolve=True)
    wandb = (bench.get("logger") or {}).get("name") == "wandb"
    try:
        if wandb:   # a bad logger.mode fails now, not after the measurements
            from lra import loggers

            loggers.resolve_mode((bench.get("logger") or {}).get("mode", "auto"))
        rows = run(bench)
    except ValueError as e:   # in a sweep (-m) the other benchmarks still run; the exit status is 1 at the end
        fail_run(e, log)
        return
    if rows and all(r["status"] == "error" for r in rows):
        fail_run(RuntimeError(f"every measurement failed ({len(rows)} rows with status error in "
                              f"{Path(bench['results_dir']) / 'bench.jsonl'}); the first: {rows[0].get('message')}"),
                 log)
        return
    if wandb:
        log_to_wandb(bench, rows, Path(HydraConfig.get().runtime.output_dir))


def _cli_args(argv: list[str]) -> list[str]:
    """``attention=[...]`` (the documented form) names the config key ``variants``: configs/attention/ is a config
    group of the training app, and Hydra would read ``attention=`` as a choice in that group."""
    return [("variants=" + a[len("attention="):]) if a.startswith("attention=") else a for a in argv]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        spec = json.loads(sys.argv[2])
        logging.getLogger("absl").setLevel(logging.WARNING)
        print(json.dumps(measure(spec["bench"], spec["name"], spec["length"]), default=float))
    else:
        from lra.train import run_command

        sys.argv = [sys.argv[0], *_cli_args(sys.argv[1:])]
        run_command(main)
