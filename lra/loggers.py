"""Experiment loggers: ``logger=none`` (the default) and ``logger=wandb``.

Every run always writes ``<run_dir>/metrics.jsonl`` (train and eval metrics per logging step) and its record to
``<results_dir>/runs.jsonl``; a logger sends the same things elsewhere as well.

``logger=wandb`` (Weights & Biases): one W&B run per training run, grouped by task and tagged with the variant,
profile and impl, so a workspace compares variants per task out of the box. It logs the resolved config (plus
versions and the git commit), train metrics per logging step, eval metrics, and at the end the record's
throughput, memory, parameter count and accuracy as the run summary. The W&B run id is derived from the run
directory, so a resumed run continues the same W&B run.

Resuming: the steps between the checkpoint a run resumes from and the moment the earlier run was killed are run
again. ``trim_metrics`` removes their rows from ``metrics.jsonl`` (they are written again, with the same losses:
data order and dropout keys are functions of seed and step), and the W&B logger does not send steps the W&B run
already holds (W&B keeps the first values and would warn about every repeated step).

Never blocks without network: mode ``auto`` is online only when an API key is configured (``WANDB_API_KEY`` or
a ``~/.netrc`` entry for api.wandb.ai) and offline otherwise (``wandb sync <run_dir>/wandb/offline-run-*``
uploads later); an online start that fails or times out falls back to offline with a warning. ``WANDB_MODE``
set in the environment wins over the config.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import netrc
import os
import urllib.parse
import warnings
from pathlib import Path

log = logging.getLogger("lra.loggers")
MODES = ("auto", "online", "offline", "disabled")


class Logger:
    """No external logger: metrics.jsonl and runs.jsonl only."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, record: dict | None = None) -> None:
        pass


def trim_metrics(path: Path, step: int) -> int:
    """Keep only the rows of ``metrics.jsonl`` up to ``step``, the step a run resumes from (0: starts afresh).

    Later rows were written by the run that was killed after its last checkpoint; the resumed run writes them
    again. A last line cut off by the kill goes too. Returns how many rows were removed; the file is replaced
    atomically, so a second kill during the trim leaves the old file or the new one."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step and line.endswith("\n"):
            keep.append(line)
    if len(keep) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)
        log.info("metrics.jsonl: removed %d rows after step %d, the step this run resumes from",
                 len(lines) - len(keep), step)
    return len(lines) - len(keep)


def _wandb_hosts() -> list[str]:
    """The hosts a ``wandb login`` may have written into ~/.netrc: that of the server wandb talks to
    (WANDB_BASE_URL, else the installed wandb's default, which is no longer api.wandb.ai in every version), and
    api.wandb.ai."""
    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        with contextlib.suppress(Exception):
            import wandb

            url = wandb.Settings().base_url
    host = urllib.parse.urlparse(url).hostname if url else None
    return list(dict.fromkeys(h for h in (host, "api.wandb.ai") if h))


def api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entries = netrc.netrc()
    except (OSError, netrc.NetrcParseError):
        return False
    return any(entries.authenticators(host) is not None for host in _wandb_hosts())


def init_wandb(mode: str, timeout: float, **kwargs):
    """``wandb.init`` in ``mode``; (run, mode it runs in). An online start that fails (no network, a wrong key, a
    server that does not answer within ``timeout`` seconds) warns and starts offline instead: training and the
    benchmark never stop for W&B. wandb keeps the failed run's id claimed in its service, so the service is torn
    down before the offline start (without that, the retry fails with "run ID ... is in use")."""
    import wandb

    try:
        return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=timeout, silent=True), **kwargs), mode
    except Exception as e:  # noqa: BLE001  (any failure to reach W&B: keep going, log offline)
        if mode != "online":
            raise
        warnings.warn(f"W&B online start failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                      f"logging offline instead (wandb sync uploads later)", RuntimeWarning, stacklevel=2)
    with contextlib.suppress(Exception):
        wandb.teardown()
    return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs), "offline"


def resolve_mode(mode: str) -> str:
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if mode not in MODES:
        raise ValueError(f"logger.mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "online" if api_key_configured() else "offline"
    return mode


def run_id(run_dir: Path) -> str:
    """A stable W&B run id for a run directory (a resumed run logs into the same W&B run)."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


# Record fields copied into the W&B run summary.
SUMMARY_KEYS = ("test_accuracy", "test_loss", "best_val_accuracy", "best_step", "steps_per_second",
                "examples_per_second", "compile_seconds", "peak_memory_bytes", "memory_method", "peak_rss_bytes",
                "params", "params_full_attention", "params_ratio", "apples_to_apples", "wall_seconds", "device",
                "jax_version", "git_commit", "max_length", "batch_size", "train_steps")


class WandbLogger(Logger):
    def __init__(self, config: dict, run_dir: Path, options: dict):
        import wandb

        self._wandb = wandb
        task, attention = config["task"]["name"], config["attention"]["name"]
        profile, impl = config.get("profile"), config["attention"].get("impl", "xla")
        mode = resolve_mode(options.get("mode", "auto"))
        import jax

        from lra import results

        meta = {"jax_version": jax.__version__, "git_commit": results.git_commit(), "run_dir": str(run_dir)}
        kwargs = dict(project=options.get("project") or "lra", entity=options.get("entity"),
                      group=options.get("group") or task,
                      tags=[attention, f"profile:{profile}", f"impl:{impl}", *(options.get("tags") or [])],
                      name=options.get("name") or f"{task}-{attention}-{profile}-seed{config['seed']}",
                      job_type=options.get("job_type") or "train", config={**config, "meta": meta},
                      dir=str(run_dir), id=run_id(run_dir), resume="allow")
        self.run, self.mode = init_wandb(mode, float(options.get("init_timeout", 60)), **kwargs)
        # A resumed W&B run starts after the last step it holds; the steps up to there that this run repeats
        # (after its checkpoint) are not sent again.
        self.first_step = int(getattr(self.run, "starting_step", 0) or 0)
        log.info("W&B run %s (%s mode) in %s%s", self.run.id, self.mode, run_dir,
                 f", resumed at step {self.first_step}" if self.first_step else "")

    def log(self, metrics: dict, step: int) -> None:
        if step >= self.first_step:
            self.run.log(metrics, step=step)

    def finish(self, record: dict | None = None) -> None:
        if record is not None:
            self.run.summary.update({k: record[k] for k in SUMMARY_KEYS if record.get(k) is not None})
        self.run.finish()


def make_logger(config: dict, run_dir: Path) -> Logger:
    options = dict(config.get("logger") or {"name": "none"})
    name = options.pop("name", "none")
    if name == "none":
        return Logger()
    if name == "wandb":
        return WandbLogger(config, Path(run_dir), options)
    raise ValueError(f"logger.name must be 'none' or 'wandb', got {name!r}")


__all__ = ["Logger", "WandbLogger", "api_key_configured", "make_logger", "resolve_mode", "run_id",
           "trim_metrics"]
