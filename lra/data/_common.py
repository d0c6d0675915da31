"""Helpers shared by the Text, Retrieval and Image data modules (and their fixtures).

- Where a task's files live: ``task_dir(data_dir, task, source)`` is ``<data_dir>/<task>/`` for the real data
  (``source="release"``) and ``<data_dir>/<task>/smoke/`` for the tiny synthetic data of the smoke profile
  (``source="smoke"``, written by ``lra.data.fixtures``). Both folders have the same layout.
- Atomic writes: a file is written under a temporary name in its final folder and renamed into place with
  ``os.replace``; a prepared data set is a set of such files plus a ``manifest.json`` written last, so a folder
  without a manifest is never read (an interrupted preparation leaves nothing a loader would use).
- Downloads with a timeout, size and SHA-256 checks, and a clear message naming the manual route when offline.
- Byte tokenisation shared by Text and Retrieval: token = byte + 1, padding 0 (vocabulary 257).
- tensorflow-datasets' stored order of a split (``tfds_order``), which LRA's slices of Image and Pathfinder
  follow.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SOURCES = ("release", "smoke")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


def check_split(split: str, task: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown {task} split {split!r}; valid splits: {', '.join(SPLITS)}")


def task_dir(data_dir, task: str, source: str = "release") -> Path:
    """``<data_dir>/<task>/`` (release) or ``<data_dir>/<task>/smoke/`` (synthetic smoke data)."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r} for {task}; valid sources: {', '.join(SOURCES)}")
    folder = Path(data_dir) / task
    return folder / "smoke" if source == "smoke" else folder


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (the name is kept exactly; no ``.npy`` is appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Uncompressed ``np.savez`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(folder: Path, hint: str = "prepare the data again") -> dict | None:
    """The manifest of a prepared folder; None when there is none; ValueError naming it when it is unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); {hint}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a manifest (a JSON object); {hint}")
    return manifest


def q(path) -> str:
    """``path`` as it must be typed in a shell command that a message suggests (quoted when it has spaces)."""
    return shlex.quote(str(path))


def prepare_hint(task: str, data_dir, folder: Path, source: str) -> str:
    """What to run when a prepared folder of ``task`` is damaged."""
    if source == "smoke":
        return f"delete {folder} (the smoke data is written again on the next run)"
    return f"prepare them again with python -m lra.data.{task} prepare --data-dir {q(data_dir)}"


def load_array(path: Path, hint: str, *, mmap: bool = False) -> np.ndarray:
    """``np.load`` of one prepared array; a missing, empty or cut file raises ValueError naming it and ``hint``
    (what to run) instead of numpy's own errors."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing from a prepared folder; {hint}") from None
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); {hint}") from None


def publish(folder: Path, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    """Write ``arrays`` as ``<name>.npy`` files into ``folder`` atomically, then the manifest (last): a loader
    that finds the manifest finds every array complete. An old manifest is removed first, so a crash half-way
    through a re-preparation leaves a folder that reads as 'not prepared' rather than a mix of old and new."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (folder / MANIFEST).unlink()
    for name, array in arrays.items():
        save_npy(folder / f"{name}.npy", array)
    write_json(folder / MANIFEST, manifest)


# --------------------------------------------------------------------------- checksums and downloads


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, *, size: int | None, sha256: str | None, hint: str) -> None:
    """Raise ValueError when ``path`` does not have the expected size or SHA-256 (``hint`` says what to do)."""
    found_size = path.stat().st_size
    if size is not None and found_size != size:
        raise ValueError(f"{path}: expected {size} bytes, found {found_size} (truncated or a different file). {hint}")
    if sha256 is not None:
        found = sha256_file(path)
        if found != sha256:
            raise ValueError(f"{path}: SHA-256 mismatch: expected {sha256}, found {found}. {hint}")


def download(url: str, dest: Path, *, timeout: float, manual_hint: str, size: int | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically; a socket timeout of ``timeout`` seconds per read).

    Raises ConnectionError naming the manual route (``manual_hint``) when the machine is offline or the
    server does not answer."""
    log.info("downloading %s to %s", url, dest)
    t0 = time.monotonic()
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            total = resp.headers.get("Content-Length")
            total = int(total) if total else size
            done, next_report = 0, time.monotonic() + 10.0
            while block := resp.read(1 << 20):
                f.write(block)
                done += len(block)
                if time.monotonic() > next_report:
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    log.info("  %d MB%s", done >> 20, pct)
                    next_report = time.monotonic() + 10.0
            if total is not None and done != total:
                raise ConnectionError(f"download of {url} stopped after {done} of {total} bytes")
            if done == 0:
                raise ConnectionError(f"{url} sent nothing (0 bytes)")
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise ConnectionError(f"could not download {url} ({e}).\n{manual_hint}") from None
    log.info("downloaded %s (%.1f MB) in %.0fs", dest.name, dest.stat().st_size / 1e6, time.monotonic() - t0)
    return dest


@contextlib.contextmanager
def open_tar_gz(archive: Path, what: str) -> Iterator[tarfile.TarFile]:
    """A streaming ``tarfile`` over ``gzip.open(archive)``, read to the end of the gzip stream on exit.

    Unlike tarfile's own ``"r|gz"``, gzip checks the stream's CRC-32 and length at its end, so a cut or corrupted
    archive is refused even without ``verify`` (a cut at a member boundary otherwise reads as a shorter archive).
    Any reading error becomes ValueError naming the archive as ``what``."""
    try:
        with gzip.open(archive, "rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                yield tar
            while gz.read(1 << 20):   # the padding after the tar's end: gzip checks CRC and length at EOF
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{archive}: not a readable {what}, cut short or damaged ({type(e).__name__}: {e}); "
                         f"download it again") from None


def fetch_archive(dest: Path, url: str, *, size: int | None, sha256: str | None, timeout: float,
                  manual_hint: str, verify: bool) -> Path:
    """``dest`` when an earlier download is there, else a new download of ``url`` into it. With ``verify``, an
    earlier download that fails the size and SHA-256 check is deleted and downloaded again, and a new download
    that fails it is deleted (ValueError), so a bad download is never reused."""
    if dest.is_file() and verify:
        try:
            verify_file(dest, size=size, sha256=sha256, hint="Deleting this earlier download; downloading again.")
        except ValueError as e:
            log.warning("%s", e)
            dest.unlink()
    if dest.is_file():
        log.info("using the earlier download %s", dest)
        return dest
    download(url, dest, timeout=timeout, manual_hint=manual_hint, size=size)
    if verify:
        try:
            verify_file(dest, size=size, sha256=sha256,
                        hint=f"This download from {url} was deleted; run the command again, or:\n{manual_hint}")
        except ValueError:
            dest.unlink()
            raise
    return dest


def find_archive(manual_dir: str | os.PathLike, filename: str) -> Path:
    """``manual_dir`` itself when it is a file, else ``manual_dir/filename``; FileNotFoundError if absent."""
    p = Path(manual_dir)
    if p.is_file():
        return p
    candidate = p / filename
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"{filename} not found: {candidate} does not exist (--manual-dir must be the folder "
                            f"holding {filename}, or the archive itself)")


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing an existing ``dst`` (renames on the same file system)."""
    if dst.exists():
        trash = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old-"))
        os.replace(dst, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(src, dst)


# --------------------------------------------------------------------------- byte tokens


def byte_tokens(text: str | bytes, max_length: int) -> tuple[np.ndarray, int]:
    """(int32 [max_length] token ids, number of real tokens) of one text: UTF-8 bytes + 1, truncated or padded
    with 0. ``"ab"`` -> ``[98, 99, 0, ...]``, length 2."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    raw = raw[:max_length]
    ids = np.zeros(max_length, dtype=np.int32)
    ids[: len(raw)] = np.frombuffer(raw, dtype=np.uint8).astype(np.int32) + 1
    return ids, len(raw)


def tokens_from_concat(data: np.ndarray, offsets: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte tokens of documents stored as one uint8 concatenation ``data`` with ``offsets`` [N + 1]
    (document i = data[offsets[i]:offsets[i+1]]): int32 [N, max_length] (bytes + 1, 0-padded, truncated)
    and int32 lengths [N]."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    lengths = np.minimum(np.diff(offsets), max_length).astype(np.int32)
    out = np.zeros((n, max_length), dtype=np.int32)
    for i in range(n):
        start, k = offsets[i], lengths[i]
        out[i, :k] = data[start : start + k]
        out[i, :k] += 1
    return out, lengths


def tokens_from_padded_bytes(raw: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int32 tokens from uint8 [N, L] raw bytes whose rows are valid up to ``lengths``: byte + 1, 0 after."""
    raw = np.asarray(raw)
    valid = np.arange(raw.shape[1], dtype=np.int32)[None, :] < np.asarray(lengths, dtype=np.int32)[:, None]
    out = raw.astype(np.int32)
    out += 1
    out *= valid
    return out


def check_writable(folder: Path, hint: str) -> None:
    """Raise ValueError saying why and ``hint`` when ``folder`` could not be created or written (its nearest
    existing ancestor is a file, or not writable: permissions, a read-only file system). Creates nothing."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write into {folder}: {existing} is a file, not a folder; {hint}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into {folder}: {existing} is not writable; {hint}")


def prepare_main(argv, *, task: str, title: str, archive: str, fetch_and_prepare, report) -> int:
    """The ``python -m lra.data.<task> prepare`` command shared by the archive-based tasks (text, image):
    ``fetch_and_prepare(data_dir, manual_dir=, timeout=, verify=)`` does the work (``--via tfds``:
    ``lra.data.tfds_prep.prepare`` instead), ``report(out, manifest)``
    prints what was prepared."""
    import argparse
    import logging
    import sys

    from . import default_data_dir

    p = argparse.ArgumentParser(prog=f"python -m lra.data.{task}", description=f"Prepare the LRA {title} data.")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help=f"prepare <data-dir>/{task}/ from {archive}")
    pp.add_argument("--manual-dir", help=f"folder holding {archive} (or the archive itself); "
                                         "without it the archive is downloaded")
    pp.add_argument("--data-dir", default=None, help="data folder (default: $LRA_DATA or data)")
    pp.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (download only)")
    pp.add_argument("--no-verify", action="store_true", help="skip the archive's size and SHA-256 check")
    pp.add_argument("--via", choices=("archive", "tfds"), default="archive",
                    help="archive (default): read the official archive directly, no TensorFlow; tfds: build "
                         "tensorflow-datasets' array_record dataset first and export it (pip install -e '.[tfds]')")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data_dir = default_data_dir(a.data_dir)
        check_writable(task_dir(data_dir, task), "choose another --data-dir (or $LRA_DATA)")   # before any work
        if a.via == "tfds":
            from . import tfds_prep

            out = tfds_prep.prepare(task, data_dir, manual_dir=a.manual_dir, verify=not a.no_verify)
        else:
            out = fetch_and_prepare(data_dir, manual_dir=a.manual_dir, timeout=a.timeout, verify=not a.no_verify)
    except (OSError, ValueError, ImportError) as e:   # OSError: also a full disk, ConnectionError
        print(f"error: {e}", file=sys.stderr)
        return 1
    report(out, read_manifest(out))
    return 0


# --------------------------------------------------------------------------- tensorflow-datasets' order


def _tfds_key_bytes(key: str | bytes) -> bytes:
    # tensorflow_datasets.core.hashing._to_bytes of a str key: '\\' -> '/', then UTF-8.
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    return key.replace("\\", "/").encode("utf-8")


def tfds_order(keys, salt: str, *, what: str = "examples") -> np.ndarray:
    """int64 [N]: the indices of ``keys`` in the order tensorflow-datasets stores the examples of the split
    named ``salt``: by ``int(md5(salt + key).hexdigest(), 16)``, smallest first (the 128-bit hash read
    big-endian, so comparing its two 64-bit halves gives the same order). The same for every writer, Beam's
    too (tfds 4.9.10: core/hashing.py, core/writer.py). Two equal keys raise ValueError naming ``what``, as
    tfds's writer refuses them."""
    salted = hashlib.md5(salt.encode("utf-8"))
    digests = bytearray()
    for key in keys:
        h = salted.copy()
        h.update(_tfds_key_bytes(key))
        digests += h.digest()
    words = np.frombuffer(bytes(digests), dtype=">u8").reshape(-1, 2)
    order = np.lexsort((words[:, 1], words[:, 0]))
    ordered = words[order]
    same = np.flatnonzero((ordered[1:] == ordered[:-1]).all(axis=1))
    if same.size:
        i, j = order[same[0]], order[same[0] + 1]
        raise ValueError(f"two {what} share the tfds key {keys[i]!r} (entries {i} and {j})")
    return order.astype(np.int64)
