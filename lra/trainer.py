"""Training, evaluation, checkpointing and the run record (no Hydra here: see lra.train for the CLI).

One jitted train step (forward, backward, AdamW update) with donated params and optimiser state; the dropout
key of step s is fold_in(key(seed), s) and the batch of step s is a pure function of (seed, s), so a resumed
run continues exactly. Each input shape is compiled ahead of time once, and its compile time is kept apart
from the timed steps. Evaluation covers the whole validation and test sets; test accuracy is measured with the
parameters of the best validation checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lra import batching, loggers, optim, parallel, results
from lra import config as config_lib
from lra import data as data_lib
from lra.checkpoint import CheckpointUnreadable, RunCheckpoints, has_checkpoints
from models import Classifier, EncoderConfig, count_params

log = logging.getLogger("lra.train")
# Orbax logs every save and restore through absl at INFO; keep the run log readable.
logging.getLogger("absl").setLevel(logging.WARNING)
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class DoesNotFit(RuntimeError):
    """The compiled train step needs more memory than the device has."""


class Preempted(SystemExit):
    """SIGTERM (what Slurm sends before preemption) arrived: a checkpoint was saved; rerun the command to resume."""

    def __init__(self, step: int, directory):
        super().__init__(143)  # 128 + SIGTERM, as if the signal had killed the process
        self.step, self.directory = step, directory

    def __str__(self):
        return f"stopped by SIGTERM after step {self.step}; checkpoint saved in {self.directory}; rerun to resume"


@contextlib.contextmanager
def _sigterm_flag():
    """Yield a dict whose "stop" turns True when SIGTERM arrives (main thread only; elsewhere nothing changes)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True
        log.warning("SIGTERM received: saving a checkpoint after the current step")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_model(config: dict) -> Classifier:
    task, model, attention = config["task"], config["model"], config["attention"]
    enc = EncoderConfig(vocab_size=task["vocab_size"], num_classes=task["num_classes"],
                        max_length=task["max_length"], attention=attention["name"], pair=task.get("pair"),
                        attention_options={k: v for k, v in attention.items() if k != "name"}, **model)
    return Classifier(enc, nnx.Rngs(params=config["seed"]))


def split_model(model):
    """(graphdef, params, rest): trainable nnx.Params and any other state (e.g. routing's centroids)."""
    return nnx.split(model, nnx.Param, ...)


def train_state(params, opt_state, rest) -> dict:
    """What a checkpoint holds; ``rest`` only when the model has non-parameter state."""
    state = {"params": params, "opt_state": opt_state}
    if jax.tree.leaves(rest):
        state["rest"] = rest
    return state


def full_attention_params(config: dict) -> int:
    """Parameter count of the full-attention Transformer with the same task and model config (shapes only)."""
    full = {**config, "attention": {"name": "full", "impl": "xla"}}
    return count_params(nnx.eval_shape(lambda: build_model(full)))


def build_optimizer(config: dict) -> optax.GradientTransformation:
    t = config["train"]
    return optim.optimizer(lr=t["lr"], schedule_name=t["schedule"], warmup_steps=t["warmup_steps"],
                           train_steps=t["train_steps"], weight_decay=t["weight_decay"], grad_clip=t["grad_clip"])


def _weighted_mean(values, weights):
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


