"""Validation of a composed run config, before any expensive work.

Each problem raises ``ConfigError`` naming the config key, the bad value and what is allowed.
"""
from __future__ import annotations

import numbers

from lra.optim import SCHEDULES


class ConfigError(ValueError):
    pass


# Keys that change how a run trains; two runs in one run directory must agree on them to share checkpoints.
RESUME_KEYS = ("task", "model", "attention", "seed")
RESUME_IGNORED_TRAIN_KEYS = ("progress", "log_every", "memory_limit_gb")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(config: dict, section: str, key: str) -> None:
    value = config.get(section, {}).get(key)
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{section}.{key} must be a positive integer, got {value!r}")


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
    for key in ("batch_size", "eval_batch_size", "train_steps", "eval_every", "log_every"):
        _positive_int(config, "train", key)
    train = config["train"]
    if not _is_int(config.get("seed")) or config["seed"] < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {config.get('seed')!r}")
    if not isinstance(train.get("lr"), numbers.Real) or isinstance(train.get("lr"), bool) or not train["lr"] > 0:
        raise ConfigError(f"train.lr must be a positive number, got {train.get('lr')!r}")
    if train.get("schedule") not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {list(SCHEDULES)}, got {train.get('schedule')!r}")
    if not _is_int(train.get("warmup_steps")) or train["warmup_steps"] < 0:
        raise ConfigError(f"train.warmup_steps must be a non-negative integer, got {train.get('warmup_steps')!r}")
    wd = train.get("weight_decay")
    if not isinstance(wd, numbers.Real) or isinstance(wd, bool) or wd < 0:
        raise ConfigError(f"train.weight_decay must be a non-negative number, got {wd!r}")
    clip = train.get("grad_clip")
    if clip is not None and (not isinstance(clip, numbers.Real) or isinstance(clip, bool) or clip <= 0):
        raise ConfigError(f"train.grad_clip must be null or a positive number, got {clip!r}")
    bucket = train.get("bucket_size")
    if bucket is not None and (not _is_int(bucket) or bucket < 1):
        raise ConfigError(f"train.bucket_size must be null or a positive integer, got {bucket!r}")
    limit = train.get("memory_limit_gb")
    if limit is not None and (not isinstance(limit, numbers.Real) or isinstance(limit, bool) or limit <= 0):
        raise ConfigError(f"train.memory_limit_gb must be null or a positive number, got {limit!r}")

    logger = config.get("logger") or {}
    if logger.get("name", "none") not in ("none", "wandb"):
        raise ConfigError(f"logger.name must be 'none' or 'wandb', got {logger.get('name')!r}")
    if logger.get("name") == "wandb" and logger.get("mode", "auto") not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.mode must be auto, online, offline or disabled, got {logger.get('mode')!r}")

    from models.attention import REGISTRY  # late import: jax is heavy and the checks above need none

    name = config["attention"].get("name")
    if name not in REGISTRY:
        raise ConfigError(f"attention.name {name!r} is not a registered variant; valid: {sorted(REGISTRY)}")
    check_impl(name, config["attention"].get("impl", "xla"))
    multiple = REGISTRY[name].length_multiple
    if bucket and multiple > 1 and bucket % multiple:
        raise ConfigError(f"train.bucket_size ({bucket}) must be a multiple of {multiple} for attention={name}")
    if multiple > 1 and config["task"]["max_length"] % multiple:
        raise ConfigError(f"task.max_length ({config['task']['max_length']}) must be a multiple of {multiple} "
                          f"for attention={name}")


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
