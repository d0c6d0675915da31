"""A run's record describes what was tested: the best checkpoint it names is the one tested, non-finite weights are
never saved, a run directory is never reused by another config, and one bad run never stops a sweep."""
import json
import logging
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra import config as config_lib
from lra import results, trainer
from tests.conftest import ROOT, cli, compose_config
from tests.lra.test_preemption import corrupt
from tests.lra.test_train import poison_step, restore_params


def smoke(paths, *overrides):
    return compose_config(["task=listops", "attention=full", "profile=smoke", f"data_dir={paths['data']}",
                           f"results_dir={paths['results']}", "train.progress=false", *overrides])


def scripted_validation(monkeypatch, accuracies):
    """The next validation accuracies, in order (one per evaluation of the validation split; the test split,
    evaluated after them, is measured for real): decides which steps are the best."""
    real, queue = trainer.evaluate, list(accuracies)

    def evaluate(steps, params, rest, arrays, config, mesh=None):
        out = real(steps, params, rest, arrays, config, mesh)
        return {**out, "accuracy": queue.pop(0)} if queue else out

    monkeypatch.setattr(trainer, "evaluate", evaluate)


def restore(config, run_dir, which):
    graphdef, tx, params, rest, meta = restore_params(config, run_dir, which)
    return trainer.Steps(graphdef, tx, config["seed"]), params, rest, meta


def step_dirs(run_dir, which):
    return sorted(int(p.name) for p in (run_dir / "checkpoints" / which).iterdir() if p.name.isdigit())


# --------------------------------------------------------------------------- the best checkpoint of the record


def test_an_unreadable_newest_best_is_recorded_as_the_best_that_was_tested(isolated, monkeypatch, caplog):
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=5", "train.train_steps=15")
    scripted_validation(monkeypatch, [0.1, 0.5, 0.9])   # best at 5, 10, 15; two kept (10, 15)
    first = trainer.train(config, paths["run"])
    monkeypatch.undo()
    assert (first["best_step"], first["best_val_accuracy"]) == (15, 0.9)
    assert step_dirs(paths["run"], "best") == [10, 15]
    (paths["run"] / "result.json").unlink()
    corrupt(paths["run"] / "checkpoints" / "best" / "15")
    with caplog.at_level(logging.WARNING):
        again = trainer.train(config, paths["run"])
    assert (again["best_step"], again["best_val_accuracy"]) == (10, 0.5)
    assert "the record names step 10" in caplog.text
    steps, params, rest, meta = restore(config, paths["run"], "best")
    assert meta["step"] == 10
    assert again["test_accuracy"] == trainer.evaluate(steps, params, rest, trainer.load_split(config, "test"),
                                                      config)["accuracy"]


def test_no_readable_best_tests_the_final_parameters_and_says_so(isolated, monkeypatch, caplog):
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=5", "train.train_steps=10")
    scripted_validation(monkeypatch, [0.9, 0.1])   # best at 5, the final evaluation worse
    first = trainer.train(config, paths["run"])
    monkeypatch.undo()
    assert first["best_step"] == 5
    (paths["run"] / "result.json").unlink()
    for step in step_dirs(paths["run"], "best"):
        corrupt(paths["run"] / "checkpoints" / "best" / str(step))
    with caplog.at_level(logging.WARNING):
        again = trainer.train(config, paths["run"])   # no training left: the final parameters are tested
    assert (again["best_step"], again["best_val_accuracy"]) == (10, 0.1)
    assert "the test runs on the final parameters" in caplog.text
    steps, params, rest, _ = restore(config, paths["run"], "latest")
    assert again["test_accuracy"] == trainer.evaluate(steps, params, rest, trainer.load_split(config, "test"),
                                                      config)["accuracy"]


class Interrupt(Exception):
    pass


def test_an_unreadable_best_found_at_resume_lets_the_next_evaluations_choose(isolated, monkeypatch, caplog):
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=5", "train.train_steps=20")
    original = trainer.batching.TrainBatches.batch

    def dying_batch(self, step):
        if step == 12:
            raise Interrupt()
        return original(self, step)

    scripted_validation(monkeypatch, [0.9, 0.95])
    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", dying_batch)
    with pytest.raises(Interrupt):
        trainer.train(config, paths["run"])
    monkeypatch.undo()
    for step in step_dirs(paths["run"], "best"):   # 5 and 10
        corrupt(paths["run"] / "checkpoints" / "best" / str(step))
    scripted_validation(monkeypatch, [0.2, 0.1])   # the evaluations at 15 and 20: worse than the lost best
    with caplog.at_level(logging.WARNING):
        record = trainer.train(config, paths["run"])   # used to train to the end, then fail: no best to test
    assert "choose the best again" in caplog.text
    assert (record["best_step"], record["best_val_accuracy"]) == (15, 0.2)


