"""Tiny synthetic data sets in the real on-disk formats of the Text, Retrieval and Image sources.

The writers produce files that the real preparation code and loaders read unchanged, so tests and the
``smoke`` profile run that code offline:

- ``write_imdb_archive(folder, ...)``: ``folder/aclImdb_v1.tar.gz`` with
  ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``, a few ``aclImdb/train/unsup/*.txt`` and the archive's
  other files (README, vocabulary, url lists). Positive reviews use positive words more often than negative ones
  and vice versa; both classes use both.
- ``write_aan_tsvs(folder, ...)``: ``folder/new_aan_pairs.{train,eval,test}.tsv`` (label, id1, id2, text1, text2;
  labels written as "1.0" or "1"). Each paper carries 6 rare topic words; a cited pair (label 1) shares 3 to 6
  of them, an uncited pair 0 to 2.
- ``write_cifar_archive(folder, ...)``: ``folder/cifar-10-binary.tar.gz`` with the five training batches and the
  test batch in the binary record format. Each class has its own brightness pattern (a tilted grating),
  blurred by per-image offsets, colour tints and noise.

All content is drawn from ``numpy.random.default_rng(seed)``; archives carry fixed timestamps and owners, so the
same arguments give byte-identical files.

Smoke data: ``ensure_smoke(task, data_dir)`` makes ``<data_dir>/<task>/smoke/`` ready when it is missing, the folder
the loaders read with ``source="smoke"``:

- ``<data_dir>/text/smoke/``: prepared arrays + manifest, from ``<data_dir>/text/smoke/source/aclImdb_v1.tar.gz``;
- ``<data_dir>/image/smoke/``: prepared arrays + manifest, from
  ``<data_dir>/image/smoke/source/cifar-10-binary.tar.gz``;
- ``<data_dir>/retrieval/smoke/``: ``new_aan_pairs.{train,eval,test}.tsv`` (token caches appear next to them).

Delete such a folder to have it written again. ``python -m lra.data.fixtures smoke [--task T] [--data-dir D]``
does the same from the command line.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from . import _common as C

log = logging.getLogger(__name__)

TASKS = ("text", "retrieval", "image")
# Sizes of the smoke data sets (seconds to write and prepare; big enough for a few batches per split).
SMOKE = {
    "text": {"num_per_class": 40, "num_unsup": 4, "seed": 0},
    "retrieval": {"num_train": 160, "num_eval": 40, "num_test": 40, "seed": 0},
    "image": {"num_train": 250, "num_test": 50, "seed": 0},
}
_MTIME = 1_300_000_000  # fixed archive timestamps (2011), so archives are byte-identical across runs


def _write_tar_gz(path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    """A deterministic .tar.gz of (name, content) entries; content None makes a directory entry."""
    with C.atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, content in entries:
                    info = tarfile.TarInfo(name)
                    info.mtime = _MTIME
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if content is None:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        info.mode, info.size = 0o644, len(content)
                        tar.addfile(info, io.BytesIO(content))
    return path


# --------------------------------------------------------------------------- IMDB

_POSITIVE = ("great", "wonderful", "brilliant", "moving", "superb", "loved", "delightful", "masterpiece", "charming")
_NEGATIVE = ("awful", "boring", "terrible", "dull", "waste", "worst", "clumsy", "mess", "predictable")
_NEUTRAL = (
    "the", "film", "movie", "plot", "actor", "actress", "scene", "story", "director", "and", "a", "of", "was", "it",
    "with", "but", "this", "character", "ending", "music", "camera", "script", "I", "watched", "they", "in", "on",
    "cast", "role", "two", "hours", "is", "that", "very", "quite", "rather", "café", "naïve", "déjà vu", "—",
)


def _review(rng: np.random.Generator, label: int) -> str:
    own, other = (_POSITIVE, _NEGATIVE) if label == 1 else (_NEGATIVE, _POSITIVE)
    sentences = []
    for _ in range(int(rng.integers(3, 12))):
        words = []
        for _ in range(int(rng.integers(5, 16))):
            u = rng.random()
            if u < 0.09:
                words.append(own[rng.integers(len(own))])
            elif u < 0.13:
                words.append(other[rng.integers(len(other))])
            else:
                words.append(_NEUTRAL[rng.integers(len(_NEUTRAL))])
        sentences.append(" ".join(words).capitalize() + ".")
    text = " ".join(sentences)
    if rng.random() < 0.3:
        text = text.replace(". ", ".<br /><br />", 1)
    return text


def write_imdb_archive(folder, num_per_class: int = 8, num_unsup: int = 3, seed: int = 0) -> Path:
    """Write ``folder/aclImdb_v1.tar.gz``: ``num_per_class`` reviews in each of aclImdb/{train,test}/{pos,neg}/,
    ``num_unsup`` in aclImdb/train/unsup/, and the archive's other files. Returns the archive path."""
    rng = np.random.default_rng(seed)
    entries: list[tuple[str, bytes | None]] = [("aclImdb", None), ("aclImdb/test", None), ("aclImdb/train", None)]
    entries += [("aclImdb/README", b"Large Movie Review Dataset v1.0 (synthetic fixture)\n"),
                ("aclImdb/imdb.vocab", "\n".join(_NEUTRAL + _POSITIVE + _NEGATIVE).encode() + b"\n"),
                ("aclImdb/imdbEr.txt", b"0.0\n" * 4)]
    # Test before train and pos before neg: the archive order is not the sorted order the preparation uses.
    for split in ("test", "train"):
        urls = []
        for label_name, label in (("pos", 1), ("neg", 0)):
            entries.append((f"aclImdb/{split}/{label_name}", None))
            for i in range(num_per_class):
                rating = int(rng.integers(7, 11)) if label else int(rng.integers(1, 5))
                text = _review(rng, label).encode("utf-8")
                if rng.random() < 0.2:  # stray whitespace: the preparation strips it, like tfds
                    text = b" " + text + b"\n"
                entries.append((f"aclImdb/{split}/{label_name}/{i}_{rating}.txt", text))
                urls.append(f"http://www.imdb.com/title/tt{i:07d}/usercomments")
            entries.append((f"aclImdb/{split}/urls_{label_name}.txt", "\n".join(urls).encode() + b"\n"))
        entries.append((f"aclImdb/{split}/labeledBow.feat", b"0 0:1\n"))
    entries.append(("aclImdb/train/unsup", None))
    for i in range(num_unsup):
        entries.append((f"aclImdb/train/unsup/{i}_0.txt", _review(rng, int(rng.integers(2))).encode("utf-8")))
    return _write_tar_gz(Path(folder) / "aclImdb_v1.tar.gz", entries)


