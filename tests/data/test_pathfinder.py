"""Tests of the Pathfinder generator, its PNG release writer, the release loader and the CLI (tiny sizes)."""

import hashlib
import logging
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lra.data import pathfinder as PF
from tests.data import CACHE_DAMAGE

RES = 32
NUM = 600  # the module's release: 250 + 250 + 100 images
PER_FOLDER = 250
SEED = 3


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A release written by the CLI, in-process."""
    root = tmp_path_factory.mktemp("pathfinder")
    argv = ["--out", str(root), "--resolution", str(RES), "--difficulty", "hard", "--num", str(NUM)]
    assert PF.main([*argv, "--seed", str(SEED), "--per-folder", str(PER_FOLDER)]) == 0
    return root


def contour_folder(root: Path) -> Path:
    return root / f"pathfinder{RES}" / "curv_contour_length_14"


def read_metadata_by_hand(folder: Path) -> list[tuple[str, str, int]]:
    rows = []
    for path in sorted((folder / "metadata").iterdir()):
        for line in path.read_text().splitlines():
            cols = line.split(" ")
            rows.append((cols[0], cols[1], int(cols[3])))
    return rows


@pytest.fixture(scope="module")
def release_arrays(release):
    """Images and labels of the module's release, decoded here straight from the PNG files."""
    folder = contour_folder(release)
    rows = read_metadata_by_hand(folder)
    images = np.stack([np.asarray(Image.open(folder / sub / name)) for sub, name, _ in rows])
    return images, np.array([label for *_, label in rows])


# --------------------------------------------------------------------------- generator: layout, labels, seeds


