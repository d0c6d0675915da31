"""Attention variants: a registry of NNX modules with one calling convention.

    module = build(name, dim=..., num_heads=..., max_len=..., rngs=nnx.Rngs(0), **options)
    y = module(x, valid=None, deterministic=True, rngs=None)   # x [batch, length, dim] -> same shape

``valid`` is bool [batch, length] (True at real tokens); ``rngs`` (an ``nnx.Rngs`` with a ``dropout`` stream)
is needed only when ``deterministic=False`` and the variant has dropout.
Each class states its capabilities as class attributes: ``padding_invariant``, ``complexity``,
``length_multiple`` and ``pallas`` (see ``AttentionBase``).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from models.attention.base import REGISTRY, AttentionBase, register

# Every module of this package defines variants with @register; importing them fills REGISTRY.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def build(name: str, *, dim: int, num_heads: int, max_len: int, rngs, **options) -> AttentionBase:
    """Instantiate the variant ``name``; unknown names and unknown options fail with the valid choices."""
    if name not in REGISTRY:
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"attention {name!r} got unknown options {unknown}; it accepts "
                        f"{sorted(accepted - {'dim', 'num_heads', 'max_len', 'rngs'})}")
    return cls(dim=dim, num_heads=num_heads, max_len=max_len, rngs=rngs, **options)


def pallas_backend(name: str) -> str | None:
    """The Pallas backend variant ``name`` runs with ``impl="pallas"`` here: "interpret" on CPU, "triton" or
    "mosaic_gpu" on GPU (``kernels.flash.backend``; the linear kernels are Triton only); None without a
    Pallas path."""
    import jax

    from kernels import flash

    cls = REGISTRY.get(name)
    if cls is None or not cls.pallas:
        return None
    if cls.pallas_kernel == "linear":
        return "interpret" if jax.default_backend() == "cpu" else "triton"
    return flash.backend()


__all__ = ["REGISTRY", "build", "register", "AttentionBase", "pallas_backend"]
