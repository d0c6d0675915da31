"""Shared pieces of the attention variants: capability flags and the fused QKV / output projections."""
from __future__ import annotations

import functools
import math
import numbers

import jax.numpy as jnp
from flax import nnx

# LRA's attention layers initialise their projections with Xavier-uniform.
dense_init = nnx.initializers.xavier_uniform()


def check_rate(name: str, option: str, value) -> float:
    """``value`` as a float in [0, 1), else a ValueError naming ``attention.<option>``. NaN and inf are refused
    (``x < 0`` style checks let NaN through, and a NaN rate silently turned dropout off)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: attention.{option} must be a finite number in [0, 1), got {value!r}")
    return float(value)


def check_positive(name: str, option: str, value) -> float:
    """``value`` as a finite float > 0, else a ValueError naming ``attention.<option>`` (NaN and inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: attention.{option} must be a finite number > 0, got {value!r}")
    return float(value)


# name -> class; filled by @register in each variant's module (models/attention/<variant>.py).
REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a variant available as ``attention=<name>`` and ``build(name, ...)``."""
    def decorate(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"attention {name!r} registered twice ({REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return decorate


class AttentionBase(nnx.Module):
    """Base class of every variant.

    Capability flags (class attributes, read by tests and the harness):
      padding_invariant: outputs at real positions do not change when padding is appended.
      complexity: "quadratic", "linear", "n log n", ... in the sequence length.
      length_multiple: the sequence length must be a multiple of this (1: any length).
      pallas: has a Pallas kernel path (``impl="pallas"``).
      pallas_kernel: which kernels that path runs: "flash" (kernels/flash.py, Triton or Mosaic GPU) or
        "linear" (kernels/linear_pallas.py, Triton).
    """

    padding_invariant: bool = True
    complexity: str = "quadratic"
    length_multiple: int = 1
    pallas: bool = False
    pallas_kernel: str = "flash"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None:   # every variant's call checks its inputs first (see check_call)
            @functools.wraps(call)
            def checked(self, x, valid=None, *args, **kw):
                self.check_call(x, valid)
                y = call(self, x, valid, *args, **kw)
                self.check_output(x, y)
                return y

            cls.__call__ = checked

    def check_call(self, x, valid) -> None:
        """x must be [batch, length, dim] and valid None or bool [batch, length]: a valid mask of another length
        was padded or indexed past its end without a word by some variants, a wrong x failed deep inside."""
        name = type(self).__name__
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 3 or shape[-1] != self.dim:
            raise ValueError(f"{name}: x must be [batch, length, {self.dim}], got shape {shape}")
        if valid is not None:
            vshape, dtype = tuple(getattr(valid, "shape", ())), getattr(valid, "dtype", None)
            if vshape != shape[:2] or dtype != jnp.bool_:
                raise ValueError(f"{name}: valid must be a bool array [batch, length] = {list(shape[:2])} (True at "
                                 f"real tokens), got shape {vshape} and dtype {dtype}")

    def check_output(self, x, y) -> None:
        """The output must have x's shape and a floating dtype at least as wide as x's (float32 parameters make
        a bfloat16 x's output float32): a [B, 1, D] output was broadcast in the residual add, a float16 one for a
        float32 x lost precision there, and training went on with either."""
        shape, dtype = tuple(getattr(y, "shape", ())), getattr(y, "dtype", None)
        if (shape != tuple(x.shape) or dtype is None or not jnp.issubdtype(dtype, jnp.floating)
                or jnp.promote_types(dtype, x.dtype) != dtype):
            raise ValueError(f"{type(self).__name__} returned shape {shape} and dtype {dtype}; an attention variant "
                             f"must return x's shape {tuple(x.shape)} in x's dtype ({x.dtype}) or a wider float")

    def __init__(self, *, dim: int, num_heads: int, qkv_dim: int | None, rngs: nnx.Rngs):
        qkv_dim = dim if qkv_dim is None else qkv_dim
        if dim < 1 or num_heads < 1 or qkv_dim < 1:
            raise ValueError(f"dim, num_heads and qkv_dim must be positive, got {dim}, {num_heads}, {qkv_dim}")
        if qkv_dim % num_heads:
            raise ValueError(f"qkv_dim ({qkv_dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.qkv_dim = dim, num_heads, qkv_dim
        self.head_dim = qkv_dim // num_heads
        # One fused projection for q, k and v: a single larger matmul is faster than three on CPU.
        self.qkv = nnx.Linear(dim, 3 * qkv_dim, kernel_init=dense_init, rngs=rngs)
        self.out = nnx.Linear(qkv_dim, dim, kernel_init=dense_init, rngs=rngs)

    def project_qkv(self, x):
        """x [B, L, dim] -> q, k, v each [B, L, heads, head_dim]."""
        b, length, _ = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, self.head_dim)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def project_out(self, y):
        """y [B, L, heads, head_dim] -> [B, L, dim]."""
        b, length = y.shape[:2]
        return self.out(jnp.reshape(y, (b, length, self.qkv_dim)))