class Steps:
    """The jitted train/eval steps, compiled ahead of time once per input shape."""

    def __init__(self, graphdef, tx, seed: int):
        dropout_key = jax.random.fold_in(jax.random.key(seed), 1)

        def loss_fn(params, rest, batch, step):
            # copy=True: variants with non-parameter state (routing's centroids) update it inside the trace.
            model = nnx.merge(graphdef, params, rest, copy=True)
            rngs = nnx.Rngs(dropout=jax.random.fold_in(dropout_key, step))
            logits, _ = model(batch["inputs"], batch["valid"], deterministic=False, rngs=rngs)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
            accuracy = _weighted_mean((logits.argmax(-1) == batch["targets"]).astype(jnp.float32), batch["weights"])
            return _weighted_mean(ce, batch["weights"]), (accuracy, nnx.state(model, nnx.Not(nnx.Param)))

        def train_step(params, opt_state, rest, batch, step):
            (loss, (accuracy, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch, step)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, rest, {"loss": loss, "accuracy": accuracy, "grad_norm": _global_norm(grads)}

        def eval_step(params, rest, batch):
            model = nnx.merge(graphdef, params, rest, copy=True)
            logits, _ = model(batch["inputs"], batch["valid"], deterministic=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
            w = batch["weights"]
            return {"correct": ((logits.argmax(-1) == batch["targets"]) * w).sum(), "loss_sum": (ce * w).sum(),
                    "count": w.sum()}

        self._jit = {"train": jax.jit(train_step, donate_argnums=(0, 1, 2)), "eval": jax.jit(eval_step)}
        self._compiled = {}
        self.compile_seconds = 0.0

    def compiled(self, kind: str, *args):
        shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args[-2 if kind == "train" else -1]))
        key = (kind, shapes)
        if key not in self._compiled:
            # Steps already queued on the device finish first: they would run during the compilation, and the
            # compile time subtracted from the timing window would take their time away with it.
            jax.block_until_ready([x for x in jax.tree.leaves(args) if isinstance(x, jax.Array)])
            start = time.perf_counter()
            self._compiled[key] = self._jit[kind].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]


def batch_struct(batch_size: int, length: int, pair: bool = False) -> dict:
    shape = (batch_size, 2, length) if pair else (batch_size, length)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "valid": jax.ShapeDtypeStruct(shape, jnp.bool_),
            "targets": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}


def compiled_bytes(compiled) -> int | None:
    """Bytes the compiled program needs at its peak: temp + arguments + outputs - aliased (donated)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


# XLA's CPU backend computes a dot that is fused with elementwise consumers (softmax's backward, when attention
# dropout is off) into a scratch buffer of the fusion's own, which the buffer assignment behind memory_analysis()
# does not count. Measured on this project's 2-core AMD EPYC (JAX 0.10.2): the Path-X cpu model with full
# attention peaked at its estimate plus exactly one [batch, heads, L, L] float32 buffer (8K and 16K tokens,
# batch 1 and 2: 1.25x and 1.5x the estimate, 1.00-1.01x the estimate plus that buffer), and a 16K run at batch 4
# that the estimate alone let through was killed for memory. The CPU check adds the largest such dot.
_HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?(%[\w.\-]+) \(.*\{\s*$")
_HLO_DOT = re.compile(r"^\s*(ROOT )?%[\w.\-]+ = (\w+)\[([\d,]*)\]\S* dot\(")
_HLO_FUSION_CALL = re.compile(r"\bfusion\(.*?calls=(%[\w.\-]+)")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}


def fused_dot_scratch_bytes(hlo_text: str) -> int:
    """The largest dot that a fusion of an optimised HLO module computes as an intermediate (not its root), in
    bytes: on CPU such a dot gets a buffer of its own beyond memory_analysis()."""
    fusion_bodies = set(_HLO_FUSION_CALL.findall(hlo_text))
    computation, largest = None, 0
    for line in hlo_text.splitlines():
        if (m := _HLO_COMPUTATION.match(line)) is not None:
            computation = m.group(1)
        elif line.startswith("}"):
            computation = None
        elif computation in fusion_bodies and (d := _HLO_DOT.match(line)) is not None and not d.group(1):
            size = math.prod(int(n) for n in d.group(3).split(",") if n) * _DTYPE_BYTES.get(d.group(2), 4)
            largest = max(largest, size)
    return largest


def required_bytes(compiled) -> tuple[int | None, int]:
    """(bytes the compiled program is checked against free memory with, of which beyond memory_analysis()).
    On CPU the fused dots' scratch is added, and every local device's share, since they all use host memory."""
    need = compiled_bytes(compiled)
    if need is None or jax.local_devices()[0].platform != "cpu":
        return need, 0
    extra = fused_dot_scratch_bytes(compiled.as_text() or "")
    return (need + extra) * jax.local_device_count(), extra * jax.local_device_count()


def memory_needs(programs: list[tuple[str, object]]) -> list[tuple[str, int | None, int]]:
    """(name, *required_bytes) of each (name, compiled program), read once for as many checks as needed."""
    return [(what, *required_bytes(compiled)) for what, compiled in programs]


TRAIN_ADVICE = ("lower train.batch_size or task.max_length, or choose an attention whose memory grows linearly "
                "(attention=local, linear, performer, ...)")


def _size(nbytes: float) -> str:
    """A memory size for a message: GiB with two decimals, MiB below a tenth of a GiB (0.00 GiB says nothing)."""
    return f"{nbytes / 2**30:.2f} GiB" if abs(nbytes) >= 0.1 * 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_fits(needs: list[tuple[str, int | None, int]], limit_gb: float | None, when: str, *,
               limit_name: str = "train.memory_limit_gb", advice: str = TRAIN_ADVICE, held: int = 0,
               advice_for: dict[str, str] | None = None) -> None:
    """Raise DoesNotFit naming the program (e.g. "the train step at batch_size=4, max_length=16384") whose
    bytes from ``memory_needs`` exceed what is available (``available_bytes``: free memory, or ``limit_gb``, set
    by ``limit_name``, where that is less; ``held`` bytes already in use, e.g. the loaded data, count against the
    limit), then ``advice`` (``advice_for``: another advice for a program of that name)."""
    have, by_limit = _bound(free_bytes(), limit_gb, held)
    if have is None:
        log.warning("memory %s: not checked (this device reports no free memory; set %s to check against a "
                    "limit)", when, limit_name)
        return
    for what, want, extra in needs:
        if want is None:
            continue
        log.info("memory %s: %s needs %s of %s available", when, what, _size(want), _size(have))
        if want > have:
            how = _size(want)
            if extra:
                how += f" (with {_size(extra)} that XLA's CPU runtime allocates for a fused dot beyond its " \
                       f"memory_analysis())"
            source = (f"{limit_name}={limit_gb}" + (f", less {_size(held)} held by the data" if held else "")
                      if by_limit else "free memory")
            raise DoesNotFit(f"{what} needs {how} but {_size(have)} is available ({source}, {when}); "
                             f"{(advice_for or {}).get(what, advice)}")


def available_bytes(limit_gb: float | None = None, held: int = 0) -> int | None:
    """Bytes a program may use: what is free on the device (``free_bytes``), or ``limit_gb`` less ``held``
    (bytes this process already holds, which the free reading has counted) where that is less: a limit can only
    tighten the check, never let through what the machine cannot hold."""
    return _bound(free_bytes(), limit_gb, held)[0]


def _bound(free: int | None, limit_gb: float | None, held: int) -> tuple[int | None, bool]:
    """(available bytes, whether the limit rather than the free memory bounds them); see ``available_bytes``."""
    if not limit_gb:
        return free, False
    limited = int(limit_gb * 2**30) - held
    return (limited, True) if free is None or limited <= free else (free, False)


# cgroup files that bound a container's memory (v2, then v1): (limit, usage).
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _cgroup_free() -> int | None:
    """What the process's cgroup still allows (limit - usage), or None where no limit is set."""
    for limit_path, usage_path in CGROUP_FILES:
        try:
            limit = Path(limit_path).read_text().strip()
            usage = int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:   # "max" (v2) or a huge number (v1): no limit
            return max(0, int(limit) - usage)
    return None


def free_bytes() -> int | None:
    """Free memory of the device: a GPU's bytes_limit less bytes_in_use; on CPU /proc/meminfo's MemAvailable,
    or a container's cgroup limit less its usage where that is less. None where nothing says."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def pallas_backend(config: dict) -> str | None:
    """Which Pallas backend ran the attention ("interpret", "triton", "mosaic_gpu"); None with impl=xla."""
    if config["attention"].get("impl", "xla") != "pallas":
        return None
    from models import attention

    return attention.pallas_backend(config["attention"]["name"])


def evaluate(steps: Steps, params, rest, arrays: dict, config: dict, mesh=None) -> dict:
    t = config["train"]
    totals = {"correct": 0.0, "loss_sum": 0.0, "count": 0.0}
    outputs = []
    # Never a batch larger than the split (rounded up to split over the devices): padding rows cost as much as
    # examples, so a large eval_batch_size on a small split would compute mostly padding.
    n, devices = len(arrays["targets"]), (jax.device_count() if mesh is not None else 1)
    batch_size = min(t["eval_batch_size"], -(-n // devices) * devices)
    for batch in batching.eval_batches(arrays, batch_size, max_length=config["task"]["max_length"],
                                       bucket_size=t["bucket_size"]):
        batch = parallel.shard_batch(batch, mesh)
        outputs.append(steps.compiled("eval", params, rest, batch)(params, rest, batch))
    for out in jax.device_get(outputs):
        for k in totals:
            totals[k] += float(out[k])
    count = totals["count"]
    if int(round(count)) != len(arrays["targets"]):
        raise AssertionError(f"evaluation covered {count} examples, expected {len(arrays['targets'])}")
    return {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count, "count": int(count)}


def load_split(config: dict, split: str) -> dict:
    task = config["task"]
    src = data_lib.source(task["name"], split, data_dir=config["data_dir"], max_length=task["max_length"],
                          **task.get("data", {}))
    if len(src) == 0:   # refused here, before any step: an empty evaluation would divide by zero after training
        raise ValueError(f"the {split} split of task {task['name']} has no examples (data_dir={config['data_dir']}): "
                         f"its files are empty or were cut short; prepare the data again (README, Tasks and data)")
    return pair_arrays(src.arrays)


def pair_arrays(arrays: dict) -> dict:
    """Pair tasks' ``inputs1/inputs2`` and ``lengths1/lengths2`` stacked on a pair axis (see lra.batching)."""
    if "inputs1" not in arrays:
        return arrays
    return {"inputs": np.stack([arrays["inputs1"], arrays["inputs2"]], axis=1),
            "lengths": np.stack([arrays["lengths1"], arrays["lengths2"]], axis=1), "targets": arrays["targets"]}


def peak_memory(steps_bytes: int | None) -> tuple[int | None, str]:
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
    return steps_bytes, "compiled_memory_analysis"


def train(config: dict, run_dir: str | Path) -> dict:
    """Train, evaluate and record one run described by a resolved config dict. Returns the record."""
    wall_start = time.time()
    config_lib.validate(config)
    results.check_appendable(Path(config["results_dir"]) / "runs.jsonl")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    if result_path.exists():
        record = _read_json(result_path, "the record of a finished run")
        changes = _config_changes(config_lib.resume_view(record.get("config") or {}), config)
        if changes:
            raise config_lib.ConfigError(
                f"{run_dir} holds a finished run of a different config ({'; '.join(changes[:5])}); choose another "
                f"hydra.run.dir, or delete {result_path.name} and the checkpoints there to train it again")
        log.info("run already finished (%s); delete it or choose another hydra.run.dir to train again",
                 result_path)
        _ensure_recorded(record, Path(config["results_dir"]) / "runs.jsonl")
        return record
    _claim_run_dir(run_dir, config)

    t = config["train"]
    model = build_model(config)
    num_params = count_params(model)
    full_params = full_attention_params(config)
    graphdef, params, rest = split_model(model)
    tx = build_optimizer(config)
    opt_state = tx.init(params)
    # Data parallelism over all devices (a no-op with one): parameters replicated, batches split.
    mesh = parallel.data_mesh(t["batch_size"])
    if mesh is not None:
        parallel.data_mesh(t["eval_batch_size"], "train.eval_batch_size")  # the evaluation batch must split evenly too
        params, opt_state, rest = parallel.replicate((params, opt_state, rest), mesh)
    steps = Steps(graphdef, tx, config["seed"])
    log.info("%s on %s: %s parameters, run dir %s", config["attention"]["name"], config["task"]["name"],
             f"{num_params:,}", run_dir)

    # Refuse a step that cannot fit before loading any data.
    max_len = config["task"]["max_length"]
    step_arg = jax.ShapeDtypeStruct((), jnp.int32)
    largest_batch = parallel.sharded_struct(batch_struct(t["batch_size"], max_len,
                                                         pair=bool(config["task"].get("pair"))), mesh)
    largest = steps.compiled("train", params, opt_state, rest, largest_batch, step_arg)
    programs = [(f"the train step at batch_size={t['batch_size']}, max_length={max_len}", largest)]
    if t["eval_batch_size"] > t["batch_size"]:   # at most the train step's batch, a forward needs less
        eval_batch = parallel.sharded_struct(batch_struct(t["eval_batch_size"], max_len,
                                                          pair=bool(config["task"].get("pair"))), mesh)
        programs.append((f"the evaluation at train.eval_batch_size={t['eval_batch_size']}, max_length={max_len}",
                         steps.compiled("eval", params, rest, eval_batch)))
    needs = memory_needs(programs)
    eval_advice = {programs[-1][0]: "lower train.eval_batch_size (at most train.batch_size needs no more than the "
                                    "train step)"} if len(programs) > 1 else None
    check_fits(needs, t["memory_limit_gb"], "checked before loading the data", advice_for=eval_advice)

    train_arrays, val_arrays, test_arrays = (load_split(config, s) for s in ("train", "val", "test"))
    # Again with the data in memory: a large dataset (Path-X's arrays, its decoded images) takes its share.
    held = sum(a.nbytes for split in (train_arrays, val_arrays, test_arrays) for a in split.values()
               if isinstance(a, np.ndarray))
    data_advice = (f"the data take {_size(held)} in memory: generate fewer examples (task.data.generate), or "
                   f"{TRAIN_ADVICE}")
    check_fits(needs, t["memory_limit_gb"], "with the data loaded", held=held, advice=data_advice,
               advice_for=eval_advice)
    batches = batching.TrainBatches(train_arrays, t["batch_size"], config["seed"], max_length=max_len,
                                    bucket_size=t["bucket_size"])

    ckpt = RunCheckpoints(run_dir / "checkpoints")
    meta = {"step": 0, "best_val_accuracy": -1.0, "best_step": None, "timed_seconds": 0.0, "timed_steps": 0,
            "compile_seconds": 0.0, "wall_seconds": 0.0, "last_val": None, "last_train_loss": None}
    restored = ckpt.restore("latest", train_state(params, opt_state, rest))
    if restored is not None:
        state, meta = restored
        params, opt_state, rest = state["params"], state["opt_state"], state.get("rest", rest)
        log.info("resuming from step %d (checkpoint in %s)", meta["step"], ckpt.directory / "latest")
    start_step = meta["step"]
    # A run killed between saving "best" and "latest" at one evaluation left a best newer than this step: the
    # evaluations from here on decide again (meta's best_step is the best before it, still on disk).
    ckpt.discard_after("best", start_step)
    if restored is not None:   # the best must be readable too, or the record would name a best it cannot test
        _restore_best(ckpt, train_state(params, opt_state, rest), meta, at_end=False)
    # Several hosts: process 0 writes the metrics log and talks to W&B; the others train silently.
    writer = parallel.is_writer()
    if writer:   # rows after the resume step are written again by this run
        loggers.trim_metrics(run_dir / "metrics.jsonl", start_step)
    # Line-buffered: each record reaches the file when written, so `tail -f metrics.jsonl` follows a run.
    metrics_log = open(run_dir / "metrics.jsonl" if writer else os.devnull, "a", buffering=1)
    logger = loggers.make_logger(config, run_dir) if writer else loggers.Logger()

    def save(which, step):
        meta.update(step=step, compile_seconds=prior_compile + steps.compile_seconds,
                    wall_seconds=prior_wall + time.time() - wall_start)
        ckpt.save(which, step, train_state(params, opt_state, rest), meta)

    prior_compile, prior_wall = meta["compile_seconds"], meta["wall_seconds"]
    progress = _progress_bar(t["train_steps"], start_step, t["progress"])
    pending, untimed = [], 0
    # A SIGTERM cuts a logging window short: its steps' metrics are kept in the checkpoint and averaged into the
    # resumed run's next row, so that row and the record's final_train_loss are those of an uninterrupted run.
    carried = meta.pop("window", None) or []
    window_start, window_compile = time.perf_counter(), steps.compile_seconds
    sigterm = contextlib.ExitStack()
    term = sigterm.enter_context(_sigterm_flag())
    try:
        for step in range(start_step, t["train_steps"]):
            batch = parallel.shard_batch(batches.batch(step), mesh)
            step_arr = np.int32(step)
            fn = steps.compiled("train", params, opt_state, rest, batch, step_arr)
            params, opt_state, rest, metrics = fn(params, opt_state, rest, batch, step_arr)
            pending.append(metrics)
            done = step + 1
            if step == start_step:
                # Warm-up: the first step of a process (first execution of the compiled program, buffers
                # allocated) is not timed; the timing window opens when it has finished.
                jax.block_until_ready(metrics)
                window_start, window_compile, untimed = time.perf_counter(), steps.compile_seconds, 1
            is_eval = done % t["eval_every"] == 0 or done == t["train_steps"]
            stopping = term["stop"] and done < t["train_steps"]
            if done % t["log_every"] == 0 or is_eval or stopping:   # SIGTERM: the window's rows are not lost
                host = jax.device_get(pending)
                elapsed = time.perf_counter() - window_start - (steps.compile_seconds - window_compile)
                timed = len(host) - untimed
                if timed > 0:
                    meta["timed_seconds"] += elapsed
                    meta["timed_steps"] += timed
                for i, m in enumerate(host):
                    if not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"]))):
                        bad = done - len(host) + i
                        what = (f"loss became {float(m['loss'])} at step {bad} (grad norm {float(m['grad_norm'])})")
                        if bad == 0:   # the initial parameters: no learning rate made this
                            raise TrainingDiverged(
                                f"{what}, the first step: the model's loss is not finite with its initial "
                                f"parameters, so the attention variant ({config['attention']['name']}) or the "
                                f"data produce NaN or inf; nothing was saved")
                        kept = (f"checkpoints up to the last finite evaluation are kept in {ckpt.directory}"
                                if ckpt.latest_step() is not None else "no checkpoint had been saved yet")
                        raise TrainingDiverged(f"{what}; {kept}. Lower train.lr or set train.grad_clip.")
                window = carried + [{k: float(m[k]) for k in ("loss", "accuracy", "grad_norm")} for m in host]
                carried = [] if done % t["log_every"] == 0 or is_eval else window   # cut short only by SIGTERM
                loss = float(np.mean([m["loss"] for m in window]))
                acc = float(np.mean([m["accuracy"] for m in window]))
                meta["last_train_loss"] = loss
                sps = timed / elapsed if timed > 0 and elapsed > 0 else None   # null: only the warm-up step
                metrics_log.write(json.dumps({"step": done, "train_loss": loss, "train_accuracy": acc,
                                              "steps_per_second": sps}) + "\n")
                logger.log({"train/loss": loss, "train/accuracy": acc,
                            **({"train/steps_per_second": sps} if sps is not None else {}),
                            "train/grad_norm": float(np.mean([m["grad_norm"] for m in window]))}, done)
                progress.update(len(host))
                progress.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}",
                                     **({"steps_s": f"{sps:.2f}"} if sps is not None else {}))
                pending, untimed = [], 0
                if is_eval:
                    val = evaluate(steps, params, rest, val_arrays, config, mesh)
                    finite_params = bool(_all_finite(params))
                    if not (math.isfinite(val["loss"]) and finite_params):   # never saved as best/latest
                        raise TrainingDiverged(
                            f"the validation loss became {val['loss']} at step {done} (parameters "
                            f"{'finite' if finite_params else 'no longer finite'}); nothing of this step was "
                            f"saved, the checkpoints of the last finite evaluation are kept in {ckpt.directory}. "
                            f"Lower train.lr or set train.grad_clip.")
                    meta["last_val"] = val
                    metrics_log.write(json.dumps({"step": done, "val_accuracy": val["accuracy"],
                                                  "val_loss": val["loss"]}) + "\n")
                    metrics_log.flush()
                    logger.log({"val/accuracy": val["accuracy"], "val/loss": val["loss"]}, done)
                    if val["accuracy"] > meta["best_val_accuracy"]:
                        meta["best_val_accuracy"], meta["best_step"] = val["accuracy"], done
                        save("best", done)
                    save("latest", done)
                    progress.write(f"step {done}: val accuracy {val['accuracy']:.4f} (best "
                                   f"{meta['best_val_accuracy']:.4f} at step {meta['best_step']}), "
                                   f"train loss {loss:.4f}")
                window_start, window_compile = time.perf_counter(), steps.compile_seconds
            if stopping:
                if ckpt.latest_step() != done:  # an evaluation at this step has saved it already
                    meta["window"] = carried
                    save("latest", done)
                progress.write(f"SIGTERM: checkpoint of step {done} saved in {ckpt.directory / 'latest'}; "
                               f"rerun the same command to resume")
                raise Preempted(done, ckpt.directory / "latest")
    except BaseException:
        with contextlib.suppress(Exception):   # a logger failing to close must not hide why training stopped
            logger.finish()
        raise
    finally:
        sigterm.close()
        progress.close()
        metrics_log.close()

    best = _restore_best(ckpt, train_state(params, opt_state, rest), meta, at_end=True)
    best_params, best_rest = (best["params"], best.get("rest", rest)) if best is not None else (params, rest)
    test = evaluate(steps, best_params, best_rest, test_arrays, config, mesh)
    ckpt.close()

    steps_per_second = meta["timed_steps"] / meta["timed_seconds"] if meta["timed_seconds"] > 0 else None
    peak, method = peak_memory(compiled_bytes(largest))
    record = {
        "task": config["task"]["name"], "attention": config["attention"]["name"],
        "impl": config["attention"].get("impl", "xla"), "profile": config.get("profile"), "seed": config["seed"],
        "pallas_backend": pallas_backend(config), "params": num_params, "params_full_attention": full_params,
        "params_ratio": num_params / full_params,
        # LRA's apples-to-apples rule: at most about 10% more parameters than the Transformer of the same config.
        "apples_to_apples": num_params <= 1.1 * full_params, "max_length": max_len, "batch_size": t["batch_size"],
        "train_steps": t["train_steps"], "best_val_accuracy": meta["best_val_accuracy"],
        "best_step": meta["best_step"], "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "test_examples": test["count"], "val_accuracy_last": (meta["last_val"] or {}).get("accuracy"),
        "final_train_loss": meta["last_train_loss"], "steps_per_second": steps_per_second,
        "examples_per_second": steps_per_second * t["batch_size"] if steps_per_second else None,
        "compile_seconds": prior_compile + steps.compile_seconds, "peak_memory_bytes": peak,
        "memory_method": method, "peak_rss_bytes": peak_rss_bytes(), "device": results.device_description(),
        "num_devices": jax.device_count() if mesh is not None else 1, "num_hosts": jax.process_count(),
        # The machine's 1-minute load when the run ended: above the core count, steps/s was measured under contention.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "jax_version": jax.__version__, "git_commit": results.git_commit(),
        "wall_seconds": prior_wall + time.time() - wall_start, "run_dir": _relative(run_dir),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config,
    }
    if parallel.is_writer():  # several hosts: process 0 writes the record
        results.write_json_atomic(result_path, record)
        results.append_jsonl(Path(config["results_dir"]) / "runs.jsonl", record)
    logger.log({"test/accuracy": test["accuracy"], "test/loss": test["loss"]}, t["train_steps"])
    logger.finish(record)
    log.info("test accuracy %.4f at best validation step %s (val %.4f); record appended to %s",
             test["accuracy"], meta["best_step"], meta["best_val_accuracy"], Path(config["results_dir"]) / "runs.jsonl")
    return record


@jax.jit
def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def _restore_best(ckpt: RunCheckpoints, abstract_state, meta: dict, *, at_end: bool):
    """The state of the best checkpoint, with ``meta``'s best_step and best_val_accuracy made to describe it.

    The record's test accuracy is measured on this state, so its best_step must be this checkpoint's. When the
    newest best cannot be read, ``restore`` falls back to the one before, and meta follows it; when none can be
    read (or the folder is gone), a resumed run lets its next evaluations choose the best again, and a finished
    run is tested on its final parameters, recorded as the best of its last evaluation. Returns None then."""
    try:
        best = ckpt.restore("best", abstract_state)
    except CheckpointUnreadable as e:
        log.error("%s", e)
        best = None
    if best is not None:
        state, best_meta = best
        if best_meta["step"] != meta["best_step"]:
            log.warning("the best checkpoint that could be read is of step %d (validation accuracy %.4f), not of "
                        "step %s: the record names step %d", best_meta["step"], best_meta["best_val_accuracy"],
                        meta["best_step"], best_meta["step"])
            meta["best_step"], meta["best_val_accuracy"] = best_meta["step"], best_meta["best_val_accuracy"]
        return state
    if at_end:
        last = meta.get("last_val") or {}
        log.warning("no best checkpoint could be read: the test runs on the final parameters, recorded as the best "
                    "(step %d, validation accuracy %s)", meta["step"], last.get("accuracy"))
        meta["best_step"], meta["best_val_accuracy"] = meta["step"], last.get("accuracy")
    elif meta["best_step"] is not None:
        log.warning("the best checkpoint of step %s is gone or unreadable: the evaluations from step %d on choose "
                    "the best again", meta["best_step"], meta["step"])
        meta["best_step"], meta["best_val_accuracy"] = None, -1.0
    return None


