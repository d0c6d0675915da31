"""Tests of the LRA Image (CIFAR-10 grayscale) data: the TF grayscale formula, records, splits, errors."""

import hashlib
import io
import tarfile
import time

import numpy as np
import pytest

from lra.data import fixtures
from lra.data import image as I

PREFIX = "cifar-10-batches-bin/"


def exact_gray(r, g, b):
    """TF's formula in exact rational arithmetic: trunc((0.2989 r + 0.5870 g + 0.1140 b) / 255 * 255.5)."""
    k = 2989 * np.asarray(r, np.int64) + 5870 * np.asarray(g, np.int64) + 1140 * np.asarray(b, np.int64)
    return (k * 511) // (10000 * 510), k * 511 / (10000 * 510)


def write_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(PREFIX + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def record(label, r, g, b):
    """One binary record: label byte, then the R, G and B planes (each 32x32 row-major)."""
    return bytes([label]) + b"".join(np.broadcast_to(np.asarray(c, np.uint8), (32, 32)).tobytes() for c in (r, g, b))


def batches(per_batch=2, test=2):
    members = {f"data_batch_{i}.bin": b"".join(record(i, 10 * i + j, 0, 0) for j in range(per_batch))
               for i in range(1, 6)}
    members["test_batch.bin"] = b"".join(record(9, 200, 200, 200) for _ in range(test))
    return members


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("image")
    archive = fixtures.write_cifar_archive(root / "dl", num_train=23, num_test=7, seed=2)
    I.prepare(archive, root / "data" / "image", verify=False)
    return archive, root / "data"


# --------------------------------------------------------------------------- grayscale


@pytest.mark.parametrize(
    "rgb, gray",
    [
        ((0, 0, 0), 0),
        ((255, 255, 255), 255),  # 0.9999 * 255.5 = 255.47 -> 255
        ((255, 0, 0), 76),  # 0.2989 * 255.5 = 76.37
        ((0, 255, 0), 149),  # 0.5870 * 255.5 = 149.98: truncated, where rounding 0.587 * 255 would give 150
        ((0, 0, 255), 29),  # 0.1140 * 255.5 = 29.13
        ((100, 150, 200), 141),  # (29.89 + 88.05 + 22.80) / 255 * 255.5 = 141.02
        ((0, 122, 186), 93),  # exact value 92.999996; in float32 (as TF computes) it reaches 93.0
    ],
)
def test_gray_hand_computed_pixels(rgb, gray):
    assert I.rgb_to_gray(np.asarray([rgb], np.uint8)).tolist() == [gray]


def all_colours() -> np.ndarray:
    """Every one of the 2^24 RGB colours, [2^24, 3] uint8, in the order 0xRRGGBB."""
    c = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], -1).astype(np.uint8)


# SHA-256 of tf.image.rgb_to_grayscale (TensorFlow 2.21.0, CPU) over all_colours() as 4096 x 4096 images, the
# uint8 output in that order; made with TensorFlow itself (tests/data/test_tfds.py repeats it where TensorFlow
# is installed).
TF_GRAY_ALL_COLOURS_SHA256 = "824a76d81dad2c5a2cf1fa0b2c0a5afe7d871ec2970e4fa2809b53ddbecdca93"


def test_gray_equals_tensorflow_on_every_colour():
    got = I.rgb_to_gray(all_colours())
    assert got.dtype == np.uint8 and got.shape == (1 << 24,)
    assert hashlib.sha256(got.tobytes()).hexdigest() == TF_GRAY_ALL_COLOURS_SHA256


def test_gray_agrees_with_exact_formula_away_from_ties():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(200_000, 3)).astype(np.uint8)
    got = I.rgb_to_gray(rgb).astype(np.int64)
    want, value = exact_gray(rgb[:, 0], rgb[:, 1], rgb[:, 2])
    near_integer = np.abs(value - np.round(value)) < 1e-4  # where float32 rounding may cross the boundary
    assert (got[~near_integer] == want[~near_integer]).all()
    assert (np.abs(got - want) <= 1).all()
    assert I.rgb_to_gray(rgb).dtype == np.uint8


def test_gray_rejects_wrong_input():
    with pytest.raises(ValueError):
        I.rgb_to_gray(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError):
        I.rgb_to_gray(np.zeros((4, 4), np.uint8))


def test_decode_records_planar_row_major():
    r = np.zeros((32, 32), np.uint8)
    r[1, 0] = 255  # row 1, column 0 -> token index 32
    g = np.zeros((32, 32), np.uint8)
    g[0, 5] = 255  # row 0, column 5 -> index 5
    pixels, labels = I.decode_records(record(3, r, g, 0) + record(7, 0, 0, 255))
    assert labels.tolist() == [3, 7] and pixels.shape == (2, 1024) and pixels.dtype == np.uint8
    assert pixels[0, 32] == 76 and pixels[0, 5] == 149 and pixels[0].sum() == 76 + 149
    assert (pixels[1] == 29).all()
    with pytest.raises(ValueError, match="whole number of 3073-byte"):
        I.decode_records(b"\x00" * 3072, "x.bin")
    with pytest.raises(ValueError, match="label 10"):
        I.decode_records(record(10, 0, 0, 0), "x.bin")


# --------------------------------------------------------------------------- splits and round trip


def test_split_point():
    assert I.split_point(50_000) == 45_000
    assert I.split_point(23) == 21  # round(20.7)
    assert I.split_point(25) == 22  # tfds: int(round(22.5)), Python rounds halves to even
    assert I.split_point(35) == 32  # int(round(31.5))
    assert I.split_point(10) == 9


def test_split_sizes_and_label_sets(prepared):
    _, data_dir = prepared
    d = {s: I.load(s, data_dir=data_dir) for s in ("train", "val", "test")}
    assert [d[s]["inputs"].shape for s in d] == [(21, 1024), (2, 1024), (7, 1024)]
    for s in d:
        assert d[s]["inputs"].dtype == np.int32 and d[s]["targets"].dtype == np.int32
        assert (d[s]["lengths"] == 1024).all() and d[s]["lengths"].dtype == np.int32
        assert 0 <= d[s]["inputs"].min() and d[s]["inputs"].max() <= 255
        assert set(d[s]["targets"].tolist()) <= set(range(10))
    assert set(d["test"]["targets"].tolist()) == set(range(7))  # the fixture cycles through the classes


def test_round_trip_in_tfds_order(prepared):
    archive, data_dir = prepared
    with tarfile.open(archive, "r:gz") as tar:
        raw = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".bin")}
    train = np.frombuffer(b"".join(raw[f"{PREFIX}data_batch_{i}.bin"] for i in range(1, 6)), np.uint8)
    train = train.reshape(-1, 3073)
    assert train.shape[0] == 23
    planes = train[:, 1:].reshape(-1, 3, 1024)
    want, _ = exact_gray(planes[:, 0], planes[:, 1], planes[:, 2])
    order = I.tfds_order(23, "train")
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    np.testing.assert_array_equal(np.load(data_dir / "image" / "train.ids.npy"), order)
    got = np.concatenate([I.load(s, data_dir=data_dir)["inputs"] for s in ("train", "val")])
    assert np.abs(got - want[order]).max() <= 1 and (got == want[order]).mean() > 0.999
    labels = np.concatenate([I.load(s, data_dir=data_dir)["targets"] for s in ("train", "val")])
    assert labels.tolist() == train[order, 0].tolist()
    test = np.frombuffer(raw[f"{PREFIX}test_batch.bin"], np.uint8).reshape(-1, 3073)
    assert I.load("test", data_dir=data_dir)["targets"].tolist() == test[I.tfds_order(7, "test"), 0].tolist()


def test_black_pixels_are_data(tmp_path):
    members = batches()
    members["test_batch.bin"] = record(4, 0, 0, 0)
    I.prepare(write_archive(tmp_path / "c.tar.gz", members), tmp_path / "data" / "image", verify=False)
    d = I.load("test", data_dir=tmp_path / "data")
    assert (d["inputs"] == 0).all() and d["lengths"].tolist() == [1024] and d["targets"].tolist() == [4]
    train = I.load("train", data_dir=tmp_path / "data")  # batch order: labels 1,1,2,2,3,3,4,4,5,5
    order = I.tfds_order(10, "train")
    batch_labels = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert train["targets"].tolist() == [batch_labels[i] for i in order[:9]]
    assert I.load("val", data_dir=tmp_path / "data")["targets"].tolist() == [batch_labels[order[9]]]
    red = [10 * i + j for i in range(1, 6) for j in range(2)]
    assert train["inputs"][:, 0].tolist() == [I.rgb_to_gray(np.uint8([[red[i], 0, 0]]))[0] for i in order[:9]]


def test_max_length_truncates_or_pads(prepared):
    _, data_dir = prepared
    full = I.load("test", data_dir=data_dir)
    short = I.load("test", data_dir=data_dir, max_length=100)
    np.testing.assert_array_equal(short["inputs"], full["inputs"][:, :100])
    assert (short["lengths"] == 100).all()
    long = I.load("test", data_dir=data_dir, max_length=1030)
    assert (long["inputs"][:, 1024:] == 0).all() and (long["lengths"] == 1024).all()


# --------------------------------------------------------------------------- errors


def test_missing_data_names_the_command_fast(tmp_path):
    data_dir = tmp_path / "nothing"
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        I.check_available(data_dir=data_dir)
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert f"python -m lra.data.image prepare --manual-dir DIR --data-dir {data_dir}" in msg
    assert str(data_dir / "image") in msg and I.URL in msg
    with pytest.raises(FileNotFoundError, match="lra.data.image prepare"):
        I.load("test", data_dir=data_dir)
    I.check_available(data_dir=data_dir, source="smoke")


def test_archive_missing_a_batch_names_it(tmp_path):
    members = batches()
    del members["data_batch_3.bin"]
    with pytest.raises(ValueError, match="cifar-10-batches-bin/data_batch_3.bin"):
        I.prepare(write_archive(tmp_path / "c.tar.gz", members), tmp_path / "out", verify=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_truncated_batch_names_the_member(tmp_path):
    members = batches()
    members["test_batch.bin"] = members["test_batch.bin"][:-5]
    with pytest.raises(ValueError, match="test_batch.bin: .* not a whole number"):
        I.prepare(write_archive(tmp_path / "c.tar.gz", members), tmp_path / "out", verify=False)


def test_verify_rejects_an_unofficial_archive(prepared, tmp_path):
    with pytest.raises(ValueError, match=f"expected {I.ARCHIVE_SIZE} bytes"):
        I.prepare(prepared[0], tmp_path / "out")


def test_cli_prepare_from_manual_dir(prepared, tmp_path, capsys):
    archive, _ = prepared
    assert I.main(["prepare", "--manual-dir", str(archive), "--data-dir", str(tmp_path), "--no-verify"]) == 0
    assert "train 21, val 2 (of 23 training images), test 7" in capsys.readouterr().out
    assert I.main(["prepare", "--manual-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path)]) == 1


def test_smoke_source(tmp_path):
    d = I.load("val", data_dir=tmp_path, source="smoke")
    n = fixtures.SMOKE["image"]["num_train"]
    assert d["inputs"].shape == (n - I.split_point(n), 1024)
    assert (tmp_path / "image" / "smoke" / "manifest.json").is_file()
    assert not (tmp_path / "image" / "manifest.json").exists()
