"""The data as LRA got it through TensorFlow and tensorflow-datasets: Text and Image built by tfds, the Text and
Retrieval tokens of tfds's ByteTextEncoder, Retrieval rows read by make_csv_dataset, the Image grayscale of
tf.image.rgb_to_grayscale, the Pathfinder splits of a tfds build made like LRA's.

The archive route (no TensorFlow) must store CIFAR-10 in tfds's order, so that ``train[:90%]`` holds the same
45,000 images as LRA's. ``GOLDEN`` was produced by tensorflow-datasets 4.9.10 itself (``cifar10`` 3.0.2, built
with ``python -m lra.data.image prepare --via tfds`` from a 50,000 + 10,000 image fixture archive, ids read from
tfds's ``id`` feature in stored order); the order depends only on the number of images, not their content.

The tests marked ``tfds`` build with the real library; they run where ``pip install -e '.[tfds]'`` was done and
are skipped elsewhere (CI does not install TensorFlow). The golden test below covers the order without it.
"""

import hashlib
import importlib.util
import shutil

import numpy as np
import pytest

from lra.data import _common as C
from lra.data import fixtures, tfds_prep
from lra.data import image as I
from lra.data import retrieval as R
from lra.data import text as T

GOLDEN = {
    "train": {"num": 50000, "first": [16399, 1680, 47917, 17307, 27051, 48736, 26263, 1456, 19135, 31598, 12970,
                                      4223, 27152, 49635, 4093, 17537],
              "sha256_int64": "b949abd3aa324e792be6dffe93e667040aa65a8c8870c2fe7e6cc9753238797a"},
    "test": {"num": 10000, "first": [9933, 5669, 163, 6686, 4747, 131, 9167, 1579, 6174, 8443, 5209, 8055, 6316,
                                     7799, 8932, 6737],
             "sha256_int64": "c6b47c13d8c5cce5af5f90b3ff16ddcdc1a1f3372702a5428ea317f961b964f0"},
    "train[:90%]": 45000,
}

HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None
needs_tfds = pytest.mark.skipif(not HAVE_TFDS, reason="tensorflow-datasets not installed (pip install -e '.[tfds]')")


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_order_is_tfds_order(split):
    g = GOLDEN[split]
    order = I.tfds_order(g["num"], split)
    assert order[: len(g["first"])].tolist() == g["first"]
    assert hashlib.sha256(order.astype(np.int64).tobytes()).hexdigest() == g["sha256_int64"]


def test_split_point_is_tfds_slice():
    assert I.split_point(GOLDEN["train"]["num"]) == GOLDEN["train[:90%]"]


