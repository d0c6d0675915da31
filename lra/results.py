"""Run records: result.json per run and one JSON line per run in <results_dir>/runs.jsonl.

Writes are atomic: result.json goes through a temporary file and os.replace; a JSONL line is appended with a
single os.write on an O_APPEND descriptor under an exclusive flock, so concurrent runs never interleave and an
interrupted run never leaves half a line.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# The fields every run record carries (contract 1 in DESIGN.md); records may add more.
RECORD_FIELDS = (
    "task", "attention", "impl", "profile", "seed", "params", "max_length", "batch_size", "train_steps",
    "best_val_accuracy", "best_step", "test_accuracy", "steps_per_second", "examples_per_second",
    "compile_seconds", "peak_memory_bytes", "memory_method", "device", "jax_version", "git_commit",
    "wall_seconds", "config",
)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one line, atomically with respect to other writers of the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A line cut off by an older writer (a crash, a full disk, a hand edit): this record starts a line of
            # its own, so that it stays readable and deleting the broken line never deletes it.
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # disk full or similar: remove the partial line rather than leave it
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"could not append a complete record to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def check_appendable(path: str | os.PathLike, hint: str = "set results_dir to a folder this process can write") -> None:
    """Refuse, before any work, a records file that could not be appended to (its folder is a file or not
    writable, or the file is a folder): a run must not train for hours and then fail to record. ``hint`` says
    what to do (which setting names the file)."""
    from lra.data._common import check_writable

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; records are appended to a file of that name (remove the folder, "
                         f"or {hint})")
    check_writable(path.parent, hint)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{path} is not writable; {hint}")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL file; a malformed line raises ValueError naming the file and line (a file that cannot
    be read at all: ValueError naming it)."""
    records = []
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSONL file of records") from None
    except FileNotFoundError:
        raise
    except OSError as e:   # no permission, an I/O error
        raise ValueError(f"cannot read {path} ({e.strerror or e}); give this process read access to it") from None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        fix = "fix or delete that line, the other lines are read as they are"
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not UTF-8 text ({e}); {fix}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON record ({e}); {fix}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a JSON {type(record).__name__}, not a record (an object); {fix}")
        records.append(record)
    return records


