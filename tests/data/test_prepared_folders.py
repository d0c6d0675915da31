"""Damaged inputs of Text and Image: prepared folders (an array deleted, cut short or emptied, a broken manifest)
and archives (cut short, a flipped byte), also without the size and SHA-256 check: a ValueError that names the
file and what to do, never numpy's, json's, tarfile's or gzip's own error, and never a silently shorter dataset."""
import shutil

import pytest

from lra.data import _common as C
from lra.data import fixtures
from lra.data import image as I
from lra.data import text as T


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    T.prepare(fixtures.write_imdb_archive(root / "dl", num_per_class=3, num_unsup=1, seed=1), root / "data" / "text",
              verify=False)
    I.prepare(fixtures.write_cifar_archive(root / "dl", num_train=10, num_test=5, seed=2), root / "data" / "image",
              verify=False)
    return root / "data"


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "cut": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "header only": lambda p: p.write_bytes(p.read_bytes()[:128]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("module, file", [(T, "train.bytes.npy"), (T, "test.offsets.npy"), (I, "train.pixels.npy"),
                                          (I, "test.labels.npy"), (T, "manifest.json"), (I, "manifest.json")])
def test_a_damaged_prepared_file_is_named_with_the_command(prepared, tmp_path, module, file, damage):
    data_dir = tmp_path / "data"
    shutil.copytree(prepared, data_dir)
    task = module.TASK
    split = "train" if file.startswith("train") else "test"
    module.load(split, data_dir=data_dir)   # intact: loads
    path = data_dir / task / file
    DAMAGE[damage](path)
    if file == "manifest.json" and damage == "deleted":
        with pytest.raises(FileNotFoundError, match=f"lra.data.{task} prepare"):   # not prepared at all
            module.load(split, data_dir=data_dir)
        return
    with pytest.raises(ValueError) as e:
        module.load(split, data_dir=data_dir)
    assert str(path) in str(e.value) or f"{data_dir / task}:" in str(e.value)
    assert f"python -m lra.data.{task} prepare --data-dir {data_dir}" in str(e.value)


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]


@pytest.mark.parametrize("module, write", [(T, lambda d: fixtures.write_imdb_archive(d, num_per_class=3, num_unsup=1)),
                                           (I, lambda d: fixtures.write_cifar_archive(d, num_train=10, num_test=5))])