def test_via_tfds_without_tfds_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)  # import fails
    archive = fixtures.write_cifar_archive(tmp_path / "dl", num_train=10, num_test=5)
    rc = I.main(["prepare", "--via", "tfds", "--manual-dir", str(archive.parent), "--data-dir", str(tmp_path / "d")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "pip install -e '.[tfds]'" in err and "--via archive" in err
    assert not (tmp_path / "d" / "image").exists()


def test_via_tfds_manual_file_must_have_the_official_name(tmp_path):
    archive = fixtures.write_cifar_archive(tmp_path / "dl", num_train=10, num_test=5)
    renamed = archive.rename(tmp_path / "dl" / "cifar.tgz")
    with pytest.raises(ValueError, match="rename it to cifar-10-binary.tar.gz"):
        tfds_prep.prepare("image", tmp_path / "d", manual_dir=renamed)


@pytest.mark.slow
@needs_tfds
def test_image_via_tfds_equals_archive_route(tmp_path):
    archive = fixtures.write_cifar_archive(tmp_path / "dl", num_train=23, num_test=7, seed=3)
    out = tfds_prep.prepare("image", tmp_path / "tfds_route", manual_dir=archive.parent, verify=False)
    I.prepare(archive, tmp_path / "archive_route" / "image", verify=False)
    assert I.load("train", data_dir=tmp_path / "tfds_route")["inputs"].shape == (21, 1024)
    assert (tmp_path / "tfds_route" / "tfds" / "cifar10").is_dir()  # tfds's array_record build
    assert list((tmp_path / "tfds_route" / "tfds").rglob("*.array_record*"))
    for split in ("train", "test"):
        for name in ("pixels", "labels", "ids"):
            a = np.load(out / f"{split}.{name}.npy")
            b = np.load(tmp_path / "archive_route" / "image" / f"{split}.{name}.npy")
            np.testing.assert_array_equal(a, b, err_msg=f"{split}.{name}")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed")
def test_gray_is_tensorflows_on_every_colour():
    import tensorflow as tf

    from tests.data.test_image import TF_GRAY_ALL_COLOURS_SHA256, all_colours

    rgb = all_colours()
    want = tf.image.rgb_to_grayscale(tf.constant(rgb.reshape(4096, 4096, 3))).numpy().reshape(-1)
    np.testing.assert_array_equal(I.rgb_to_gray(rgb), want)
    assert hashlib.sha256(want.tobytes()).hexdigest() == TF_GRAY_ALL_COLOURS_SHA256


@pytest.mark.slow
@needs_tfds
def test_text_and_retrieval_tokens_are_lras_byte_encoder():
    # LRA's text_classification and matching input pipelines: ByteTextEncoder().encode(bytes)[:max_length].
    import tensorflow_datasets as tfds

    encoder = tfds.deprecated.text.ByteTextEncoder()
    assert encoder.vocab_size == T.VOCAB_SIZE
    rng = np.random.default_rng(0)
    samples = [bytes(range(256)), "Un film très réussi<br /><br />10/10 \u2605".encode(), b""]
    samples += [rng.integers(0, 256, size=int(n)).astype(np.uint8).tobytes() for n in rng.integers(1, 1500, 20)]
    for raw in samples:
        for tokenize, max_length in ((T.tokenize, 1000), (R.tokenize, 4000), (R.tokenize, 100)):
            ids, length = tokenize(raw, max_length)
            want = encoder.encode(raw)[:max_length]
            assert ids[:length].tolist() == want and length == len(want)
            assert ids.shape == (max_length,) and not ids[length:].any()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed")
def test_retrieval_rows_are_what_lras_tsv_reader_gets(tmp_path):
    # LRA's matching/input_pipeline.py reads the release TSVs with tf.data.experimental.make_csv_dataset (tab
    # separated, no quoting, no header, label as float32) and encodes text[:10000][:max_length]. Quotes,
    # backslashes, commas, non-ASCII, float labels, CRLF line ends and documents longer than 4000 bytes.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pool = list("abc \"'\\,;é€") + ["  ", '""', "\\t"]
    rows = ["\t".join([["0", "1", "1.0", "0.0"][i % 4], f"id{i}", f"id{i + 1}",
                       "".join(rng.choice(pool, int(rng.integers(1, 5000)))),
                       "".join(rng.choice(pool, int(rng.integers(1, 300))))]) for i in range(40)]
    rows[3] = '1\tx\ty\t"a quoted start\tan end quote"'
    path = tmp_path / "new_aan_pairs.test.tsv"
    path.write_bytes(("\n".join(rows[:20]) + "\n" + "\r\n".join(rows[20:]) + "\r\n").encode())
    columns = ["label", "id1", "id2", "text1", "text2"]
    dataset = tf.data.experimental.make_csv_dataset(
        [str(path)], 8, column_names=columns, column_defaults=[tf.float32] + [tf.string] * 4,
        use_quote_delim=False, field_delim="\t", header=False, shuffle=False, num_epochs=1)
    lra = list(dataset.unbatch().as_numpy_iterator())
    ours = R.read_tsv(path, 4000)
    assert len(lra) == len(ours["targets"]) == 40
    for i, row in enumerate(lra):
        assert ours["targets"][i] == int(row["label"])
        for side in ("1", "2"):
            got = ours["bytes" + side][i, : ours["lengths" + side][i]].tobytes()
            assert got == row["text" + side][:10000][:4000], (i, side)


@pytest.mark.slow
@needs_tfds
def test_text_via_tfds_has_the_archive_routes_reviews(tmp_path):
    archive = fixtures.write_imdb_archive(tmp_path / "dl", num_per_class=5, num_unsup=3, seed=1)
    tfds_prep.prepare("text", tmp_path / "tfds_route", manual_dir=archive.parent, verify=False)
    T.prepare(archive, tmp_path / "archive_route" / "text", verify=False)
    for split in ("train", "test"):
        a = T.load(split, data_dir=tmp_path / "tfds_route", max_length=4000)
        b = T.load(split, data_dir=tmp_path / "archive_route", max_length=4000)
        assert len(a["targets"]) == len(b["targets"]) == 10
        rows = lambda d: sorted(map(tuple, np.c_[d["inputs"], d["targets"], d["lengths"]].tolist()))  # noqa: E731
        assert rows(a) == rows(b)


@pytest.mark.slow
@needs_tfds
def test_pathfinder_splits_are_those_of_a_tfds_build_like_lras(tmp_path):
    """A tfds builder made like LRA's (lra_benchmarks/data/pathfinder.py: one tfds split per difficulty, the key
    ``<col 0>_<col 1>_<line number in its metadata file>``, the image stored from its path), read as LRA's
    input pipeline reads it (``hard[:80%]`` etc., undecoded, empty images filtered out, then decode_png): the
    same images and labels in each split as our loader, with an empty PNG among them as in the release."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from lra.data import pathfinder as PF

    folder = PF.release_dir(tmp_path / "data", 32, "hard")
    PF.generate_release(folder, 130, resolution=32, difficulty="hard", seed=1, per_folder=50)
    sorted((folder / "imgs" / "1").iterdir())[4].write_bytes(b"")

    class PathfinderLikeLra(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(), "label": tfds.features.ClassLabel(num_classes=2)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"hard": self._generate_examples()}

        def _generate_examples(self):
            for meta in tf.io.gfile.glob(str(folder / "metadata" / "*.npy")):
                lines = tf.io.read_file(meta).numpy().decode("utf-8").split("\n")[:-1]
                for number, line in enumerate(lines, start=1):
                    cols = line.split(" ")
                    yield f"{cols[0]}_{cols[1]}_{number}", {"image": str(folder / cols[0] / cols[1]),
                                                           "label": int(cols[3])}

    builder = PathfinderLikeLra(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    sizes = {}
    for split, tfds_split in (("train", "hard[:80%]"), ("val", "hard[80%:90%]"), ("test", "hard[90%:]")):
        ds = builder.as_dataset(split=tfds_split, decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.filter(lambda x: tf.strings.length(x["image"]) > 0)
        lra = sorted((tf.image.decode_png(x["image"]).numpy()[..., 0].tobytes(), int(x["label"])) for x in ds)
        ours = PF.load(split, data_dir=tmp_path / "data", resolution=32, difficulty="hard")
        assert lra == sorted((row.astype(np.uint8).tobytes(), int(t)) for row, t in zip(ours["inputs"],
                                                                                      ours["targets"])), split
        sizes[split] = len(lra)
    assert sum(sizes.values()) == 129 and sizes["val"] == sizes["test"] == 13   # one image empty


@pytest.mark.slow
@needs_tfds
def test_via_tfds_rebuilds_from_another_archive(tmp_path):
    """A tfds build is reused only when made from the same archive with at least the same checks: another archive
    (--no-verify), or a verified run after an unverified build, rebuilds, extraction included."""
    a = fixtures.write_imdb_archive(tmp_path / "a", num_per_class=3, num_unsup=1, seed=1)
    b = fixtures.write_imdb_archive(tmp_path / "b", num_per_class=5, num_unsup=1, seed=2)
    data = tmp_path / "d"
    for archive, n in ((a, 3), (b, 5), (b, 5)):
        out = tfds_prep.prepare("text", data, manual_dir=archive.parent, verify=False)
        assert len(T.load("train", data_dir=data)["targets"]) == 2 * n
    assert C.read_manifest(out)["source"] == {"archive_sha256": C.sha256_file(b), "verified": False}
    with pytest.raises(ValueError, match="could not build"):  # a fixture is not the official archive
        tfds_prep.prepare("text", data, manual_dir=b.parent)

    ca = fixtures.write_cifar_archive(tmp_path / "ca", num_train=12, num_test=4, seed=3)
    cb = fixtures.write_cifar_archive(tmp_path / "cb", num_train=20, num_test=6, seed=4)
    for archive, n in ((ca, 12), (cb, 20)):
        tfds_prep.prepare("image", data, manual_dir=archive.parent, verify=False)
        assert np.load(data / "image" / "train.ids.npy").size == n
    shutil.rmtree(data / "tfds" / "cifar10")  # tfds's extraction of cb stays under downloads/extracted
    tfds_prep.prepare("image", data, manual_dir=ca.parent, verify=False)
    assert np.load(data / "image" / "train.ids.npy").size == 12
