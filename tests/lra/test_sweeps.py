"""Sweeps: a Hydra multirun records every run, in the same run directories as single runs; the submitit local
launcher runs the same sweep as separate jobs; the seed summary aggregates mean and standard deviation."""
import statistics
import subprocess

import pytest

from lra import results
from tests.conftest import ROOT, cli


def sweep(tmp_path, env, *extra):
    return subprocess.run(cli("lra.train", "-m", "task=listops", "attention=full,linear", "profile=smoke", "seed=0",
                              f"data_dir={tmp_path / 'data'}", f"results_dir={tmp_path / 'results'}",
                              f"hydra.sweep.dir={tmp_path / 'outputs'}", "train.train_steps=4", "train.eval_every=2",
                              "train.progress=false", *extra),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_multirun_records_every_run_and_reruns_resume(tmp_path, subprocess_env):
    r = sweep(tmp_path, subprocess_env)
    assert r.returncode == 0, r.stderr[-3000:]
    records = results.read_jsonl(tmp_path / "results" / "runs.jsonl")
    assert sorted((x["attention"], x["seed"]) for x in records) == [("full", 0), ("linear", 0)]
    # Run directories follow the single-run layout <task>/<attention>/<profile>/<other overrides>.
    for x in records:
        assert f"listops/{x['attention']}/smoke/" in x["run_dir"] and f"seed={x['seed']}" in x["run_dir"]
    # The same sweep again: every run is found finished, nothing is appended.
    r = sweep(tmp_path, subprocess_env)
    assert r.returncode == 0 and len(results.read_jsonl(tmp_path / "results" / "runs.jsonl")) == 2


def test_submitit_local_launcher(tmp_path, subprocess_env):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = sweep(tmp_path, subprocess_env, "hydra/launcher=local", "hydra.launcher.cpus_per_task=1",
              "hydra.launcher.mem_gb=4")
    assert r.returncode == 0, r.stderr[-3000:]
    records = results.read_jsonl(tmp_path / "results" / "runs.jsonl")
    assert sorted(x["attention"] for x in records) == ["full", "linear"]
    assert list((tmp_path / "outputs" / ".submitit").iterdir())   # the jobs ran through submitit


def test_summary_mean_and_std_over_seeds():
    rows = [{"task": "listops", "attention": "full", "profile": "cpu", "seed": s, "test_accuracy": a,
             "steps_per_second": 2.0} for s, a in [(0, 0.30), (1, 0.40), (2, 0.35), (2, 0.38)]]
    rows.append({"task": "listops", "attention": "local", "profile": "cpu", "seed": 0, "test_accuracy": 0.2})
    table = results.summary_table(rows).splitlines()
    accs = [30.0, 40.0, 38.0]                                       # seed 2's latest record counts
    assert table[2] == (f"| listops | full | cpu | 0,1,2 | {statistics.fmean(accs):.2f}% | "
                        f"{statistics.stdev(accs):.2f} | 2.00 |")
    assert table[3] == "| listops | local | cpu | 0 | 20.00% | - | - |"


@pytest.mark.parametrize("args,message", [
    (["--variants", "full,nope"], "error: no attention 'nope' (configs/attention/: bigbird"),
    (["--tasks", "listops,txt"], "error: no task 'txt' (configs/task/: image listops"),
    (["--seeds", "0,a"], "error: --seeds takes non-negative integers"),
    (["--bogus"], "error: unknown option --bogus"),
    (["--tasks"], "error: --tasks needs a value"),
    (["--tasks", ""], "error: --tasks needs a value"),
    (["--seeds", "--variants", "full"], "error: --seeds needs a value"),
    (["--tasks", "listops,,text"], "error: no task ''"),
])
def test_sweep_script_refuses_typos_before_the_first_run(args, message, tmp_path):
    # PYTHON points nowhere: a run started would fail differently, so the refusal is the script's own.
    r = subprocess.run(["bash", str(ROOT / "scripts" / "sweep_lra.sh"), "smoke", *args], cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "no-python")}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_sweep_script_help_is_its_comment_block():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "sweep_lra.sh"), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("The whole LRA table for one profile")
    assert "python -m lra.results --summary" in r.stdout and "set -euo" not in r.stdout and "cd " not in r.stdout
