"""scripts/pathfinder_probe.py: features that need no path tracing, symmetric in the two markers."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from lra.data import pathfinder as PF
from tests._scripts import load_script

probe = load_script("pathfinder_probe")


@pytest.fixture(scope="module")
def sample():
    return PF.generate(40, resolution=32, seed=(5, 1), return_markers=True)


def test_features_do_not_depend_on_the_markers_order(sample):
    images, _, markers = sample
    one, other = probe.features(images, markers), probe.features(images, markers[:, ::-1])
    assert list(one) == ["ink and histogram", "marker geometry", "exit directions and distance",
                         "ink around the markers", "ink along the segment", "markers' frame"]
    for name in one:
        assert one[name].shape[0] == 40 and np.isfinite(one[name]).all()
        np.testing.assert_allclose(one[name], other[name], rtol=1e-9, atol=1e-9, err_msg=name)


def test_features_see_a_planted_cue(sample):
    """Ink set 3 px from each marker towards the other one raises the first sector of the ring 2.5-4 px and
    the exit cosines; elsewhere nothing moves that much."""
    images, _, markers = sample
    towards = (markers[:, ::-1] - markers) / np.hypot(*(markers[:, 1] - markers[:, 0]).T)[:, None, None]
    planted = images.copy()
    for i, points in enumerate(np.rint(markers + 3.0 * towards).astype(int)):
        for x, y in points:
            planted[i, y, x] = 255
    before, after = probe.features(images, markers), probe.features(planted, markers)
    first_sector = after["ink around the markers"][:, 0] - before["ink around the markers"][:, 0]
    assert (first_sector > 0.5).mean() > 0.9, first_sector
    exits = after["exit directions and distance"][:, 2] - before["exit directions and distance"][:, 2]
    assert exits.mean() > 0.1, exits


def test_sample_reads_bilinearly():
    image = np.arange(16, dtype=np.float64).reshape(1, 4, 4)   # value = 4 * row + column
    x, y = np.array([[0.5, 2.25, 3.5]]), np.array([[1.0, 0.5, 0.0]])
    np.testing.assert_allclose(probe._sample(image, x, y), [[4.5, 4.25, 3.0 * 0.5]])   # (3.5, 0): half outside


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is not None, reason="scikit-learn is installed here")
def test_without_scikit_learn_it_names_the_extra(capsys, tmp_path):
    assert probe.main(["--num", "100", "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "pip install -e '.[probe]'" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_bad_options_are_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        probe.parse_args(["--num", "10"])
    if importlib.util.find_spec("sklearn") is not None:
        assert probe.main(["--num", "100", "--difficulty", "extreme", "--out", ""]) == 2
        assert "difficulty" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="needs scikit-learn (pip install -e '.[probe]')")
def test_a_small_probe_run_appends_its_record(tmp_path):
    out = tmp_path / "probe.jsonl"
    assert probe.main(["--num", "200", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "pathfinder_probe" and record["generator_version"] == PF.GENERATOR_VERSION
    assert set(record["accuracy"]) == {"ink and histogram", "marker geometry", "exit directions and distance",
                                       "ink around the markers", "ink along the segment", "markers' frame", "all"}
    assert all(0.0 <= acc <= 1.0 for acc in record["accuracy"].values())
