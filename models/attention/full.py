"""Full softmax attention (Vaswani et al. 2017, "Attention Is All You Need")."""
from __future__ import annotations

from flax import nnx

import kernels
from models.attention.base import AttentionBase, register


@register("full")
class FullAttention(AttentionBase):
    """Multi-head softmax attention over every real token; padding keys are masked out.

    Options: qkv_dim (total width of q/k/v, default dim), dropout (on the attention weights),
    impl ("xla", or "pallas": the flash-attention kernel of ``kernels.flash``).
    """

    padding_invariant = True
    complexity = "quadratic"
    length_multiple = 1
    pallas = True

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla"):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        if impl not in kernels.IMPLS:   # at build time, as every other variant
            raise ValueError(f"impl must be one of {kernels.IMPLS}, got {impl!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout, self.impl = dropout, impl

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.project_qkv(x)
        use_dropout = not deterministic and self.dropout > 0.0
        if use_dropout and rngs is None:
            raise ValueError("FullAttention with dropout needs rngs when deterministic=False")
        y = kernels.attention(q, k, v, kv_valid=valid, impl=self.impl,
                              dropout_rate=self.dropout if use_dropout else 0.0,
                              dropout_rng=rngs.dropout() if use_dropout else None)
        return self.project_out(y)
