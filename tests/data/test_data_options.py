"""Bad data options are refused before any work, with what to do: options a task's loader does not take
(task.data.<key>), ListOps generate options (task.data.generate.<key>), generated ListOps expressions longer
than task.max_length, and a data_dir where generated data cannot be written."""
import logging
import subprocess

import numpy as np
import pytest
from omegaconf import OmegaConf

from lra import data
from lra.data import _common as C
from lra.data import listops as L
from tests.conftest import CONFIGS, ROOT, cli

# The smoke recipe's ListOps data (configs/recipe/listops/smoke.yaml): lengths 10 < length < 64.
SMOKE = {"num_train": 128, "num_val": 40, "num_test": 40, "min_length": 10, "max_length": 64, "seed": 0}
TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")


def task_config(task: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "task" / f"{task}.yaml"), resolve=True)


# --------------------------------------------------------------------------- 1. unknown task.data options


@pytest.mark.parametrize("task", TASKS)
def test_check_available_refuses_an_unknown_option_and_takes_the_configs_own(task, tmp_path):
    config = task_config(task)
    options = {**config["data"], "max_length": config["max_length"]}
    try:   # the task's own keys (Path-X's resolution included) are valid; its data may be missing here
        data.check_available(task, data_dir=tmp_path, **options)
    except FileNotFoundError:
        pass
    with pytest.raises(ValueError) as e:
        data.check_available(task, data_dir=tmp_path, **options, foo=1)
    message = str(e.value)
    assert "task.data.foo" in message and task in message
    for key in config["data"]:   # lists the valid keys
        assert f"task.data.{key}" in message
    assert list(tmp_path.iterdir()) == []


def test_check_available_refuses_a_key_of_another_task(tmp_path):
    with pytest.raises(ValueError, match=r"task\.data\.generate for task text.*valid: task\.data\.source"):
        data.check_available("text", data_dir=tmp_path, max_length=1000, source="smoke", generate=None)
    with pytest.raises(ValueError, match=r"task\.data\.source for task listops.*valid: task\.data\.generate"):
        data.check_available("listops", data_dir=tmp_path, max_length=2000, generate=SMOKE, source="smoke")


@pytest.mark.parametrize("task,options", [("listops", {"max_length": 64, "generate": SMOKE}),
                                          ("text", {"max_length": 100, "source": "smoke"}),
                                          ("pathx", {"max_length": 16384, "generate": {"num": 10}})])
def test_source_refuses_an_unknown_option_before_loading(task, options, tmp_path):
    with pytest.raises(ValueError, match=r"unknown option task\.data\.foo for task " + task):
        data.source(task, "train", data_dir=tmp_path, **options, foo=1)
    assert list(tmp_path.iterdir()) == []   # nothing generated or written first


# --------------------------------------------------------------------------- ListOps task.data.generate


