"""Every variant with a Pallas path computes, with impl="pallas", what its XLA path computes (interpret mode)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.attention import REGISTRY, build

F32 = dict(rtol=1e-5, atol=1e-5)
F32_GRAD = dict(rtol=1e-4, atol=1e-4)

# Small options so that tiny lengths still have empty blocks to skip.
OPTIONS = {"local": {"window": 4}, "block_local": {"block": 8}, "strided": {"stride": 5}, "global": {"n": 2},
           "longformer": {"window": 3, "n": 2}, "sparse": {"block": 8, "summary": 2},
           "bigbird": {"block": 8, "num_random_blocks": 1}, "performer": {"num_features": 16},
           "mixed_heads": {"heads": ["local", "bigbird"], "window": 3, "block": 8}}
PALLAS = sorted(name for name, cls in REGISTRY.items() if cls.pallas)


def test_the_pallas_variants():
    assert PALLAS == sorted(["full", "local", "block_local", "strided", "global", "longformer", "sparse", "bigbird",
                             "mixed_heads", "linear", "performer"])


FAST = ("local",)  # the others (two minutes together in interpret mode) run with the slow tests


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PALLAS])
def test_pallas_equals_xla(name):
    length, dim = 36, 16  # not a multiple of the kernels' blocks, nor of the stride (5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, length, dim)), jnp.float32)
    valid = jnp.asarray(np.arange(length)[None] < np.array([[length], [29]]))
    mods = {impl: build(name, dim=dim, num_heads=2, max_len=64, rngs=nnx.Rngs(0), impl=impl,
                        **OPTIONS.get(name, {})) for impl in ("xla", "pallas")}
    out = {impl: m(x, valid) for impl, m in mods.items()}
    np.testing.assert_allclose(np.asarray(out["pallas"]), np.asarray(out["xla"]), **F32)

    def loss(m, x):
        return (m(x, valid) ** 2).sum()

    grads = {impl: nnx.grad(loss, argnums=(0, 1))(m, x) for impl, m in mods.items()}
    (gm_x, gx_x), (gm_p, gx_p) = grads["xla"], grads["pallas"]
    np.testing.assert_allclose(np.asarray(gx_p), np.asarray(gx_x), **F32_GRAD)
    for a, b in zip(jax.tree.leaves(nnx.state(gm_p, nnx.Param)), jax.tree.leaves(nnx.state(gm_x, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F32_GRAD)


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if not c.pallas))
def test_variants_without_a_kernel_say_so(name):
    with pytest.raises(NotImplementedError, match="impl='xla'"):
        build(name, dim=16, num_heads=2, max_len=64, rngs=nnx.Rngs(0), impl="pallas")


def test_pallas_backend_of_each_variant(monkeypatch):
    from models.attention import pallas_backend

    cpu = jax.default_backend() == "cpu"  # the GPU check runs this file on a GPU too
    triton, mosaic = ("interpret", "interpret:mosaic_gpu") if cpu else ("triton", "mosaic_gpu")
    monkeypatch.setenv("LRA_PALLAS_GPU_BACKEND", "mosaic_gpu")
    for name, cls in REGISTRY.items():
        want = None if not cls.pallas else triton if cls.pallas_kernel == "linear" else mosaic
        assert pallas_backend(name) == want, name
    assert {n for n, c in REGISTRY.items() if c.pallas and c.pallas_kernel == "linear"} == {"linear", "performer"}
    monkeypatch.delenv("LRA_PALLAS_GPU_BACKEND")
    assert pallas_backend("full") == triton and pallas_backend("sinkhorn") is None
