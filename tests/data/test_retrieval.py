"""Tests of the LRA Retrieval (AAN pairs) data: TSV parsing, tokens, caching, errors, smoke data."""

import os
import time

import numpy as np
import pytest

from lra.data import fixtures
from lra.data import retrieval as R
from tests.data import CACHE_DAMAGE


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def release(tmp_path, train=None, val=None, test=None):
    """A data dir with the three release TSVs (small hand-written rows unless given)."""
    folder = tmp_path / "data" / "retrieval"
    write(folder, "new_aan_pairs.train.tsv", train or "1.0\tA1\tB1\tab\tcde\n0\tA2\tB2\t\thello\n")
    write(folder, "new_aan_pairs.eval.tsv", val or "0.0\tA3\tB3\tx\ty\n")
    write(folder, "new_aan_pairs.test.tsv", test or "1\tA4\tB4\tp\tq\n1\tA5\tB5\tr\ts\n0\tA6\tB6\tt\tu\n")
    return tmp_path / "data"


def test_tokenize_hand_example():
    ids, n = R.tokenize("ab", 4)
    assert ids.tolist() == [98, 99, 0, 0] and n == 2
    ids, n = R.tokenize("x" * 5000)
    assert ids.shape == (4000,) and n == 4000 and (ids == ord("x") + 1).all()


@pytest.mark.parametrize("raw, label", [(b"1.0", 1), (b"0.0", 0), (b"1", 1), (b"0", 0), (b" 1.00 ", 1)])
def test_parse_label(raw, label):
    assert R.parse_label(raw) == label


@pytest.mark.parametrize("raw", [b"2", b"0.5", b"yes", b"", b"nan"])
def test_parse_label_rejects(raw):
    with pytest.raises(ValueError):
        R.parse_label(raw)


def test_hand_written_rows(tmp_path):
    data_dir = release(tmp_path)
    d = R.load("train", data_dir=data_dir, max_length=4)
    assert set(d) == {"inputs1", "inputs2", "lengths1", "lengths2", "targets"}
    assert d["inputs1"].tolist() == [[98, 99, 0, 0], [0, 0, 0, 0]]
    assert d["inputs2"].tolist() == [[100, 101, 102, 0], [105, 102, 109, 109]]  # "hello" truncated to 4 bytes
    assert d["lengths1"].tolist() == [2, 0] and d["lengths2"].tolist() == [3, 4]
    assert d["targets"].tolist() == [1, 0]
    for k, v in d.items():
        assert v.dtype == np.int32, k


