"""Text and Image through tensorflow-datasets, as LRA got them (optional; ``pip install -e '.[tfds]'``).

``python -m lra.data.{text,image} prepare --via tfds [--manual-dir DIR]`` runs tfds's own builders
(``imdb_reviews/plain_text`` and ``cifar10``) once, writing array_record files under ``<data_dir>/tfds/``.
The official archive comes from ``DIR`` when given (tfds's manual-download route: the file keeps its official
name, ``aclImdb_v1.tar.gz`` or ``cifar-10-binary.tar.gz``) or is downloaded by tfds when the machine is online;
tfds checks its size and SHA-256 against its registered checksums.

The same command then exports the built splits, in tfds's stored order, into the numpy layout the loaders read
(``<data_dir>/text/`` or ``<data_dir>/image/``, manifest ``"via": "tfds"``), so training never imports
TensorFlow or tfds. The exported Image arrays are identical to those of the default archive route, which
reproduces tfds's order without it (``lra.data.image.tfds_order``); tests compare the two on fixture archives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import _common as C

log = logging.getLogger(__name__)

TFDS_NAMES = {"text": "imdb_reviews/plain_text", "image": "cifar10"}
ARCHIVES = {"text": "aclImdb_v1.tar.gz", "image": "cifar-10-binary.tar.gz"}
URLS = {"imdb_reviews": "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"}  # the URLs tfds's builders fetch
INSTALL = "pip install -e '.[tfds]'"
SOURCE = "lra_source.json"  # written into tfds's build folder: what it was built from (archive SHA-256, verified)


def require_tfds():
    """Import tensorflow_datasets, or raise ImportError saying how to install the optional extra."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"--via tfds needs tensorflow-datasets and TensorFlow ({e}); install them with\n"
                          f"    {INSTALL}\nor prepare from the official archive without them (the default, "
                          f"--via archive), which gives the same arrays.") from None
    return tfds


@contextlib.contextmanager
def _unchecked(builder, archive: Path | None) -> Iterator[None]:
    """Let tfds accept ``archive`` (a manual-download file that is not the official one; tests use fixture
    archives) by registering its own size and SHA-256 for the official URL for the duration of the build.
    ``archive=None``: tfds checks against its registered checksums as usual."""
    if archive is None:
        yield
        return
    from tensorflow_datasets.core.download import checksums

    cls = type(builder)
    saved = cls.__dict__.get("url_infos")
    cls.url_infos = {URLS[builder.name]: checksums.compute_url_info(archive)}  # overrides tfds's global registry
    try:
        yield
    finally:
        if saved is None:
            del cls.url_infos
        else:
            cls.url_infos = saved


def _reusable(folder: Path, source: dict) -> bool:
    """Whether the tfds build in ``folder`` was made from ``source`` (an unverified build never stands in for a
    verified one; a build without our record, or from another archive, is rebuilt)."""
    try:
        have = json.loads((folder / SOURCE).read_text())
    except (OSError, ValueError):
        return False
    if source["verified"] and not have.get("verified"):
        return False
    return source["archive_sha256"] is None or have.get("archive_sha256") == source["archive_sha256"]


def build(task: str, data_dir, *, manual_dir=None, verify: bool = True):
    """Build the tfds dataset of ``task`` ("text" or "image") as array_record under ``<data_dir>/tfds/``
    (reused when already built from the same archive, with at least the same checks); returns the tfds builder.
    ``verify=False`` needs ``manual_dir``: tfds then takes the archive there whatever its checksum."""
    tfds = require_tfds()
    name = TFDS_NAMES[task]
    root = Path(data_dir) / "tfds"
    if not verify and manual_dir is None:
        raise ValueError("--no-verify with --via tfds needs --manual-dir (tfds checks what it downloads)")
    archive = None if manual_dir is None else Path(manual_dir) / ARCHIVES[task]
    source = {"archive_sha256": C.sha256_file(archive) if archive is not None and archive.is_file() else None,
              "verified": verify}
    builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    folder = Path(builder.data_dir)
    reuse = _reusable(folder, source)
    if not reuse and folder.exists():
        log.info("rebuilding tfds %s: %s was not built from this archive with these checks", name, folder)
    # Anything else is built afresh, extraction included: tfds caches a manual archive's extraction under its
    # file name (downloads/extracted/TAR_GZ.<name>), which another archive of the same name would reuse.
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if reuse else tfds.download.GenerateMode.FORCE_REDOWNLOAD
    config = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else str(manual_dir),
                                          download_mode=mode)
    t0 = time.monotonic()
    with _unchecked(builder, None if verify else archive):
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as e:  # tfds raises its own types (checksum mismatch, download errors)
            hint = (f"Put the official archive in a folder DIR and run: python -m lra.data.{task} prepare --via tfds "
                    f"--manual-dir DIR --data-dir {C.q(data_dir)}")
            raise ValueError(f"tensorflow-datasets could not build {name} ({type(e).__name__}: {e}).\n{hint}") from e
    if not reuse:
        C.write_json(folder / SOURCE, source)
    log.info("tfds %s %s ready under %s (%.1fs)", name, builder.info.version, root, time.monotonic() - t0)
    return builder