# --------------------------------------------------------------------------- AAN

_FILLER = (
    "we", "propose", "model", "method", "results", "corpus", "parsing", "translation", "the", "of", "and", "a", "in",
    "for", "is", "on", "with", "task", "data", "approach", "show", "that", "our", "evaluation", "baseline", "features",
    "training", "accuracy", "semantic", "syntactic", "tree", "word", "sentence", "language", "system", "table",
)
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "jo", "qu")


def _topic_words(rng: np.random.Generator, k: int, avoid=()) -> list[str]:
    """``k`` distinct made-up words (not in ``avoid``)."""
    words: list[str] = []
    while len(words) < k:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if word not in words and word not in avoid:
            words.append(word)
    return words


def _paper(rng: np.random.Generator, topics: list[str]) -> str:
    words = [_FILLER[i] for i in rng.integers(len(_FILLER), size=int(rng.integers(40, 150)))]
    for word in topics:  # each topic word 1-3 times, inserted anywhere in the document
        for _ in range(int(rng.integers(1, 4))):
            words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words)


def _aan_rows(rng: np.random.Generator, num: int) -> list[str]:
    labels = rng.permutation(np.arange(num) % 2)
    rows = []
    for label in labels:
        # Both papers get 6 rare topic words; a cited pair shares 3 to 6 of them, an uncited pair 0 to 2.
        shared = _topic_words(rng, 6)
        k = int(rng.integers(3, 7)) if label else int(rng.integers(0, 3))
        other = shared[:k] + _topic_words(rng, 6 - k, avoid=shared)
        ids = [f"{'PWEJ'[rng.integers(4)]}{rng.integers(0, 20):02d}-{rng.integers(1000, 2000)}" for _ in range(2)]
        lab = f"{float(label):.1f}" if rng.random() < 0.5 else str(int(label))
        rows.append("\t".join([lab, ids[0], ids[1], _paper(rng, shared), _paper(rng, other)]))
    return rows