def test_split_files(tmp_path):
    data_dir = release(tmp_path)
    sizes = {s: len(R.load(s, data_dir=data_dir, max_length=8)["targets"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 2, "val": 1, "test": 3}  # val reads new_aan_pairs.eval.tsv


def test_default_length_is_4000_and_utf8_bytes(tmp_path):
    doc = "é" * 2500  # 5000 bytes
    data_dir = release(tmp_path, test=f"1\ta\tb\t{doc}\tz\n")
    d = R.load("test", data_dir=data_dir)
    assert d["inputs1"].shape == (1, 4000) and d["lengths1"].tolist() == [4000] and d["lengths2"].tolist() == [1]
    assert d["inputs1"][0, :2].tolist() == [0xC3 + 1, 0xA9 + 1]


def test_crlf_and_blank_lines(tmp_path):
    data_dir = release(tmp_path, val="1\ta\tb\tab\tcd\r\n\n0\tc\td\tef\tgh\r\n")
    d = R.load("val", data_dir=data_dir, max_length=3)
    assert d["lengths2"].tolist() == [2, 2] and d["targets"].tolist() == [1, 0]


def test_an_empty_tsv_is_refused_with_the_command(tmp_path):
    data_dir = release(tmp_path, val="\n")   # blank lines only: no pair
    with pytest.raises(ValueError, match=r"eval.tsv: no rows .*get_lra_data.sh --data-dir .* --only retrieval"):
        R.load("val", data_dir=data_dir)


def test_wrong_column_count_names_file_and_line(tmp_path):
    data_dir = release(tmp_path, train="1\ta\tb\tx\ty\n\n0\ta\tb\tonly four\n")
    tsv = data_dir / "retrieval" / "new_aan_pairs.train.tsv"
    with pytest.raises(ValueError, match=f"{tsv}:3: expected 5 tab-separated columns .* got 4"):
        R.load("train", data_dir=data_dir)
    data_dir = release(tmp_path, train="1\ta\tb\tx\ty\textra\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs.train.tsv:1: .* got 6"):
        R.load("train", data_dir=data_dir)
    # A line of tabs is a row with empty columns, not a blank line; one of spaces only is blank.
    for line, cols in (("\t\t\t\t", 5), ("\t", 2), (" \t ", 2)):
        data_dir = release(tmp_path, train=f"1\ta\tb\tx\ty\n \n{line}\n")
        with pytest.raises(ValueError, match=f"new_aan_pairs.train.tsv:3: .*got {cols}|train.tsv:3: .*label"):
            R.load("train", data_dir=data_dir)


def test_bad_label_names_file_and_line(tmp_path):
    data_dir = release(tmp_path, test="1\ta\tb\tx\ty\n0.5\ta\tb\tx\ty\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs.test.tsv:2: label '0.5' is not 0 or 1"):
        R.load("test", data_dir=data_dir)


# --------------------------------------------------------------------------- cache


def test_cache_is_written_and_used(tmp_path, monkeypatch):
    data_dir = release(tmp_path)
    tsv = data_dir / "retrieval" / "new_aan_pairs.train.tsv"
    first = R.load("train", data_dir=data_dir, max_length=4)
    cache = R.cache_path(tsv, 4)
    assert cache.is_file() and cache.name == "new_aan_pairs.train.tsv.L4.npz"
    calls = []
    real = R.read_tsv

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(R, "read_tsv", counting)
    second = R.load("train", data_dir=data_dir, max_length=4)
    assert calls == []  # read from the cache, not tokenised again
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    R.load("train", data_dir=data_dir, max_length=6)  # another length: its own cache
    assert len(calls) == 1 and R.cache_path(tsv, 6).is_file()
    # A changed TSV invalidates the cache.
    tsv.write_text("0\ta\tb\tzz\tyy\n")
    os.utime(tsv, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = R.load("train", data_dir=data_dir, max_length=4)
    assert len(calls) == 2 and third["targets"].tolist() == [0]
    assert not list(tsv.parent.glob("*.tmp"))


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE.values()), ids=list(CACHE_DAMAGE))
def test_corrupt_cache_is_rebuilt(tmp_path, damage, caplog):
    data_dir = release(tmp_path)
    tsv = data_dir / "retrieval" / "new_aan_pairs.test.tsv"
    want = R.load("test", data_dir=data_dir, max_length=4)
    cache = R.cache_path(tsv, 4)
    cache.write_bytes(damage(cache.read_bytes()))
    got = R.load("test", data_dir=data_dir, max_length=4)
    assert got["targets"].tolist() == [1, 1, 0] and np.array_equal(got["inputs1"], want["inputs1"])
    assert "ignoring unreadable cache" in caplog.text
    assert np.array_equal(R.load("test", data_dir=data_dir, max_length=4)["inputs2"], want["inputs2"])  # rewritten


def test_a_folder_that_cannot_hold_the_cache_still_loads(tmp_path, monkeypatch, caplog):
    # A read-only copy of the release: tokenised on every load, with a warning, instead of failing.
    data_dir = release(tmp_path)

    def read_only(path, **arrays):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(R.C, "save_npz", read_only)
    assert R.load("test", data_dir=data_dir, max_length=4)["targets"].tolist() == [1, 1, 0]
    assert "could not write the cache" in caplog.text


# --------------------------------------------------------------------------- availability, fixtures, CLI


def test_missing_data_names_the_command_fast(tmp_path):
    data_dir = tmp_path / "nothing"
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        R.check_available(data_dir=data_dir)
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert f"scripts/get_lra_data.sh --data-dir {data_dir} --only retrieval" in msg
    assert f"--archive PATH/lra_release.gz --data-dir {data_dir}" in msg
    assert str(data_dir / "retrieval" / "new_aan_pairs.eval.tsv") in msg
    with pytest.raises(FileNotFoundError, match="get_lra_data.sh"):
        R.load("val", data_dir=data_dir)
    R.check_available(data_dir=data_dir, source="smoke")


def test_check_available_names_only_the_missing_file(tmp_path):
    data_dir = release(tmp_path)
    R.check_available(data_dir=data_dir)
    (data_dir / "retrieval" / "new_aan_pairs.test.tsv").unlink()
    with pytest.raises(FileNotFoundError) as e:
        R.check_available(data_dir=data_dir)
    assert "new_aan_pairs.test.tsv" in str(e.value) and "new_aan_pairs.train.tsv," not in str(e.value)


def test_fixture_tsvs_sizes_and_labels(tmp_path):
    folder = fixtures.write_aan_tsvs(tmp_path / "data" / "retrieval", num_train=12, num_eval=6, num_test=4, seed=5)
    assert folder == tmp_path / "data" / "retrieval"
    for split, n in (("train", 12), ("val", 6), ("test", 4)):
        d = R.load(split, data_dir=tmp_path / "data", max_length=2000)
        assert d["targets"].shape == (n,) and sorted(d["targets"].tolist()) == [0] * (n // 2) + [1] * (n // 2)
        assert (d["lengths1"] > 0).all() and (d["lengths2"] > 0).all()


def test_smoke_source(tmp_path):
    d = R.load("train", data_dir=tmp_path, max_length=64, source="smoke")
    assert d["inputs1"].shape == (fixtures.SMOKE["retrieval"]["num_train"], 64)
    folder = tmp_path / "retrieval" / "smoke"
    assert sorted(p.name for p in folder.glob("*.tsv")) == sorted(R.FILES.values())
    assert R.cache_path(folder / R.FILES["train"], 64).is_file()
    assert not (tmp_path / "retrieval" / "new_aan_pairs.train.tsv").exists()


def test_cli_prepare_builds_caches(tmp_path, capsys):
    data_dir = release(tmp_path)
    assert R.main(["prepare", "--data-dir", str(data_dir), "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 pairs (1 positive)" in out and "test: 3 pairs (2 positive)" in out
    assert len(list((data_dir / "retrieval").glob("*.L16.npz"))) == 3
    assert R.main(["prepare", "--data-dir", str(tmp_path / "empty")]) == 1