def missing_fields(record: dict) -> list[str]:
    return [f for f in RECORD_FIELDS if f not in record]


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repository holding this package, suffixed with '-dirty' when the tree has changes."""
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_description() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def device_description() -> str:
    """E.g. 'cpu: AMD EPYC 7B13, 2 cores' or 'gpu: NVIDIA H100 80GB HBM3 x1'."""
    import jax

    devices = jax.local_devices()
    platform_name = devices[0].platform
    if platform_name == "cpu":
        return f"cpu: {cpu_description()}"
    return f"{platform_name}: {devices[0].device_kind} x{len(devices)}"


def provenance() -> dict:
    """Where and when a measurement was made: {"device", "commit", "date"} (date in UTC, to the second)."""
    import datetime

    return {"device": device_description(), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def number(value) -> float | None:
    """``value`` as a finite float, or None (absent, null, NaN, infinite, not a number: a record of an older
    version or of a run that could not measure it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    x = number(value)
    return "-" if x is None else f"{x * scale:{spec}}{suffix}"


SETTING_FIELDS = ("impl", "max_length", "batch_size", "train_steps")   # a record without a config: its setting


def setting(record: dict) -> str:
    """The setting a run was trained with, as a canonical string: its config's resume view
    (``lra.config.resume_view``: task, model, attention and train options) without the seed. A record without a
    config (an older one) falls back to its own impl, max_length, batch_size and train_steps fields, those it has
    (older records without them share one setting)."""
    config = record.get("config")
    if isinstance(config, dict):
        from lra.config import resume_view

        train = config.get("train")
        view = resume_view({**config, "train": train if isinstance(train, dict) else {}})
        view.pop("seed", None)
    else:
        view = {"record": {k: record[k] for k in SETTING_FIELDS if k in record}}
    return json.dumps(view, sort_keys=True, default=str)


def latest_per_seed(records: list[dict]) -> dict[tuple, dict]:
    """(task, attention, profile, seed, setting) -> the latest record with a finite test accuracy: a rerun of a
    seed in the same setting (``setting``) replaces it, in every table and chart alike; a run of another setting
    (another max_length, impl, number of steps ...) is kept apart."""
    latest: dict[tuple, dict] = {}
    for r in records:
        if number(r.get("test_accuracy")) is not None:
            latest[(r.get("task"), r.get("attention"), r.get("profile"), r.get("seed"), setting(r))] = r
    return latest


def main_settings(records: list[dict], latest: dict[tuple, dict] | None = None) -> dict[tuple, str]:
    """(task, attention, profile) -> its main setting: the one with the most seeds, ties broken by the most recent
    record (the latest in the file). Charts use it alone; ``summary_table`` names how the others differ.
    ``latest``: ``latest_per_seed(records)`` where the caller has it already."""
    position = {id(r): i for i, r in enumerate(records)}
    seeds: dict[tuple, int] = defaultdict(int)
    recent: dict[tuple, int] = defaultdict(lambda: -1)
    for (task, attention, profile, _, where), r in (latest if latest is not None else latest_per_seed(records)).items():
        seeds[task, attention, profile, where] += 1
        recent[task, attention, profile, where] = max(recent[task, attention, profile, where], position[id(r)])
    best: dict[tuple, str] = {}
    for key in sorted(seeds, key=lambda k: (seeds[k], recent[k])):   # the best comes last and stays
        best[key[:3]] = key[3]
    return best


def setting_diff(main: str, other: str, limit: int = 3, width: int = 60) -> str:
    """How the setting ``other`` differs from ``main`` (both from ``setting``), for a table cell: '-' when equal,
    else the first ``limit`` differences ('train.train_steps: 20000 -> 10', ``lra.config.diff``), each cut to
    ``width`` characters, and how many more there are."""
    if main == other:
        return "-"
    a, b = json.loads(main), json.loads(other)
    if ("record" in a) != ("record" in b):
        return "no config recorded" if "record" in b else "config recorded (the main runs have none)"
    from lra.config import diff

    changes = diff(a["record"], b["record"]) if "record" in a else diff(a, b)
    cells = [c if len(c) <= width else c[:width - 3] + "..." for c in changes[:limit]]
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return ("; ".join(cells) + more).replace("|", "\\|") or "-"


def runs_table(records: list[dict]) -> str:
    """Markdown table of run records, in file order (generated from the records, never typed by hand)."""
    columns = ["task", "attention", "profile", "seed", "params", "test acc", "best val acc (step)", "steps/s",
               "load", "compile s", "wall min", "device"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        params = _fmt(r.get("params"), ",.0f")
        if number(r.get("params_ratio")) not in (None, 1.0):  # the LRA rule compares with the full Transformer
            params += f" ({r['params_ratio']:.2f}x full)"
        cells = [r.get("task"), r.get("attention"), r.get("profile"), r.get("seed"), params,
                 _fmt(r.get("test_accuracy"), ".2f", 100, "%"),
                 f"{_fmt(r.get('best_val_accuracy'), '.2f', 100, '%')} ({r.get('best_step')})",
                 _fmt(r.get("steps_per_second"), ".2f"), _fmt(r.get("load_average_1m"), ".1f"),
                 _fmt(r.get("compile_seconds"), ".1f"), _fmt(r.get("wall_seconds"), ".1f", 1 / 60),
                 r.get("device")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def variants_table() -> str:
    """Markdown table of the registered attention variants and their capability flags (from the code)."""
    from models.attention import REGISTRY

    lines = ["| attention | paper / what | complexity | padding invariant | length multiple | Pallas |",
             "|---|---|---|---|---|---|"]
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        summary = _first_paragraph(cls.__doc__ or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {summary} | {cls.complexity} | {'yes' if cls.padding_invariant else 'no'} | "
                     f"{cls.length_multiple} | {'yes' if cls.pallas else 'no'} |")
    return "\n".join(lines)


def _first_paragraph(doc: str, limit: int = 110) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    if len(paragraph) > limit:
        paragraph = paragraph[:limit].rsplit(" ", 1)[0] + " ..."
    return paragraph


def model_key(row: dict) -> str:
    """A bench row's model (the backbone's options) as a canonical string, for grouping and comparing rows."""
    return json.dumps(row.get("model"), sort_keys=True, default=str)


def _baseline_key(row: dict) -> tuple:
    """What a bench row must share with full attention's row to be compared with it: model, dtype, length, batch
    and device (not the preset: cpu_pallas compares with cpu when these match)."""
    return model_key(row), row.get("dtype"), row.get("length"), row.get("batch_size"), row.get("device")


def bench_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows: steps/s, speedup over full attention (its XLA path, same model, dtype,
    length, batch and device) and memory, per length; ``impl`` says whether a row ran the XLA path or the Pallas
    kernels."""
    ok = [r for r in rows if r.get("status") == "ok"]
    full = {_baseline_key(r): number(r.get("steps_per_second")) for r in ok
            if r.get("attention") == "full" and (r.get("impl") or "xla") == "xla"}
    lines = ["| attention | impl | length | batch | steps/s | speedup vs full (xla) | forward ms | GFLOP/s | "
             "memory (MiB) | memory method | device |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(rows, key=lambda r: (r.get("length", 0), r.get("batch_size", 0), r.get("attention", ""),
                                        r.get("impl") or "xla"))
    for r in order:
        head = f"| {r.get('attention')} | {r.get('impl') or 'xla'} | {r.get('length')} | {r.get('batch_size')} |"
        if r.get("status") != "ok":
            lines.append(f"{head} {r.get('status')} | - | - | - | - | - | {r.get('device', '')} |")
            continue
        base, sps = full.get(_baseline_key(r)), number(r.get("steps_per_second"))
        speedup = f"{sps / base:.2f}x" if base and sps is not None else "-"
        lines.append(f"{head} {_fmt(sps, '.3f')} | {speedup} | {_fmt(r.get('forward_ms'), ',.0f')} | "
                     f"{_fmt(r.get('achieved_flops_per_second'), '.1f', 1e-9)} | "
                     f"{_fmt(r.get('peak_memory_bytes'), ',.0f', 2**-20)} | {r.get('memory_method', '-')} | "
                     f"{r.get('device', '')} |")
    return "\n".join(lines)


def _seed_order(seed) -> tuple:
    """Numbers first, in order, then anything else (a seed recorded as text) by its text."""
    x = number(seed)
    return (0, x, "") if x is not None else (1, 0.0, str(seed))


def _impl_and_length(record: dict) -> tuple[str, str]:
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    impl = record.get("impl") or (config.get("attention") or {}).get("impl")
    length = record.get("max_length", (config.get("task") or {}).get("max_length"))
    return str(impl or "-"), str("-" if length is None else length)


def summary_table(records: list[dict]) -> str:
    """Markdown table: test accuracy mean and standard deviation (over seeds, n - 1 in the denominator) per
    (task, attention, profile, setting), with the mean steps/s; the latest record of a repeated seed counts.

    Runs of different settings (``setting``: another max_length, impl, number of steps ...) are rows of their own:
    the main setting of a (task, attention, profile) (``main_settings``) first, then the others, whose last column
    says how they differ from it. The impl, max length and that column are shown when the records carry a config,
    an impl or a max_length, or hold more than one setting."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    latest = latest_per_seed(records)
    for (task, attention, profile, _, where), r in latest.items():
        groups.setdefault((task, attention, profile, where), []).append(r)
    main = main_settings(records, latest)
    detailed = (any(isinstance(r.get("config"), dict) or "impl" in r or "max_length" in r for r in records)
                or len(groups) > len(main))
    columns = ["task", "attention", "profile"] + (["impl", "max length"] if detailed else []) + [
        "seeds", "test acc mean", "std", "steps/s"] + (["differs from the main setting"] if detailed else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    order = sorted(groups, key=lambda k: (tuple(str(x) for x in k[:3]), k[3] != main[k[:3]], -len(groups[k]), k[3]))
    for key in order:
        runs = groups[key]
        accs = [100 * r["test_accuracy"] for r in runs]
        std = f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "-"
        sps = [number(r.get("steps_per_second")) for r in runs if number(r.get("steps_per_second"))]
        seeds = ",".join(str(r.get("seed")) for r in sorted(runs, key=lambda r: _seed_order(r.get("seed"))))
        speed = f"{statistics.fmean(sps):.2f}" if sps else "-"
        cells = [*key[:3], *(_impl_and_length(runs[-1]) if detailed else ()), seeds,
                 f"{statistics.fmean(accs):.2f}%", std, speed]
        if detailed:
            cells.append(setting_diff(main[key[:3]], key[3]))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


README_START, README_END = "<!-- runs-table:start -->", "<!-- runs-table:end -->"
VARIANTS_START, VARIANTS_END = "<!-- variants-table:start -->", "<!-- variants-table:end -->"
BENCH_START, BENCH_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


MARKERS = ((README_START, README_END), (VARIANTS_START, VARIANTS_END), (BENCH_START, BENCH_END))


def marker_problems(text: str, pairs=MARKERS) -> list[str]:
    """What is wrong with the table markers of ``text``: each pair must be there, its start before its end."""
    problems = []
    for start, end in pairs:
        missing = [m for m in (start, end) if m not in text]
        if missing:
            problems.append(f"{' and '.join(missing)} missing")
        elif text.find(end, text.index(start)) < 0:
            problems.append(f"{end} comes before {start}")
    return problems


def replace_block(text: str, table: str, start: str = README_START, end: str = README_END) -> str:
    """``text`` with the part between the markers ``start`` and ``end`` replaced by ``table`` (ValueError naming
    the markers when they are missing or out of order)."""
    problems = marker_problems(text, [(start, end)])
    if problems:
        raise ValueError(f"the markers are wrong: {problems[0]}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Print the run records of <results>/runs.jsonl as a table.")
    parser.add_argument("--results", default="results", help="results directory (default: results)")
    parser.add_argument("--profile", help="only runs of this profile")
    parser.add_argument("--readme", metavar="FILE",
                        help="rewrite the runs, variants and bench tables between their markers in FILE (all three "
                             "pairs are required: <!-- runs-table:start --> ... <!-- runs-table:end -->, and the "
                             "same for variants-table and bench-table); FILE is left as it was if one is missing")
    parser.add_argument("--summary", action="store_true", help="mean and standard deviation over seeds instead")
    args = parser.parse_args(argv)
    if args.summary and args.readme:
        print("error: --summary prints the summary and writes no file, --readme rewrites the README's tables: "
              "give one of them", file=sys.stderr)
        return 1
    if args.readme and not Path(args.readme).is_file():
        print(f"error: --readme {args.readme}: no such file; give the file whose table markers to rewrite "
              f"(e.g. README.md)", file=sys.stderr)
        return 1
    path = Path(args.results) / "runs.jsonl"
    if not path.exists():
        print(f"error: no records yet: {path} does not exist (python -m lra.train ... appends to it)", file=sys.stderr)
        return 1
    try:
        return _print_or_rewrite(args, path)
    except ValueError as e:   # a malformed or unreadable record file, README markers missing or out of order
        print(f"error: {e}", file=sys.stderr)
        return 1


def _print_or_rewrite(args, path: Path) -> int:
    everything = read_jsonl(path)
    records = [r for r in everything if not args.profile or r.get("profile") == args.profile]
    if args.profile and not records:   # a typo would print (or write into the README) empty tables
        recorded = sorted({str(r.get("profile")) for r in everything})
        raise ValueError(f"no runs of profile {args.profile!r} in {path}; its profiles: "
                         f"{', '.join(recorded) or 'none'}")
    if args.summary:
        print(summary_table(records))
        return 0
    table = runs_table(records)
    if args.readme:
        readme = Path(args.readme)
        try:
            text = readme.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {readme} ({getattr(e, 'strerror', None) or e})") from None
        problems = marker_problems(text)
        if problems:   # checked for all three tables before any is written: the file is never half rewritten
            raise ValueError(f"{readme}: {'; '.join(problems)}; put each table's start marker before its end "
                             f"marker where the table goes (nothing was written)")
        text = replace_block(text, table)
        text = replace_block(text, variants_table(), VARIANTS_START, VARIANTS_END)
        bench_path = Path(args.results) / "bench.jsonl"
        bench_rows = read_jsonl(bench_path) if bench_path.exists() else []
        _write_text_atomic(readme, replace_block(text, bench_table(bench_rows), BENCH_START, BENCH_END))
        print(f"rewrote the runs ({len(records)}), variants and bench ({len(bench_rows)} rows) tables in {readme}")
    else:
        print(table)
    return 0


def _write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s text through a temporary file beside it (keeping its permissions): a crash or a full disk
    leaves the old file, never half of the new one (ValueError naming the file when it cannot be written)."""
    path = path.resolve()   # a link to the README: its target is rewritten, the link kept
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {path} ({e.strerror or e}); it is left as it was") from None


if __name__ == "__main__":
    raise SystemExit(main())
