"""LRA's schedules and AdamW as LRA uses it."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lra import optim


def test_rsqrt_schedule_matches_lra_formula():
    fn = optim.schedule("rsqrt", lr=0.05, warmup_steps=1000, train_steps=5000)
    for step in (0, 1, 500, 999, 1000, 1001, 4000):
        expected = 0.05 * min(1.0, step / 1000) / np.sqrt(max(step, 1000))
        assert float(fn(step)) == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule():
    fn = optim.schedule("cosine", lr=1e-3, warmup_steps=100, train_steps=1100)
    assert float(fn(0)) == 0.0
    assert float(fn(50)) == pytest.approx(5e-4)
    assert float(fn(100)) == pytest.approx(1e-3)
    assert float(fn(600)) == pytest.approx(5e-4, rel=1e-5)
    assert float(fn(1100)) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="rsqrt"):
        optim.schedule("step", lr=1.0, warmup_steps=0, train_steps=10)


def test_adamw_is_decoupled_and_scaled_by_lr():
    """One step from zero moments: update = -lr * (sign-ish adam term + wd * param)."""
    tx = optim.optimizer(lr=0.1, schedule_name="constant", warmup_steps=0, train_steps=10, weight_decay=0.5)
    params = {"w": jnp.array([2.0, -4.0])}
    grads = {"w": jnp.array([1.0, 0.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    adam = np.array([1.0, 0.0]) / (np.sqrt(np.array([1.0, 0.0])) + 1e-9)  # bias-corrected first step
    expected = -0.1 * (adam + 0.5 * np.array([2.0, -4.0]))
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-6)


def test_gradient_clipping():
    tx = optim.optimizer(lr=1.0, schedule_name="constant", warmup_steps=0, train_steps=10, grad_clip=1.0)
    assert isinstance(tx, optax.GradientTransformation)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    clipped, _ = optax.clip_by_global_norm(1.0).update({"w": jnp.array([30.0, 40.0])}, optax.EmptyState())
    np.testing.assert_allclose(np.asarray(clipped["w"]), [0.6, 0.8], rtol=1e-6)
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, state, params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))
