"""LRA's optimiser and learning-rate schedules.

LRA trains with Adam(b1=0.9, b2=0.98, eps=1e-9) and weight decay decoupled from the gradient and scaled by the
learning rate (param -= lr * (adam_update + wd * param)), which is optax.adamw. Schedules:
  rsqrt:    lr * min(1, step / warmup) / sqrt(max(step, warmup))   (LRA's constant*linear_warmup*rsqrt_decay)
  cosine:   linear warmup to lr, then cosine decay to 0 at train_steps
  constant: linear warmup to lr, then constant
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("rsqrt", "cosine", "constant")


def schedule(name: str, *, lr: float, warmup_steps: int, train_steps: int) -> optax.Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {name!r}")
    warmup = max(int(warmup_steps), 0)

    def warmup_factor(step):
        return jnp.minimum(1.0, step / warmup) if warmup else 1.0

    if name == "rsqrt":
        def fn(step):
            step = jnp.asarray(step, jnp.float32)
            return lr * warmup_factor(step) / jnp.sqrt(jnp.maximum(step, max(warmup, 1)))
        return fn
    if name == "cosine":
        def fn(step):
            step = jnp.asarray(step, jnp.float32)
            progress = jnp.clip((step - warmup) / max(train_steps - warmup, 1), 0.0, 1.0)
            return lr * warmup_factor(step) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return fn

    def fn(step):
        return lr * warmup_factor(jnp.asarray(step, jnp.float32))
    return fn


def optimizer(*, lr: float, schedule_name: str, warmup_steps: int, train_steps: int, weight_decay: float = 0.0,
              grad_clip: float | None = None, b1: float = 0.9, b2: float = 0.98,
              eps: float = 1e-9) -> optax.GradientTransformation:
    sched = schedule(schedule_name, lr=lr, warmup_steps=warmup_steps, train_steps=train_steps)
    tx = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx
