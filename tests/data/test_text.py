"""Tests of the LRA Text (IMDB) data: tokens, preparation from the archive, loading, errors, smoke data."""

import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from lra.data import fixtures
from lra.data import text as T

REPO = Path(__file__).resolve().parents[2]


def archive_reviews(archive):
    """Independent reading of a fixture archive: {split: [(path, stripped bytes, label)]} sorted by path."""
    out = {"train": [], "test": []}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[2] in ("pos", "neg") and parts[3].endswith(".txt"):
                out[parts[1]].append((m.name, tar.extractfile(m).read().strip(), int(parts[2] == "pos")))
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    archive = fixtures.write_imdb_archive(root / "dl", num_per_class=5, num_unsup=3, seed=1)
    data_dir = root / "data"
    T.prepare(archive, data_dir / "text", verify=False)
    return archive, data_dir


# --------------------------------------------------------------------------- tokens


def test_tokenize_hand_examples():
    ids, n = T.tokenize("ab", 5)
    assert ids.tolist() == [98, 99, 0, 0, 0] and n == 2 and ids.dtype == np.int32
    ids, n = T.tokenize("é", 3)  # UTF-8 c3 a9
    assert ids.tolist() == [0xC3 + 1, 0xA9 + 1, 0] and n == 2
    ids, n = T.tokenize(b"\x00\xff", 2)  # the extreme bytes: 0 -> 1, 255 -> 256 (vocabulary 257)
    assert ids.tolist() == [1, 256] and n == 2
    ids, n = T.tokenize("abcdef", 3)
    assert ids.tolist() == [98, 99, 100] and n == 3
    with pytest.raises(ValueError):
        T.tokenize("a", 0)


# --------------------------------------------------------------------------- prepared data


def test_split_sizes_labels_and_val_is_test(prepared):
    _, data_dir = prepared
    d = {s: T.load(s, data_dir=data_dir, max_length=64) for s in ("train", "val", "test")}
    for s in d:
        assert d[s]["inputs"].shape == (10, 64) and d[s]["inputs"].dtype == np.int32
        assert d[s]["targets"].dtype == np.int32 and d[s]["lengths"].dtype == np.int32
        assert sorted(d[s]["targets"].tolist()) == [0] * 5 + [1] * 5
    for k in d["val"]:
        np.testing.assert_array_equal(d["val"][k], d["test"][k])
    assert not np.array_equal(d["train"]["inputs"], d["test"]["inputs"])


def test_round_trip_against_archive(prepared):
    archive, data_dir = prepared
    expected = archive_reviews(archive)
    for split, name in (("train", "train"), ("test", "test")):
        d = T.load(split, data_dir=data_dir, max_length=5000)
        rows = expected[name]
        assert len(rows) == len(d["targets"]) == 10  # the unsup reviews are not in train
        for i, (_, raw, label) in enumerate(rows):  # sorted by path: all neg, then all pos
            n = d["lengths"][i]
            assert n == len(raw)
            assert bytes((d["inputs"][i, :n] - 1).astype(np.uint8)) == raw
            assert (d["inputs"][i, n:] == 0).all()
            assert d["targets"][i] == label
        assert d["targets"].tolist() == [0] * 5 + [1] * 5


def test_stray_whitespace_is_stripped_like_tfds(tmp_path):
    raw = b"  Great film.\n"
    path = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("train/pos/0_9", "train/neg/0_1", "test/pos/0_8", "test/neg/0_2"):
            info = tarfile.TarInfo(f"aclImdb/{name}.txt")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    T.prepare(path, tmp_path / "data" / "text", verify=False)
    d = T.load("train", data_dir=tmp_path / "data", max_length=20)
    assert d["lengths"].tolist() == [11, 11]
    assert d["inputs"][0, :3].tolist() == [ord("G") + 1, ord("r") + 1, ord("e") + 1]


def test_truncation_padding_and_lengths(prepared):
    archive, data_dir = prepared
    full = [len(r[1]) for r in archive_reviews(archive)["train"]]
    short = T.load("train", data_dir=data_dir, max_length=16)
    assert short["lengths"].tolist() == [min(16, n) for n in full]
    long = T.load("train", data_dir=data_dir, max_length=4000)
    assert long["lengths"].tolist() == full
    np.testing.assert_array_equal(long["inputs"][:, :16], short["inputs"])
    for row, n in zip(long["inputs"], long["lengths"]):
        assert (row[:n] >= 1).all() and (row[n:] == 0).all()


def test_prepared_files_and_manifest(prepared):
    _, data_dir = prepared
    folder = data_dir / "text"
    names = {p.name for p in folder.iterdir()}
    assert {"manifest.json", "train.bytes.npy", "train.offsets.npy", "train.labels.npy", "test.bytes.npy"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    offsets = np.load(folder / "train.offsets.npy")
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == np.load(folder / "train.bytes.npy").size


def test_prepare_is_deterministic(tmp_path, prepared):
    archive, data_dir = prepared
    T.prepare(archive, tmp_path / "again", verify=False)
    for name in ("train.bytes.npy", "train.offsets.npy", "test.labels.npy"):
        assert (tmp_path / "again" / name).read_bytes() == (data_dir / "text" / name).read_bytes()


# --------------------------------------------------------------------------- errors


def test_missing_data_names_the_command_fast(tmp_path):
    data_dir = tmp_path / "nothing"
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        T.check_available(data_dir=data_dir)
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert f"python -m lra.data.text prepare --manual-dir DIR --data-dir {data_dir}" in msg
    assert f"python -m lra.data.text prepare --data-dir {data_dir}" in msg
    assert str(data_dir / "text") in msg and T.URL in msg
    with pytest.raises(FileNotFoundError, match="lra.data.text prepare"):
        T.load("train", data_dir=data_dir)
    T.check_available(data_dir=data_dir, source="smoke")  # smoke data is written on demand


def test_check_available_after_prepare(prepared):
    T.check_available(data_dir=prepared[1], max_length=1000)  # extra task options are ignored


def test_archive_missing_a_folder_names_it(tmp_path):
    path = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("train/pos/0_9", "train/neg/0_1", "test/neg/0_2"):  # no test/pos
            info = tarfile.TarInfo(f"aclImdb/{name}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match=r"aclImdb/test/pos/\*\.txt"):
        T.prepare(path, tmp_path / "out", verify=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unreadable_archive(tmp_path):
    bad = tmp_path / "aclImdb_v1.tar.gz"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a readable aclImdb_v1.tar.gz"):
        T.prepare(bad, tmp_path / "out", verify=False)


def test_verify_rejects_an_unofficial_archive(prepared, tmp_path):
    with pytest.raises(ValueError, match=f"expected {T.ARCHIVE_SIZE} bytes"):
        T.prepare(prepared[0], tmp_path / "out")


def test_bad_split_and_source(prepared):
    with pytest.raises(ValueError, match="valid splits"):
        T.load("dev", data_dir=prepared[1])
    with pytest.raises(ValueError, match="valid sources"):
        T.load("train", data_dir=prepared[1], source="tfds")


def test_offline_download_names_the_manual_route(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "URL", "http://127.0.0.1:9/aclImdb_v1.tar.gz")  # nothing listens there
    with pytest.raises(ConnectionError) as e:
        T.fetch_and_prepare(tmp_path / "data", timeout=5)
    assert f"python -m lra.data.text prepare --manual-dir DIR --data-dir {tmp_path / 'data'}" in str(e.value)
    assert not list((tmp_path / "data" / "text" / "source").glob("*"))  # no partial download left


# --------------------------------------------------------------------------- CLI and smoke data


def test_cli_prepare_from_manual_dir(prepared, tmp_path, capsys):
    archive, _ = prepared
    assert T.main(["prepare", "--manual-dir", str(archive.parent), "--data-dir", str(tmp_path)]) == 1
    assert f"expected {T.ARCHIVE_SIZE} bytes" in capsys.readouterr().err  # the official archive is checked
    assert T.main(["prepare", "--manual-dir", str(archive.parent), "--data-dir", str(tmp_path), "--no-verify"]) == 0
    assert "10 reviews (5 pos, 5 neg)" in capsys.readouterr().out
    assert T.load("test", data_dir=tmp_path, max_length=8)["inputs"].shape == (10, 8)


def test_cli_runs_as_module(tmp_path, subprocess_env):
    r = subprocess.run([sys.executable, "-m", "lra.data.text", "prepare", "--manual-dir", str(tmp_path / "none"),
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, env=subprocess_env, cwd=REPO)
    assert r.returncode == 1 and "aclImdb_v1.tar.gz not found" in r.stderr


def test_smoke_source_writes_and_reuses_fixture_data(tmp_path):
    d = T.load("train", data_dir=tmp_path, max_length=32, source="smoke")
    n = 2 * fixtures.SMOKE["text"]["num_per_class"]
    assert d["inputs"].shape == (n, 32) and set(d["targets"].tolist()) == {0, 1}
    manifest = tmp_path / "text" / "smoke" / "manifest.json"
    assert manifest.is_file() and (tmp_path / "text" / "smoke" / "source" / "aclImdb_v1.tar.gz").is_file()
    assert not (tmp_path / "text" / "manifest.json").exists()  # the release folder is untouched
    stamp = manifest.stat().st_mtime_ns
    T.load("val", data_dir=tmp_path, max_length=32, source="smoke")
    assert manifest.stat().st_mtime_ns == stamp
