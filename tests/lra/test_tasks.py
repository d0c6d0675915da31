"""Every LRA task trains under profile=smoke from nothing but the code (offline), and a task whose data is
missing fails in well under a second with the command that gets it."""
import subprocess
import time

import pytest

from lra import results, trainer
from tests.conftest import ROOT, cli, compose_config

SMOKE_TASKS = ["text", "retrieval", "image", "pathfinder", "pathx"]   # listops: tests/lra/test_train.py


@pytest.mark.parametrize("task", SMOKE_TASKS)
def test_smoke_run_of_every_task(task, isolated):
    paths, _ = isolated
    config = compose_config([f"task={task}", "attention=full", "profile=smoke", f"data_dir={paths['data']}",
                             f"results_dir={paths['results']}", "train.progress=false"])
    record = trainer.train(config, paths["run"])
    assert results.missing_fields(record) == [] and record["task"] == task
    assert record["test_examples"] > 0 and 0.0 <= record["test_accuracy"] <= 1.0
    assert results.read_jsonl(paths["results"] / "runs.jsonl") == [record]
    if task == "retrieval":   # dual encoder: the head reads [X1, X2, X1*X2, X1-X2]
        model = config["model"]
        assert record["params"] == record["params_full_attention"]
        head_in = trainer.build_model(config).head_hidden.kernel.shape[0]
        assert head_in == 4 * model["emb_dim"]


@pytest.mark.parametrize("task,command", [("text", "python -m lra.data.text prepare"),
                                          ("image", "python -m lra.data.image prepare"),
                                          ("retrieval", "scripts/get_lra_data.sh"),
                                          ("pathfinder", "python -m lra.data.pathfinder --out"),
                                          ("pathx", "--resolution 128")])
def test_missing_data_names_the_command_fast(task, command, tmp_path, subprocess_env):
    start = time.monotonic()
    r = subprocess.run(cli("lra.train", f"task={task}", "profile=lra", f"data_dir={tmp_path / 'none'}",
                           f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'run'}"),
                       cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and command in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "results").exists()
    assert time.monotonic() - start < 30   # interpreter and Hydra start-up included
    from lra import data

    config = compose_config([f"task={task}", "profile=lra"])
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=command.split()[-1]):
        data.check_available(task, data_dir=tmp_path / "none", max_length=config["task"]["max_length"],
                             **config["task"]["data"])
    assert time.monotonic() - start < 1.0  # the check itself: paths only


def test_pathfinder_length_must_match_the_resolution(tmp_path):
    from lra import data

    with pytest.raises(ValueError, match="task.max_length=4096"):
        data.check_available("pathfinder", data_dir=tmp_path, max_length=1024, resolution=64, generate={"num": 10})
