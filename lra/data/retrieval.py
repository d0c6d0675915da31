"""LRA Retrieval: do two AAN papers cite each other? Byte-level document pairs, 2 classes.

Files: the LRA release's ``lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (``eval`` is the validation
split), placed in ``<data_dir>/retrieval/`` by ``scripts/get_lra_data.sh``. Rows are
``label<TAB>id1<TAB>id2<TAB>text1<TAB>text2`` with no header and no quoting; the label is 0 or 1 and may be written
as a float ("1.0"), as LRA read it as float32. A row with another number of columns or another label raises
ValueError naming the file and the 1-based line number; blank lines are skipped.

Tokens: the first ``max_length`` bytes (default 4000) of each document, byte + 1, padding 0 (vocabulary 257);
``lengths1``/``lengths2`` count the real bytes kept. The two documents are encoded separately (one shared encoder,
no cross attention in LRA).

Cache: the first load of a split writes ``<tsv>.L<max_length>.npz`` next to the TSV (raw truncated bytes as uint8
[N, max_length], lengths, targets; written atomically). Later loads read it instead of the TSV; it is rebuilt when
the TSV's size or modification time changes. Build all caches ahead with::

    python -m lra.data.retrieval prepare [--data-dir data] [--max-length 4000]

``source="smoke"`` selects ``<data_dir>/retrieval/smoke/``, where ``load`` writes tiny synthetic TSVs in the same
format (``lra.data.fixtures``) on first use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from . import _common as C

log = logging.getLogger(__name__)

TASK = "retrieval"
FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
DEFAULT_MAX_LENGTH = 4000
VOCAB_SIZE = 257
PAD_ID = 0
NUM_COLUMNS = 5
CACHE_FORMAT = 1


def tokenize(text: str | bytes, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[np.ndarray, int]:
    """(int32 [max_length] ids, length) of one document: its first max_length bytes + 1, 0-padded."""
    return C.byte_tokens(text, max_length)


def parse_label(raw: bytes) -> int:
    """0 or 1 from "0", "1", "0.0", "1.0" (any float spelling of 0 or 1); ValueError otherwise."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"label {raw.decode(errors='replace')!r} is not a number") from None
    if value not in (0.0, 1.0):
        raise ValueError(f"label {raw.decode(errors='replace')!r} is not 0 or 1")
    return int(value)


