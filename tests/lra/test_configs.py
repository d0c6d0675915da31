"""Every config composes, validates and builds a model that runs; bad names list the valid ones."""
import itertools
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

from lra import batching, trainer
from lra import config as config_lib
from tests.conftest import ROOT, cli, compose_config, group_options

TASKS, ATTENTIONS, PROFILES = group_options("task"), group_options("attention"), group_options("profile")


def test_groups_exist():
    assert TASKS == ["image", "listops", "pathfinder", "pathx", "retrieval", "text"]
    assert "full" in ATTENTIONS and PROFILES == ["cpu", "lra", "smoke"]
    assert group_options("logger") == ["none", "wandb"]


CASES = sorted({(t, a, "lra") for t in TASKS for a in ATTENTIONS} | {("listops", a, p) for a in ATTENTIONS
                                                                        for p in PROFILES}
               | {(t, "full", p) for t in TASKS for p in PROFILES})


@pytest.mark.parametrize("task,attention,profile", CASES)
def test_every_config_composes_and_builds(task, attention, profile):
    """Every variant with every task's official config (and every profile of ListOps), every task and profile
    with full attention: composes, validates and builds its model (shapes only: cheap)."""
    config = compose_config([f"task={task}", f"attention={attention}", f"profile={profile}"])
    assert config["task"]["name"] == task and config["attention"]["name"] == attention
    assert config["profile"] == profile
    config_lib.validate(config)
    params = trainer.count_params(nnx.eval_shape(lambda: trainer.build_model(config)))
    assert params > 0


# The lra profile's train step (the official model sizes) takes about 9 s to compile per task: ListOps's runs in
# the fast suite, the other tasks' with the slow tests.
@pytest.mark.parametrize("task,profile", [
    pytest.param(t, p, marks=pytest.mark.slow) if p == "lra" and t != "listops" else (t, p)
    for t, p in itertools.product(TASKS, PROFILES)])
def test_every_profile_runs_a_train_step(task, profile):
    """One train and one eval step of each profile's model (every variant trains under smoke in
    tests/models/test_attention_registry.py)."""
    config = compose_config([f"task={task}", "attention=full", f"profile={profile}"])
    # The model and optimiser the config names, one train step and one eval step on a tiny batch.
    model = trainer.build_model(config)
    graphdef, params, rest = trainer.split_model(model)
    tx = trainer.build_optimizer(config)
    opt_state = tx.init(params)
    steps = trainer.Steps(graphdef, tx, config["seed"])
    arrays = {"inputs": np.ones((2, 16), np.int32), "targets": np.array([1, 0], np.int32),
              "lengths": np.array([16, 9], np.int32)}
    if config["task"].get("pair"):   # Retrieval: two documents per example
        arrays = trainer.pair_arrays({"inputs1": arrays["inputs"], "inputs2": arrays["inputs"] + 1,
                                      "lengths1": arrays["lengths"], "lengths2": arrays["lengths"][::-1],
                                      "targets": arrays["targets"]})
    batch = batching.make_batch(arrays, np.arange(2), 16)
    before = jax.tree.map(lambda x: np.array(x, copy=True), params)  # params are donated to the step
    step_fn = steps.compiled("train", params, opt_state, rest, batch, np.int32(0))
    for step in range(2):  # the warmup schedules give lr 0 at the first step
        params, opt_state, rest, metrics = step_fn(params, opt_state, rest, batch, np.int32(step))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)))
    out = steps.compiled("eval", params, rest, batch)(params, rest, batch)
    assert float(out["count"]) == 2.0


def test_lra_profile_is_the_official_listops_config():
    c = compose_config(["task=listops", "profile=lra"])
    m, t = c["model"], c["train"]
    assert (m["emb_dim"], m["num_heads"], m["num_layers"], m["qkv_dim"], m["mlp_dim"]) == (512, 8, 4, 512, 1024)
    assert (m["dropout"], m["attention_dropout"], m["pooling"], m["positions"]) == (0.1, 0.1, "cls", "sinusoidal")
    assert (t["batch_size"], t["train_steps"], t["lr"], t["schedule"], t["warmup_steps"], t["weight_decay"]) == \
        (32, 5000, 0.05, "rsqrt", 1000, 0.1)
    assert c["task"]["max_length"] == 2000
    g = c["task"]["data"]["generate"]
    assert (g["num_train"], g["num_val"], g["num_test"], g["min_length"], g["max_length"]) == \
        (96000, 2000, 2000, 500, 2000)