def test_a_cut_or_damaged_archive_is_refused_without_verify(tmp_path, module, write):
    good = write(tmp_path / "good").read_bytes()
    n = len(good)
    damaged = {f"cut at {k} of 8": good[: k * n // 8] for k in range(1, 8)}
    damaged |= {"cut before the trailer": good[:-8], "3 bytes": good[:3], "CRC": _flip(good, n - 6),
                "length": _flip(good, n - 2), "middle": _flip(good, n // 2), "near the end": _flip(good, n - 40)}
    for name, data in damaged.items():
        archive = tmp_path / name / module.ARCHIVE
        archive.parent.mkdir()
        archive.write_bytes(data)
        with pytest.raises(ValueError, match=str(archive)):
            module.prepare(archive, tmp_path / name / "out", verify=False)
        assert not (tmp_path / name / "out" / "manifest.json").exists(), name
    archive = tmp_path / "intact" / module.ARCHIVE
    archive.parent.mkdir()
    archive.write_bytes(good)
    assert (module.prepare(archive, tmp_path / "intact" / "out", verify=False) / "manifest.json").is_file()


@pytest.mark.parametrize("module, write", [(T, lambda d: fixtures.write_imdb_archive(d, num_per_class=3, num_unsup=1)),
                                           (I, lambda d: fixtures.write_cifar_archive(d, num_train=10, num_test=5))])
def test_a_bad_download_is_never_reused(tmp_path, monkeypatch, module, write, caplog):
    # The "official" archive is a fixture served from a file:// URL, with its own size and SHA-256.
    good = write(tmp_path / "server")
    monkeypatch.setattr(module, "URL", good.as_uri())
    monkeypatch.setattr(module, "ARCHIVE_SIZE", good.stat().st_size)
    monkeypatch.setattr(module, "ARCHIVE_SHA256", C.sha256_file(good))
    data_dir = tmp_path / "data"
    earlier = data_dir / module.TASK / "source" / module.ARCHIVE
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(good.read_bytes()[:1000])            # an interrupted earlier download
    module.fetch_and_prepare(data_dir)                       # deleted, downloaded again, prepared
    assert "Deleting this earlier download" in caplog.text
    assert earlier.read_bytes() == good.read_bytes() and module.load("test", data_dir=data_dir)["targets"].size
    # A new download that fails the check is deleted, and the error says so.
    earlier.unlink()
    other = tmp_path / "other" / module.ARCHIVE
    other.parent.mkdir()
    other.write_bytes(good.read_bytes()[:-1] + b"x")
    monkeypatch.setattr(module, "URL", other.as_uri())
    with pytest.raises(ValueError, match="This download from .* was deleted; run the command again"):
        module.fetch_and_prepare(data_dir)
    assert not earlier.exists()
    # An empty answer is never kept, with or without the check.
    empty = tmp_path / "empty" / module.ARCHIVE
    empty.parent.mkdir()
    empty.write_bytes(b"")
    monkeypatch.setattr(module, "URL", empty.as_uri())
    with pytest.raises(ConnectionError, match=r"sent nothing \(0 bytes\)"):
        module.fetch_and_prepare(data_dir, verify=False)
    assert not earlier.exists()


@pytest.mark.parametrize("module, write", [(T, lambda d: fixtures.write_imdb_archive(d, num_per_class=3, num_unsup=1)),
                                           (I, lambda d: fixtures.write_cifar_archive(d, num_train=10, num_test=5))])
def test_a_download_is_hashed_once_and_its_checksum_recorded(tmp_path, monkeypatch, module, write):
    good = write(tmp_path / "server")
    sha = C.sha256_file(good)
    monkeypatch.setattr(module, "URL", good.as_uri())
    monkeypatch.setattr(module, "ARCHIVE_SIZE", good.stat().st_size)
    monkeypatch.setattr(module, "ARCHIVE_SHA256", sha)
    hashed = []
    real = C.sha256_file
    monkeypatch.setattr(C, "sha256_file", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    data_dir = tmp_path / "data"
    out = module.fetch_and_prepare(data_dir)                 # downloaded, checked once, prepared
    assert len(hashed) == 1 and C.read_manifest(out)["archive_sha256"] == sha
    hashed.clear()
    module.fetch_and_prepare(data_dir)                       # the earlier download: checked once again
    assert len(hashed) == 1
    hashed.clear()
    out = module.fetch_and_prepare(data_dir, verify=False)   # no check, no checksum claimed
    assert hashed == [] and C.read_manifest(out)["archive_sha256"] is None
    hashed.clear()
    module.fetch_and_prepare(data_dir, manual_dir=good.parent)   # a file the user gives: checked by prepare
    assert hashed == [good]


@pytest.mark.parametrize("module", [T, I])
def test_an_unwritable_data_dir_is_refused_before_reading_the_archive(tmp_path, monkeypatch, capsys, module):
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    monkeypatch.setattr(module, "read_archive", lambda *a: pytest.fail("read the archive first"))
    assert module.main(["prepare", "--manual-dir", str(tmp_path), "--data-dir", str(not_a_folder)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write into {not_a_folder / module.TASK}: {not_a_folder} is a file" in err
    assert "choose another --data-dir" in err
    # Not writable (what a read-only file system answers too), checked without creating anything.
    monkeypatch.setattr(C.os, "access", lambda path, mode: False)
    assert module.main(["prepare", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path / "new" / "d")]) == 1
    assert f"{tmp_path} is not writable" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_suggested_commands_quote_a_data_dir_with_spaces(tmp_path):
    from lra import data

    data_dir = tmp_path / "my data"
    for task in ("text", "image", "retrieval", "pathfinder", "listops"):
        with pytest.raises(FileNotFoundError) as e:
            data.check_available(task, data_dir=data_dir,
                                 **({"generate": None} if task in ("listops", "pathfinder") else {}))
        assert f"'{data_dir}" in str(e.value), task
