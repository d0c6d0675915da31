"""Validation of a composed run config, before any expensive work.

Each problem raises ``ConfigError`` naming the config key, the bad value and what is allowed.
"""
from __future__ import annotations

import math
import numbers

from lra.optim import SCHEDULES


class ConfigError(ValueError):
    pass


# Tasks whose examples are two documents (a dual encoder): task.pair says how their encodings are combined.
PAIR_TASKS = ("retrieval",)

# Keys that change how a run trains; two runs in one run directory must agree on them to share checkpoints.
RESUME_KEYS = ("task", "model", "attention", "seed")
RESUME_IGNORED_TRAIN_KEYS = ("progress", "log_every", "memory_limit_gb")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(config: dict, section: str, key: str) -> None:
    value = config.get(section, {}).get(key)
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{section}.{key} must be a positive integer, got {value!r}")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


FLOAT32_MAX = 3.4028234663852886e38


def _number(train: dict, key: str, *, strict: bool, optional: bool = False) -> None:
    """``train[key]`` is a finite number, positive (``strict``) or non-negative; or null when ``optional``.
    NaN and infinity are refused (every comparison with NaN is false, so a range check alone lets it through), and
    so is a number float32, the training dtype, cannot hold (1e39 becomes inf in the optimiser)."""
    value = train.get(key)
    if optional and value is None:
        return
    if _is_real(value) and abs(value) <= FLOAT32_MAX and (value > 0 if strict else value >= 0):
        return
    raise ConfigError(f"train.{key} must be {'null or ' if optional else ''}a "
                      f"{'positive' if strict else 'non-negative'} finite number (float32: at most {FLOAT32_MAX:.3g}), "
                      f"got {value!r}")


# The keys each section may hold: an added key (``+train.learning_rate=...``, Hydra's advice for a typo) would
# otherwise be ignored silently and the run train with the default. task.data is checked by lra.data (per task)
# and attention by the variant's signature (models.attention.check_options).
KNOWN_KEYS = {
    None: {"seed", "data_dir", "results_dir", "task", "model", "attention", "train", "profile", "logger"},
    "task": {"name", "num_classes", "vocab_size", "max_length", "pair", "data"},
    "model": {"emb_dim", "num_heads", "num_layers", "qkv_dim", "mlp_dim", "dropout", "attention_dropout", "pooling",
              "positions"},
    "train": {"batch_size", "eval_batch_size", "train_steps", "eval_every", "log_every", "lr", "schedule",
              "warmup_steps", "weight_decay", "grad_clip", "bucket_size", "memory_limit_gb", "progress"},
}

LOGGER_KEYS = {"none": {"name"},
               "wandb": {"name", "project", "entity", "mode", "group", "tags", "init_timeout", "job_type"}}


def _check_known_keys(config: dict) -> None:
    for section, known in KNOWN_KEYS.items():
        keys = set(config if section is None else config[section])
        unknown = sorted(keys - known, key=str)
        if unknown:
            where = "top-level keys" if section is None else f"keys in {section}"
            names = ", ".join(unknown if section is None else (f"{section}.{k}" for k in unknown))
            raise ConfigError(f"unknown config {where}: {names} (a typo, or a key added with '+' that nothing "
                              f"reads); valid: {', '.join(sorted(known))}")