def read_tsv(path: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, np.ndarray]:
    """Raw arrays of one release TSV: ``bytes1``/``bytes2`` uint8 [N, max_length] (the documents' first bytes,
    zero-filled), ``lengths1``/``lengths2`` int32 [N], ``targets`` int32 [N]."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    path = Path(path)
    buf1, buf2 = bytearray(), bytearray()
    len1: list[int] = []
    len2: list[int] = []
    targets: list[int] = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip(b" "):   # a blank line; one of tabs is a row with empty columns, reported below
                continue
            cols = line.split(b"\t")
            if len(cols) != NUM_COLUMNS:
                raise ValueError(f"{path}:{lineno}: expected {NUM_COLUMNS} tab-separated columns "
                                 f"(label, id1, id2, text1, text2), got {len(cols)}")
            try:
                targets.append(parse_label(cols[0]))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            for text, buf, lens in ((cols[3], buf1, len1), (cols[4], buf2, len2)):
                text = text[:max_length]
                lens.append(len(text))
                buf += text
                buf += bytes(max_length - len(text))
    n = len(targets)
    if n == 0:
        raise ValueError(f"{path}: no rows (an empty or cut file); get it again with scripts/get_lra_data.sh "
                         f"--data-dir {C.q(path.parent.parent)} --only retrieval")
    return {
        "bytes1": np.frombuffer(buf1, dtype=np.uint8).reshape(n, max_length),
        "bytes2": np.frombuffer(buf2, dtype=np.uint8).reshape(n, max_length),
        "lengths1": np.asarray(len1, dtype=np.int32).reshape(n),
        "lengths2": np.asarray(len2, dtype=np.int32).reshape(n),
        "targets": np.asarray(targets, dtype=np.int32).reshape(n),
    }


# --------------------------------------------------------------------------- cache


def cache_path(tsv: str | os.PathLike, max_length: int) -> Path:
    tsv = Path(tsv)
    return tsv.with_name(f"{tsv.name}.L{max_length}.npz")


def _stamp(tsv: Path, max_length: int) -> np.ndarray:
    st = tsv.stat()
    return np.asarray([CACHE_FORMAT, max_length, st.st_size, st.st_mtime_ns], dtype=np.int64)


def _read_cache(tsv: Path, max_length: int) -> dict[str, np.ndarray] | None:
    path = cache_path(tsv, max_length)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["stamp"], _stamp(tsv, max_length)):
                log.info("%s is out of date (the TSV changed); tokenising again", path)
                return None
            return {k: z[k] for k in ("bytes1", "bytes2", "lengths1", "lengths2", "targets")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # unreadable or partial: rebuild
        log.warning("ignoring unreadable cache %s (%s: %s); tokenising again", path, type(e).__name__, e)
        return None


def load_raw(tsv: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, np.ndarray]:
    """``read_tsv`` through the cache next to the TSV (written on the first call)."""
    tsv = Path(tsv)
    raw = _read_cache(tsv, max_length)
    if raw is None:
        t0 = time.monotonic()
        stamp = _stamp(tsv, max_length)
        raw = read_tsv(tsv, max_length)
        try:
            C.save_npz(cache_path(tsv, max_length), stamp=stamp, **raw)
        except OSError as e:   # a read-only folder (a shared copy of the release): load without a cache
            log.warning("could not write the cache %s (%s); tokenising again on every load",
                        cache_path(tsv, max_length), e)
        else:
            log.info("tokenised %s (%d pairs) in %.1fs; cached in %s", tsv, raw["targets"].size,
                     time.monotonic() - t0, cache_path(tsv, max_length).name)
    return raw


# --------------------------------------------------------------------------- loading


def _missing_message(data_dir, missing: list[Path]) -> str:
    folder = missing[0].parent
    return (f"AAN (LRA Retrieval) file(s) not found: {', '.join(str(p) for p in missing)}\n"
            f"Get them from the LRA release (lra_release.gz, 7.7 GB) with:\n"
            f"    scripts/get_lra_data.sh --data-dir {C.q(data_dir)} --only retrieval\n"
            f"or, with lra_release.gz already downloaded:\n"
            f"    scripts/get_lra_data.sh --archive PATH/lra_release.gz --data-dir {C.q(data_dir)} --only retrieval\n"
            f"which puts lra_release/tsv_data/new_aan_pairs.{{train,eval,test}}.tsv into {folder}/.")


def check_available(*, data_dir, source: str = "release", **_) -> None:
    """Raise FileNotFoundError naming the command that gets the TSVs when any is missing (paths only).
    Smoke data is written on first load, so ``source="smoke"`` never fails here."""
    folder = C.task_dir(data_dir, TASK, source)
    if source == "release":
        missing = [folder / name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(_missing_message(data_dir, missing))


def load(split: str, *, data_dir, max_length: int = DEFAULT_MAX_LENGTH, source: str = "release"
         ) -> dict[str, np.ndarray]:
    """``inputs1``/``inputs2`` int32 [N, max_length] (bytes + 1, 0-padded), ``lengths1``/``lengths2`` int32 [N],
    ``targets`` int32 [N] of one split (val = the release's ``eval`` file)."""
    C.check_split(split, TASK)
    folder = C.task_dir(data_dir, TASK, source)
    if source == "smoke":
        from . import fixtures

        fixtures.ensure_smoke(TASK, data_dir)
    tsv = folder / FILES[split]
    if not tsv.is_file():
        raise FileNotFoundError(_missing_message(data_dir, [tsv]))
    raw = load_raw(tsv, max_length)
    return {
        "inputs1": C.tokens_from_padded_bytes(raw["bytes1"], raw["lengths1"]),
        "inputs2": C.tokens_from_padded_bytes(raw["bytes2"], raw["lengths2"]),
        "lengths1": raw["lengths1"].astype(np.int32),
        "lengths2": raw["lengths2"].astype(np.int32),
        "targets": raw["targets"].astype(np.int32),
    }


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    from . import default_data_dir

    p = argparse.ArgumentParser(prog="python -m lra.data.retrieval",
                                description="Tokenise and cache the LRA Retrieval (AAN) TSVs.")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="build the token caches of <data-dir>/retrieval/new_aan_pairs.*.tsv")
    pp.add_argument("--data-dir", default=None, help="data folder (default: $LRA_DATA or data)")
    pp.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    pp.add_argument("--source", choices=C.SOURCES, default="release")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = default_data_dir(a.data_dir)
    try:
        check_available(data_dir=data_dir, source=a.source)
        for split in C.SPLITS:
            d = load(split, data_dir=data_dir, max_length=a.max_length, source=a.source)
            t = d["targets"]
            print(f"{split}: {t.size} pairs ({int(t.sum())} positive), "
                  f"cache {cache_path(C.task_dir(data_dir, TASK, a.source) / FILES[split], a.max_length)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
