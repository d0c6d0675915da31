"""scripts/pathfinder_control.py: the CNN control for Pathfinder data (tiny data and step counts only)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from lra.data import pathfinder as PF
from tests._scripts import load_script

control = load_script("pathfinder_control")


def test_quick_run_on_generated_data_appends_a_record(tmp_path, capsys):
    out = tmp_path / "control.jsonl"
    assert control.main(["--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert record["kind"] == "pathfinder_control"
    assert record["sizes"] == {"train": 160, "val": 20, "test": 20}  # 80/10/10 of --quick's 200 images
    assert [step for step, _ in record["val_curve"]] == [10, 20]
    assert record["best_val_accuracy"] == max(acc for _, acc in record["val_curve"])
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert record["device"].startswith("cpu: ")
    assert "test accuracy" in capsys.readouterr().out


def _write_release(folder: Path, num: int, rng: np.random.Generator) -> None:
    """A release-layout folder whose label is visible locally: label 1 = one 4x4 block of ink, label 0 = the
    same 16 ink pixels scattered (same amount of ink, so only the arrangement tells)."""
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "metadata").mkdir()
    lines = []
    for i in range(num):
        label = i % 2
        image = np.zeros((32, 32), np.uint8)
        if label:
            r, c = rng.integers(0, 28, 2)
            image[r:r + 4, c:c + 4] = 255
        else:
            image.reshape(-1)[rng.choice(32 * 32, 16, replace=False)] = 255
        (folder / "imgs" / "0" / f"sample_{i}.png").write_bytes(PF.encode_png(image))
        lines.append(f"imgs/0 sample_{i}.png {i} {label}\n")
    (folder / "metadata" / "0.npy").write_text("".join(lines))


def test_learns_a_release_whose_label_is_in_the_image(tmp_path):
    """What the control is for: when the images carry their label, it learns it (read through the task's
    loader, with its split), so a control at chance points at the data."""
    _write_release(PF.release_dir(tmp_path, 32, "hard"), 200, np.random.default_rng(0))
    out = tmp_path / "control.jsonl"
    argv = ["--quick", "--num", "0", "--data-dir", str(tmp_path), "--steps", "150", "--eval-every", "50",
            "--out", str(out)]
    assert control.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["data"] == "release folder"
    assert record["test_accuracy"] >= 0.9, record


def test_missing_release_exits_2_fast_and_names_the_command(tmp_path, capsys):
    out = tmp_path / "control.jsonl"
    t0 = time.monotonic()
    assert control.main(["--num", "0", "--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert time.monotonic() - t0 < 1.0
    assert "python -m lra.data.pathfinder --out" in capsys.readouterr().err
    assert not out.exists()


def test_dilated_network_sees_a_whole_path():
    """--dilated: the output at a pixel depends on ink 30 px away (a path of 14 paddles spans about 38 px);
    the plain six layers see 13 px."""
    import jax
    import jax.numpy as jnp

    assert control.receptive_field(6, False) == 13 and control.receptive_field(8, True) == 61
    for dilated, layers, far_sees in ((False, 6, False), (True, 8, True)):
        args = control.parse_args(["--layers", str(layers), "--channels", "4"] + (["--dilated"] if dilated else []))
        model, *_ = control.build(args)
        x = jnp.zeros((1, 32, 32, 1))

        def corner(x, model=model):   # the features at pixel (0, 0), before the pool
            for i, conv in enumerate(model.convs):
                y = jax.nn.relu(conv(x))
                x = x + y if model.dilated and i > 0 else y
            return x[0, 0, 0].sum()

        grad = jax.grad(corner)(x + 0.5)[0, :, :, 0]
        assert (bool(jnp.abs(grad[30, 30]) > 0) == far_sees), (dilated, grad[30, 30])
        assert "receptive field" in control.model_name(args)


def test_quick_dilated_run(tmp_path):
    out = tmp_path / "control.jsonl"
    assert control.main(["--quick", "--dilated", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["model"].startswith("dilated residual cnn 2x3x3x8 (receptive field 5 px)")
