"""Synthetic attention and attention-free token mixing.

- ``synthesizer``: Tay, Bahri, Metzler, Juan, Zhao and Zheng (2021), "Synthesizer: Rethinking Self-Attention for
  Transformer Models" (ICML 2021). Attention logits that are learned functions of position (random / factorized
  random) or of each token alone (dense), optionally added to the dot-product logits as LRA ran it.
- ``mixer``: Tolstikhin, Houlsby, Kolesnikov, Beyer, Zhai, Unterthiner, Yung, Steiner, Keysers, Uszkoreit, Lucic
  and Dosovitskiy (2021), "MLP-Mixer: An all-MLP Architecture for Vision" (NeurIPS 2021): the token-mixing MLP.
- ``fnet``: Lee-Thorp, Ainslie, Eckstein and Ontanon (2022), "FNet: Mixing Tokens with Fourier Transforms"
  (NAACL 2022): the real part of a 2-D discrete Fourier transform over the sequence and hidden axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

import kernels
from models.attention.base import AttentionBase, dense_init, register

SYNTHESIZER_MODES = ("dense", "random", "factorized_random")


def _check_impl(impl: str, name: str) -> None:
    if impl not in kernels.IMPLS:
        raise ValueError(f"{name}: impl must be one of {kernels.IMPLS}, got {impl!r}")
    if impl == "pallas":
        raise NotImplementedError(f"{name}: impl='pallas' has no Pallas kernel; use impl='xla'")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _check_shapes(x, valid, dim: int, max_len: int, name: str) -> None:
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name}: x must be [batch, length, {dim}], got {x.shape}")
    if x.shape[1] > max_len:
        raise ValueError(f"{name}: sequence length {x.shape[1]} exceeds max_len {max_len}")
    if valid is not None and tuple(valid.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name}: valid must be [batch, length] = {x.shape[:2]}, got {valid.shape}")


def _zero_padding(x, valid):
    """Zero the features of padded tokens (valid False) so they cannot contribute to any mixing."""
    if valid is None:
        return x
    return jnp.where(jnp.asarray(valid, bool)[:, :, None], x, jnp.zeros((), x.dtype))


@register("synthesizer")
class SynthesizerAttention(AttentionBase):
    """Synthesizer attention: softmax over synthesised logits (+ the dot-product logits when mixed).

    Logits per head h, query i, key j (all sliced from ``max_len``-sized parameters to the actual length L):
      mode="random":            R[h, i, j], a learned [heads, max_len, max_len] table (``trainable_random=False``
                                keeps it at its random initialisation: "fixed random").
      mode="factorized_random": (A[h] B[h]^T)[i, j] with A, B learned [heads, max_len, rank].
      mode="dense":             per token, b2[h, j] + sum_f W2[h, f, j] relu(x_i W1 + b1)[h, f]: an MLP
                                dim -> heads x hidden -> max_len, the paper's F(X_i) (one MLP per head).
    ``mix_with_dot_product=True`` (LRA's configuration, ``ignore_dot_product=False`` there) adds q.k/sqrt(head_dim)
    to these logits; ``False`` is synthetic attention alone, which reads only the value slice of the fused qkv
    projection (the q/k columns then stay unused, but are still created so every variant built with the same
    ``nnx.Rngs`` shares its projections with ``full``). Padded keys are masked out of the softmax (exactly zero
    weight); a query with no real key gets zeros. ``dropout`` applies to the attention weights.

    Options (LRA defaults): mode="random" (LRA's Synthesizer encoder), mix_with_dot_product=True, rank=32
    (LRA's k, factorized_random only), hidden=None (dense-mode width per head; None = head_dim as in LRA),
    trainable_random=True (random mode only). Parameters use Xavier-uniform like LRA's synthesizer layer.

    Notes: LRA's dense mode reshapes [B, L, H, max_len] to [B, H, L, max_len] without a transpose (mixing heads
    and positions) and shares its second layer across heads; here each head has its own correctly laid out
    logits. A fixed random table is an ``nnx.Param`` read through ``stop_gradient`` (the trainer splits the model
    by ``nnx.Param`` only): its gradient is exactly zero, but decoupled weight decay (train.weight_decay > 0)
    would still shrink it.

    Complexity: quadratic (the [heads, L, L] logits are the method). Padding invariant: yes, every logit (i, j)
    depends only on positions i, j (and token i for dense), never on L, and appended keys are masked.
    """

    padding_invariant = True
    complexity = "quadratic"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", mode: str = "random", mix_with_dot_product: bool = True,
                 rank: int = 32, hidden: int | None = None, trainable_random: bool = True):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "synthesizer")
        if mode not in SYNTHESIZER_MODES:
            raise ValueError(f"synthesizer: mode must be one of {SYNTHESIZER_MODES}, got {mode!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"synthesizer: dropout must be in [0, 1), got {dropout!r}")
        self.max_len = _positive_int(max_len, "synthesizer: max_len")
        self.dropout, self.impl, self.mode = float(dropout), impl, mode
        self.mix_with_dot_product = bool(mix_with_dot_product)
        self.trainable_random = bool(trainable_random)
        h = num_heads
        if mode == "random":
            self.random_logits = nnx.Param(dense_init(rngs.params(), (h, max_len, max_len)))
        elif mode == "factorized_random":
            self.rank = _positive_int(rank, "synthesizer: rank")
            self.factor_a = nnx.Param(dense_init(rngs.params(), (h, max_len, self.rank)))
            self.factor_b = nnx.Param(dense_init(rngs.params(), (h, max_len, self.rank)))
        else:
            self.hidden = self.head_dim if hidden is None else _positive_int(hidden, "synthesizer: hidden")
            self.dense_in = nnx.Linear(dim, h * self.hidden, kernel_init=dense_init, rngs=rngs)
            self.dense_out = nnx.Param(dense_init(rngs.params(), (h, self.hidden, max_len)))
            self.dense_out_bias = nnx.Param(jnp.zeros((h, max_len)))

    def synthetic_logits(self, x):
        """x [B, L, dim] -> float32 logits [B or 1, heads, L, L] (before masking and the dot product)."""
        length = x.shape[1]
        if self.mode == "random":
            table = self.random_logits[...]
            if not self.trainable_random:
                table = jax.lax.stop_gradient(table)
            return table[None, :, :length, :length].astype(jnp.float32)
        if self.mode == "factorized_random":
            a = self.factor_a[...][:, :length].astype(jnp.float32)
            b = self.factor_b[...][:, :length].astype(jnp.float32)
            return jnp.einsum("hqr,hkr->hqk", a, b)[None]
        batch = x.shape[0]
        hid = jax.nn.relu(self.dense_in(x)).reshape(batch, length, self.num_heads, self.hidden)
        w = self.dense_out[...][:, :, :length]
        bias = self.dense_out_bias[...][:, :length]
        logits = jnp.einsum("bqhf,hfk->bhqk", hid.astype(jnp.float32), w.astype(jnp.float32))
        return logits + bias[None, :, None, :].astype(jnp.float32)

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        _check_shapes(x, valid, self.dim, self.max_len, "synthesizer")
        b, length, _ = x.shape
        use_dropout = not deterministic and self.dropout > 0.0
        if use_dropout and rngs is None:
            raise ValueError("synthesizer with dropout needs rngs when deterministic=False")
        logits = self.synthetic_logits(x)
        if self.mix_with_dot_product:
            q, k, v = self.project_qkv(x)
            scale = jnp.asarray(1.0 / math.sqrt(self.head_dim), q.dtype)
            logits = logits + jnp.einsum("bqhd,bkhd->bhqk", q * scale, k).astype(jnp.float32)
        else:
            # value slice of the fused projection only: columns [2 qkv_dim, 3 qkv_dim) of self.qkv
            kernel = self.qkv.kernel[...][:, 2 * self.qkv_dim:]
            v = x @ kernel.astype(x.dtype)
            if self.qkv.bias is not None:
                v = v + self.qkv.bias[...][2 * self.qkv_dim:].astype(x.dtype)
            v = v.reshape(b, length, self.num_heads, self.head_dim)
        logits = jnp.broadcast_to(logits, (b, self.num_heads, length, length))
        if valid is not None:
            allowed = jnp.asarray(valid, bool)[:, None, None, :]
            logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
        if valid is not None:
            e = jnp.where(allowed, e, 0.0)  # exactly zero weight on padded keys; all-padded rows give zeros
        denom = e.sum(axis=-1, keepdims=True)
        weights = e / jnp.where(denom > 0, denom, 1.0)
        if use_dropout:
            weights = kernels.dropout(weights, self.dropout, rngs.dropout())
        y = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        return self.project_out(y)


class _ProjectionFreeMixing(AttentionBase):
    """Shared init for the mixers without q/k/v: AttentionBase.__init__ is deliberately NOT called.

    AttentionBase.__init__ creates the fused qkv and out projections; FNet and the Mixer's token MLP have none,
    and unused parameters would still count in the parameter count that LRA's comparisons report, so these
    modules set the interface attributes (dim, num_heads, qkv_dim, head_dim) themselves and create no
    projections. ``qkv_dim``, ``num_heads`` and ``dropout`` are accepted for the uniform interface only.
    """

    def _init_interface(self, *, dim, num_heads, qkv_dim, max_len, dropout, impl, name):
        _check_impl(impl, name)
        qkv_dim = dim if qkv_dim is None else qkv_dim
        for value, what in ((dim, "dim"), (num_heads, "num_heads"), (qkv_dim, "qkv_dim"), (max_len, "max_len")):
            _positive_int(value, f"{name}: {what}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
        self.dim, self.num_heads, self.qkv_dim = dim, num_heads, qkv_dim
        self.head_dim = qkv_dim // num_heads
        self.max_len, self.dropout, self.impl = max_len, float(dropout), impl


@register("mixer")
class MixerTokenMixing(_ProjectionFreeMixing):
    """MLP-Mixer token mixing: one MLP across the sequence axis, shared by every channel.

    y[b, i, c] = b2[i] + sum_f W2[f, i] gelu(b1[f] + sum_j W1[j, f] x[b, j, c]), with W1 [max_len, hidden] and
    W2 [hidden, max_len] (and b2) sliced to the actual length L; padded tokens are zeroed before mixing. No q/k/v
    or output projection (see ``_ProjectionFreeMixing``); Xavier-uniform weights, zero biases.

    Options: hidden=256 (token-MLP width; the paper's D_S, 256 for Mixer-S). ``dropout`` (attention-weight
    dropout) is accepted but unused: there are no attention weights and the paper's token MLP has no dropout.

    Complexity: O(L x hidden x dim) time, O(L x hidden) parameters: linear in L for a fixed hidden.
    Padding invariant: yes, for appended padding. Zeroed padded tokens add nothing to the hidden units, and the
    output at position i reads only W2[:, i] and b2[i], which do not depend on L. Positions are absolute: the
    same token at another index is mixed with other weights (that is the method, not a padding effect).
    """

    padding_invariant = True
    complexity = "linear"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", hidden: int = 256):
        self._init_interface(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, max_len=max_len, dropout=dropout,
                             impl=impl, name="mixer")
        self.hidden = _positive_int(hidden, "mixer: hidden")
        self.token_in = nnx.Param(dense_init(rngs.params(), (max_len, self.hidden)))
        self.token_in_bias = nnx.Param(jnp.zeros((self.hidden,)))
        self.token_out = nnx.Param(dense_init(rngs.params(), (self.hidden, max_len)))
        self.token_out_bias = nnx.Param(jnp.zeros((max_len,)))

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        _check_shapes(x, valid, self.dim, self.max_len, "mixer")
        length = x.shape[1]
        x = _zero_padding(x, valid)
        w1 = self.token_in[...][:length].astype(x.dtype)
        w2 = self.token_out[...][:, :length].astype(x.dtype)
        h = jnp.einsum("bjc,jf->bfc", x, w1) + self.token_in_bias[...].astype(x.dtype)[None, :, None]
        h = jax.nn.gelu(h)
        y = jnp.einsum("bfc,fi->bic", h, w2)
        return y + self.token_out_bias[...][:length].astype(x.dtype)[None, :, None]


@register("fnet")
class FNetMixing(_ProjectionFreeMixing):
    """FNet Fourier mixing: y = Re(FFT2(x)) over the sequence and hidden axes, padded tokens zeroed first.

    Parameter-free: no q/k/v or output projection (see ``_ProjectionFreeMixing``). The transform runs in float32
    (complex64) whatever the input dtype and is cast back. ``dropout`` is accepted but unused (no attention
    weights; the paper's Fourier sublayer has none).

    Complexity: O(L log L x dim + L x dim log dim) via the FFT ("n log n"); no L x L array.
    Padding invariant: no. The DFT over the sequence axis has length L, so appending (zeroed) padding changes
    the frequencies every real position receives; only the values of padded tokens are irrelevant.
    """

    padding_invariant = False
    complexity = "n log n"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla"):
        self._init_interface(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, max_len=max_len, dropout=dropout,
                             impl=impl, name="fnet")

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        _check_shapes(x, valid, self.dim, self.max_len, "fnet")
        mixed = jnp.fft.fft2(_zero_padding(x, valid).astype(jnp.float32), axes=(1, 2))
        return jnp.real(mixed).astype(x.dtype)
