"""Damaged prepared folders of Text and Image (an array deleted, cut short or emptied, a broken manifest): a
ValueError that names the file and the command to run, never numpy's or json's own error."""
import shutil

import pytest

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
