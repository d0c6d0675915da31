"""Tests of the synthetic fixture writers, the smoke-data mechanism and scripts/get_lra_data.sh (on a fake
lra_release.gz built here)."""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lra.data import fixtures
from lra.data import image as I
from lra.data import retrieval as R
from lra.data import text as T

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "get_lra_data.sh"


# --------------------------------------------------------------------------- writers


def test_archives_are_deterministic(tmp_path):
    a = fixtures.write_imdb_archive(tmp_path / "a", num_per_class=3, seed=4).read_bytes()
    b = fixtures.write_imdb_archive(tmp_path / "b", num_per_class=3, seed=4).read_bytes()
    c = fixtures.write_imdb_archive(tmp_path / "c", num_per_class=3, seed=5).read_bytes()
    assert a == b and a != c
    x = fixtures.write_cifar_archive(tmp_path / "a", num_train=10, num_test=2, seed=1).read_bytes()
    y = fixtures.write_cifar_archive(tmp_path / "b", num_train=10, num_test=2, seed=1).read_bytes()
    assert x == y
    fixtures.write_aan_tsvs(tmp_path / "a", num_train=4, num_eval=2, num_test=2, seed=3)
    fixtures.write_aan_tsvs(tmp_path / "b", num_train=4, num_eval=2, num_test=2, seed=3)
    for name in R.FILES.values():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_imdb_archive_layout(tmp_path):
    path = fixtures.write_imdb_archive(tmp_path, num_per_class=4, num_unsup=3, seed=0)
    assert path == tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(path, "r:gz") as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            files = [n for n in names if n.startswith(f"aclImdb/{split}/{label}/")]
            assert len(files) == 4
            ratings = [int(Path(f).stem.split("_")[1]) for f in files]
            assert all(r >= 7 for r in ratings) if label == "pos" else all(r <= 4 for r in ratings)
    assert len([n for n in names if n.startswith("aclImdb/train/unsup/")]) == 3
    assert "aclImdb/README" in names and "aclImdb/train/urls_pos.txt" in names


def test_imdb_content_is_learnable_but_mixed(tmp_path):
    fixtures.write_imdb_archive(tmp_path, num_per_class=30, seed=0)
    reviews = T.read_archive(tmp_path / "aclImdb_v1.tar.gz")["train"]
    pos_words = [sum(t.decode().lower().count(w) for w in fixtures._POSITIVE) for t in reviews[0]]
    neg_words = [sum(t.decode().lower().count(w) for w in fixtures._NEGATIVE) for t in reviews[0]]
    labels = np.asarray(reviews[1])
    margin = np.asarray(pos_words) - np.asarray(neg_words)
    assert margin[labels == 1].mean() > margin[labels == 0].mean() + 1  # informative
    assert (np.asarray(neg_words)[labels == 1] > 0).mean() > 0.2  # positive reviews also use negative words
    assert any(b"\xc3\xa9" in t for t in reviews[0])  # multi-byte UTF-8 characters occur


def test_aan_tsvs_format(tmp_path):
    fixtures.write_aan_tsvs(tmp_path, num_train=20, num_eval=6, num_test=6, seed=0)
    labels = set()
    for name, n in (("train", 20), ("eval", 6), ("test", 6)):
        lines = (tmp_path / f"new_aan_pairs.{name}.tsv").read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            cols = line.split("\t")
            assert len(cols) == 5 and cols[3] and cols[4]
            labels.add(cols[0])
    assert labels == {"0", "1", "0.0", "1.0"}  # both label spellings the loader must read


def test_aan_pairs_share_topic_words_when_cited(tmp_path):
    fixtures.write_aan_tsvs(tmp_path, num_train=40, num_eval=2, num_test=2, seed=0)
    shared = {0: [], 1: []}
    for line in (tmp_path / "new_aan_pairs.train.tsv").read_text().splitlines():
        label, _, _, a, b = line.split("\t")
        rare = (set(a.split()) & set(b.split())) - set(fixtures._FILLER)
        shared[int(float(label))].append(len(rare))
    assert min(shared[1]) >= 3 and max(shared[0]) <= 2 and max(shared[0]) > 0


