"""Tests of the ListOps generator, tokenizer, TSV reader, CLI and the data entry point."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lra.data import TASKS, ArraySource, default_data_dir, source
from lra.data import listops as L

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_train": 60, "num_val": 20, "num_test": 20, "min_length": 10, "max_length": 60, "seed": 3}

# Independent reference: token ids written out by hand from the documented vocabulary.
REF_VOCAB = {"[MIN": 1, "[MAX": 2, "[MED": 3, "[SM": 4, "]": 5}
REF_VOCAB.update({str(d): 6 + d for d in range(10)})


def ref_eval(expression):
    """Stack evaluator written independently of lra.data.listops.evaluate."""
    stack = []
    for tok in expression.split():
        if tok in "()":
            continue
        if tok.startswith("["):
            stack.append(tok)
        elif tok == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            op = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                v = int(np.median(args))
            elif op == "[SM":
                v = sum(args) % 10
            else:
                raise AssertionError(op)
            stack.append(v)
        else:
            stack.append(int(tok))
    assert len(stack) == 1
    return stack[0]


def ref_length(expression):
    return sum(tok not in ("(", ")") for tok in expression.split())


def read_rows(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "Source\tTarget"
    rows = [line.split("\t") for line in lines[1:]]
    return [(e, int(t)) for e, t in rows]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    L.write_splits(out, L.generate_splits(60, 20, 20, min_length=10, max_length=60, seed=3))
    return out


# --------------------------------------------------------------------------- generator


def test_labels_match_independent_evaluator(gen_dir):
    n = 0
    for split in ("train", "val", "test"):
        for expr, label in read_rows(gen_dir / f"basic_{split}.tsv"):
            assert ref_eval(expr) == label, expr
            n += 1
    assert n == 100


def test_ref_eval_and_evaluate_on_hand_examples():
    cases = {
        "( [MAX 2 9 ( [MIN 4 7 ] ) 0 ] )": 9,
        "( [MED 1 2 3 4 ] )": 2,  # median 2.5 -> 2
        "( [MED 9 0 5 ] )": 5,
        "( [SM 7 8 ( [MIN 3 5 ] ) ] )": 8,  # 18 % 10
        "( ( ( ( [MAX 2 ) 9 ) ( ( [MIN 4 ) 7 ] ) ) 0 ] )": 9,
    }
    for expr, value in cases.items():
        assert ref_eval(expr) == value
        assert L.evaluate(expr) == value


def test_lengths_strictly_inside_bounds_and_tokens_in_vocab(gen_dir):
    allowed = set(REF_VOCAB) | {"(", ")"}
    for split in ("train", "val", "test"):
        for expr, _ in read_rows(gen_dir / f"basic_{split}.tsv"):
            assert 10 < ref_length(expr) < 60
            assert set(expr.split()) <= allowed


def test_no_duplicates_across_splits(gen_dir):
    exprs = [e for s in ("train", "val", "test") for e, _ in read_rows(gen_dir / f"basic_{s}.tsv")]
    assert len(exprs) == len(set(exprs)) == 100


def test_generate_dedups_in_tight_range():
    rows = L.generate(300, min_length=3, max_length=8, seed=1)
    exprs = [e for e, _ in rows]
    assert len(set(exprs)) == 300
    assert all(3 < ref_length(e) < 8 for e in exprs)


def test_determinism():
    a = L.generate(40, min_length=10, max_length=60, seed=7)
    b = L.generate(40, min_length=10, max_length=60, seed=7)
    c = L.generate(40, min_length=10, max_length=60, seed=8)
    assert a == b
    assert a != c


def test_label_distribution():
    labels = [t for _, t in L.generate(300, min_length=10, max_length=60, seed=0)]
    assert len(set(labels)) > 3
    assert set(labels) <= set(range(10))


def test_bad_generate_arguments():
    with pytest.raises(ValueError):
        L.generate(5, min_length=60, max_length=10)


# --------------------------------------------------------------------------- tokenizer


def test_vocab_constants():
    assert L.VOCAB_SIZE == 16
    assert L.VOCAB == REF_VOCAB


def test_tokenizer_keeps_closing_bracket():
    ids = L.tokenize("( ( [MAX 2 9 ] ) 0 )")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [2, 8, 15, 5, 6])


def test_tokenizer_official_release_style():
    line = "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    np.testing.assert_array_equal(L.tokenize(line), [2, 8, 15, 1, 10, 13, 5, 6, 5])
    # irregular whitespace takes the slow path and gives the same ids
    np.testing.assert_array_equal(L.tokenize("  " + line.replace(" ", "  ") + "\t"), L.tokenize(line))


def test_tokenizer_matches_reference_on_generated():
    for expr, _ in L.generate(50, min_length=10, max_length=60, seed=11):
        ref = [REF_VOCAB[t] for t in expr.split() if t not in ("(", ")")]
        np.testing.assert_array_equal(L.tokenize(expr), ref)


@pytest.mark.parametrize("bad", ["( [MAX 2 12 ] )", "( [MAXX 2 1 ] )", "( [MAX 2 a ] )", "([MAX 2 1 ] )", "\x01 2"])
def test_tokenizer_unknown_token(bad):
    with pytest.raises(ValueError, match="unknown token"):
        L.tokenize(bad)


# --------------------------------------------------------------------------- read_tsv


def write(path, text):
    Path(path).write_text(text)
    return path


def test_read_tsv_padding_truncation_header_optional(tmp_path):
    body = "( [MAX 2 9 ] )\t9\n( ( ( [SM 1 ) 2 ) ( [MIN 3 4 ] ) ] )\t6\n"
    with_header = write(tmp_path / "a.tsv", "Source\tTarget\n" + body)
    without = write(tmp_path / "b.tsv", body + "\n")
    for path in (with_header, without):
        d = L.read_tsv(path, max_length=8)
        assert set(d) == {"inputs", "targets", "lengths"}
        assert all(v.dtype == np.int32 for v in d.values())
        assert d["inputs"].shape == (2, 8)
        np.testing.assert_array_equal(d["inputs"][0], [2, 8, 15, 5, 0, 0, 0, 0])
        np.testing.assert_array_equal(d["inputs"][1], [4, 7, 8, 1, 9, 10, 5, 5])
        np.testing.assert_array_equal(d["targets"], [9, 6])
        np.testing.assert_array_equal(d["lengths"], [4, 8])
    d = L.read_tsv(with_header, max_length=5)  # truncation
    np.testing.assert_array_equal(d["inputs"], [[2, 8, 15, 5, 0], [4, 7, 8, 1, 9]])
    np.testing.assert_array_equal(d["lengths"], [4, 5])


def test_read_tsv_roundtrip_generated(gen_dir):
    path = gen_dir / "basic_train.tsv"
    rows = read_rows(path)
    d = L.read_tsv(path, max_length=64)
    assert d["inputs"].shape == (60, 64)
    for i, (expr, label) in enumerate(rows):
        ref = [REF_VOCAB[t] for t in expr.split() if t not in ("(", ")")]
        assert d["lengths"][i] == len(ref) == ref_length(expr)
        np.testing.assert_array_equal(d["inputs"][i, : len(ref)], ref)
        assert not d["inputs"][i, len(ref) :].any()
        assert d["targets"][i] == label
    assert d["inputs"].min() >= 0 and d["inputs"].max() < L.VOCAB_SIZE


@pytest.mark.parametrize(
    "bad_line, what",
    [
        ("( [MAX 2 9 ] )\t9\textra", "columns"),
        ("( [MAX 2 9 ] )", "columns"),
        ("( [MAX 2 9 ] )\tnine", "integer"),
        ("( [MAX 2 9 ] )\t12", "outside"),
        ("( [MAX 2 X ] )\t9", "unknown token"),
        ("\t9", "empty"),
    ],
)
def test_read_tsv_malformed(tmp_path, bad_line, what):
    path = write(tmp_path / "bad.tsv", f"Source\tTarget\n( [MIN 1 2 ] )\t1\n{bad_line}\n( [MIN 1 2 ] )\t1\n")
    with pytest.raises(ValueError) as e:
        L.read_tsv(path, max_length=10)
    msg = str(e.value)
    assert str(path) in msg and ":3:" in msg and what in msg


def test_write_tsv_atomic_no_leftovers(tmp_path):
    L.write_tsv(tmp_path / "x.tsv", [("( [SM 1 2 ] )", 3)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tsv"]
    assert read_rows(tmp_path / "x.tsv") == [("( [SM 1 2 ] )", 3)]


# --------------------------------------------------------------------------- loading, CLI, cache


def test_missing_data_fails_fast(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError) as e:
        L.load("train", data_dir=tmp_path, max_length=100)
    assert time.monotonic() - t0 < 1.0
    msg = str(e.value)
    assert "python -m lra.data.listops" in msg
    assert str(tmp_path / "listops" / "basic_train.tsv") in msg
    assert f"--out {tmp_path / 'listops'}" in msg


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="train, val, test"):
        L.load("dev", data_dir=tmp_path, max_length=10)


def test_cli_writes_three_files(tmp_path):
    out = tmp_path / "listops"
    args = ["--out", str(out), "--num-train", "30", "--num-val", "5", "--num-test", "5"]
    args += ["--min-length", "10", "--max-length", "40", "--seed", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "lra.data.listops", *args],
        cwd=REPO,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    counts = {s: len(read_rows(out / f"basic_{s}.tsv")) for s in ("train", "val", "test")}
    assert counts == {"train": 30, "val": 5, "test": 5}
    # the CLI and the library give the same data for the same arguments
    lib = L.generate_splits(30, 5, 5, min_length=10, max_length=40, seed=1)
    assert read_rows(out / "basic_val.tsv") == lib["val"]
    # then load() reads it from DATA/listops
    d = L.load("test", data_dir=tmp_path, max_length=40)
    assert len(d["targets"]) == 5 and d["inputs"].shape == (5, 40)


def test_ensure_generated_caches(tmp_path):
    folder = L.ensure_generated(tmp_path, **SMALL)
    name = "generated-n60-20-20-len10-60-seed3"
    assert folder == tmp_path / "listops" / name
    files = [folder / f"basic_{s}.tsv" for s in ("train", "val", "test")]
    mtimes = [f.stat().st_mtime_ns for f in files]
    time.sleep(0.01)
    assert L.ensure_generated(tmp_path, **SMALL) == folder
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert sorted(p.name for p in folder.parent.iterdir()) == [name]  # no temp folders left
    # an incomplete folder is regenerated
    files[1].unlink()
    assert L.ensure_generated(tmp_path, **SMALL) == folder
    assert all(f.is_file() for f in files)


# --------------------------------------------------------------------------- entry point


def test_source_generated(tmp_path):
    src = source("listops", "train", data_dir=tmp_path, max_length=64, generate=SMALL)
    assert isinstance(src, ArraySource)
    assert len(src) == 60
    ex = src[0]
    assert ex["inputs"].dtype == np.int32 and ex["inputs"].shape == (64,)
    assert ex["targets"].dtype == np.int32 and ex["targets"].shape == ()
    assert ex["lengths"].dtype == np.int32
    np.testing.assert_array_equal(src[-1]["inputs"], src.arrays["inputs"][59])
    with pytest.raises(IndexError):
        src[60]
    with pytest.raises(IndexError):
        src[-61]
    val = source("listops", "val", data_dir=tmp_path, max_length=64, generate=SMALL)
    assert len(val) == 20


def test_source_reads_placed_files(tmp_path, gen_dir):
    (tmp_path / "listops").mkdir()
    for s in ("train", "val", "test"):
        (tmp_path / "listops" / f"basic_{s}.tsv").write_bytes((gen_dir / f"basic_{s}.tsv").read_bytes())
    src = source("listops", "test", data_dir=tmp_path, max_length=32)
    assert len(src) == 20 and src.arrays["inputs"].shape == (20, 32)


def test_source_unknown_task(tmp_path):
    assert sorted(TASKS) == ["image", "listops", "pathfinder", "pathx", "retrieval", "text"]   # contract 1's tasks
    with pytest.raises(ValueError, match="listops, pathfinder, pathx, retrieval, text"):
        source("nope", "train", data_dir=tmp_path)


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("LRA_DATA", "/x/y")
    assert default_data_dir() == Path("/x/y")
    assert default_data_dir("z") == Path("z")
    monkeypatch.delenv("LRA_DATA")
    assert default_data_dir() == Path("data")


def test_array_source_validates_lengths():
    with pytest.raises(ValueError):
        ArraySource({"inputs": np.zeros((3, 4), np.int32), "targets": np.zeros(2, np.int32)})


def test_data_package_does_not_import_jax():
    code = "import sys, lra.data; from lra.data import listops; assert 'jax' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


CLI_SMALL = ["--num-train", "6", "--num-val", "2", "--num-test", "2", "--min-length", "10", "--max-length", "40"]


@pytest.mark.parametrize("changes, message", [
    (["--num-train", "-5"], "--num-train must be >= 1, got -5"),
    (["--num-val", "0"], "--num-val must be >= 1, got 0"),
    (["--min-length", "50", "--max-length", "20"], "need 0 <= --min-length < --max-length - 1, got 50 and 20"),
    (["--min-length", "0", "--max-length", "3", "--num-train", "20"], "only 10 distinct expressions"),
    (["--max-args", "1"], "need --max-depth >= 1 and --max-args >= 2"),
])
def test_cli_refuses_impossible_arguments_before_generating(tmp_path, capsys, monkeypatch, changes, message):
    monkeypatch.setattr(L, "generate_splits", lambda *a, **k: pytest.fail("generated first"))
    with pytest.raises(SystemExit) as e:
        L.main(["--out", str(tmp_path / "o"), *CLI_SMALL, *changes])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_keeps_files_it_did_not_write(tmp_path, capsys):
    official = tmp_path / "listops"
    official.mkdir()
    (official / "basic_train.tsv").write_text("Source\tTarget\n( [MAX 2 9 ] )\t9\n")
    with pytest.raises(SystemExit):
        L.main(["--out", str(official), *CLI_SMALL])
    assert "did not write (the official release?)" in capsys.readouterr().err
    assert L.main(["--out", str(official), *CLI_SMALL, "--force"]) == 0
    assert len(read_rows(official / "basic_train.tsv")) == 6
    assert L.main(["--out", str(official), *CLI_SMALL, "--seed", "2"]) == 0   # its own files: replaced
    assert sorted(p.name for p in official.iterdir()) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv",
                                                         "generator.json"]   # no staged file left
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit):
        L.main(["--out", str(tmp_path / "a_file" / "listops"), *CLI_SMALL])
    assert "a_file is a file, not a folder; choose another --out" in capsys.readouterr().err


def test_write_splits_keeps_the_old_set_when_interrupted(tmp_path, monkeypatch):
    old = L.generate_splits(3, 1, 1, min_length=5, max_length=30, seed=1)
    L.write_splits(tmp_path, old)
    new = L.generate_splits(3, 1, 1, min_length=5, max_length=30, seed=2)
    real = L.write_tsv
    calls = []

    def dies_on_the_third(path, rows):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, rows)

    monkeypatch.setattr(L, "write_tsv", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        L.write_splits(tmp_path, new)
    assert {s: read_rows(tmp_path / f"basic_{s}.tsv") for s in ("train", "val", "test")} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
