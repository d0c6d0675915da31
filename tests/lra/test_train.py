"""End-to-end training: the smoke run and its record, test at the best checkpoint, resuming, bad input."""
import json
import subprocess
import time

import jax
import numpy as np
import pytest

from lra import config as config_lib
from lra import data, results, trainer
from lra.checkpoint import RunCheckpoints
from tests.conftest import ROOT, cli, compose_config


def smoke_config(paths, *overrides):
    config = compose_config(["task=listops", "attention=full", "profile=smoke", f"data_dir={paths['data']}",
                             f"results_dir={paths['results']}", "train.progress=false", *overrides])
    return config


def test_smoke_cli_end_to_end(isolated, subprocess_env):
    paths, overrides = isolated
    start = time.time()
    r = subprocess.run(cli("lra.train", "task=listops", "attention=full", "profile=smoke", *overrides), cwd=ROOT,
                       env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wall = time.time() - start
    lines = results.read_jsonl(paths["results"] / "runs.jsonl")
    assert len(lines) == 1
    record = lines[0]
    assert results.missing_fields(record) == []
    assert record == json.loads((paths["run"] / "result.json").read_text())
    assert (record["task"], record["attention"], record["impl"], record["profile"]) == ("listops", "full", "xla",
                                                                                        "smoke")
    assert record["train_steps"] == 20 and record["batch_size"] == 16 and record["max_length"] == 64
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["test_examples"] == 40
    assert record["steps_per_second"] > 0 and record["compile_seconds"] > 0 and record["peak_memory_bytes"] > 0
    platform = jax.devices()[0].platform
    assert record["device"].startswith(platform)
    assert record["memory_method"] == ("compiled_memory_analysis" if platform == "cpu" else "device_peak_bytes_in_use")
    assert record["config"]["model"]["emb_dim"] == 32 and record["jax_version"] == jax.__version__
    assert record["params_full_attention"] == record["params"] and record["params_ratio"] == 1.0
    assert record["apples_to_apples"] is True
    assert 0 < record["wall_seconds"] < wall
    assert (paths["run"] / ".hydra" / "config.yaml").exists()  # the resolved config of the run
    # best_step is the step of the highest validation accuracy in the metrics log
    evals = [json.loads(x) for x in (paths["run"] / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in x]
    assert [e["step"] for e in evals] == [10, 20]
    best = max(evals, key=lambda e: (e["val_accuracy"], -e["step"]))
    assert record["best_step"] == best["step"] and record["best_val_accuracy"] == best["val_accuracy"]

    # Rerunning the same command finds the finished run and appends nothing.
    r = subprocess.run(cli("lra.train", "task=listops", "attention=full", "profile=smoke", *overrides), cwd=ROOT,
                       env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "already finished" in r.stderr + r.stdout
    assert len(results.read_jsonl(paths["results"] / "runs.jsonl")) == 1
    # With another results_dir (make demo does that), the finished record is appended there, once.
    config = smoke_config(paths)
    config["results_dir"] = str(paths["results"] / "other")
    for _ in range(2):
        assert trainer.train(config, paths["run"]) == record
    assert results.read_jsonl(paths["results"] / "other" / "runs.jsonl") == [record]


def restore_params(config, run_dir, which):
    model = trainer.build_model(config)
    graphdef, params, rest = trainer.split_model(model)
    tx = trainer.build_optimizer(config)
    ckpt = RunCheckpoints(run_dir / "checkpoints")
    state, meta = ckpt.restore(which, trainer.train_state(params, tx.init(params), rest))
    ckpt.close()
    return graphdef, tx, state["params"], state.get("rest", rest), meta


def test_test_accuracy_is_measured_at_the_best_checkpoint(isolated, monkeypatch):
    paths, _ = isolated
    # eval every 5 steps so best and last differ in general; the claim is checked by re-evaluating.
    config = smoke_config(paths, "train.eval_every=5", "train.train_steps=30")
    # metrics.jsonl is written through (tail -f follows a run): each evaluation finds the train line of its step
    # already in the file.
    on_disk, evaluate = [], trainer.evaluate

    def spy(*args, **kwargs):
        on_disk.append((paths["run"] / "metrics.jsonl").read_text().count("train_loss"))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", spy)
    record = trainer.train(config, paths["run"])
    monkeypatch.undo()
    assert on_disk[:6] == [1, 2, 3, 4, 5, 6]
    graphdef, tx, best_params, best_rest, meta = restore_params(config, paths["run"], "best")
    assert meta["step"] == record["best_step"]
    steps = trainer.Steps(graphdef, tx, config["seed"])
    test_arrays = trainer.load_split(config, "test")
    at_best = trainer.evaluate(steps, best_params, best_rest, test_arrays, config)
    assert at_best["accuracy"] == record["test_accuracy"]
    val_at_best = trainer.evaluate(steps, best_params, best_rest, trainer.load_split(config, "val"), config)
    assert val_at_best["accuracy"] == record["best_val_accuracy"]


def test_pallas_run_records_its_backend(isolated):
    paths, _ = isolated
    config = smoke_config(paths, "attention=local", "attention.impl=pallas", "train.train_steps=10",
                          "train.eval_every=10")
    record = trainer.train(config, paths["run"])
    assert record["impl"] == "pallas" and record["pallas_backend"] == "interpret"
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert trainer.pallas_backend(smoke_config(paths)) is None  # impl=xla


class Interrupt(Exception):
    pass


def metric_rows(run_dir):
    """metrics.jsonl without the timings (which differ between runs)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "steps_per_second"} for row in rows]


def test_resume_continues_exactly(isolated, tmp_path, monkeypatch):
    paths, _ = isolated
    config = smoke_config(paths, "train.eval_every=10", "train.train_steps=30", "train.log_every=2")
    reference = trainer.train(config, tmp_path / "uninterrupted")

    original = trainer.batching.TrainBatches.batch

    def dying_batch(self, step):
        if step == 14:  # after the checkpoint at step 10, in the middle of the next interval
            raise Interrupt()
        return original(self, step)

    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", dying_batch)
    with pytest.raises(Interrupt):
        trainer.train(config, paths["run"])
    assert not (paths["run"] / "result.json").exists()
    assert RunCheckpoints(paths["run"] / "checkpoints").latest_step() == 10
    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", original)
    # The killed run logged steps 12 and 14 after its checkpoint, and a kill during a write leaves half a line.
    logged = [json.loads(x)["step"] for x in (paths["run"] / "metrics.jsonl").read_text().splitlines()]
    assert logged[-2:] == [12, 14]
    with open(paths["run"] / "metrics.jsonl", "a") as f:
        f.write('{"step": 16, "train_lo')

    seen = []
    monkeypatch.setattr(trainer.batching.TrainBatches, "batch",
                        lambda self, step: seen.append(step) or original(self, step))
    resumed = trainer.train(config, paths["run"])
    assert seen[0] == 10 and seen[-1] == 29, "resumed from the checkpoint, not from scratch"
    for key in ("test_accuracy", "best_val_accuracy", "best_step", "final_train_loss", "val_accuracy_last"):
        assert resumed[key] == reference[key], key
    _, _, p_ref, _, _ = restore_params(config, tmp_path / "uninterrupted", "latest")
    _, _, p_res, _, _ = restore_params(config, paths["run"], "latest")
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_res)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(results.read_jsonl(paths["results"] / "runs.jsonl")) == 2  # reference + resumed, no duplicate
    # Each step once in metrics.jsonl, with the uninterrupted run's values.
    assert metric_rows(paths["run"]) == metric_rows(tmp_path / "uninterrupted")
    # The first step of each process is warm-up and untimed: 29 timed steps in one process, 28 in two.
    assert restore_params(config, tmp_path / "uninterrupted", "latest")[-1]["timed_steps"] == 29
    assert restore_params(config, paths["run"], "latest")[-1]["timed_steps"] == 28


def test_the_warm_up_step_is_not_timed(isolated):
    paths, _ = isolated
    record = trainer.train(smoke_config(paths, "train.log_every=1", "train.train_steps=4"), paths["run"])
    rows = [json.loads(x) for x in (paths["run"] / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # The first window holds only the warm-up step: no speed for it, and a finite speed from then on.
    assert rows[0]["steps_per_second"] is None
    assert all(r["steps_per_second"] > 0 for r in rows[1:])
    assert record["steps_per_second"] > 0


@pytest.mark.parametrize("kill_at,leftover", [(5, (5, None)), (10, (10, 5))])
def test_killed_between_the_best_and_latest_saves_resumes(isolated, tmp_path, monkeypatch, kill_at, leftover):
    # A hard kill (SIGKILL, out of memory) after "best" and before "latest" at one evaluation: the resumed run
    # repeats that evaluation and saves "best" at the same step again. Orbax refuses to write a step twice, so
    # every rerun used to fail; now the newer best is dropped on resume (at step 5: the run starts afresh; at 10:
    # it resumes from 5, whose best is still kept) and the result is the uninterrupted run's.
    paths, _ = isolated
    config = smoke_config(paths, "train.train_steps=15", "train.eval_every=5")
    evaluate = trainer.evaluate
    # The smoke data's val accuracy does not improve after step 5; its val loss does at step 10. Scoring by the
    # loss (deterministic in the parameters, so the same in every run) makes step 10 a new best.
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: {**(r := evaluate(*a, **k)),
                                                               "accuracy": 1.0 / (1.0 + r["loss"])})
    reference = trainer.train(config, tmp_path / "uninterrupted")
    assert reference["best_step"] == 10
    original = trainer.RunCheckpoints.save

    def killed(self, which, step, state, meta):
        if which == "latest" and step == kill_at:
            raise Interrupt()
        return original(self, which, step, state, meta)

    monkeypatch.setattr(trainer.RunCheckpoints, "save", killed)
    with pytest.raises(Interrupt):
        trainer.train(config, paths["run"])
    monkeypatch.setattr(trainer.RunCheckpoints, "save", original)
    ckpt = RunCheckpoints(paths["run"] / "checkpoints")
    assert (ckpt.latest_step("best"), ckpt.latest_step("latest")) == leftover
    ckpt.close()
    resumed = trainer.train(config, paths["run"])
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "best_step", "final_train_loss"):
        assert resumed[key] == reference[key], key


def test_resume_refuses_a_different_config(isolated, monkeypatch):
    paths, _ = isolated
    config = smoke_config(paths, "train.train_steps=10", "train.eval_every=5")
    original = trainer.batching.TrainBatches.batch

    def dying_batch(self, step):
        if step == 7:  # after the checkpoint at step 5
            raise Interrupt()
        return original(self, step)

    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", dying_batch)
    with pytest.raises(Interrupt):
        trainer.train(config, paths["run"])
    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", original)
    other = smoke_config(paths, "train.train_steps=10", "train.eval_every=5", "train.lr=0.5")
    with pytest.raises(config_lib.ConfigError, match=r"train\.lr: 0\.001 -> 0\.5"):
        trainer.train(other, paths["run"])


def test_a_run_that_stopped_before_its_first_checkpoint_does_not_block_the_corrected_one(isolated):
    # A typo found after the directory was claimed (here an impossible window, refused when the model is built)
    # leaves no checkpoint, so the corrected run in the same directory goes ahead.
    paths, _ = isolated
    bad = smoke_config(paths, "attention=local", "attention.window=-1", "train.train_steps=5")
    with pytest.raises(ValueError, match="window"):
        trainer.train(bad, paths["run"])
    assert (paths["run"] / "run_config.json").exists()
    good = smoke_config(paths, "attention=local", "attention.window=4", "train.train_steps=5",
                        "train.eval_every=5")
    record = trainer.train(good, paths["run"])
    assert record["attention"] == "local" and (paths["run"] / "result.json").exists()


def poison_step(monkeypatch, at: int, poison) -> None:
    """The train step of index ``at`` returns ``poison(params, metrics)`` instead of its own params and metrics."""
    original = trainer.Steps.compiled

    def poisoned(self, kind, *args):
        fn = original(self, kind, *args)
        if kind != "train" or isinstance(args[-1], jax.ShapeDtypeStruct):  # eval, or the memory check
            return fn

        def step_fn(params, opt_state, rest, batch, step):
            params, opt_state, rest, metrics = fn(params, opt_state, rest, batch, step)
            if int(step) == at:
                params, metrics = poison(params, metrics)
            return params, opt_state, rest, metrics
        return step_fn

    monkeypatch.setattr(trainer.Steps, "compiled", poisoned)


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(isolated, monkeypatch):
    paths, _ = isolated
    config = smoke_config(paths, "train.eval_every=10", "train.log_every=5")
    poison_step(monkeypatch, 13, lambda params, metrics: (params, {**metrics, "loss": metrics["loss"] * np.nan}))
    with pytest.raises(trainer.TrainingDiverged, match="at step 13"):
        trainer.train(config, paths["run"])
    assert RunCheckpoints(paths["run"] / "checkpoints").latest_step() == 10
    assert not (paths["results"] / "runs.jsonl").exists()


@pytest.mark.parametrize("at, message", [
    (0, r"at step 0 .*the first step: the model's loss is not finite with its initial parameters, so the attention "
        r"variant \(full\) or the data produce NaN or inf; nothing was saved"),
    (3, r"at step 3 .*no checkpoint had been saved yet\. Lower train.lr")])
def test_a_nan_before_any_checkpoint_says_so(isolated, monkeypatch, at, message):
    # A NaN from the initial parameters is the model's, not the learning rate's; and no checkpoint is claimed.
    paths, _ = isolated
    config = smoke_config(paths, "train.eval_every=10", "train.log_every=5")
    poison_step(monkeypatch, at, lambda params, metrics: (params, {**metrics, "loss": metrics["loss"] * np.nan}))
    with pytest.raises(trainer.TrainingDiverged, match=message):
        trainer.train(config, paths["run"])


def test_real_divergence_via_cli(isolated, subprocess_env):
    paths, overrides = isolated
    r = subprocess.run(cli("lra.train", "profile=smoke", "train.lr=1e30", "train.warmup_steps=0", *overrides),
                       cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "loss became" in r.stderr and "at step" in r.stderr and "Traceback" not in r.stderr
    assert not (paths["results"] / "runs.jsonl").exists()


def test_step_that_does_not_fit_is_refused_before_data(isolated, subprocess_env):
    paths, overrides = isolated
    r = subprocess.run(cli("lra.train", "profile=smoke", "train.memory_limit_gb=0.0001", *overrides), cwd=ROOT,
                       env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "needs" in r.stderr and "MiB" in r.stderr and "lower train.batch_size" in r.stderr
    assert not paths["data"].exists(), "no data generated for a run that cannot fit"
    assert not paths["results"].exists()


def test_cpu_fit_check_counts_the_fused_dot_scratch(isolated, monkeypatch):
    """On CPU the check adds what XLA's runtime allocates beyond memory_analysis() (tests/lra/test_memory.py
    measures it): a step whose estimate alone fits the limit is refused, the message giving both parts."""
    paths, _ = isolated
    monkeypatch.setattr(trainer, "compiled_bytes", lambda compiled: 2**29)
    monkeypatch.setattr(trainer, "fused_dot_scratch_bytes", lambda hlo_text: 2**30)
    with pytest.raises(trainer.DoesNotFit, match=r"needs 1\.50 GiB \(with 1\.00 GiB that XLA's CPU runtime") as e:
        trainer.train(smoke_config(paths, "train.memory_limit_gb=1.2"), paths["run"])
    assert "train.memory_limit_gb=1.2" in str(e.value) and "before loading the data" in str(e.value)
    assert not paths["data"].exists()


def test_fit_is_checked_again_with_the_data_loaded(isolated, monkeypatch):
    paths, _ = isolated
    free = iter([2**40, 2**20])   # plenty before loading, 1 MiB after
    monkeypatch.setattr(trainer, "free_bytes", lambda: next(free))
    with pytest.raises(trainer.DoesNotFit, match="the train step at batch_size=16, max_length=64 needs .* "
                                                  r"but 1\.0 MiB is available \(free memory, with the data loaded\); "
                                                  r"the data take .* MiB in memory: generate fewer examples"):
        trainer.train(smoke_config(paths), paths["run"])
    assert paths["data"].exists() and not paths["results"].exists()


def test_evaluation_batch_that_does_not_fit_is_refused(isolated):
    """A train step that fits, an eval_batch_size whose forward does not: refused before the data, by name."""
    paths, _ = isolated
    config = smoke_config(paths, "train.eval_batch_size=4194304", "train.memory_limit_gb=4")
    with pytest.raises(trainer.DoesNotFit, match="the evaluation at train.eval_batch_size=4194304, max_length=64 .*"
                                                  "lower train.eval_batch_size"):
        trainer.train(config, paths["run"])
    assert not paths["data"].exists()


def test_missing_dataset_names_the_command_fast(isolated, subprocess_env):
    paths, overrides = isolated
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="python -m lra.data.listops --out"):
        data.check_available("listops", data_dir=paths["data"], generate=None)
    assert time.perf_counter() - start < 1.0
    r = subprocess.run(cli("lra.train", "profile=smoke", "task.data.generate=null", *overrides), cwd=ROOT,
                       env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "python -m lra.data.listops --out" in r.stderr
    assert "Traceback" not in r.stderr and not paths["results"].exists()


def test_official_release_files_are_read(isolated):
    """With generate=null the trainer reads <data_dir>/listops/basic_*.tsv (the release layout)."""
    paths, _ = isolated
    from lra.data import listops

    splits = listops.generate_splits(64, 16, 16, min_length=10, max_length=60, seed=5)
    listops.write_splits(paths["data"] / "listops", splits)
    config = smoke_config(paths, "task.data.generate=null", "train.train_steps=4", "train.eval_every=4")
    record = trainer.train(config, paths["run"])
    assert record["test_examples"] == 16


def test_a_results_dir_that_cannot_be_written_is_refused_before_training(isolated, monkeypatch):
    paths, _ = isolated
    (paths["results"].parent / "a_file").write_text("")
    config = smoke_config(paths, f"results_dir={paths['results'].parent / 'a_file'}")
    monkeypatch.setattr(trainer, "build_model", lambda *a: pytest.fail("built the model first"))
    with pytest.raises(ValueError, match="a_file is a file, not a folder; set results_dir"):
        trainer.train(config, paths["run"])


def test_an_empty_split_is_refused_before_training(isolated, monkeypatch):
    paths, _ = isolated
    from lra.data import listops

    splits = listops.generate_splits(64, 0, 16, min_length=10, max_length=60, seed=5)   # no validation example
    listops.write_splits(paths["data"] / "listops", splits)
    config = smoke_config(paths, "task.data.generate=null")
    steps = []
    monkeypatch.setattr(trainer.batching.TrainBatches, "batch", lambda self, step: steps.append(step))
    with pytest.raises(ValueError, match="the val split of task listops has no examples .* prepare the data again"):
        trainer.train(config, paths["run"])
    assert steps == []


@pytest.mark.slow  # tests/lra/test_sweeps.py runs a multirun in the fast suite
def test_sweep_runs_each_job_and_records_it(tmp_path, subprocess_env):
    """`python -m lra.train -m ... seed=0,1` (the README's sweep form) runs and records every job."""
    results_dir = tmp_path / "results"
    r = subprocess.run(cli("lra.train", "-m", "profile=smoke", "seed=0,1", "train.train_steps=4",
                           "train.eval_every=4", f"data_dir={tmp_path / 'data'}", f"results_dir={results_dir}",
                           f"hydra.sweep.dir={tmp_path / 'multirun'}", "train.progress=false"),
                       cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    records = results.read_jsonl(results_dir / "runs.jsonl")
    assert sorted(rec["seed"] for rec in records) == [0, 1]
    assert records[0]["test_accuracy"] != records[1]["test_accuracy"] or \
        records[0]["final_train_loss"] != records[1]["final_train_loss"], "different seeds, different runs"


@pytest.mark.slow
def test_cpu_profile_learns(isolated, subprocess_env):
    """The cpu profile learns ListOps well above the majority class (about 16%); minutes on 2 cores."""
    paths, overrides = isolated
    r = subprocess.run(cli("lra.train", "task=listops", "attention=full", "profile=cpu", *overrides), cwd=ROOT,
                       env=subprocess_env, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    record = results.read_jsonl(paths["results"] / "runs.jsonl")[-1]
    assert record["test_accuracy"] > 0.30


def test_a_new_shape_waits_for_the_queued_steps_before_compiling(isolated, monkeypatch):
    # Steps queued on the device run on during a synchronous compilation; the trainer subtracts the compile time
    # from its timing window, so it must wait for them first or their time vanishes from steps_per_second (a
    # mechanism check: the timings themselves are the benchmark's business, not a test's).
    paths, _ = isolated
    config = smoke_config(paths)
    graphdef, params, rest = trainer.split_model(trainer.build_model(config))
    tx = trainer.build_optimizer(config)
    opt_state = tx.init(params)
    steps = trainer.Steps(graphdef, tx, 0)
    waited = []
    real = trainer.jax.block_until_ready
    monkeypatch.setattr(trainer.jax, "block_until_ready", lambda x: waited.append(x) or real(x))
    step = np.int32(0)
    for length, new in ((32, True), (32, False), (64, True)):
        batch = {k: np.zeros(s.shape, s.dtype) for k, s in trainer.batch_struct(4, length).items()}
        before = len(waited)
        steps.compiled("train", params, opt_state, rest, batch, step)
        assert (len(waited) > before) == new, length
        if new:
            leaves = waited[-1]
            assert any(leaf is jax.tree.leaves(params)[0] for leaf in leaves)   # the train state, not only the batch



def test_a_limit_only_tightens_the_check_and_counts_the_data(monkeypatch):
    monkeypatch.setattr(trainer, "free_bytes", lambda: 2**30)   # 1 GiB free
    assert trainer.available_bytes(100) == 2**30   # a limit above the machine's memory let 48 GiB steps through
    assert trainer.available_bytes(0.5) == 2**29 and trainer.available_bytes(0.5, held=2**28) == 2**28
    step = [("the train step", 2 * 2**30, 0)]
    with pytest.raises(trainer.DoesNotFit, match=r"needs 2\.00 GiB but 1\.00 GiB is available \(free memory, now\)"):
        trainer.check_fits(step, 100, "now")
    with pytest.raises(trainer.DoesNotFit, match=r"is available \(free memory, now\)"):   # free memory counts the data
        trainer.check_fits(step, 100, "now", held=2**28)
    small = [("the train step", 3 * 2**27, 0)]   # 384 MiB: fits the limit, not the limit less the data
    trainer.check_fits(small, 0.5, "now")
    with pytest.raises(trainer.DoesNotFit, match=r"but 0\.25 GiB is available \(train.memory_limit_gb=0.5, less "
                                                  r"0\.25 GiB held by the data, now\)"):
        trainer.check_fits(small, 0.5, "now", held=2**28)


def test_a_containers_cgroup_limit_counts(monkeypatch, tmp_path):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1073741824\n")
    usage.write_text("805306368\n")
    monkeypatch.setattr(trainer, "CGROUP_FILES", ((str(limit), str(usage)),))
    assert trainer.free_bytes() == 2**28   # 1 GiB limit, 768 MiB used: less than /proc/meminfo's MemAvailable
    limit.write_text("max\n")
    assert trainer.free_bytes() > 2**28   # no limit: MemAvailable alone
