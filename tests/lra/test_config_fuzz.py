"""Bad configs, tried systematically (hypothesis): every bad override is rejected before anything is compiled,
with a message that names the key, and nothing is written to the results directory."""
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lra import config as config_lib
from lra import trainer
from tests.conftest import compose_config

POSITIVE_INTS = ["model.emb_dim", "model.num_heads", "model.num_layers", "model.mlp_dim", "model.qkv_dim",
                 "train.batch_size", "train.train_steps", "train.eval_every", "train.log_every", "task.max_length"]
NONNEGATIVE_INTS = ["seed", "train.warmup_steps"]
RATES = ["model.dropout", "model.attention_dropout"]
NAMES = ["attention.name", "train.schedule", "model.pooling"]


@st.composite
def bad_overrides(draw):
    kind = draw(st.sampled_from(["negative", "zero", "wrong_type", "rate", "name", "heads"]))
    if kind in ("negative", "zero"):
        key = draw(st.sampled_from(POSITIVE_INTS + (NONNEGATIVE_INTS if kind == "negative" else [])))
        value = 0 if kind == "zero" else draw(st.integers(-10**6, -1))
        return key, f"{key}={value}"
    if kind == "wrong_type":
        key = draw(st.sampled_from(POSITIVE_INTS + NONNEGATIVE_INTS))
        value = draw(st.sampled_from(["abc", "2.5", "[1,2]", "true"]))
        return key, f"{key}={value}"
    if kind == "rate":
        key = draw(st.sampled_from(RATES))
        value = draw(st.sampled_from([-0.5, 1.0, 1.5, 7.0]))
        return key, f"{key}={value}"
    if kind == "name":
        key = draw(st.sampled_from(NAMES))
        value = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
        return key, f"{key}=zz_{value}"
    # heads that do not divide the attention width (smoke: qkv_dim 32)
    heads = draw(st.sampled_from([3, 5, 6, 7, 9, 10, 12]))
    return "model.qkv_dim", f"model.num_heads={heads}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_overrides())
def test_bad_overrides_are_rejected_before_compiling(case, tmp_path, monkeypatch):
    key, override = case
    results_dir = tmp_path / "results"

    def no_compile(*args, **kwargs):
        raise AssertionError(f"{override} reached compilation")

    monkeypatch.setattr(trainer.Steps, "compiled", no_compile)
    config = compose_config(["task=listops", "attention=full", "profile=smoke", f"data_dir={tmp_path / 'data'}",
                             f"results_dir={results_dir}", "train.progress=false", override])
    with pytest.raises((config_lib.ConfigError, ValueError, TypeError)) as info:
        trainer.train(config, tmp_path / f"run-{uuid.uuid4().hex}")
    assert key in str(info.value), f"{override}: the message does not name {key}: {info.value}"
    assert not results_dir.exists() or not any(results_dir.iterdir())
