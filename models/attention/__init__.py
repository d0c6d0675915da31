"""Attention variants: a registry of NNX modules with one calling convention.

    module = build(name, dim=..., num_heads=..., max_len=..., rngs=nnx.Rngs(0), **options)
    y = module(x, valid=None, deterministic=True, rngs=None)   # x [batch, length, dim] -> same shape and dtype

A new variant: a module in this package (imported automatically) with a class decorated ``@register("name")``,
subclassing ``AttentionBase``, whose keyword-only ``__init__`` takes dim, num_heads, max_len, rngs and the options
the harness passes to every variant, qkv_dim, dropout and impl (``impl="pallas"`` without a kernel raises
NotImplementedError naming impl='xla'), plus its own options, annotated (int, float, bool, str, None: checked by
``check_options``); and ``configs/attention/<name>.yaml`` with ``name: <name>`` and the options' defaults.

``valid`` is bool [batch, length] (True at real tokens); ``rngs`` (an ``nnx.Rngs`` with a ``dropout`` stream)
is needed only when ``deterministic=False`` and the variant has dropout.
Each class states its capabilities as class attributes: ``padding_invariant``, ``complexity``,
``length_multiple`` and ``pallas`` (see ``AttentionBase``).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing

from models.attention.base import REGISTRY, AttentionBase, register

# Every module of this package defines variants with @register; importing them fills REGISTRY.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


class AttentionOptionError(TypeError, ValueError):
    """An option a variant does not take, or of the wrong type (a TypeError, and a ValueError so that the
    command line reports it as bad input)."""


_SIMPLE_TYPES = {"int", "float", "bool", "str", "None"}


def _type_ok(value, kinds: set[str]) -> bool:
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    if isinstance(value, float):
        return "float" in kinds
    return isinstance(value, str) and "str" in kinds


def _kinds(annotation) -> set[str]:
    """The type names of an annotation, as a string ("int | None", under ``from __future__ import annotations``)
    or as the types themselves (a module without it): {"int", "None"}; empty when unannotated or not simple."""
    if annotation is inspect.Parameter.empty:
        return set()
    if isinstance(annotation, str):
        return {part.strip() for part in annotation.split("|")}
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    names = set()
    for arg in typing.get_args(annotation) if union else (annotation,):
        if arg is type(None) or arg is None:
            names.add("None")
        elif isinstance(arg, type):
            names.add(arg.__name__)
        else:   # list[int], Callable ...: the variant checks those itself
            return set()
    return names


# What the harness passes to every variant, whatever its config: the encoder the backbone's qkv_dim and attention
# dropout, lra.bench and the configs the impl.
HARNESS_OPTIONS = ("qkv_dim", "dropout", "impl")


def check_options(name: str, options: dict) -> None:
    """Unknown options, and options whose value is not of the type the variant's signature annotates (int, float,
    bool, str, or None where allowed: e.g. ``window=abc`` or ``share_kv=7``), fail naming the option; range
    checks stay with each variant."""
    if name not in REGISTRY:
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    parameters = inspect.signature(REGISTRY[name].__init__).parameters
    accepted = set(parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        harness = [k for k in unknown if k in HARNESS_OPTIONS]
        note = (f" ({', '.join(harness)}: passed to every variant by the harness, from model.qkv_dim, "
                f"model.attention_dropout and attention.impl; a variant's __init__ must accept "
                f"{', '.join(HARNESS_OPTIONS)}, see models/attention/__init__.py)") if harness else ""
        raise AttentionOptionError(f"attention {name!r} got unknown options {unknown}; it accepts "
                                   f"{sorted(accepted - {'dim', 'num_heads', 'max_len', 'rngs'})}{note}")
    for key, value in options.items():
        kinds = _kinds(parameters[key].annotation)   # unannotated (lists, callables): the variant checks them
        if kinds and kinds <= _SIMPLE_TYPES and not _type_ok(value, kinds):
            wanted = " or ".join("null" if k == "None" else k for k in sorted(kinds, key=lambda k: k == "None"))
            raise AttentionOptionError(f"attention.{key} of {name} must be {wanted}, got {value!r}")
        # Sizes and counts become array dimensions: beyond int64 they fail deep inside numpy or JAX with an
        # OverflowError. (Seeds are the variants' own: numpy takes any size, jax.random.key does not.)
        if (isinstance(value, int) and not isinstance(value, bool) and "seed" not in key
                and not -(2**63) <= value < 2**63):
            raise AttentionOptionError(f"attention.{key} of {name} must fit in 64 bits, got {value!r}")


def build(name: str, *, dim: int, num_heads: int, max_len: int, rngs, **options) -> AttentionBase:
    """Instantiate the variant ``name``; unknown names, unknown options and options of the wrong type fail with
    what is valid."""
    check_options(name, options)
    return REGISTRY[name](dim=dim, num_heads=num_heads, max_len=max_len, rngs=rngs, **options)


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


__all__ = ["REGISTRY", "AttentionBase", "AttentionOptionError", "build", "check_options", "pallas_backend",
           "register"]