def validate(config: dict) -> None:
    """Check a resolved config (plain dict); raise ConfigError on the first problem."""
    for section in ("task", "model", "attention", "train"):
        if not isinstance(config.get(section), dict):
            raise ConfigError(f"the config has no '{section}' section; compose it through configs/train.yaml")
    for key in ("max_length", "num_classes", "vocab_size"):
        _positive_int(config, "task", key)
    pair = config["task"].get("pair")
    if pair not in (None, "paper", "concat"):
        raise ConfigError(f"task.pair must be null, 'paper' ([X1, X2, X1*X2, X1-X2]) or 'concat' ([X1, X2]), "
                          f"got {pair!r}")
    pairs = config["task"].get("name") in PAIR_TASKS
    if pairs and pair is None:
        raise ConfigError(f"task={config['task']['name']} compares two documents: task.pair must be 'paper' "
                          f"([X1, X2, X1*X2, X1-X2]) or 'concat' ([X1, X2]), got null")
    if not pairs and pair is not None:
        raise ConfigError(f"task.pair is for the two-document tasks ({', '.join(PAIR_TASKS)}); "
                          f"task={config['task'].get('name')} reads one sequence: leave task.pair out (got {pair!r})")
    for key in ("batch_size", "eval_batch_size", "train_steps", "eval_every", "log_every"):
        _positive_int(config, "train", key)
    train = config["train"]
    # jax.random.key keeps a seed's low 32 bits (without jax_enable_x64): 2**32 would repeat seed 0's parameters
    # and dropout while drawing another data order.
    if not _is_int(config.get("seed")) or not 0 <= config["seed"] < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {config.get('seed')!r}")
    _number(train, "lr", strict=True)
    if train.get("schedule") not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {list(SCHEDULES)}, got {train.get('schedule')!r}")
    if not _is_int(train.get("warmup_steps")) or train["warmup_steps"] < 0:
        raise ConfigError(f"train.warmup_steps must be a non-negative integer, got {train.get('warmup_steps')!r}")
    _number(train, "weight_decay", strict=False)
    _number(train, "grad_clip", strict=True, optional=True)
    bucket = train.get("bucket_size")
    if bucket is not None and (not _is_int(bucket) or bucket < 1):
        raise ConfigError(f"train.bucket_size must be null or a positive integer, got {bucket!r}")
    _number(train, "memory_limit_gb", strict=True, optional=True)
    if not isinstance(train.get("progress", True), bool):
        raise ConfigError(f"train.progress must be true or false, got {train.get('progress')!r}")
    model = config["model"]
    for key in ("dropout", "attention_dropout"):
        value = model.get(key, 0.0)
        if not _is_real(value) or not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{key} must be a number in [0, 1), got {value!r}")
    _check_known_keys(config)

    logger = config.get("logger") or {}
    if logger.get("name", "none") not in ("none", "wandb"):
        raise ConfigError(f"logger.name must be 'none' or 'wandb', got {logger.get('name')!r}")
    if logger.get("name") == "wandb" and logger.get("mode", "auto") not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.mode must be auto, online, offline or disabled, got {logger.get('mode')!r}")
    known = LOGGER_KEYS[logger.get("name", "none")]
    if set(logger) - known:
        raise ConfigError(f"unknown config keys in logger (logger={logger.get('name', 'none')}): "
                          f"{', '.join(f'logger.{k}' for k in sorted(set(logger) - known, key=str))}; "
                          f"valid: {', '.join(sorted(known))}")
    timeout = logger.get("init_timeout", 60)
    if not _is_real(timeout) or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"logger.init_timeout must be a positive number of seconds, got {timeout!r}")

    from models.attention import REGISTRY  # late import: jax is heavy and the checks above need none

    name = config["attention"].get("name")
    if name not in REGISTRY:
        raise ConfigError(f"attention.name {name!r} is not a registered variant; valid: {sorted(REGISTRY)}")
    check_impl(name, config["attention"].get("impl", "xla"))
    # A variant's length_multiple needs no check here: the encoder pads the sequence (CLS included) up to it.


def check_impl(name: str, impl) -> None:
    """``impl`` is xla or pallas, and pallas only for a variant with a Pallas kernel (ConfigError otherwise)."""
    from models.attention import REGISTRY

    if impl not in ("xla", "pallas"):
        raise ConfigError(f"attention.impl must be 'xla' or 'pallas', got {impl!r}")
    if impl == "pallas" and not REGISTRY[name].pallas:
        with_kernel = sorted(n for n, cls in REGISTRY.items() if cls.pallas)
        raise ConfigError(f"attention={name} has no Pallas kernel: use attention.impl=xla, or one of the variants "
                          f"with impl=pallas: {', '.join(with_kernel)}")


def resume_view(config: dict) -> dict:
    """The part of a config that must match for a run directory's checkpoints to be resumed."""
    view = {key: config.get(key) for key in RESUME_KEYS}
    view["train"] = {k: v for k, v in config.get("train", {}).items() if k not in RESUME_IGNORED_TRAIN_KEYS}
    return view


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts ('train.lr: 0.05 -> 0.01')."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