def write_aan_tsvs(folder, num_train: int = 64, num_eval: int = 16, num_test: int = 16, seed: int = 0) -> Path:
    """Write ``folder/new_aan_pairs.{train,eval,test}.tsv`` (balanced labels) atomically; returns ``folder``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for name, num in (("train", num_train), ("eval", num_eval), ("test", num_test)):
        rows = _aan_rows(rng, num)
        with C.atomic_path(folder / f"new_aan_pairs.{name}.tsv") as tmp:
            tmp.write_bytes(("\n".join(rows) + "\n").encode("utf-8") if rows else b"")
    return folder


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_records(rng: np.random.Generator, labels: np.ndarray) -> bytes:
    y, x = np.mgrid[0:32, 0:32].astype(np.float64)
    out = bytearray()
    for label in labels:
        angle = np.pi * label / 10  # class: orientation and frequency of a grating
        freq = 2 * np.pi * (1 + label % 3) / 32
        pattern = 0.5 + 0.5 * np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 2 * np.pi))
        gray = 70 + 110 * pattern + rng.uniform(-30, 30) + rng.normal(0, 25, size=(32, 32))
        tint = rng.uniform(0.7, 1.3, size=3)
        planes = np.clip(gray[None] * tint[:, None, None], 0, 255).astype(np.uint8)
        out.append(int(label))
        out += planes.tobytes()  # R plane, G plane, B plane, each row-major 32x32
    return bytes(out)


def write_cifar_archive(folder, num_train: int = 50, num_test: int = 10, seed: int = 0) -> Path:
    """Write ``folder/cifar-10-binary.tar.gz`` with ``num_train`` training images spread over data_batch_1..5
    (the first batches get the remainder) and ``num_test`` in test_batch.bin. Returns the archive path."""
    rng = np.random.default_rng(seed)
    prefix = "cifar-10-batches-bin/"
    entries: list[tuple[str, bytes | None]] = [(prefix.rstrip("/"), None)]
    entries.append((prefix + "batches.meta.txt", ("\n".join(_CIFAR_NAMES) + "\n\n").encode()))
    sizes = [num_train // 5 + (i < num_train % 5) for i in range(5)]
    labels_all = rng.permutation(np.arange(num_train) % 10)
    start = 0
    for i, n in enumerate(sizes, start=1):
        entries.append((prefix + f"data_batch_{i}.bin", _cifar_records(rng, labels_all[start : start + n])))
        start += n
    entries.append((prefix + "readme.html", b"<html>synthetic CIFAR-10 fixture</html>\n"))
    entries.append((prefix + "test_batch.bin", _cifar_records(rng, rng.permutation(np.arange(num_test) % 10))))
    return _write_tar_gz(Path(folder) / "cifar-10-binary.tar.gz", entries)


# --------------------------------------------------------------------------- smoke data


def _smoke_ready(task: str, folder: Path) -> bool:
    if task == "retrieval":
        from .retrieval import FILES

        return all((folder / name).is_file() for name in FILES.values())
    return (folder / C.MANIFEST).is_file()


def _write_smoke(task: str, folder: Path) -> None:
    if task == "retrieval":
        write_aan_tsvs(folder, **SMOKE["retrieval"])
        return
    if task == "text":
        from . import text as module

        archive = write_imdb_archive(folder / "source", **SMOKE["text"])
    else:
        from . import image as module

        archive = write_cifar_archive(folder / "source", **SMOKE["image"])
    module.prepare(archive, folder, verify=False)


def ensure_smoke(task: str, data_dir) -> Path:
    """Make ``<data_dir>/<task>/smoke/`` ready for ``load(..., source="smoke")`` when it is missing (fixture
    files written, then prepared by the task's real ``prepare``); returns that folder.

    The folder is built under a temporary name beside it and renamed into place, so concurrent runs and
    interrupted ones never leave a half-written folder that looks ready."""
    if task not in TASKS:
        raise ValueError(f"no smoke data for task {task!r}; tasks: {', '.join(TASKS)}")
    folder = C.task_dir(data_dir, task, "smoke")
    if _smoke_ready(task, folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".smoke.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        _write_smoke(task, tmp)
        if _smoke_ready(task, folder):  # another run finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return folder
        C.replace_dir(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _smoke_ready(task, folder):  # lost a rename race against a concurrent run
            return folder
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote smoke %s data into %s", task, folder)
    return folder


def main(argv=None) -> int:
    from . import default_data_dir

    p = argparse.ArgumentParser(prog="python -m lra.data.fixtures", description="Synthetic LRA fixture data.")
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("smoke", help="make <data-dir>/<task>/smoke/ ready (what source=smoke reads)")
    sp.add_argument("--task", choices=(*TASKS, "all"), default="all")
    sp.add_argument("--data-dir", default=None, help="data folder (default: $LRA_DATA or data)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = default_data_dir(a.data_dir)
    for task in TASKS if a.task == "all" else (a.task,):
        print(f"{task}: {ensure_smoke(task, data_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