def _ensure_recorded(record: dict, runs_path: Path) -> None:
    """Append a finished run's record to ``runs_path`` unless it is there already (a rerun with another
    results_dir, or a record lost between result.json and the append, still ends up recorded exactly once)."""
    key = (record.get("run_dir"), record.get("finished_at"))
    existing = results.read_jsonl(runs_path) if runs_path.exists() else []
    if not any((r.get("run_dir"), r.get("finished_at")) == key for r in existing):
        results.append_jsonl(runs_path, record)
        log.info("record appended to %s", runs_path)


def _claim_run_dir(run_dir: Path, config: dict) -> None:
    """Record the config of the run that owns this directory; refuse to resume a different one. A directory
    without a checkpoint (its run stopped on bad input, a memory refusal or missing data before the first save)
    holds nothing to resume, so the corrected run takes it over."""
    path = run_dir / "run_config.json"
    view = config_lib.resume_view(config)
    if has_checkpoints(run_dir / "checkpoints") and not path.exists():
        raise config_lib.ConfigError(
            f"{run_dir} holds checkpoints but no {path.name}, so whether they belong to this config cannot be "
            f"told; choose another hydra.run.dir, or delete {run_dir / 'checkpoints'} to train this run afresh")
    if path.exists() and has_checkpoints(run_dir / "checkpoints"):
        old = _read_json(path, "the config of the run that owns this directory")
        changes = _config_changes(old, config)
        if changes:
            raise config_lib.ConfigError(
                f"{run_dir} holds checkpoints of a run with a different config ({'; '.join(changes[:5])}); "
                f"choose another hydra.run.dir or delete that directory")
    else:
        results.write_json_atomic(path, view)


def _config_changes(old_view: dict, config: dict) -> list[str]:
    """How ``config`` differs from a run's stored resume view (compared as JSON, as it was stored)."""
    return config_lib.diff(old_view, json.loads(json.dumps(config_lib.resume_view(config))))


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; ValueError naming the file and what to do when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}, {what}, is not readable JSON ({e}); it was cut short or edited. Delete the run "
                         f"directory {path.parent} to train the run again, or choose another hydra.run.dir") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}, {what}, holds a {type(value).__name__}, not a JSON object. Delete the run "
                         f"directory {path.parent} to train the run again, or choose another hydra.run.dir")
    return value


def _relative(path: Path) -> str:
    """The path relative to the working directory when it lies below it (records never hold machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux /proc's VmHWM: getrusage's ru_maxrss survives exec, so a
    process started from a large one (a pytest worker, a sweep's launcher) would report its parent's peak."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True,
                mininterval=1.0)