@pytest.mark.parametrize("generate,match", [
    ({**SMOKE, "foo": 1}, r"unknown option task\.data\.generate\.foo .*valid: task\.data\.generate\.num_train, "
                          r"task\.data\.generate\.num_val, task\.data\.generate\.num_test, "
                          r"task\.data\.generate\.min_length, task\.data\.generate\.max_length, "
                          r"task\.data\.generate\.seed$"),
    ({**SMOKE, "num_train": "abc"}, r"task\.data\.generate\.num_train must be an integer, got 'abc'"),
    ({**SMOKE, "num_val": 1.5}, r"task\.data\.generate\.num_val must be an integer, got 1\.5"),
    ({**SMOKE, "seed": None}, r"task\.data\.generate\.seed must be an integer, got None"),   # was: an unseeded set
    ({**SMOKE, "num_test": True}, r"task\.data\.generate\.num_test must be an integer, got True"),
    ({**SMOKE, "num_test": 0}, r"task\.data\.generate\.num_test must be >= 1, got 0"),
    ({**SMOKE, "min_length": 70}, r"min_length < task\.data\.generate\.max_length - 1 .*got 70 and 64"),
    ({**SMOKE, "min_length": 0, "max_length": 3}, r"only 10 distinct expressions .*208 were asked for"),
    (5, r"task\.data\.generate must be a mapping of num_train, num_val, num_test, min_length, max_length, seed "
        r".* or null"),
])
def test_bad_generate_options_are_refused_before_generating(generate, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        data.check_available("listops", data_dir=tmp_path, max_length=64, generate=generate)
    with pytest.raises(ValueError, match=match):
        data.source("listops", "train", data_dir=tmp_path, max_length=64, generate=generate)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 2. ListOps truncation


def test_generated_expressions_longer_than_max_length_are_refused(tmp_path):
    # The recipe's data at task.max_length=32: 25 of the 128 training expressions are longer.
    with pytest.raises(ValueError) as e:
        data.source("listops", "train", data_dir=tmp_path, max_length=32, generate=SMOKE)
    message = str(e.value)
    assert "25 of 128 generated ListOps train expressions" in message and "task.max_length=32" in message
    assert "task.data.generate.max_length <= 33" in message and "task.max_length to 63" in message
    # The advice holds: the generator counts length in tokens (parentheses, which the tokenizer drops, are not
    # counted), keeping length < max_length, so generate.max_length = task.max_length + 1 never cuts ...
    folder = L.generated_dir(tmp_path, **SMOKE)
    rows = [line.split("\t")[0] for line in (folder / "basic_train.tsv").read_text().splitlines()[1:]]
    assert all(L.expression_length(r) == L.tokenize(r).size for r in rows) and "(" in rows[0]
    assert max(map(L.expression_length, rows)) == 63
    fits = data.source("listops", "train", data_dir=tmp_path, max_length=32, generate={**SMOKE, "max_length": 33})
    assert fits.arrays["lengths"].max() <= 32
    # ... and neither does task.max_length = generate.max_length - 1; the (cached) data is read whole.
    whole = data.source("listops", "train", data_dir=tmp_path, max_length=63, generate=SMOKE)
    assert whole.arrays["lengths"].max() == 63
    np.testing.assert_array_equal(whole.arrays["lengths"], [L.expression_length(r) for r in rows])


def test_sizes_that_cut_every_expression_are_refused_before_generating(tmp_path):
    # Every generated expression has more than min_length tokens: min_length >= task.max_length cuts them all.
    for call in (lambda: data.check_available("listops", data_dir=tmp_path, max_length=10, generate=SMOKE),
                 lambda: data.source("listops", "val", data_dir=tmp_path, max_length=8, generate=SMOKE)):
        with pytest.raises(ValueError, match=r"every generated ListOps expression has more than "
                                             r"task\.data\.generate\.min_length=10 tokens.*task\.max_length to 63"):
            call()
    assert list(tmp_path.iterdir()) == []
    data.check_available("listops", data_dir=tmp_path, max_length=11, generate=SMOKE)   # some may fit


def test_release_files_are_cut_as_in_lra_with_a_warning(tmp_path, caplog):
    splits = L.generate_splits(30, 5, 5, min_length=10, max_length=40, seed=1)
    L.write_splits(tmp_path / "listops", splits)
    longest = max(L.expression_length(e) for e, _ in splits["train"])
    cut = sum(L.expression_length(e) > 20 for e, _ in splits["train"])
    assert 0 < cut < 30
    with caplog.at_level(logging.WARNING, logger="lra.data.listops"):
        src = data.source("listops", "train", data_dir=tmp_path, max_length=20, generate=None)
    assert len(src) == 30 and src.arrays["lengths"].max() == 20   # kept, cut to max_length
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{cut} of 30 ListOps expressions are longer than max_length=20 tokens" in warnings[0]
    assert f"task.max_length={longest} keeps them whole" in warnings[0]
    caplog.clear()
    data.source("listops", "train", data_dir=tmp_path, max_length=longest, generate=None)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# --------------------------------------------------------------------------- 3. data_dir not writable


def test_generating_into_a_file_or_an_unwritable_folder_is_refused_early(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for data_dir in (not_a_folder, not_a_folder / "below"):
        match = f"{not_a_folder} is a file, not a folder; set data_dir="   # the data_dir itself, or above it
        with pytest.raises(ValueError, match=match):
            data.check_available("listops", data_dir=data_dir, max_length=64, generate=SMOKE)
        with pytest.raises(ValueError, match=match):
            data.source("listops", "train", data_dir=data_dir, max_length=64, generate=SMOKE)
    # Not writable (what a read-only file system answers too), refused without creating anything.
    monkeypatch.setattr(C.os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=f"{tmp_path} is not writable; set data_dir="):
        data.check_available("listops", data_dir=tmp_path / "new" / "d", max_length=64, generate=SMOKE)
    with pytest.raises(ValueError, match=f"{tmp_path} is not writable; set data_dir="):
        data.source("listops", "train", data_dir=tmp_path / "new" / "d", max_length=64, generate=SMOKE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    # Data generated before, in a folder that is read-only now, is read without writing.
    monkeypatch.undo()
    small = {**SMOKE, "num_train": 10, "num_val": 5, "num_test": 5}
    L.ensure_generated(tmp_path / "shared", **small)
    monkeypatch.setattr(C.os, "access", lambda path, mode: False)
    data.check_available("listops", data_dir=tmp_path / "shared", max_length=64, generate=small)
    assert len(data.source("listops", "test", data_dir=tmp_path / "shared", max_length=64, generate=small)) == 5


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("override,message", [
    ("+task.data.foo=1", "unknown option task.data.foo for task listops"),
    ("+task.data.generate.foo=1", "unknown option task.data.generate.foo for ListOps generation"),
    ("data_dir=FILE", "is a file, not a folder; set data_dir="),
    ("+task.data.max_length=5", "without max_length (set task.max_length)"),
])
def test_train_refuses_bad_data_options_before_jax(override, message, isolated, subprocess_env, tmp_path):
    paths, overrides = isolated
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    override = override.replace("FILE", str(not_a_folder))
    if override.startswith("data_dir="):
        overrides = [o for o in overrides if not o.startswith("data_dir=")]
    r = subprocess.run(cli("lra.train", "task=listops", "attention=full", "profile=smoke", *overrides, override),
                       cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not paths["results"].exists()


@pytest.mark.parametrize("generate, match", [
    ({"num": 10, "foo": 1}, "unknown option.* task.data.generate.foo for Pathfinder generation"),
    ({"num": 0}, "task.data.generate.num must be an integer >= 1, got 0"),
    ({"num": 10, "per_folder": 2.5}, "task.data.generate.per_folder must be an integer >= 1"),
    ({"num": 10, "seed": -1}, "task.data.generate.seed must be an integer >= 0"),
    ([10], "task.data.generate must be a mapping"),
])
def test_bad_pathfinder_generate_options_are_refused_before_generating(generate, match, tmp_path):
    for call in (lambda: data.check_available("pathfinder", data_dir=tmp_path, generate=generate),
                 lambda: data.source("pathfinder", "train", data_dir=tmp_path, generate=generate)):
        with pytest.raises(ValueError, match=match):
            call()
    assert not any(tmp_path.iterdir())   # nothing generated, no folder made


@pytest.mark.parametrize("task", TASKS)
def test_a_data_dir_that_is_a_file_is_named_for_every_task(task, tmp_path):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    config = task_config(task)
    options = {**config["data"], "max_length": config["max_length"]}
    if "generate" in options:
        options["generate"] = None   # the release files: used to suggest a command writing inside the file
    with pytest.raises(ValueError, match=f"data_dir={not_a_folder}: {not_a_folder} is a file, not a folder"):
        data.check_available(task, data_dir=not_a_folder, **options)