def test_cifar_archive_layout_and_classes(tmp_path):
    path = fixtures.write_cifar_archive(tmp_path, num_train=23, num_test=7, seed=0)
    with tarfile.open(path, "r:gz") as tar:
        sizes = {m.name: m.size for m in tar.getmembers() if m.name.endswith(".bin")}
    assert [sizes[f"cifar-10-batches-bin/data_batch_{i}.bin"] // 3073 for i in range(1, 6)] == [5, 5, 5, 4, 4]
    assert sizes["cifar-10-batches-bin/test_batch.bin"] == 7 * 3073
    fixtures.write_cifar_archive(tmp_path / "big", num_train=200, num_test=10, seed=0)
    pixels, labels = I.read_archive(tmp_path / "big" / "cifar-10-binary.tar.gz")["train"]
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10
    # Class-dependent patterns: each class's mean image differs from every other class's.
    means = np.stack([pixels[labels == c].astype(float).mean(0) for c in range(10)])
    dist = np.sqrt(((means[:, None] - means[None]) ** 2).mean(-1))
    assert dist[~np.eye(10, dtype=bool)].min() > 5


# --------------------------------------------------------------------------- smoke data


def test_ensure_smoke_layout_and_idempotence(tmp_path):
    for task in fixtures.TASKS:
        folder = fixtures.ensure_smoke(task, tmp_path)
        assert folder == tmp_path / task / "smoke"
    assert (tmp_path / "text" / "smoke" / "manifest.json").is_file()
    assert (tmp_path / "image" / "smoke" / "source" / "cifar-10-binary.tar.gz").is_file()
    assert (tmp_path / "retrieval" / "smoke" / "new_aan_pairs.eval.tsv").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    for task in fixtures.TASKS:
        fixtures.ensure_smoke(task, tmp_path)
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="no smoke data"):
        fixtures.ensure_smoke("listops", tmp_path)


def test_ensure_smoke_repairs_a_partial_folder(tmp_path):
    fixtures.ensure_smoke("retrieval", tmp_path)
    (tmp_path / "retrieval" / "smoke" / "new_aan_pairs.test.tsv").unlink()
    fixtures.ensure_smoke("text", tmp_path)
    (tmp_path / "text" / "smoke" / "manifest.json").unlink()  # e.g. an interrupted preparation
    assert len(R.load("test", data_dir=tmp_path, max_length=8, source="smoke")["targets"]) == 40
    assert len(T.load("test", data_dir=tmp_path, max_length=8, source="smoke")["targets"]) == 80


def test_concurrent_smoke_preparation(tmp_path, subprocess_env):
    code = ("import sys; from lra.data import fixtures, text; fixtures.ensure_smoke('text', sys.argv[1]); "
            "print(len(text.load('train', data_dir=sys.argv[1], max_length=8, source='smoke')['targets']))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env, cwd=REPO) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0] and outs == ["80"] * 3
    assert sorted(p.name for p in (tmp_path / "text").iterdir()) == ["smoke"]  # no temporary folder left


def test_fixtures_cli(tmp_path, capsys):
    assert fixtures.main(["smoke", "--task", "image", "--data-dir", str(tmp_path)]) == 0
    assert "image:" in capsys.readouterr().out
    assert (tmp_path / "image" / "smoke" / "manifest.json").is_file()
    assert not (tmp_path / "text").exists()


# --------------------------------------------------------------------------- scripts/get_lra_data.sh

needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "tar", "gzip", "od")),
                                 reason="needs bash, tar, gzip and od")
LISTOPS = "Source\tTarget\n( [MAX 2 9 ] )\t9\n"
PAIRS = "1.0\tP1\tP2\tab\tcd\n"


