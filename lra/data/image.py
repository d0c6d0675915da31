"""LRA Image: CIFAR-10 as a sequence of 1024 8-bit grayscale pixels, 10 classes.

Tokens: the grayscale value 0..255 of each pixel (vocabulary 256), row-major over the 32x32 image, no
normalisation. Every pixel is data (a black pixel is token 0 too), so ``lengths`` is 1024 for every image.

Splits (as in LRA): ``train`` = tfds's ``cifar10`` ``train[:90%]`` (45,000 images), ``val`` = ``train[90%:]``
(5,000), ``test`` = the 10,000 test images; the same members as LRA's. tfds stores a split's examples sorted by
the 128-bit MD5 of (split name + key), where the key of the i-th image of the official batch order
(``data_batch_1`` .. ``data_batch_5``, records in file order) is the integer i written in decimal; we store
the images in that order (``tfds_order``), so slicing our arrays gives tfds's slices without tfds. For N
training images the split point is tfds's ``int(round(0.9 * N))`` (Python's rounding, halves to even).
This order was checked against tensorflow-datasets 4.9.10 (cifar10 3.0.2) itself: ``--via tfds`` (below)
builds with tfds and exports identical arrays.

Grayscale, exactly as LRA's ``tf.image.rgb_to_grayscale`` on the uint8 image (TensorFlow's
``image_ops_impl.py``; the float and back conversions are ``tf.image.convert_image_dtype``)::

    f_c  = float32(x_c) * float32(1/255)                         # uint8 -> float32, c in R, G, B
    gray = (f_R * 0.2989 + f_G * 0.5870) + f_B * 0.1140          # float32 weighted sum (tensordot)
    out  = uint8(trunc(gray * 255.5))                            # float32 -> uint8: scale by MAX + 0.5, cast

The cast back truncates (it does not round): pure green (0, 255, 0) gives trunc(0.587 * 255.5) = 149, not the
150 of round(0.587 * 255). Everything is float32 as in TensorFlow; exact real arithmetic would differ by one
grey level for 237 of the 2^24 colours, e.g. (0, 122, 186) is 93 here (exact value 92.999996). The order of the
3-term sum is the one of a sequential dot product; the other two orders, or fused multiply-adds, would move
31 to 47 of the 2^24 colours by one level. Checked against TensorFlow 2.21.0's ``rgb_to_grayscale`` itself on
all 2^24 colours: identical (tests/data/test_image.py keeps a SHA-256 of TensorFlow's output).

Source: the official binary archive ``cifar-10-binary.tar.gz`` (``cifar-10-batches-bin/data_batch_{1..5}.bin``,
``test_batch.bin``; each record is 1 label byte + 3072 pixel bytes: 1024 R, 1024 G, 1024 B, each plane
row-major 32x32), read with Python's ``tarfile``; no TensorFlow or tfds is needed. With the optional extra
(``pip install -e '.[tfds]'``), ``prepare --via tfds`` runs tfds's own ``cifar10`` builder instead (array_record
under ``<data_dir>/tfds/``) and exports its splits to the same arrays (``lra.data.tfds_prep``).

Preparation, once (the archive is 170 MB; its size and SHA-256 are checked)::

    python -m lra.data.image prepare --manual-dir DIR [--data-dir data]  # DIR holds cifar-10-binary.tar.gz
    python -m lra.data.image prepare [--data-dir data]                   # downloads it when online

    python -m lra.data.image prepare --via tfds --manual-dir DIR         # the same, through tfds

writes into ``<data_dir>/image/``: ``{train,test}.pixels.npy`` (uint8 [N, 1024] grayscale, in tfds order; train
holds all 50,000 training images), ``{train,test}.labels.npy`` (uint8 [N]), ``{train,test}.ids.npy`` (int32 [N],
each image's index in the official batch order) and, last, ``manifest.json``.
A downloaded archive is kept in ``<data_dir>/image/source/``.

``source="smoke"`` selects ``<data_dir>/image/smoke/``: the same layout, prepared by the same code from a tiny
synthetic archive (``lra.data.fixtures``) that ``load`` writes there on first use.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import _common as C

log = logging.getLogger(__name__)

TASK = "image"
ARCHIVE = "cifar-10-binary.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# Size and SHA-256 of the official archive (as recorded in tensorflow-datasets' url_checksums/cifar10.txt).
ARCHIVE_SIZE = 170_052_171
ARCHIVE_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"

PREFIX = "cifar-10-batches-bin/"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
SIDE = 32
NUM_PIXELS = SIDE * SIDE
RECORD_BYTES = 1 + 3 * NUM_PIXELS
NUM_CLASSES = 10
VOCAB_SIZE = 256
FORMAT = 2  # 2: arrays in tfds order with ids (1: official batch order)
GRAYSCALE = "tf.image.rgb_to_grayscale (float32, weights 0.2989/0.5870/0.1140, x255.5, truncate)"

# tf.image.rgb_to_grayscale's weights, as float32 constants.
RGB_WEIGHTS = (np.float32(0.2989), np.float32(0.5870), np.float32(0.1140))


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 grayscale of uint8 RGB pixels [..., 3], computed like TensorFlow's ``rgb_to_grayscale`` (see the
    module docstring): float32 arithmetic, weights 0.2989/0.5870/0.1140, scale by 255.5, truncate."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"expected uint8 [..., 3] RGB pixels, got {rgb.dtype}{list(rgb.shape)}")
    return _gray_planes(rgb[..., 0], rgb[..., 1], rgb[..., 2])


def _gray_planes(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    scale = np.float32(1.0 / 255.0)
    wr, wg, wb = RGB_WEIGHTS
    gray = (r.astype(np.float32) * scale) * wr
    gray += (g.astype(np.float32) * scale) * wg
    gray += (b.astype(np.float32) * scale) * wb
    gray *= np.float32(255.5)
    return gray.astype(np.uint8)  # float -> uint8 truncates toward zero; values lie in [0, 255.48)


def decode_records(raw: bytes, name: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 1024] grayscale pixels, uint8 [N] labels) of CIFAR-10 binary records."""
    if len(raw) % RECORD_BYTES:
        raise ValueError(f"{name}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = rec[:, 0].copy()
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{name}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    planes = rec[:, 1:].reshape(-1, 3, NUM_PIXELS)
    return _gray_planes(planes[:, 0], planes[:, 1], planes[:, 2]), labels


def tfds_order(num: int, split: str) -> np.ndarray:
    """int64 [num]: the order in which tensorflow-datasets stores the ``num`` images of ``split`` ("train" or
    "test"): the image of key i (its index in the official file order) sorts by
    ``int(md5(split.encode() + str(i).encode()).hexdigest(), 16)``, smallest first."""
    return C.tfds_order([str(i) for i in range(num)], split)


# --------------------------------------------------------------------------- preparation


def read_archive(archive: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"test": (gray pixels uint8 [N, 1024], labels uint8 [N])} of a cifar-10-binary.tar.gz; train
    holds the five training batches in order. Raises ValueError naming the archive and any missing member."""
    archive = Path(archive)
    wanted = {PREFIX + f for f in TRAIN_FILES + TEST_FILES}
    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with C.open_tar_gz(archive, ARCHIVE) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile():
                decoded[name] = decode_records(tar.extractfile(member).read(), f"{archive}:{name}")
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise ValueError(f"{archive}: missing member(s) {', '.join(missing)}; expected the official {ARCHIVE}")
    out = {}
    for split, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        parts = [decoded[PREFIX + f] for f in files]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def prepare(archive: str | Path, out: str | Path, *, verify: bool = True, verified: bool = False) -> Path:
    """Prepare grayscale arrays of ``archive`` into folder ``out`` (see the module docstring); returns ``out``.

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
    arrays, counts = {}, {}
    for split, (pixels, labels) in splits.items():
        order = tfds_order(labels.size, split)
        arrays[f"{split}.pixels"] = pixels[order]
        arrays[f"{split}.labels"] = labels[order]
        arrays[f"{split}.ids"] = order.astype(np.int32)
        counts[split] = {"num": int(labels.size), "per_class": np.bincount(labels, minlength=NUM_CLASSES).tolist()}
    manifest = {"task": TASK, "format": FORMAT, "via": "archive", "order": "tfds", "archive": archive.name,
                "archive_sha256": sha, "splits": counts, "grayscale": GRAYSCALE}
    C.publish(out, arrays, manifest)
    log.info("prepared CIFAR-10 from %s into %s in %.1fs: %s", archive, out, time.monotonic() - t0,
             {s: c["num"] for s, c in counts.items()})
    return out


def _manual_hint(data_dir) -> str:
    return (f"Offline: download {URL} by hand on a machine with network access, put it in a folder DIR here, "
            f"and run:\n    python -m lra.data.image prepare --manual-dir DIR --data-dir {C.q(data_dir)}")


def fetch_and_prepare(data_dir, *, manual_dir=None, timeout: float = 60.0, verify: bool = True) -> Path:
    """The CLI's work: take the archive from ``manual_dir`` (or a previous download in
    ``<data_dir>/image/source/``, or download it), then prepare ``<data_dir>/image/``."""
    out = C.task_dir(data_dir, TASK)
    if manual_dir is not None:
        archive = C.find_archive(manual_dir, ARCHIVE)
    else:
        archive = C.fetch_archive(out / "source" / ARCHIVE, URL, size=ARCHIVE_SIZE, sha256=ARCHIVE_SHA256,
                                  timeout=timeout, manual_hint=_manual_hint(data_dir), verify=verify)
        return prepare(archive, out, verify=False, verified=verify)   # fetch_archive checked them when verify
    return prepare(archive, out, verify=verify)


# --------------------------------------------------------------------------- loading


def split_point(num_train_images: int) -> int:
    """Number of training images in ``train``, as tfds slices ``train[:90%]``: ``int(round(90 * N / 100))``
    (Python's round: halves to even; 45,000 of 50,000)."""
    return int(round(90 * num_train_images / 100.0))


def _missing_message(data_dir, folder: Path) -> str:
    return (f"CIFAR-10 (LRA Image) data not prepared: {folder / C.MANIFEST} not found.\n"
            f"Prepare it once (downloads {ARCHIVE}, 170 MB, from {URL}) with:\n"
            f"    python -m lra.data.image prepare --data-dir {C.q(data_dir)}\n"
            f"or, with the archive already downloaded into a folder DIR:\n"
            f"    python -m lra.data.image prepare --manual-dir DIR --data-dir {C.q(data_dir)}\n"
            f"The prepared arrays go to {folder}/.")


def check_available(*, data_dir, source: str = "release", **_) -> None:
    """Raise FileNotFoundError naming the preparation command when the prepared arrays are missing.
    Cheap: one path check. Smoke data is written on first load, so ``source="smoke"`` never fails here."""
    folder = C.task_dir(data_dir, TASK, source)
    if source == "release" and not (folder / C.MANIFEST).is_file():
        raise FileNotFoundError(_missing_message(data_dir, folder))


def load(split: str, *, data_dir, max_length: int = NUM_PIXELS, source: str = "release") -> dict[str, np.ndarray]:
    """``inputs`` int32 [N, max_length] (grayscale pixels 0..255), ``targets`` int32 [N], ``lengths`` int32 [N].

    LRA uses max_length 1024 (the whole image). A shorter max_length keeps the first pixels in row-major order
    and a longer one pads with 0 (for quick experiments only); ``lengths`` is min(1024, max_length)."""
    C.check_split(split, TASK)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    folder = C.task_dir(data_dir, TASK, source)
    if source == "smoke":
        from . import fixtures

        fixtures.ensure_smoke(TASK, data_dir)
    hint = C.prepare_hint(TASK, data_dir, folder, source)
    manifest = C.read_manifest(folder, hint)
    if manifest is None:
        raise FileNotFoundError(_missing_message(data_dir, folder))
    if manifest.get("task") != TASK or manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / C.MANIFEST}: not CIFAR-10 arrays of format {FORMAT}; {hint}")
    name = "test" if split == "test" else "train"
    pixels = C.load_array(folder / f"{name}.pixels.npy", hint, mmap=True)
    labels = C.load_array(folder / f"{name}.labels.npy", hint)
    if pixels.shape != (labels.size, NUM_PIXELS):
        raise ValueError(f"{folder}: {name} arrays are inconsistent; {hint}")
    if split != "test":
        cut = split_point(labels.size)
        rows = slice(0, cut) if split == "train" else slice(cut, labels.size)
        pixels, labels = pixels[rows], labels[rows]
    keep = min(max_length, NUM_PIXELS)
    inputs = np.zeros((labels.size, max_length), dtype=np.int32)
    inputs[:, :keep] = pixels[:, :keep]
    lengths = np.full(labels.size, keep, dtype=np.int32)
    return {"inputs": inputs, "targets": labels.astype(np.int32), "lengths": lengths}


# --------------------------------------------------------------------------- CLI


def _report(out, manifest) -> None:
    n_train = manifest["splits"]["train"]["num"]
    cut = split_point(n_train)
    print(f"{out}: train {cut}, val {n_train - cut} (of {n_train} training images), "
          f"test {manifest['splits']['test']['num']}")


def main(argv=None) -> int:
    return C.prepare_main(argv, task=TASK, title="Image (CIFAR-10)", archive=ARCHIVE,
                          fetch_and_prepare=fetch_and_prepare, report=_report)


if __name__ == "__main__":
    sys.exit(main())