def _records(builder, split: str) -> Iterator[dict]:
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
        yield source[i]


def built_from(builder) -> dict | None:
    """What the builder's build was made from (its ``lra_source.json``, written by ``build``), for the manifest."""
    try:
        return json.loads((Path(builder.data_dir) / SOURCE).read_text())
    except (OSError, ValueError):
        return None


def export_image(builder, out: Path) -> Path:
    """Write the cifar10 splits, in tfds order, as grayscale arrays in the layout of ``lra.data.image``."""
    from . import image as I

    arrays, counts = {}, {}
    for split in ("train", "test"):
        rgb, labels, ids = [], [], []
        for ex in _records(builder, split):
            rgb.append(np.asarray(ex["image"], dtype=np.uint8))
            labels.append(int(ex["label"]))
            ident = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
            ids.append(int(ident.rsplit("_", 1)[1]))  # "train_00017": index in the official batch order
        rgb = np.stack(rgb).reshape(len(labels), I.NUM_PIXELS, 3)
        labels = np.asarray(labels, dtype=np.uint8)
        arrays[f"{split}.pixels"] = I.rgb_to_gray(rgb)
        arrays[f"{split}.labels"] = labels
        arrays[f"{split}.ids"] = np.asarray(ids, dtype=np.int32)
        counts[split] = {"num": int(labels.size), "per_class": np.bincount(labels, minlength=I.NUM_CLASSES).tolist()}
    manifest = {"task": I.TASK, "format": I.FORMAT, "via": "tfds", "order": "tfds",
                "tfds": {"name": TFDS_NAMES["image"], "version": str(builder.info.version)},
                "source": built_from(builder), "splits": counts,
                "grayscale": I.GRAYSCALE}
    C.publish(out, arrays, manifest)
    return out


def export_text(builder, out: Path) -> Path:
    """Write the imdb_reviews train and test splits, in tfds order, in the layout of ``lra.data.text``."""
    from . import text as T

    arrays, counts = {}, {}
    for split in T.FILE_SPLITS:
        texts, labels = [], []
        for ex in _records(builder, split):
            texts.append(bytes(ex["text"]))
            labels.append(int(ex["label"]))  # tfds ClassLabel names ["neg", "pos"]
        T.add_split(arrays, counts, split, texts, labels)
    manifest = {"task": T.TASK, "format": T.FORMAT, "via": "tfds", "order": "tfds",
                "tfds": {"name": TFDS_NAMES["text"], "version": str(builder.info.version)},
                "source": built_from(builder), "splits": counts}
    C.publish(out, arrays, manifest)
    return out


def prepare(task: str, data_dir, *, manual_dir=None, verify: bool = True) -> Path:
    """Build with tfds (once) and export to ``<data_dir>/<task>/``; returns that folder."""
    if manual_dir is not None:
        archive = ARCHIVES[task]
        found = C.find_archive(manual_dir, archive)
        if found.name != archive:
            raise ValueError(f"{found}: tfds looks for the official file name; rename it to {archive}")
        manual_dir = found.parent  # tfds looks for the official file name inside manual_dir
    builder = build(task, data_dir, manual_dir=manual_dir, verify=verify)
    out = C.task_dir(data_dir, task)
    t0 = time.monotonic()
    (export_text if task == "text" else export_image)(builder, out)
    log.info("exported tfds %s to %s in %.1fs", TFDS_NAMES[task], out, time.monotonic() - t0)
    return out