def fake_release(path: Path, drop=(), nested=True):
    """A tiny lra_release.gz (gzipped tar) with the release layout, leaving out members named in ``drop``."""
    root = "lra_release/lra_release/" if nested else "lra_release/"
    files = {}
    for s in ("train", "val", "test"):
        files[f"listops-1000/basic_{s}.tsv"] = LISTOPS
    files["listops-1000/README"] = "not needed"
    for s in ("train", "eval", "test"):
        files[f"tsv_data/new_aan_pairs.{s}.tsv"] = PAIRS
    files["tsv_data/other_pairs.tsv"] = "not needed"
    for n in (32, 64, 128, 256):
        for d in ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14"):
            files[f"pathfinder{n}/{d}/imgs/0/sample_0.png"] = "png"
            files[f"pathfinder{n}/{d}/metadata/0.npy"] = "imgs/0 sample_0.png 0 1\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            if any(name.startswith(p) for p in drop):
                continue
            data = content.encode()
            info = tarfile.TarInfo(root + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def run_script(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "LRA_DATA"}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


@needs_tools
def test_script_lays_out_the_release(tmp_path):
    archive = fake_release(tmp_path / "lra_release.gz")
    data = tmp_path / "data"
    r = run_script("--archive", archive, "--data-dir", data, "--checksums", tmp_path / "none.sha256")
    assert r.returncode == 0, r.stderr
    for s in ("train", "val", "test"):
        assert (data / "listops" / f"basic_{s}.tsv").read_text() == LISTOPS
    for s in ("train", "eval", "test"):
        assert (data / "retrieval" / f"new_aan_pairs.{s}.tsv").read_text() == PAIRS
    for n in (32, 64, 128, 256):
        assert (data / f"pathfinder{n}" / "curv_contour_length_14" / "metadata" / "0.npy").is_file()
        assert (data / f"pathfinder{n}" / "curv_baseline" / "imgs" / "0" / "sample_0.png").is_file()
    assert not (data / "listops" / "README").exists() and not (data / "retrieval" / "other_pairs.tsv").exists()
    assert sorted(p.name for p in data.iterdir()) == ["listops", "pathfinder128", "pathfinder256", "pathfinder32",
                                                      "pathfinder64", "retrieval"]  # no staging folder left
    assert "unchecked" in r.stdout
    # The loaders read what the script laid out.
    assert R.load("val", data_dir=data, max_length=4)["inputs1"].tolist() == [[98, 99, 0, 0]]
    # A second run replaces the files in place.
    assert run_script("--archive", archive, "--data-dir", data, "--only", "pathfinder32").returncode == 0


@needs_tools
def test_script_only_and_flat_prefix(tmp_path):
    archive = fake_release(tmp_path / "lra_release.gz", nested=False)
    r = run_script("--archive", archive, "--data-dir", tmp_path / "d", "--only", "retrieval")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["retrieval"]
    r = run_script("--archive", archive, "--data-dir", tmp_path / "d", "--only", "retrieval,imdb")
    assert r.returncode == 1 and "unknown task 'imdb'" in r.stderr


@needs_tools
def test_script_checksums(tmp_path):
    archive = fake_release(tmp_path / "lra_release.gz")
    good = hashlib.sha256(LISTOPS.encode()).hexdigest()
    wrong = "0" * 64
    sums = tmp_path / "sums.sha256"
    sums.write_text(f"# comment\n{good}  listops/basic_train.tsv\n{wrong}  retrieval/new_aan_pairs.eval.tsv\n")
    data = tmp_path / "data"
    r = run_script("--archive", archive, "--data-dir", data, "--only", "listops,retrieval", "--checksums", sums)
    assert r.returncode != 0
    found = hashlib.sha256(PAIRS.encode()).hexdigest()
    assert f"checksum mismatch: retrieval/new_aan_pairs.eval.tsv\n  expected {wrong}\n  found    {found}" in r.stderr
    assert not (data / "listops").exists() and not (data / "retrieval").exists()  # nothing laid out
    sums.write_text(f"{good}  listops/basic_train.tsv\n{wrong}  pathfinder32/curv_baseline/metadata/0.npy\n")
    r = run_script("--archive", archive, "--data-dir", data, "--only", "listops", "--checksums", sums)
    assert r.returncode == 0, r.stderr  # the pathfinder entry belongs to a task that was not selected
    assert f"{data}/listops/basic_train.tsv (sha256 ok)" in r.stdout
    assert f"{data}/listops/basic_val.tsv (unchecked: no checksum recorded)" in r.stdout
    # CRLF line ends, "./" paths, upper-case digits and no final newline are read as sha256sum reads them.
    sums.write_bytes(f"{good.upper()}  ./listops/basic_train.tsv\r\n{wrong}  retrieval/new_aan_pairs.eval.tsv"
                     .encode())
    r = run_script("--archive", archive, "--data-dir", data, "--only", "listops,retrieval", "--checksums", sums)
    assert r.returncode != 0 and "checksum mismatch: retrieval/new_aan_pairs.eval.tsv" in r.stderr
    sums.write_bytes(f"{good.upper()}  ./listops/basic_train.tsv\r\n".encode())
    r = run_script("--archive", archive, "--data-dir", data, "--only", "listops", "--checksums", sums)
    assert r.returncode == 0 and f"{data}/listops/basic_train.tsv (sha256 ok)" in r.stdout
    # A line that cannot be used is reported, never skipped in silence.
    for line, why in ((f"{good[:-1]}  listops/basic_train.tsv", "line 1: not '<sha256>  <path>'"),
                      (f"{good}  listops/basic_train.tsv.bak", "line 1: listops/basic_train.tsv.bak is not a file")):
        sums.write_text(line + "\n")
        r = run_script("--archive", archive, "--data-dir", data, "--only", "listops", "--checksums", sums)
        assert r.returncode != 0 and why in r.stderr, r.stderr


@needs_tools
def test_script_names_missing_members(tmp_path):
    archive = fake_release(tmp_path / "lra_release.gz",
                           drop=("tsv_data/new_aan_pairs.eval.tsv", "pathfinder64/curv_contour_length_9/"))
    r = run_script("--archive", archive, "--data-dir", tmp_path / "data")
    assert r.returncode == 1
    assert "lra_release/.../tsv_data/new_aan_pairs.eval.tsv" in r.stderr
    assert "lra_release/.../pathfinder64/curv_contour_length_9/metadata/" in r.stderr
    assert "new_aan_pairs.train.tsv" not in r.stderr
    assert not (tmp_path / "data" / "listops").exists()


@needs_tools
def test_script_rejects_bad_archives(tmp_path):
    page = tmp_path / "page.gz"
    page.write_text("<html>403 Forbidden</html>")
    r = run_script("--archive", page, "--data-dir", tmp_path / "data")
    assert r.returncode == 1 and "is not a gzip file" in r.stderr
    whole = fake_release(tmp_path / "lra_release.gz").read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    r = run_script("--archive", cut, "--data-dir", tmp_path / "data", "--only", "listops")
    assert r.returncode == 1 and "gzip integrity check failed" in r.stderr
    r = run_script("--archive", tmp_path / "lra_release.gz", "--data-dir", tmp_path / "data", "--only", "listops",
                   env_extra={"LRA_RELEASE_SIZE": "123"})
    assert r.returncode == 1 and "expected 123" in r.stderr
    r = run_script("--archive", tmp_path / "absent.gz", "--data-dir", tmp_path / "data")
    assert r.returncode == 1 and "archive not found" in r.stderr
    (tmp_path / "a_file").write_text("")
    r = run_script("--archive", tmp_path / "lra_release.gz", "--data-dir", tmp_path / "a_file")
    assert r.returncode == 1 and "--data-dir" in r.stderr and "is a file, not a folder" in r.stderr
    # The script's own earlier download is reused by every run: a bad one must be named for deletion.
    own = tmp_path / "data" / "downloads" / "lra_release.gz"
    own.parent.mkdir(parents=True)
    own.write_bytes(whole[: len(whole) // 2])
    r = run_script("--data-dir", tmp_path / "data", "--only", "listops")
    assert r.returncode == 1 and "using the previously downloaded" in r.stdout
    assert f"gzip integrity check failed for {own}" in r.stderr and f"Delete it (rm '{own}')" in r.stderr


@needs_tools
@pytest.mark.skipif(not (shutil.which("curl") or shutil.which("wget")), reason="needs curl or wget")
def test_script_offline_names_the_manual_route(tmp_path):
    r = run_script("--data-dir", tmp_path / "data", "--only", "listops",
                   env_extra={"LRA_RELEASE_URL": "http://127.0.0.1:9/lra_release.gz"})  # nothing listens there
    assert r.returncode == 1
    assert f"--archive PATH/lra_release.gz --data-dir {tmp_path / 'data'}" in r.stderr
    # The suggested command can be pasted: a folder with a space in its name comes quoted.
    r = run_script("--data-dir", tmp_path / "my data", "--only", "listops",
                   env_extra={"LRA_RELEASE_URL": "http://127.0.0.1:9/lra_release.gz"})
    assert r.returncode == 1 and f"--data-dir {tmp_path}/my\\ data" in r.stderr, r.stderr


def test_script_has_no_machine_paths():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert str(REPO) not in text and str(Path.home()) not in text
    assert os.access(SCRIPT, os.X_OK)
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--archive PATH" in r.stdout and "set -euo" not in r.stdout