# --------------------------------------------------------------------------- non-finite weights are never saved


def test_non_finite_parameters_are_never_saved(isolated, monkeypatch):
    paths, _ = isolated
    config = smoke(paths, "train.eval_every=10", "train.log_every=10")
    # the last step before an evaluation: its loss was computed before the update, so only the evaluation sees it
    poison_step(monkeypatch, 19, lambda params, metrics: (jax.tree.map(lambda p: p * jnp.nan, params), metrics))
    with pytest.raises(trainer.TrainingDiverged, match="at step 20 .*no longer finite.*nothing of this step"):
        trainer.train(config, paths["run"])
    assert step_dirs(paths["run"], "latest") == [10] and step_dirs(paths["run"], "best") == [10]
    assert not (paths["results"] / "runs.jsonl").exists()


# --------------------------------------------------------------------------- one run directory, one config


def test_a_finished_run_of_another_config_is_refused(isolated):
    paths, _ = isolated
    config = smoke(paths, "train.train_steps=5", "train.eval_every=5")
    record = trainer.train(config, paths["run"])
    with pytest.raises(config_lib.ConfigError, match=r"finished run of a different config \(model.mlp_dim: 64 -> 96"):
        trainer.train(smoke(paths, "train.train_steps=5", "train.eval_every=5", "model.mlp_dim=96"), paths["run"])
    # keys that do not change the run (results_dir, progress) still find the finished run
    assert trainer.train({**config, "results_dir": str(paths["results"] / "other")}, paths["run"]) == record


@pytest.mark.parametrize("name, text", [("result.json", ""), ("result.json", "[1, 2]"),
                                        ("run_config.json", '{"task": '), ("run_config.json", "null")])
def test_a_malformed_record_or_run_config_is_named(isolated, name, text):
    paths, _ = isolated
    config = smoke(paths, "train.train_steps=5", "train.eval_every=5")
    trainer.train(config, paths["run"])
    if name == "run_config.json":
        (paths["run"] / "result.json").unlink()
    (paths["run"] / name).write_text(text)
    with pytest.raises(ValueError, match=f"{name}.*(not readable JSON|not a JSON object).*Delete the run directory"):
        trainer.train(config, paths["run"])


def test_checkpoints_without_their_config_are_not_taken_over(isolated):
    paths, _ = isolated
    config = smoke(paths, "train.train_steps=5", "train.eval_every=5")
    trainer.train(config, paths["run"])
    (paths["run"] / "result.json").unlink()
    (paths["run"] / "run_config.json").unlink()
    other = smoke(paths, "train.train_steps=5", "train.eval_every=5", "model.mlp_dim=96")
    with pytest.raises(config_lib.ConfigError, match="holds checkpoints but no run_config.json"):
        trainer.train(other, paths["run"])
    assert not (paths["run"] / "run_config.json").exists()   # not written for the other config: the original
    with pytest.raises(config_lib.ConfigError, match="no run_config.json"):   # run is refused the same way
        trainer.train(config, paths["run"])


# --------------------------------------------------------------------------- evaluation batches


def test_the_evaluation_batch_is_never_larger_than_the_split(isolated, monkeypatch):
    paths, _ = isolated
    config = smoke(paths, "train.train_steps=5", "train.eval_every=5", "train.eval_batch_size=100000")
    sizes, real = [], trainer.batching.eval_batches

    def spy(arrays, batch_size, **kwargs):
        sizes.append((len(arrays["targets"]), batch_size))
        return real(arrays, batch_size, **kwargs)

    monkeypatch.setattr(trainer.batching, "eval_batches", spy)
    monkeypatch.setattr(trainer, "check_fits", lambda *a, **k: None)   # the 100000-row program is not run
    record = trainer.train(config, paths["run"])
    assert sizes == [(40, 40), (40, 40)] and record["test_examples"] == 40


