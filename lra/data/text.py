"""LRA Text: byte-level IMDB sentiment classification (Maas et al. 2011), 2 classes (neg 0, pos 1).

Splits (as in LRA): ``train`` = the 25,000 labelled training reviews; ``val`` and ``test`` are both the 25,000
IMDB test reviews (IMDB has no validation split, and LRA validates on the test split). The 50,000 unlabelled
reviews in ``aclImdb/train/unsup`` are ignored.

Tokens: the review's UTF-8 bytes + 1, padding 0, vocabulary 257; truncated or padded to ``max_length``
(1000 in the official config, 4000 in the paper). ``lengths`` counts the real bytes kept, so padding masks come
from lengths and never from token values.

Source: the official Stanford archive ``aclImdb_v1.tar.gz`` (layout
``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``), read directly with Python's ``tarfile`` as a stream
(nothing is extracted); no TensorFlow or tfds is needed. With the optional extra (``pip install -e '.[tfds]'``),
``prepare --via tfds`` builds tfds's own ``imdb_reviews`` (array_record under ``<data_dir>/tfds/``) and exports
it to the same layout (``lra.data.tfds_prep``).
What LRA got from tfds's ``imdb_reviews`` builder is reproduced: each review is its file's bytes with leading
and trailing whitespace stripped (``bytes.strip()``), labelled by its ``pos``/``neg`` folder. Our order is
deterministic (sorted by path in the archive); tfds's order differs, which changes nothing here (train is
shuffled by the trainer, val/test are whole splits).

Preparation, once (the archive is 84 MB; its size and SHA-256 are checked)::

    python -m lra.data.text prepare --manual-dir DIR [--data-dir data]   # DIR holds aclImdb_v1.tar.gz
    python -m lra.data.text prepare [--data-dir data]                    # downloads it when online

writes into ``<data_dir>/text/``: ``{train,test}.bytes.npy`` (uint8, the reviews' bytes concatenated),
``{train,test}.offsets.npy`` (int64 [N + 1], review i = bytes[offsets[i]:offsets[i + 1]]),
``{train,test}.labels.npy`` (int8 [N]) and, last, ``manifest.json``. A downloaded archive is kept in
``<data_dir>/text/source/``. Training then reads plain numpy.

``source="smoke"`` selects ``<data_dir>/text/smoke/`` instead: the same layout, prepared by the same code from a
tiny synthetic archive (``lra.data.fixtures``) that ``load`` writes there on first use.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

from . import _common as C

log = logging.getLogger(__name__)

TASK = "text"
ARCHIVE = "aclImdb_v1.tar.gz"
URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# Size and SHA-256 of the official archive (as recorded in tensorflow-datasets' url_checksums/imdb_reviews.txt).
ARCHIVE_SIZE = 84_125_825
ARCHIVE_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"

VOCAB_SIZE = 257
PAD_ID = 0
LABELS = {"neg": 0, "pos": 1}
FILE_SPLITS = ("train", "test")  # what the archive holds; val reads the test split
FORMAT = 1
_MEMBER = re.compile(r"^(?:\./)?aclImdb/(train|test)/(pos|neg)/[^/]+\.txt$")


def tokenize(text: str | bytes, max_length: int) -> tuple[np.ndarray, int]:
    """(int32 [max_length] ids, length) of one review: UTF-8 bytes + 1, 0-padded. "ab" -> [98, 99, 0, ...], 2."""
    return C.byte_tokens(text, max_length)


# --------------------------------------------------------------------------- preparation


def read_archive(archive: str | Path) -> dict[str, tuple[list[bytes], list[int]]]:
    """{"train"|"test": (review bytes, labels)} from an aclImdb tar.gz, each split sorted by member path.

    Streams the archive once; only ``aclImdb/{train,test}/{pos,neg}/*.txt`` members are read. Raises ValueError
    naming the archive when it cannot be read or a pos/neg folder of a split is absent."""
    archive = Path(archive)
    found: dict[str, list[tuple[str, bytes, int]]] = {s: [] for s in FILE_SPLITS}
    with C.open_tar_gz(archive, ARCHIVE) as tar:
        for member in tar:
            m = _MEMBER.match(member.name)
            if m is None or not member.isfile():
                continue
            f = tar.extractfile(member)
            text = f.read().strip() if f is not None else b""
            found[m.group(1)].append((member.name, text, LABELS[m.group(2)]))
    out = {}
    for split in FILE_SPLITS:
        rows = sorted(found[split], key=lambda r: r[0])
        for label_name, label in LABELS.items():
            if not any(r[2] == label for r in rows):
                raise ValueError(f"{archive}: no member aclImdb/{split}/{label_name}/*.txt; expected the layout of "
                                 f"the official {ARCHIVE} (aclImdb/{{train,test}}/{{pos,neg}}/<id>_<rating>.txt)")
        out[split] = ([r[1] for r in rows], [r[2] for r in rows])
    return out


def add_split(arrays: dict, counts: dict, split: str, texts: list[bytes], labels: list[int]) -> None:
    """Add one split's ``{split}.bytes/offsets/labels`` arrays and its counts (shared with the tfds route)."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    arrays[f"{split}.bytes"] = np.frombuffer(b"".join(texts), dtype=np.uint8)
    arrays[f"{split}.offsets"] = offsets
    arrays[f"{split}.labels"] = np.asarray(labels, dtype=np.int8)
    counts[split] = {"num": len(texts), "pos": int(sum(labels)), "neg": len(labels) - int(sum(labels))}


def prepare(archive: str | Path, out: str | Path, *, verify: bool = True, verified: bool = False) -> Path:
    """Prepare the arrays of ``archive`` into folder ``out`` (see the module docstring); returns ``out``.

    ``verify`` checks the archive's size and SHA-256 against the official file first; ``verified`` says the caller
    has just checked them (``fetch_archive``), so the archive is not read a second time for its checksum."""
    archive, out = Path(archive), Path(out)
    t0 = time.monotonic()
    sha = ARCHIVE_SHA256 if verified else None
    if verify and not verified:
        C.verify_file(archive, size=ARCHIVE_SIZE, sha256=ARCHIVE_SHA256,
                      hint=f"Use the official {URL}, or pass --no-verify to prepare this file anyway.")
        sha = ARCHIVE_SHA256
    splits = read_archive(archive)
    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, dict] = {}
    for split, (texts, labels) in splits.items():
        add_split(arrays, counts, split, texts, labels)
    manifest = {"task": TASK, "format": FORMAT, "via": "archive", "order": "archive path",
                "archive": archive.name, "archive_sha256": sha, "splits": counts}
    C.publish(out, arrays, manifest)
    log.info("prepared IMDB from %s into %s in %.1fs: %s", archive, out, time.monotonic() - t0, counts)
    return out


def _manual_hint(data_dir) -> str:
    return (f"Offline: download {URL} by hand on a machine with network access, put it in a folder DIR here, "
            f"and run:\n    python -m lra.data.text prepare --manual-dir DIR --data-dir {C.q(data_dir)}")


def fetch_and_prepare(data_dir, *, manual_dir=None, timeout: float = 60.0, verify: bool = True) -> Path:
    """The CLI's work: take the archive from ``manual_dir`` (or a previous download in
    ``<data_dir>/text/source/``, or download it), then prepare ``<data_dir>/text/``."""
    out = C.task_dir(data_dir, TASK)
    if manual_dir is not None:
        archive = C.find_archive(manual_dir, ARCHIVE)
    else:
        archive = C.fetch_archive(out / "source" / ARCHIVE, URL, size=ARCHIVE_SIZE, sha256=ARCHIVE_SHA256,
                                  timeout=timeout, manual_hint=_manual_hint(data_dir), verify=verify)
        return prepare(archive, out, verify=False, verified=verify)   # fetch_archive checked them when verify
    return prepare(archive, out, verify=verify)


# --------------------------------------------------------------------------- loading


def _missing_message(data_dir, folder: Path) -> str:
    return (f"IMDB (LRA Text) data not prepared: {folder / C.MANIFEST} not found.\n"
            f"Prepare it once (downloads {ARCHIVE}, 84 MB, from {URL}) with:\n"
            f"    python -m lra.data.text prepare --data-dir {C.q(data_dir)}\n"
            f"or, with the archive already downloaded into a folder DIR:\n"
            f"    python -m lra.data.text prepare --manual-dir DIR --data-dir {C.q(data_dir)}\n"
            f"The prepared arrays go to {folder}/.")


def check_available(*, data_dir, source: str = "release", **_) -> None:
    """Raise FileNotFoundError naming the preparation command when the prepared arrays are missing.
    Cheap: one path check. Smoke data is written on first load, so ``source="smoke"`` never fails here."""
    folder = C.task_dir(data_dir, TASK, source)
    if source == "release" and not (folder / C.MANIFEST).is_file():
        raise FileNotFoundError(_missing_message(data_dir, folder))


def load(split: str, *, data_dir, max_length: int = 1000, source: str = "release") -> dict[str, np.ndarray]:
    """``inputs`` int32 [N, max_length] (bytes + 1, 0-padded), ``targets`` int32 [N] (neg 0, pos 1) and
    ``lengths`` int32 [N] of one split; ``val`` and ``test`` are both the IMDB test split."""
    C.check_split(split, TASK)
    folder = C.task_dir(data_dir, TASK, source)
    if source == "smoke":
        from . import fixtures

        fixtures.ensure_smoke(TASK, data_dir)
    hint = C.prepare_hint(TASK, data_dir, folder, source)
    manifest = C.read_manifest(folder, hint)
    if manifest is None:
        raise FileNotFoundError(_missing_message(data_dir, folder))
    if manifest.get("task") != TASK or manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / C.MANIFEST}: not IMDB arrays of format {FORMAT}; {hint}")
    name = "train" if split == "train" else "test"
    data = C.load_array(folder / f"{name}.bytes.npy", hint, mmap=True)
    offsets = C.load_array(folder / f"{name}.offsets.npy", hint)
    labels = C.load_array(folder / f"{name}.labels.npy", hint)
    if offsets.size != labels.size + 1 or offsets[-1] != data.size:
        raise ValueError(f"{folder}: {name} arrays are inconsistent; {hint}")
    inputs, lengths = C.tokens_from_concat(data, offsets, max_length)
    return {"inputs": inputs, "targets": labels.astype(np.int32), "lengths": lengths}


# --------------------------------------------------------------------------- CLI


def _report(out, manifest) -> None:
    for split, c in manifest["splits"].items():
        print(f"{out}/{split}: {c['num']} reviews ({c['pos']} pos, {c['neg']} neg)")


def main(argv=None) -> int:
    return C.prepare_main(argv, task=TASK, title="Text (IMDB)", archive=ARCHIVE,
                          fetch_and_prepare=fetch_and_prepare, report=_report)


if __name__ == "__main__":
    sys.exit(main())