# LRA.md, "Official configs": (batch, steps, lr, schedule, warmup, weight decay), (emb, heads, layers, qkv, mlp),
# (dropout, attention dropout, pooling, positions), max length.
OFFICIAL = {
    "text": ((32, 20000, 0.05, "rsqrt", 8000, 0.1), (256, 4, 4, 256, 1024), (0.1, 0.1, "cls", "sinusoidal"), 1000),
    "retrieval": ((32, 5000, 0.05, "rsqrt", 8000, 0.1), (128, 4, 4, 128, 512), (0.1, 0.1, "cls", "sinusoidal"),
                  4000),
    "image": ((256, 35000, 5e-4, "cosine", 175, 0.0), (128, 8, 1, 64, 128), (0.3, 0.2, "cls", "learned"), 1024),
    "pathfinder": ((512, 62400, 1e-3, "cosine", 312, 0.0), (32, 4, 4, 16, 32), (0.2, 0.1, "mean", "sinusoidal"),
                   1024),
    "pathx": ((64, 500000, 1e-3, "cosine", 2500, 0.0), (32, 2, 1, 16, 32), (0.1, 0.1, "mean", "learned"), 16384),
}


@pytest.mark.parametrize("task", sorted(OFFICIAL))
def test_lra_profile_is_the_official_config(task):
    c = compose_config([f"task={task}", "profile=lra"])
    m, t = c["model"], c["train"]
    train, sizes, rest, length = OFFICIAL[task]
    assert (t["batch_size"], t["train_steps"], t["lr"], t["schedule"], t["warmup_steps"], t["weight_decay"]) == train
    assert (m["emb_dim"], m["num_heads"], m["num_layers"], m["qkv_dim"], m["mlp_dim"]) == sizes
    assert (m["dropout"], m["attention_dropout"], m["pooling"], m["positions"]) == rest
    assert c["task"]["max_length"] == length and t["grad_clip"] is None


@pytest.mark.parametrize("override,key", [
    ("train.batch_size=-1", "train.batch_size"),
    ("train.train_steps=0", "train.train_steps"),
    ("train.lr=-0.1", "train.lr"),
    ("train.schedule=linear", "train.schedule"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.bucket_size=0", "train.bucket_size"),
    ("seed=-3", "seed"),
    ("task.max_length=0", "task.max_length"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("attention.name=nope", "attention.name"),
    ("+task.pair=sum", "task.pair"),
])
def test_validation_names_the_key(override, key):
    config = compose_config(["profile=smoke", override])
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
        config_lib.validate(config)


@pytest.mark.parametrize("overrides,match", [
    (["attention=linformer", "attention.impl=pallas"], r"attention=linformer has no Pallas kernel: use "
                                                       r"attention\.impl=xla, or one of .*\blocal\b"),
    (["attention=full", "attention.impl=cuda"], r"attention\.impl must be 'xla' or 'pallas', got 'cuda'"),
])
def test_impl_is_checked_with_the_config(overrides, match):
    # Before any model is built: a variant without a Pallas kernel names the ones that have one.
    config = compose_config(["profile=smoke", *overrides])
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(config)
    for name in ("full", "local", "linear", "performer"):   # and those that have one pass
        config_lib.validate(compose_config(["profile=smoke", f"attention={name}", "attention.impl=pallas"]))


@pytest.mark.parametrize("override,key", [("model.num_heads=3", "model.qkv_dim"), ("model.pooling=max", "pooling"),
                                          ("model.emb_dim=0", "model.emb_dim")])
def test_model_validation_names_the_key(override, key):
    config = compose_config(["profile=smoke", override])
    with pytest.raises(ValueError, match=key):
        trainer.build_model(config)


@pytest.mark.parametrize("group,bad", [("task", "imagenet"), ("attention", "nope"), ("profile", "gpu")])
def test_unknown_choice_lists_valid_names(group, bad, subprocess_env):
    r = subprocess.run(cli("lra.train", f"{group}={bad}"), cwd=ROOT, env=subprocess_env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "Available options" in r.stderr and {"task": "listops", "attention": "full",
                                                 "profile": "smoke"}[group] in r.stderr
