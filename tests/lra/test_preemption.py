"""Faults during training: SIGKILL and SIGTERM of a real run, and truncated or corrupted checkpoints.

A run killed at any moment and restarted with the same command resumes from its latest readable checkpoint and
ends with the metrics of an uninterrupted run (data order and dropout keys are functions of seed and step)."""
import json
import logging
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from lra import results, trainer
from lra.checkpoint import CheckpointUnreadable, RunCheckpoints
from tests.conftest import ROOT, cli, compose_config

SAME = ("test_accuracy", "best_val_accuracy", "best_step", "final_train_loss", "val_accuracy_last", "params")
# Long enough that the run is still training when the test acts on it; dropout on, so the keys matter.
LONG = ["train.train_steps=400", "train.eval_every=50", "train.log_every=50", "model.dropout=0.1"]


def smoke(paths, *overrides):
    return compose_config(["task=listops", "attention=full", "profile=smoke", f"data_dir={paths['data']}",
                           f"results_dir={paths['results']}", "train.progress=false", *overrides])


def start(paths, overrides, env):
    return subprocess.Popen(cli("lra.train", "task=listops", "attention=full", "profile=smoke", *overrides, *LONG),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(proc, run_dir, step, timeout=240):
    """Wait until the run has a complete latest checkpoint at ``step`` or later; fail if it ends first."""
    deadline = time.time() + timeout
    latest = run_dir / "checkpoints" / "latest"
    while time.time() < deadline:
        if latest.is_dir() and any(p.name.isdigit() and int(p.name) >= step for p in latest.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before checkpoint {step}:\n{proc.stdout.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint at step {step} within {timeout} s")


def rerun(overrides, env):
    return subprocess.run(cli("lra.train", "task=listops", "attention=full", "profile=smoke", *overrides, *LONG),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # about a minute: four real runs of 400 steps
def test_killed_run_resumes_to_the_same_result(isolated, tmp_path, subprocess_env):
    """SIGKILL (no warning) after a checkpoint, restart, SIGTERM (Slurm's preemption notice) later, restart:
    the record equals the uninterrupted run's."""
    paths, overrides = isolated
    reference = trainer.train(smoke(paths, *LONG), tmp_path / "uninterrupted")

    proc = start(paths, overrides, subprocess_env)
    wait_for_checkpoint(proc, paths["run"], 100)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    killed_at = RunCheckpoints(paths["run"] / "checkpoints").latest_step()
    assert killed_at >= 100 and not (paths["run"] / "result.json").exists()

    proc = start(paths, overrides, subprocess_env)
    wait_for_checkpoint(proc, paths["run"], killed_at + 50)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert f"resuming from step {killed_at}" in out
    assert proc.returncode == 143, out[-2000:]
    assert "SIGTERM: checkpoint of step" in out and "rerun" in out
    termed_at = RunCheckpoints(paths["run"] / "checkpoints").latest_step()
    assert termed_at > killed_at and not (paths["run"] / "result.json").exists()

    r = rerun(overrides, subprocess_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {termed_at}" in r.stderr + r.stdout
    resumed = [x for x in results.read_jsonl(paths["results"] / "runs.jsonl") if x["run_dir"] != reference["run_dir"]]
    assert len(resumed) == 1
    for key in SAME:
        assert resumed[0][key] == reference[key], key


class Interrupt(Exception):
    pass


def _interrupt():
    raise Interrupt()


def interrupted_run(paths, monkeypatch, config, at_step, stop=_interrupt, expect=Interrupt):
    """Train ``config`` until the batch of ``at_step`` is drawn, where ``stop()`` acts (by default it raises
    Interrupt, a crash); the run must end with ``expect``, which is returned."""
    original = trainer.batching.TrainBatches.batch

    def dying(self, step):
        if step == at_step:
            stop()
        return original(self, step)

    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", dying)
    with pytest.raises(expect) as raised:
        trainer.train(config, paths["run"])
    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", original)
    return raised.value


def test_sigterm_during_an_evaluation_step_that_saves(isolated, tmp_path, monkeypatch):
    # SIGTERM arrives while the step that ends at an evaluation runs: that step's checkpoint is saved by the
    # evaluation, and the preemption must not save it a second time (orbax refuses an existing step).
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=10", "train.train_steps=30")
    reference = trainer.train(config, tmp_path / "uninterrupted")
    # Step 19 ends at 20, an evaluation.
    stopped = interrupted_run(paths, monkeypatch, config, 19, stop=lambda: os.kill(os.getpid(), signal.SIGTERM),
                              expect=trainer.Preempted)
    assert stopped.code == 143 and stopped.step == 20
    resumed = trainer.train(config, paths["run"])
    for key in SAME:
        assert resumed[key] == reference[key], key


def test_sigterm_writes_the_metrics_of_the_unlogged_steps(isolated, tmp_path, monkeypatch):
    # SIGTERM between two logging steps: the train row of the steps since the last one is written before the
    # checkpoint, so the loss curve has no hole; its loss is the mean over those steps.
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=10", "train.train_steps=20", "train.log_every=10")
    every_step = trainer.train(smoke(paths, "train.eval_every=10", "train.train_steps=20", "train.log_every=1"),
                               tmp_path / "every_step")
    assert every_step["test_accuracy"] >= 0
    stopped = interrupted_run(paths, monkeypatch, config, 13, stop=lambda: os.kill(os.getpid(), signal.SIGTERM),
                              expect=trainer.Preempted)
    assert stopped.step == 14
    rows = [json.loads(x) for x in (paths["run"] / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert [r["step"] for r in rows] == [10, 14]
    losses = {json.loads(x)["step"]: json.loads(x)["train_loss"]
              for x in (tmp_path / "every_step" / "metrics.jsonl").read_text().splitlines() if "train_loss" in x}
    assert rows[1]["train_loss"] == pytest.approx(np.mean([losses[s] for s in (11, 12, 13, 14)]), rel=1e-6)
    resumed = trainer.train(config, paths["run"])
    rows = [json.loads(x) for x in (paths["run"] / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert [r["step"] for r in rows] == [10, 14, 20]
    # The cut window's steps are carried over: the row at 20, and the record's final train loss, are the mean
    # over steps 11-20, as in an uninterrupted run (they were the mean over 15-20).
    assert rows[2]["train_loss"] == pytest.approx(np.mean([losses[s] for s in range(11, 21)]), rel=1e-6)
    assert resumed["final_train_loss"] == rows[2]["train_loss"]


def corrupt(step_dir):
    """Truncate every data file of a checkpoint step to half its size (a disk filling up mid-write)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for p in files:
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(isolated, tmp_path, monkeypatch, caplog):
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=10", "train.train_steps=30")
    reference = trainer.train(config, tmp_path / "uninterrupted")
    interrupted_run(paths, monkeypatch, config, 24)  # checkpoints at 10 and 20 exist
    latest = paths["run"] / "checkpoints" / "latest"
    assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == [10, 20]
    corrupt(latest / "20")
    with caplog.at_level(logging.WARNING):
        resumed = trainer.train(config, paths["run"])
    assert "20 is unreadable" in caplog.text and "falling back" in caplog.text
    assert list((paths["run"] / "checkpoints" / "unreadable").iterdir())  # set aside, not deleted
    for key in SAME:
        assert resumed[key] == reference[key], key


def test_no_readable_checkpoint_says_what_to_delete(isolated, monkeypatch):
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=10", "train.train_steps=30")
    interrupted_run(paths, monkeypatch, config, 24)
    latest = paths["run"] / "checkpoints" / "latest"
    for step_dir in (latest / "10", latest / "20"):
        corrupt(step_dir)
    with pytest.raises(CheckpointUnreadable, match="Delete .*checkpoints to start this run from scratch"):
        trainer.train(config, paths["run"])
