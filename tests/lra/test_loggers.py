"""Loggers: W&B offline when no key is configured (never waits on the network), what a run logs, fallbacks."""
import glob
import sys
import types

import pytest

from lra import loggers, trainer
from tests.conftest import compose_config


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """No API key anywhere: no WANDB_API_KEY, an empty HOME (no ~/.netrc), no WANDB_MODE."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_mode_is_offline_without_a_key(no_wandb_key, monkeypatch):
    assert loggers.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert loggers.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.resolve_mode("auto") == "disabled"          # the environment wins
    with pytest.raises(ValueError, match="logger.mode"):
        monkeypatch.delenv("WANDB_MODE")
        loggers.resolve_mode("sometimes")


def test_smoke_run_logs_offline_to_the_run_directory(no_wandb_key, isolated):
    pytest.importorskip("wandb")
    paths, _ = isolated
    config = compose_config(["task=listops", "attention=local", "profile=smoke", "logger=wandb",
                             f"data_dir={paths['data']}", f"results_dir={paths['results']}", "train.progress=false"])
    record = trainer.train(config, paths["run"])
    files = glob.glob(str(paths["run"] / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    raw = open(files[0], "rb").read()
    # The binary run log carries the grouping, tags, config, per-step metrics and the record's summary.
    for text in (b"listops", b"local", b"profile:smoke", b"emb_dim", b"train/loss", b"val/accuracy",
                 b"test/accuracy", b"steps_per_second", b"peak_memory_bytes", b"params_ratio", b"git_commit"):
        assert text in raw, text
    assert record["test_accuracy"] >= 0


class FakeRun:
    starting_step = 0   # what W&B says for a new run; a resumed one starts after its last step

    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, False
        self.id = kwargs["id"]

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def fake_wandb(monkeypatch, fail_online=False):
    runs = []

    def init(mode, settings, **kwargs):
        if fail_online and mode == "online":
            raise TimeoutError("no network")
        run = FakeRun(mode=mode, **kwargs)
        runs.append(run)
        return run

    module = types.SimpleNamespace(init=init, Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_what_the_logger_sends(monkeypatch, tmp_path):
    runs = fake_wandb(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = compose_config(["task=listops", "attention=linear", "profile=smoke", "logger=wandb", "seed=3",
                             "logger.tags=[mine]"])
    logger = loggers.make_logger(config, tmp_path / "run")
    logger.log({"train/loss": 1.5}, 10)
    logger.finish({"test_accuracy": 0.5, "steps_per_second": 3.0, "params": 10, "ignored": 1})
    (run,) = runs
    kw = run.kwargs
    assert kw["group"] == "listops" and kw["tags"][:3] == ["linear", "profile:smoke", "impl:xla"]
    assert "mine" in kw["tags"] and kw["name"] == "listops-linear-smoke-seed3" and kw["mode"] == "offline"
    assert kw["config"]["model"] == config["model"] and "git_commit" in kw["config"]["meta"]
    assert kw["id"] == loggers.run_id(tmp_path / "run") and kw["resume"] == "allow"   # a resumed run continues
    assert run.logged == [(10, {"train/loss": 1.5})] and run.finished
    assert run.summary == {"test_accuracy": 0.5, "steps_per_second": 3.0, "params": 10}


def test_a_resumed_wandb_run_is_not_sent_the_steps_it_holds(monkeypatch, tmp_path):
    runs = fake_wandb(monkeypatch)
    monkeypatch.setattr(FakeRun, "starting_step", 13)   # the killed run had logged up to step 12
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = loggers.make_logger(compose_config(["profile=smoke", "logger=wandb"]), tmp_path / "run")
    for step in (11, 12, 13, 14):
        logger.log({"train/loss": 1.0}, step)
    assert [step for step, _ in runs[0].logged] == [13, 14]


def test_trim_metrics_keeps_the_rows_up_to_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert loggers.trim_metrics(path, 5) == 0 and not path.exists()    # a fresh run: nothing to trim
    rows = ['{"step": 5, "train_loss": 1.0}\n', '{"step": 5, "val_accuracy": 0.5}\n',
            '{"step": 10, "train_loss": 0.9}\n']
    path.write_text("".join(rows) + '{"step": 1')                       # the kill cut the last line
    assert loggers.trim_metrics(path, 5) == 2
    assert path.read_text() == "".join(rows[:2])
    assert loggers.trim_metrics(path, 5) == 0 and path.read_text() == "".join(rows[:2])
    assert loggers.trim_metrics(path, 0) == 2 and path.read_text() == ""  # no checkpoint: the run starts afresh


def test_online_start_failure_falls_back_to_offline(monkeypatch, tmp_path):
    runs = fake_wandb(monkeypatch, fail_online=True)
    monkeypatch.setenv("WANDB_MODE", "online")
    config = compose_config(["profile=smoke", "logger=wandb"])
    with pytest.warns(RuntimeWarning, match="offline"):
        loggers.make_logger(config, tmp_path)
    assert [r.kwargs["mode"] for r in runs] == ["offline"]


def test_none_logger_and_bad_names():
    assert type(loggers.make_logger(compose_config(["profile=smoke"]), ".")) is loggers.Logger
    with pytest.raises(ValueError, match="logger.name"):
        loggers.make_logger({"logger": {"name": "tensorboard"}}, ".")


def test_a_real_online_start_that_fails_goes_on_offline(no_wandb_key, monkeypatch, tmp_path):
    # The real wandb, with a key and a server that refuses connections: the online start times out, and the
    # offline start after it must not find the run id still claimed ("run ID ... is in use", before the teardown).
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    config = compose_config(["profile=smoke", "logger=wandb", "logger.init_timeout=5"])
    with pytest.warns(RuntimeWarning, match="logging offline instead"):
        logger = loggers.make_logger(config, tmp_path / "run")
    try:
        assert logger.mode == "offline"
        logger.log({"train/loss": 1.0}, 1)
    finally:
        logger.finish()
    assert glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*"))


@pytest.mark.parametrize("base_url, host", [(None, None), ("https://wandb.example.org:8443", "wandb.example.org")])
def test_a_wandb_login_is_found_for_the_server_wandb_uses(no_wandb_key, monkeypatch, tmp_path, base_url, host):
    # `wandb login` writes ~/.netrc for the host of the server the installed wandb talks to, which is not always
    # api.wandb.ai (wandb 0.31's default is another one).
    import urllib.parse

    import wandb

    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    else:
        monkeypatch.delenv("WANDB_BASE_URL", raising=False)
        host = urllib.parse.urlparse(wandb.Settings().base_url).hostname
    assert loggers.api_key_configured() is False
    netrc_file = tmp_path / "home" / ".netrc"
    netrc_file.write_text(f"machine {host}\n  login user\n  password {'1' * 40}\n")
    netrc_file.chmod(0o600)
    assert loggers.api_key_configured() is True and loggers.resolve_mode("auto") == "online"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {'1' * 40}\n")   # the classic host
    assert loggers.api_key_configured() is True