def test_release_layout_and_metadata_format(release):
    folder = contour_folder(release)
    assert sorted(p.name for p in (folder / "imgs").iterdir()) == ["0", "1", "2"]
    assert sorted(p.name for p in (folder / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    for k, count in enumerate([250, 250, 100]):
        lines = (folder / "metadata" / f"{k}.npy").read_text().splitlines()
        assert len(lines) == count
        for i, line in enumerate(lines):
            assert line == f"imgs/{k} sample_{i}.png {i} {line[-1]}" and line[-1] in "01"
        assert sorted(p.name for p in (folder / "imgs" / str(k)).iterdir()) == sorted(
            f"sample_{i}.png" for i in range(count)
        )
    data = (folder / "imgs" / "1" / "sample_7.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (RES, RES, 8, 0)  # 8-bit grayscale


def test_pixels_are_uint8_ink_on_black(release_arrays):
    images, _ = release_arrays
    assert images.dtype == np.uint8 and images.shape == (NUM, RES, RES)
    assert images.max() == 255
    black = (images == 0).mean()
    assert 0.6 < black < 0.95, black  # black background, some paths
    edges = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1)
    assert (edges == 0).all()  # nothing is cut off at the border


def test_labels_balanced_per_folder(release):
    folder = contour_folder(release)
    for k, count in enumerate([250, 250, 100]):
        labels = [int(line.split()[3]) for line in (folder / "metadata" / f"{k}.npy").read_text().splitlines()]
        assert sum(labels) * 2 == count, (k, sum(labels))
        assert labels != sorted(labels) and labels != sorted(labels, reverse=True)  # shuffled, not in blocks


@pytest.mark.parametrize("num, per_folder", [(10, 1), (10, 3), (7, 2)])
def test_labels_balanced_with_odd_folders(tmp_path, num, per_folder):
    # Each folder used to get count // 2 positives: per_folder=1 gave none at all, per_folder=3 a third.
    record = PF.write_release(tmp_path / "r", num, per_folder=per_folder, seed=3)
    labels = [int(line.split()[3]) for path in sorted((tmp_path / "r" / "metadata").iterdir())
              for line in path.read_text().splitlines()]
    assert len(labels) == num and sum(labels) == record["positives"] == num // 2
    assert PF.folder_positives([3, 3, 3, 2, 1]) == [1, 2, 1, 1, 1]


def test_generate_nothing():
    images, labels, markers = PF.generate(0, resolution=RES, return_markers=True)
    assert images.shape == (0, RES, RES) and labels.shape == (0,) and markers.shape == (0, 2, 2)


def test_generate_is_seeded():
    a_img, a_lab = PF.generate(30, seed=(1, 2))
    b_img, b_lab = PF.generate(30, seed=(1, 2))
    c_img, _ = PF.generate(30, seed=(1, 3))
    assert a_img.tobytes() == b_img.tobytes() and (a_lab == b_lab).all()
    assert a_img.tobytes() != c_img.tobytes()
    assert a_lab.sum() == 15


def test_written_bytes_do_not_depend_on_workers(tmp_path):
    kw = dict(resolution=RES, difficulty="hard", seed=5, per_folder=20)
    PF.write_release(tmp_path / "one", 50, workers=1, **kw)
    PF.write_release(tmp_path / "two", 50, workers=2, **kw)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 50 + 3 + 1  # images, metadata files, generator.json
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    # folder k holds generate(count, seed=(seed, k)), as documented
    images, labels = PF.generate(20, seed=(5, 1))
    assert (PF.read_png(tmp_path / "one" / "imgs" / "1" / "sample_13.png") == images[13]).all()
    meta = (tmp_path / "one" / "metadata" / "1.npy").read_text().splitlines()
    assert [int(line.split()[3]) for line in meta] == labels.tolist()


# --------------------------------------------------------------------------- no shortcut: only connectivity


def best_threshold_accuracy(feature: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best rule "label = (feature > t)" or "label = (feature <= t)" over all thresholds t."""
    order = np.argsort(feature, kind="stable")
    x, y = feature[order], labels[order]
    n = y.size
    pos_at_or_below = np.concatenate([[0], np.cumsum(y)])
    below = np.arange(n + 1)
    cut = np.concatenate([[True], x[1:] != x[:-1], [True]])  # thresholds only between distinct values
    acc = ((below - pos_at_or_below) + (y.sum() - pos_at_or_below)) / n  # predict 1 above the threshold
    return float(np.maximum(acc, 1 - acc)[cut].max())


def simple_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    flat = images.reshape(len(images), -1).astype(np.int64)
    stats = {"total ink": flat.sum(1), "nonzero pixels": (flat > 0).sum(1), "brightest pixel": flat.max(1)}
    for lo in range(0, 256, 32):  # the pixel histogram, in 8 bins
        stats[f"pixels in [{lo}, {lo + 32})"] = ((flat >= lo) & (flat < lo + 32)).sum(1)
    return stats


@pytest.mark.parametrize("difficulty", ["hard", "easy"])
def test_labels_not_predictable_from_where_the_markers_are(difficulty):
    # The markers' pair is placed alike in both classes: left to chance, the distance between them read 60%
    # (hard) and 78% (easy) of the labels with one threshold, their midpoint's distance from the centre 64% and
    # 68%. With 600 images per class a feature without signal stays under 0.5 + 2.30 * sqrt(2/600) / 2 = 0.566
    # with probability 1 - 1e-4 (the KS bound above); 0.575 over the five features.
    _, labels, m = PF.generate(1200, resolution=RES, difficulty=difficulty, seed=(11, 4), return_markers=True)
    d, mid = m[:, 0] - m[:, 1], (m[:, 0] + m[:, 1]) / 2 - RES / 2
    features = {"distance": np.hypot(*d.T), "|dx|": np.abs(d[:, 0]), "|dy|": np.abs(d[:, 1]),
                "midpoint from centre": np.hypot(*mid.T),
                "farther marker from centre": np.maximum(*(np.hypot(*(m[:, k] - RES / 2).T) for k in (0, 1)))}
    scores = {name: best_threshold_accuracy(f, labels) for name, f in features.items()}
    assert labels.sum() == 600 and max(scores.values()) <= 0.575, scores


def test_labels_not_predictable_from_simple_statistics(release_arrays):
    # With 300 images per class and no signal, the best threshold's accuracy is 0.5 + KS/2, KS the two-sample
    # Kolmogorov-Smirnov statistic: above 0.594 with probability < 1e-4 per feature (KS critical value
    # 2.30 * sqrt(2/300)). 0.62 is out of reach of chance even over the 11 features; a real leak is not
    # (the control below: one marker's worth of extra ink in positives reaches ~0.78).
    images, labels = release_arrays
    assert labels.sum() * 2 == len(labels)
    scores = {name: best_threshold_accuracy(f, labels) for name, f in simple_statistics(images).items()}
    assert max(scores.values()) <= 0.62, scores
    leaky = images.reshape(len(images), -1).astype(np.int64)
    leaky[labels == 1, :4] += 255
    assert best_threshold_accuracy(leaky.sum(1), labels) > 0.7  # the test has the power to see a leak


def polar_ink(images: np.ndarray, markers: np.ndarray, sectors: int = 6) -> np.ndarray:
    """[N, 3 distances x 3 rings x sectors]: the ink around each marker in rings 2.5-4, 4-6 and 6-9 px and in
    angular sectors measured from the direction of the other marker (left and right alike), summed over the two
    markers, in one of three columns by the markers' distance (< 12, 12-20, >= 20 px): the direction in which
    the ink leaves a marker, read against the other marker, as the cue turns with the distance."""
    n, res, _ = images.shape
    ink = images.astype(np.float64) / 255
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64)
    out = 0
    for m, o in ((markers[:, 0], markers[:, 1]), (markers[:, 1], markers[:, 0])):
        ux, uy = (o - m)[:, 0, None, None], (o - m)[:, 1, None, None]
        vx, vy = xx[None] - m[:, 0, None, None], yy[None] - m[:, 1, None, None]
        r = np.hypot(vx, vy)
        sector = np.minimum(np.abs(np.arctan2(ux * vy - uy * vx, ux * vx + uy * vy)) / np.pi * sectors, sectors - 1)
        out = out + np.stack([(ink * ((r >= lo) & (r < hi)) * (sector.astype(int) == k)).sum((1, 2))
                              for lo, hi in ((2.5, 4.0), (4.0, 6.0), (6.0, 9.0)) for k in range(sectors)], 1)
    dist = np.hypot(*(markers[:, 0] - markers[:, 1]).T)
    column = np.stack([dist < 12, (dist >= 12) & (dist < 20), dist >= 20], 1)
    return (out[:, None, :] * column[:, :, None]).reshape(n, -1)


def linear_discriminant_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Held-out accuracy of Fisher's linear discriminant (standardised features, a small ridge)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-9
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    m1, m0 = x_train[y_train == 1].mean(0), x_train[y_train == 0].mean(0)
    centred = np.concatenate([x_train[y_train == 1] - m1, x_train[y_train == 0] - m0])
    w = np.linalg.solve(np.cov(centred.T) + 1e-2 * np.eye(x_train.shape[1]), m1 - m0)
    return float(((x_test @ w > w @ (m1 + m0) / 2) == (y_test == 1)).mean())


def test_labels_not_predictable_from_the_ink_around_the_markers():
    # Generator v2 put a negative's markers on ends of two different paths: a path's end points along the path
    # towards its other end, so the ink around the markers, read against the other marker's direction, told
    # the classes apart (this discriminant: 0.62 on v2's images; gradient-boosted trees on such features up to
    # 0.80 of held-out labels). Now a negative's markers sit on the two halves of a cut spine, alike up to the
    # cut. 2000 test images: chance stays under 0.5 + 4.5 * sqrt(0.25 / 2000) = 0.55 but with p < 1e-5.
    images, labels, markers = PF.generate(4000, resolution=RES, seed=(12, 0), return_markers=True)
    x = polar_ink(images, markers)
    accuracy = linear_discriminant_accuracy(x[:2000], labels[:2000], x[2000:], labels[2000:])
    assert accuracy <= 0.55, accuracy
    # The test has the power to see such a cue: the same discriminant reads a marker's extra ink on the side
    # of the other marker (one pixel 3.2 px from each marker of a positive).
    shifted = markers + 3.2 * (labels[:, None, None] == 1) * (markers[:, ::-1] - markers) / np.hypot(
        *(markers[:, 1] - markers[:, 0]).T)[:, None, None]
    leaky = images.copy()
    for i in np.flatnonzero(labels == 1):
        for x_, y_ in np.rint(shifted[i]).astype(int):
            leaky[i, y_, x_] = 255
    x = polar_ink(leaky, markers)
    assert linear_discriminant_accuracy(x[:2000], labels[:2000], x[2000:], labels[2000:]) > 0.6


def ink_components(ink: np.ndarray, radius: float) -> np.ndarray:
    """Connected components of ink pixels [N, H, W] where ink pixels up to ``radius`` apart are neighbours;
    returns a label per pixel (-1 off the ink). Plain label propagation, independent of the generator."""
    n, h, w = ink.shape
    r = int(radius)
    offsets = [(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1) if (a or b) and a * a + b * b <= radius**2]
    labels = np.where(ink, np.arange(n * h * w).reshape(n, h, w), -1)
    while True:
        padded = np.pad(labels, ((0, 0), (r, r), (r, r)), constant_values=-1)
        new = labels.copy()
        for a, b in offsets:
            np.maximum(new, padded[:, r + a : r + a + h, r + b : r + b + w], out=new)
        new = np.where(ink, new, -1)
        if (new == labels).all():
            return labels
        labels = new


def markers_joined(images, markers, radius) -> np.ndarray:
    comp = ink_components(images > 0, radius)
    rows = np.arange(len(images))
    xy = np.rint(markers).astype(int)  # marker centres (x, y); a marker's centre pixel is always ink
    a = comp[rows, xy[:, 0, 1], xy[:, 0, 0]]
    b = comp[rows, xy[:, 1, 1], xy[:, 1, 0]]
    assert (a >= 0).all() and (b >= 0).all()
    return a == b


@pytest.mark.parametrize("resolution,num,difficulty", [(32, 400, "hard"), (64, 40, "hard"), (32, 200, "easy"),
                                                      (32, 200, "medium")])
def test_connectivity_decides_the_label(resolution, num, difficulty):
    # Gaps inside a path leave at most one dark pixel at 32x32 (resolution/32 at other sizes), and the generator
    # keeps the ink of different paths more than 2 px apart: joining ink pixels up to resolution/16 px apart
    # must join the markers of every positive and of no negative.
    images, labels, markers = PF.generate(num, resolution=resolution, difficulty=difficulty, seed=11,
                                          return_markers=True)
    joined = markers_joined(images, markers, radius=resolution / 16)
    assert (joined == (labels == 1)).all(), (joined != (labels == 1)).sum()
    if resolution == 32 and difficulty == "hard":
        # The paths really are dashed: without bridging the gaps (8-neighbours only) many positives fall apart.
        eight = markers_joined(images, markers, radius=1.5)
        assert not (eight & (labels == 0)).any()
        assert (~eight & (labels == 1)).mean() > 0.1


def test_other_resolutions_and_difficulties():
    images, labels, markers = PF.generate(6, resolution=128, difficulty="hard", seed=0, return_markers=True)
    assert images.shape == (6, 128, 128) and images.dtype == np.uint8 and labels.sum() == 3
    assert ((markers > 0) & (markers < 127)).all()
    # Sizes scale with the resolution: the mean brightness (ink per area) is about the same at 32 and 128.
    small, _ = PF.generate(40, resolution=32, seed=1)
    large, _ = PF.generate(40, resolution=128, seed=1)
    ratio = large.mean() / small.mean()
    assert 0.8 < ratio < 1.25, ratio
    easy, _ = PF.generate(20, difficulty="easy", seed=0)
    hard, _ = PF.generate(20, difficulty=14, seed=0)
    assert easy.shape == hard.shape == (20, 32, 32)
    assert PF.params_for(32, "medium").contour_length == 9
    with pytest.raises(ValueError, match="difficulty"):
        PF.params_for(32, "extreme")
    with pytest.raises(ValueError, match="resolution"):
        PF.params_for(48)


# --------------------------------------------------------------------------- PNG reading


def png_with_filters(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A PNG written with the given row filters (0 none, 1 Sub, 2 Up, 3 Average, 4 Paeth), in turn; pixels
    uint8 [H, W] (grayscale) or [H, W, 3] (RGB). A minimal encoder of the PNG specification."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(h, w * channels).astype(np.int64)
    prev = np.zeros(w * channels, dtype=np.int64)
    out = bytearray()
    for y in range(h):
        f, cur = filters[y % len(filters)], rows[y]
        left = np.concatenate([np.zeros(channels, np.int64), cur[:-channels]])
        up_left = np.concatenate([np.zeros(channels, np.int64), prev[:-channels]])
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        out.append(f)
        out += ((cur - pred) % 256).astype(np.uint8).tobytes()
        prev = cur

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    colour = 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")
    )


def test_png_round_trip_and_foreign_pngs(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (RES, RES), dtype=np.uint8)
    (tmp_path / "ours.png").write_bytes(PF.encode_png(img))
    assert (PF.read_png(tmp_path / "ours.png") == img).all()
    assert (np.asarray(Image.open(tmp_path / "ours.png")) == img).all()  # a valid PNG for others too
    for name, data in {
        "filters.png": png_with_filters(img, [0, 1, 2, 3, 4]),
        "paeth.png": png_with_filters(img, [4]),
        "rgb.png": png_with_filters(np.repeat(img[..., None], 3, axis=2), [1, 3, 4, 2]),
    }.items():
        (tmp_path / name).write_bytes(data)
        assert (PF.read_png(tmp_path / name) == img).all(), name
    Image.fromarray(np.repeat(img[..., None], 4, axis=2)).save(tmp_path / "rgba.png")
    assert (PF.read_png(tmp_path / "rgba.png")[:, :] == img).all()


# --------------------------------------------------------------------------- loader


def test_loader_reads_generated_release(release, release_arrays, monkeypatch):
    images, labels = release_arrays
    out = {s: PF.load(s, data_dir=release, resolution=RES, difficulty="hard") for s in ("train", "val", "test")}
    assert [len(out[s]["targets"]) for s in ("train", "val", "test")] == [480, 60, 60]
    for arrays in out.values():
        assert arrays["inputs"].dtype == arrays["targets"].dtype == arrays["lengths"].dtype == np.int32
        assert arrays["inputs"].shape[1] == RES * RES and (arrays["lengths"] == RES * RES).all()
        assert arrays["inputs"].min() >= 0 and arrays["inputs"].max() <= 255
    # Together the splits hold every (image, label) of the release exactly once, pixels as tokens.
    got = sorted(
        (row.astype(np.uint8).tobytes(), int(t)) for a in out.values() for row, t in zip(a["inputs"], a["targets"])
    )
    want = sorted((im.reshape(-1).tobytes(), int(t)) for im, t in zip(images, labels))
    assert got == want
    # Our generated files get LRA's split too: the members of each split are those of the rule, by hand.
    rows = read_metadata_by_hand(contour_folder(release))
    keys = [f"{sub}_{name}_{i % PER_FOLDER + 1}" for i, (sub, name, _) in enumerate(rows)]  # line numbers
    key_of = {im.tobytes(): key for im, key in zip(images, keys)}
    assert len(key_of) == NUM
    want_keys = expected_members("hard", keys, (480, 540))
    for split, arrays in out.items():
        assert sorted(key_of[row.astype(np.uint8).tobytes()] for row in arrays["inputs"]) == want_keys[split]
    # The decoded images are cached; the cache is reused while the metadata is unchanged.
    folder = contour_folder(release)
    assert (folder / PF.CACHE_NAME).is_file()
    calls = []
    real_read_png = PF.read_png
    monkeypatch.setattr(PF, "read_png", lambda path: calls.append(path) or real_read_png(path))
    again = PF.load("val", data_dir=release)
    assert not calls and np.array_equal(again["inputs"], out["val"]["inputs"])
    meta = folder / "metadata" / "2.npy"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # "rewritten": decode again
    assert np.array_equal(PF.load("val", data_dir=release)["inputs"], out["val"]["inputs"])
    assert len(calls) == NUM


def test_cache_is_rebuilt_when_an_image_is_replaced(release, tmp_path, monkeypatch):
    # An image replaced through a rename (a download tool, cp to a new file) changes its folder: decode again.
    root = tmp_path / "copy"
    shutil.copytree(release, root)   # file and folder times kept: the copied cache is current
    folder = contour_folder(root)
    val = PF.load("val", data_dir=root)["inputs"]
    calls = []
    real_read_png = PF.read_png
    monkeypatch.setattr(PF, "read_png", lambda path: calls.append(path) or real_read_png(path))
    assert np.array_equal(PF.load("val", data_dir=root)["inputs"], val) and not calls
    first = val[0].astype(np.uint8)
    path = next(folder / sub / name for sub, name, _ in read_metadata_by_hand(folder)
                if real_read_png(folder / sub / name).tobytes() == first.tobytes())
    (path.parent / "new.png").write_bytes(PF.encode_png(255 - first.reshape(RES, RES)))
    os.replace(path.parent / "new.png", path)
    st = path.parent.stat()
    os.utime(path.parent, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # later, on any clock granularity
    replaced = PF.load("val", data_dir=root)["inputs"]
    assert len(calls) == NUM and np.array_equal(replaced[0], 255 - val[0])
    assert np.array_equal(replaced[1:], val[1:])


def write_hand_release(folder: Path, rng) -> dict[str, tuple[np.ndarray, int]]:
    """A release built by hand in the official layout: PNGs written by Pillow (grayscale, RGB) and by our
    filter encoder, official-style metadata lines with 11 columns, and one empty PNG. Returns the readable
    images by relative path."""
    expected = {}
    lines = {0: [], 1: []}
    for k in (0, 1):
        (folder / "imgs" / str(k)).mkdir(parents=True)
        for i in range(11):
            rel = f"imgs/{k}/sample_{i}.png"
            label = (i + k) % 2
            lines[k].append(f"imgs/{k} sample_{i}.png {i} {label} 2.5 14 4 5 1.5 3 1")
            if (k, i) == (1, 4):
                (folder / rel).write_bytes(b"")  # the release has one empty PNG
                continue
            img = rng.integers(0, 256, (RES, RES), dtype=np.uint8)
            if i % 3 == 0:
                Image.fromarray(img).save(folder / rel)
            elif i % 3 == 1:
                Image.fromarray(np.repeat(img[..., None], 3, axis=2)).save(folder / rel)
            else:
                (folder / rel).write_bytes(png_with_filters(img, [i % 5, 4, 1]))
            expected[rel] = (img, label)
    (folder / "metadata").mkdir()
    for k, rows in lines.items():
        (folder / "metadata" / f"{k}.npy").write_text("\n".join(rows) + "\n")
    return expected


def test_loader_reads_hand_built_official_layout(tmp_path, caplog):
    folder = tmp_path / f"pathfinder{RES}" / "curv_contour_length_14"
    expected = write_hand_release(folder, np.random.default_rng(7))
    assert len(expected) == 21
    with caplog.at_level(logging.INFO, logger="lra.data.pathfinder"):
        out = {s: PF.load(s, data_dir=tmp_path) for s in ("train", "val", "test")}
    # LRA's split of the 22 entries is 18/2/2 (round(17.6), round(19.8)); the empty imgs/1/sample_4.png, key
    # imgs/1_sample_4.png_5, is the 14th in tfds's order of "hard", so train loses it and nothing else moves.
    keys = [f"imgs/{k}_sample_{i}.png_{i + 1}" for k in (0, 1) for i in range(11)]
    assert sorted(keys, key=lambda key: tfds_hash("hard", key)).index("imgs/1_sample_4.png_5") == 13
    assert [len(out[s]["targets"]) for s in ("train", "val", "test")] == [17, 2, 2]
    got = sorted(
        (row.astype(np.uint8).tobytes(), int(t)) for a in out.values() for row, t in zip(a["inputs"], a["targets"])
    )
    want = sorted((img.reshape(-1).tobytes(), label) for img, label in expected.values())
    assert got == want
    warnings = [r for r in caplog.records if r.name == "lra.data.pathfinder" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # counted and reported once
    assert "skipped 1 " in warnings[0].getMessage() and "imgs/1/sample_4.png" in warnings[0].getMessage()


def test_easy_reads_the_official_curv_baseline_folder(tmp_path):
    folder = tmp_path / f"pathfinder{RES}" / "curv_baseline"
    expected = write_hand_release(folder, np.random.default_rng(8))
    PF.check_available(data_dir=tmp_path, difficulty="easy")
    total = sum(len(PF.load(s, data_dir=tmp_path, difficulty="easy")["targets"]) for s in ("train", "val", "test"))
    assert total == len(expected)


def test_malformed_metadata_names_file_and_line(tmp_path):
    folder = tmp_path / f"pathfinder{RES}" / "curv_contour_length_14"
    write_hand_release(folder, np.random.default_rng(9))
    meta = folder / "metadata" / "1.npy"
    lines = meta.read_text().splitlines()
    lines[2] = "imgs/1 sample_2.png 2"  # three columns: no label
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"1\.npy:3: .*columns"):
        PF.load("train", data_dir=tmp_path)
    lines[2] = "imgs/1 sample_2.png 2 7"
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"1\.npy:3: .*label 7"):
        PF.load("train", data_dir=tmp_path)


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE.values()), ids=list(CACHE_DAMAGE))
def test_damaged_cache_is_decoded_again(tmp_path, damage, caplog):
    folder = tmp_path / f"pathfinder{RES}" / "curv_contour_length_14"
    write_hand_release(folder, np.random.default_rng(4))
    want = PF.load("train", data_dir=tmp_path)
    cache = folder / PF.CACHE_NAME
    cache.write_bytes(damage(cache.read_bytes()))
    got = PF.load("train", data_dir=tmp_path)
    assert np.array_equal(got["inputs"], want["inputs"]) and np.array_equal(got["targets"], want["targets"])
    assert "ignoring unreadable Pathfinder cache" in caplog.text
    caplog.clear()
    assert np.array_equal(PF.load("train", data_dir=tmp_path)["inputs"], want["inputs"])   # rewritten, read back
    assert "ignoring" not in caplog.text


def test_binary_string_metadata_of_either_kind(tmp_path):
    # read_metadata accepts a NumPy string array as well as text: bytes (S) and unicode (U) alike.
    folder = tmp_path / f"pathfinder{RES}" / "curv_contour_length_14"
    write_hand_release(folder, np.random.default_rng(5))
    text = PF.read_metadata(folder)
    for dtype in ("U", "S"):
        for meta in (folder / "metadata").glob("*.npy"):
            rows = [line.split() for line in meta.read_bytes().decode().splitlines()] if dtype == "U" \
                else np.load(meta).astype(str).tolist()
            with open(meta, "wb") as f:   # np.save(path) would append .npy to the name
                np.save(f, np.array(rows, dtype=dtype))
        assert PF.read_metadata(folder) == text, dtype


def test_check_available_is_fast_and_names_the_command(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        PF.check_available(data_dir=tmp_path / "nowhere", resolution=128, difficulty="hard")
    assert time.monotonic() - t0 < 0.5
    msg = str(info.value)
    command = f"python -m lra.data.pathfinder --out {tmp_path / 'nowhere'} --resolution 128 --difficulty hard"
    assert f"{command} --num 200000 --seed 0" in msg
    assert "scripts/get_lra_data.sh" in msg and "lra_release/lra_release/pathfinder128" in msg
    assert str(tmp_path / "nowhere" / "pathfinder128" / "curv_contour_length_14") in msg
    with pytest.raises(FileNotFoundError, match="python -m lra.data.pathfinder"):
        PF.load("train", data_dir=tmp_path / "nowhere")
    PF.check_available(data_dir=tmp_path / "nowhere", generate={"num": 10, "seed": 0})  # can be generated


def test_load_generates_once_into_a_named_cache_folder(tmp_path, monkeypatch):
    gen = {"num": 40, "seed": 2, "per_folder": 20}
    arrays = PF.load("train", data_dir=tmp_path, generate=gen, max_length=1024)
    assert arrays["inputs"].shape == (32, RES * RES) and arrays["targets"].sum() > 0
    folder = tmp_path / f"pathfinder{RES}" / f"generated-v{PF.GENERATOR_VERSION}-n40-seed2-per20"
    assert (folder / "curv_contour_length_14" / "metadata" / "1.npy").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    def no_second_generation(*args, **kwargs):
        raise AssertionError("generated twice")

    monkeypatch.setattr(PF, "generate_release", no_second_generation)
    assert np.array_equal(PF.load("train", data_dir=tmp_path, generate=gen)["inputs"], arrays["inputs"])
    assert len(PF.load("test", data_dir=tmp_path, generate=gen)["targets"]) == 4


# --------------------------------------------------------------------------- LRA's split


def tfds_hash(tfds_split: str, key: str) -> int:
    """tensorflow_datasets.core.hashing.Hasher(tfds_split).hash_key(key), written out: md5 of the salt, then the key."""
    return int(hashlib.md5(tfds_split.encode() + key.encode()).hexdigest(), 16)


# Two metadata files in the official style (extra columns), 1.npy not in file order: LRA's keys count the lines
# of each file from 1, so they name the line, not the sample number.
KEYED_LINES = {
    0: [0, 1, 2, 3, 4, 5],
    1: [3, 0, 6, 1, 2, 4, 5],
}
KEYED_KEYS = [
    "imgs/0_sample_0.png_1", "imgs/0_sample_1.png_2", "imgs/0_sample_2.png_3", "imgs/0_sample_3.png_4",
    "imgs/0_sample_4.png_5", "imgs/0_sample_5.png_6",
    "imgs/1_sample_3.png_1", "imgs/1_sample_0.png_2", "imgs/1_sample_6.png_3", "imgs/1_sample_1.png_4",
    "imgs/1_sample_2.png_5", "imgs/1_sample_4.png_6", "imgs/1_sample_5.png_7",
]
KEYED_BOUNDS = (10, 12)  # 13 entries: round(80 * 13 / 100) = round(10.4) = 10, round(11.7) = 12


def write_keyed_release(folder: Path, empty: tuple[str, ...] = ()) -> dict[int, str]:
    """The KEYED_LINES release: image (k, i) is filled with the value 1 + 20 k + i; the images whose keys are
    in ``empty`` are empty files. Returns {pixel value: key}."""
    value_to_key = {}
    (folder / "metadata").mkdir(parents=True)
    for k, samples in KEYED_LINES.items():
        (folder / "imgs" / str(k)).mkdir(parents=True)
        lines = []
        for n, i in enumerate(samples, start=1):
            key = f"imgs/{k}_sample_{i}.png_{n}"
            value = 1 + 20 * k + i
            path = folder / "imgs" / str(k) / f"sample_{i}.png"
            path.write_bytes(b"" if key in empty else PF.encode_png(np.full((RES, RES), value, np.uint8)))
            value_to_key[value] = key
            lines.append(f"imgs/{k} sample_{i}.png {i} {(i + k) % 2} 2.5 14 4 5 1.5 3 1\n")
        (folder / "metadata" / f"{k}.npy").write_text("".join(lines))
    assert sorted(value_to_key.values()) == sorted(KEYED_KEYS)
    return value_to_key


def loaded_keys(data_dir: Path, difficulty: str, value_to_key: dict[int, str]) -> dict[str, list[str]]:
    out = {}
    for split in PF.SPLITS:
        inputs = PF.load(split, data_dir=data_dir, difficulty=difficulty)["inputs"]
        assert all((row == row[0]).all() for row in inputs)
        out[split] = sorted(value_to_key[int(row[0])] for row in inputs)
    return out


def expected_members(tfds_split: str, keys=KEYED_KEYS, bounds=KEYED_BOUNDS) -> dict[str, list[str]]:
    order = sorted(keys, key=lambda key: tfds_hash(tfds_split, key))
    a, b = bounds
    return {"train": sorted(order[:a]), "val": sorted(order[a:b]), "test": sorted(order[b:])}


@pytest.mark.parametrize(
    "difficulty, level, tfds_split",
    [("hard", "curv_contour_length_14", "hard"), ("medium", "curv_contour_length_9", "intermediate"),
     ("easy", "curv_baseline", "easy")],
)
def test_split_is_lras_by_hand(tmp_path, difficulty, level, tfds_split):
    value_to_key = write_keyed_release(tmp_path / f"pathfinder{RES}" / level)
    assert PF.tfds_split_name(difficulty) == tfds_split
    want = expected_members(tfds_split)
    assert [len(want[s]) for s in PF.SPLITS] == [10, 2, 1]
    assert loaded_keys(tmp_path, difficulty, value_to_key) == want
    # The salt matters: the other levels' orders of the same keys differ.
    others = {s for s in ("easy", "intermediate", "hard") if s != tfds_split}
    assert all(expected_members(s) != want for s in others)


@pytest.mark.parametrize("position", [0, 10, 12])  # the first entry of train, of val, of test in tfds's order
def test_unreadable_image_is_dropped_after_splitting(tmp_path, position):
    order = sorted(KEYED_KEYS, key=lambda key: tfds_hash("hard", key))
    gone = order[position]
    value_to_key = write_keyed_release(tmp_path / f"pathfinder{RES}" / "curv_contour_length_14", empty=(gone,))
    got = loaded_keys(tmp_path, "hard", value_to_key)
    want = expected_members("hard")
    for split in PF.SPLITS:  # only the split the empty image falls in loses it; nothing moves
        assert got[split] == [key for key in want[split] if key != gone], split
    assert sum(len(v) for v in got.values()) == 12


@pytest.mark.parametrize(
    "num, sizes",
    [
        (1, (1, 0, 0)),
        (5, (4, 0, 1)),  # 90% of 5 = 4.5 rounds to the even 4 (Python's round)
        (10, (8, 1, 1)),
        (15, (12, 2, 1)),  # 13.5 -> 14
        (25, (20, 2, 3)),  # 22.5 -> 22
        (199_999, (159_999, 20_000, 20_000)),  # 159999.2 -> 159999, 179999.1 -> 179999
        (200_000, (160_000, 20_000, 20_000)),
    ],
)
def test_slice_bounds_use_tfds_closest_rounding(num, sizes):
    # tfds 4.9.10, splits._pct_to_abs_closest: int(round(boundary * num_examples / 100.0)).
    a, b = round(80.0 * num / 100.0), round(90.0 * num / 100.0)
    assert (a, b - a, num - b) == sizes
    bounds = PF.tfds_slice_bounds(num)
    assert bounds == {"train": (0, a), "val": (a, b), "test": (b, num)}


def test_split_indices_are_disjoint_and_cover_all_entries():
    keys = [f"imgs/{k}_sample_{i}.png_{i + 1}" for k in range(3) for i in range(333)]
    parts = {s: PF.split_indices(keys, s, "hard") for s in PF.SPLITS}
    assert [len(parts[s]) for s in PF.SPLITS] == [799, 100, 100]  # 999: round(799.2), round(899.1)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(keys)))
    order = sorted(range(len(keys)), key=lambda j: tfds_hash("hard", keys[j]))
    assert parts["val"].tolist() == sorted(order[799:899])
    assert np.array_equal(PF.tfds_order(keys, "hard"), order)
    assert np.array_equal(PF.tfds_order([k.encode() for k in keys], "hard"), order)  # keys as stored in the cache
    assert not np.array_equal(PF.split_indices(keys, "val", "easy"), parts["val"])  # salted by the level
    with pytest.raises(ValueError, match="split"):
        PF.split_indices(keys, "dev")
    with pytest.raises(ValueError, match="share the tfds key"):
        PF.tfds_order([*keys, keys[5]], "hard")
    with pytest.raises(ValueError):
        PF.tfds_split_name(7)


def test_metadata_line_without_final_newline_is_dropped_like_lras_builder(tmp_path, caplog):
    folder = tmp_path / f"pathfinder{RES}" / "curv_contour_length_14"
    write_keyed_release(folder)
    meta = folder / "metadata" / "1.npy"
    meta.write_text(meta.read_text().rstrip("\n"))  # LRA's text.split('\n')[:-1] drops "imgs/1 sample_5.png"
    with caplog.at_level(logging.WARNING, logger="lra.data.pathfinder"):
        rows = PF.read_metadata(folder)
    assert len(rows) == 12 and ("imgs/1", "sample_5.png", 0) not in rows
    assert "no final newline" in caplog.text


@pytest.mark.slow
def test_order_and_bounds_match_tensorflow_datasets():
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import hashing

    keys = [f"imgs/{k}_sample_{i}.png_{i + 1}" for k in range(20) for i in range(1000)]
    for level in ("easy", "intermediate", "hard"):
        hasher = hashing.Hasher(level)
        assert PF.tfds_order(keys, level).tolist() == sorted(range(len(keys)), key=lambda j: hasher.hash_key(keys[j]))
    for num in (1, 5, 10, 15, 25, 999, 19_999, 199_999, 200_000):
        info = {"hard": tfds.core.SplitInfo(name="hard", shard_lengths=[num], num_bytes=0)}
        for split, spec in zip(PF.SPLITS, ("hard[:80%]", "hard[80%:90%]", "hard[90%:]")):
            (instr,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(info)
            want = (instr.from_ or 0, num if instr.to is None else instr.to)
            assert PF.tfds_slice_bounds(num)[split] == want, (num, spec)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_layout_and_reports_speed(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--resolution", "64", "--difficulty", "medium", "--num", "12", "--seed", "1"]
    assert PF.main(argv) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed
    folder = tmp_path / "pathfinder64" / "curv_contour_length_9"
    assert len(list((folder / "imgs" / "0").iterdir())) == 12
    assert PF.read_png(folder / "imgs" / "0" / "sample_11.png").shape == (64, 64)
    first = (folder / "imgs" / "0" / "sample_3.png").read_bytes()
    assert PF.main(argv) == 0  # our own output is replaced, identically
    assert (folder / "imgs" / "0" / "sample_3.png").read_bytes() == first
    foreign = tmp_path / "pathfinder32" / "curv_contour_length_14"
    (foreign / "metadata").mkdir(parents=True)
    argv32 = ["--out", str(tmp_path), "--num", "4", "--seed", "0"]
    assert PF.main(argv32) == 2  # never overwrites data it did not write ...
    assert "--force" in capsys.readouterr().err
    assert PF.main([*argv32, "--force"]) == 0  # ... unless told to
    assert len(list((foreign / "imgs" / "0").iterdir())) == 4


@pytest.mark.parametrize("task,options,match", [
    ("pathfinder", {"resolution": 48, "max_length": 1024}, r"resolution=48 is not one of .*32, 64, 128, 256"),
    ("pathfinder", {"resolution": 64, "max_length": 1024}, r"must be resolution\^2 = 4096 .*task\.max_length=4096"),
    ("pathx", {"max_length": 1024}, r"resolution\^2 = 16384 for pathx at resolution 128"),
])
def test_resolution_and_length_are_checked_before_any_file(tmp_path, task, options, match):
    from lra import data

    with pytest.raises(ValueError, match=match):
        data.check_available(task, data_dir=tmp_path, **options)


def test_pathx_without_a_resolution_is_128_not_pathfinder(tmp_path):
    # Only Pathfinder-32 data on disk: Path-X must not quietly read it (its module default is 32).
    from lra import data

    PF.write_release(PF.release_dir(tmp_path, 32, "hard"), 20, resolution=32, difficulty="hard", seed=0, per_folder=20)
    data.check_available("pathfinder", data_dir=tmp_path, max_length=1024)
    with pytest.raises(FileNotFoundError, match="pathfinder128"):
        data.check_available("pathx", data_dir=tmp_path, max_length=16384)
    with pytest.raises(FileNotFoundError, match="pathfinder128"):
        data.source("pathx", "train", data_dir=tmp_path, max_length=16384)


def test_bad_cli_input_leaves_nothing_behind(tmp_path, capsys):
    assert PF.main(["--out", str(tmp_path / "o"), "--num", "0"]) == 2
    assert "num must be >= 1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert PF.main(["--out", str(tmp_path / "o"), "--num", "4", "--per-folder", "0"]) == 2
    assert "per_folder must be >= 1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "a_file").write_text("")
    assert PF.main(["--out", str(tmp_path / "a_file"), "--num", "4"]) == 2
    assert "a_file is a file, not a folder; choose another --out" in capsys.readouterr().err


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_killed_generations_temporary_folder_is_removed_by_the_next(tmp_path):
    folder = PF.release_dir(tmp_path, RES, "hard")
    folder.parent.mkdir(parents=True)
    dead = folder.parent / f"{PF._tmp_prefix(folder)}{_dead_pid()}-x1"
    alive = folder.parent / f"{PF._tmp_prefix(folder)}{os.getpid()}-x2"   # a generation still running
    for tmp in (dead, alive):
        (tmp / "imgs" / "0").mkdir(parents=True)
    PF.generate_release(folder, 4, resolution=RES)
    assert not dead.exists() and alive.exists() and (folder / PF.PROVENANCE_NAME).is_file()


def test_sigterm_stops_a_generation_and_its_workers_cleanly(tmp_path, subprocess_env):
    import signal
    import subprocess

    from tests.conftest import ROOT, cli

    proc = subprocess.Popen(cli("lra.data.pathfinder", "--out", str(tmp_path), "--num", "100000", "--per-folder",
                                "200", "--workers", "2"), cwd=ROOT, env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parent = tmp_path / f"pathfinder{RES}"
    deadline = time.time() + 120
    while not any(parent.glob(".*.tmp-*/metadata/*.npy")):   # workers are writing folders
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)   # the queued folders are not started: it ends within a folder's time
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not list(parent.iterdir()), "temporary folder left behind"


@pytest.mark.parametrize("option, value", [("--seed", "-1"), ("--workers", "0")])
def test_cli_refuses_out_of_range_options_by_name(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as info:
        PF.main(["--out", str(tmp_path), "--num", "4", option, value])
    assert info.value.code == 2 and f"{option} must be" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())   # nothing generated