@pytest.mark.parametrize("attention", ["fnet", "sinkhorn"])
def test_a_variant_that_is_not_padding_invariant_is_evaluated_whatever_its_batch(isolated, attention):
    # With bucketing, an example used to be padded to the longest of whichever examples shared its batch: fnet's
    # and sinkhorn's outputs depend on padding, so the accuracy changed with train.eval_batch_size.
    from models.attention import REGISTRY

    assert not REGISTRY[attention].padding_invariant
    paths, _ = isolated
    config = smoke(paths, f"attention={attention}", "model.pooling=mean")
    assert config["train"]["bucket_size"] < config["task"]["max_length"]
    graphdef, params, rest = trainer.split_model(trainer.build_model(config))
    steps = trainer.Steps(graphdef, trainer.build_optimizer(config), config["seed"])
    arrays = trainer.load_split(config, "val")
    got = [trainer.evaluate(steps, params, rest, arrays, {**config, "train": {**config["train"], "eval_batch_size": b}})
           for b in (5, 16, 40)]
    assert got[0]["count"] == got[1]["count"] == got[2]["count"] == 40
    for other in got[1:]:   # float32 sums in another order: fixed float32 tolerance
        np.testing.assert_allclose(other["loss"], got[0]["loss"], rtol=1e-5)
        assert other["accuracy"] == got[0]["accuracy"]


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr must be a positive finite number"),
    ("train.lr=1e39", r"train.lr must be .*float32: at most 3.4e\+38"),
    ("train.weight_decay=nan", "train.weight_decay must be a non-negative finite number"),
    ("train.grad_clip=inf", "train.grad_clip must be null or a positive finite number"),
    ("train.memory_limit_gb=nan", "train.memory_limit_gb must be null or a positive finite number"),
    ("train.progress=maybe", "train.progress must be true or false"),
    ("model.dropout=abc", r"model.dropout must be a number in \[0, 1\)"),
    ("model.attention_dropout=nan", r"model.attention_dropout must be a number in \[0, 1\)"),
    ("seed=99999999999999999999", r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    ("seed=4294967296", r"seed must be an integer in \[0, 2\*\*32 - 1\]"),   # would repeat seed 0's keys
    ("+train.learning_rate=5", "unknown config keys in train: train.learning_rate .*valid: batch_size"),
    ("+lr=5", "unknown config top-level keys: lr "),
    ("+task.foo=1", "unknown config keys in task: task.foo "),
    ("+model.foo=1", "unknown config keys in model: model.foo "),
    ("+logger.project=x", r"unknown config keys in logger \(logger=none\): logger.project"),
    ("+task.pair=paper", "task.pair is for the two-document tasks"),
])
def test_impossible_values_and_unread_keys_are_refused(isolated, override, message):
    paths, _ = isolated
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(smoke(paths, override))


def test_retrieval_needs_a_pair_mode_and_wandb_options_are_checked(isolated):
    paths, _ = isolated
    retrieval = compose_config(["task=retrieval", "profile=smoke", "task.pair=null"])
    with pytest.raises(config_lib.ConfigError, match="task=retrieval compares two documents"):
        config_lib.validate(retrieval)
    with pytest.raises(config_lib.ConfigError, match=r"unknown config keys in logger \(logger=wandb\): logger.projet"):
        config_lib.validate(smoke(paths, "logger=wandb", "+logger.projet=x"))
    with pytest.raises(config_lib.ConfigError, match="logger.init_timeout must be a positive number"):
        config_lib.validate(smoke(paths, "logger=wandb", "logger.init_timeout=-1"))
    for task in ("listops", "retrieval"):   # the shipped configs pass
        for profile in ("smoke", "cpu", "lra"):
            config_lib.validate(compose_config([f"task={task}", f"profile={profile}"]))
    config_lib.validate(smoke(paths, "logger=wandb"))


# --------------------------------------------------------------------------- sweeps


def test_a_failing_run_does_not_stop_the_sweep(tmp_path, subprocess_env):
    results_dir = tmp_path / "results"
    r = subprocess.run(cli("lra.train", "-m", "profile=smoke", "attention=linformer,full", "attention.impl=pallas",
                           "train.train_steps=4", "train.eval_every=4", f"data_dir={tmp_path / 'data'}",
                           f"results_dir={results_dir}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                           "train.progress=false"),
                       cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert [rec["attention"] for rec in results.read_jsonl(results_dir / "runs.jsonl")] == ["full"]
    assert "1 run(s) of this sweep failed" in r.stderr
    assert "attention=linformer attention.impl=pallas" in r.stderr and "has no Pallas kernel" in r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads(next((tmp_path / "multirun").rglob("result.json")).read_text())["attention"] == "full"
    assert np.isfinite(results.read_jsonl(results_dir / "runs.jsonl")[0]["test_accuracy"])
