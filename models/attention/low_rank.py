"""Kernel-method and low-rank attention: Linear Transformer, Performer (FAVOR+) and Linformer.

- ``linear``: Katharopoulos, Vyas, Pappas and Fleuret (2020), "Transformers are RNNs: Fast Autoregressive
  Transformers with Linear Attention". Feature map elu(x) + 1, O(L).
- ``performer``: Choromanski, Likhosherstov, Dohan, Song, Gane, Sarlos, Hawkins, Davis, Mohiuddin, Kaiser,
  Belanger, Colwell and Weller (2021), "Rethinking Attention with Performers". FAVOR+ positive orthogonal
  random features (or the ReLU kernel of the official LRA code), O(L m).
- ``linformer``: Wang, Li, Khabsa, Fang and Ma (2020), "Linformer: Self-Attention with Linear Complexity".
  Keys and values projected along the sequence to k rows (or reduced by a strided convolution), O(L k).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

import kernels
from models.attention.base import AttentionBase, check_rate, register

KERNELS = ("favor+", "relu")
REDUCTIONS = ("linear", "conv")


def _check_impl(impl: str, name: str, pallas: bool = False) -> None:
    if impl == "pallas" and not pallas:
        raise NotImplementedError(f"{name}: impl='pallas' has no Pallas kernel for this variant; use impl='xla'")
    if impl not in ("xla", "pallas"):
        raise ValueError(f"{name}: impl must be 'xla' or 'pallas', got {impl!r}")


@register("linear")
class LinearAttention(AttentionBase):
    """Linear Transformer attention (Katharopoulos et al. 2020): out_i = sum_j f(q_i).f(k_j) v_j / sum_j f(q_i).f(k_j)
    with f(x) = elu(x) + 1, computed as f(q_i) (sum_j f(k_j) v_j^T) in O(L).

    There is no attention-weight matrix, so ``dropout`` (attention-weight dropout in the other variants) is
    accepted for the common interface and has no effect.
    """

    padding_invariant = True
    complexity = "linear"
    length_multiple = 1
    pallas = True
    pallas_kernel = "linear"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla"):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "linear", pallas=True)
        self.dropout, self.impl, self.max_len = check_rate("linear", "dropout", dropout), impl, max_len

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.project_qkv(x)
        y = kernels.linear_attention(q, k, v, feature_map="elu1", kv_valid=valid, impl=self.impl)
        return self.project_out(y)


class RandomFeatures(nnx.Variable):
    """Fixed (non-trainable) random projection of the Performer, drawn once at initialisation."""


@functools.partial(jax.jit, static_argnums=(1, 2))
def orthogonal_gaussian(key, num_features: int, dim: int) -> jax.Array:
    """float32 [num_features, dim]: stacked blocks of orthogonal rows, each row rescaled by a chi(dim) norm.

    Rows within a block of ``dim`` are exactly orthogonal (QR of a gaussian matrix); each row's length is drawn
    as the norm of an independent gaussian vector, so marginally every row is N(0, I) (Choromanski et al., sec. 2.4).
    """
    blocks = -(-num_features // dim)
    key_q, key_norm = jax.random.split(key)
    gaussian = jax.random.normal(key_q, (blocks, dim, dim), jnp.float32)
    q, r = jnp.linalg.qr(gaussian)  # [blocks, dim, dim], orthonormal columns
    # Fix the signs so that Q is Haar-distributed: QR's sign convention (diag(R) of one sign) biases Q's
    # directions, and then the kernel estimate stays biased however many features there are.
    q = q * jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))[:, None, :]
    rows = jnp.swapaxes(q, 1, 2).reshape(blocks * dim, dim)[:num_features]
    norms = jnp.linalg.norm(jax.random.normal(key_norm, (num_features, dim), jnp.float32), axis=-1)
    return rows * norms[:, None]


def favor_features(x, projection, *, is_query: bool, valid=None, eps: float = 1e-6):
    """FAVOR+ positive random features phi(x) = exp(w.x' - |x'|^2 / 2) / sqrt(m), x' = x d^-1/4, so that
    E[phi(q).phi(k)] = exp(q.k / sqrt(d)) (the softmax kernel at the usual 1/sqrt(d) scale).

    x [B, L, H, d], projection [m, d] -> [B, L, H, m] float32. Numerically stabilised as in the paper's code by
    subtracting a maximum of the exponents that cancels in the attention normalisation: per query row for
    queries, and for keys one maximum per (batch, head) taken over the valid keys only (so appended padding
    leaves it unchanged).
    The maxima are constants for differentiation (their exact gradient contribution is zero). ``eps`` keeps
    every feature positive when exponentials underflow.
    """
    d, m = x.shape[-1], projection.shape[0]
    xs = x.astype(jnp.float32) * d ** -0.25
    logits = jnp.einsum("blhd,md->blhm", xs, projection.astype(jnp.float32))
    logits = logits - 0.5 * jnp.sum(xs * xs, axis=-1, keepdims=True)
    if is_query:
        stabiliser = jnp.max(logits, axis=-1, keepdims=True)
    else:
        if valid is None:
            stabiliser = jnp.max(logits, axis=(1, 3), keepdims=True)
        else:
            keep = jnp.asarray(valid, bool)[:, :, None, None]
            stabiliser = jnp.max(jnp.where(keep, logits, -jnp.inf), axis=(1, 3), keepdims=True)
            stabiliser = jnp.where(jnp.isfinite(stabiliser), stabiliser, 0.0)  # no valid key at all
            # Padded keys may exceed the stabiliser: pin their exponent to 0 (they are zeroed later), no overflow.
            logits = jnp.where(keep, logits, stabiliser)
    return (jnp.exp(logits - jax.lax.stop_gradient(stabiliser)) + eps) / math.sqrt(m)


def _identity(f):
    return f


def relu_features(x, projection, *, eps: float = 1e-3):
    """The generalised-attention ReLU kernel of the official LRA Performer: phi(x) = relu(w.x) + eps."""
    return jax.nn.relu(jnp.einsum("blhd,md->blhm", x.astype(jnp.float32), projection.astype(jnp.float32))) + eps


def performer_attention(q, k, v, projection, *, kernel: str = "favor+", kv_valid=None, impl: str = "xla"):
    """Normalised attention with random features: q/k/v [B, L, H, d], projection [m, d] -> [B, L, H, d]."""
    if kernel == "favor+":
        fq = favor_features(q, projection, is_query=True)
        fk = favor_features(k, projection, is_query=False, valid=kv_valid)
    elif kernel == "relu":
        fq, fk = relu_features(q, projection), relu_features(k, projection)
    else:
        raise ValueError(f"performer kernel must be one of {KERNELS}, got {kernel!r}")
    # The query and key maps differ (their stabilisers), so the features are computed here and passed through.
    y = kernels.linear_attention(fq, fk, v, feature_map=_identity, kv_valid=kv_valid, impl=impl)
    return y.astype(v.dtype)


@register("performer")
class PerformerAttention(AttentionBase):
    """Performer attention (Choromanski et al. 2021): softmax attention approximated by random features,
    out_i = phi(q_i) sum_j phi(k_j) v_j^T / phi(q_i) sum_j phi(k_j), O(L m).

    Options: num_features m (default 256, as LRA), kernel "favor+" (positive orthogonal random features for the
    softmax kernel) or "relu" (relu(w.x) + 1e-3, the generalised attention the official LRA Performer ran).
    The projection [m, head_dim] is shared by the heads, drawn once at init from ``rngs.params()`` and kept
    fixed as a non-trainable ``RandomFeatures`` variable (no redrawing). ``dropout`` is accepted for the common
    interface and has no effect: there is no attention-weight matrix to drop.
    """

    padding_invariant = True
    complexity = "linear"
    length_multiple = 1
    pallas = True
    pallas_kernel = "linear"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", num_features: int = 256, kernel: str = "favor+"):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "performer", pallas=True)
        if kernel not in KERNELS:
            raise ValueError(f"performer kernel must be one of {KERNELS}, got {kernel!r}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"performer num_features must be a positive integer, got {num_features!r}")
        self.dropout, self.impl, self.max_len = check_rate("performer", "dropout", dropout), impl, max_len
        self.kernel, self.num_features = kernel, num_features
        self.features = RandomFeatures(orthogonal_gaussian(rngs.params(), num_features, self.head_dim))

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.project_qkv(x)
        y = performer_attention(q, k, v, self.features[...], kernel=self.kernel, kv_valid=valid, impl=self.impl)
        return self.project_out(y)


@register("linformer")
class LinformerAttention(AttentionBase):
    """Linformer attention (Wang et al. 2020): softmax attention of the L queries over k keys made from the
    sequence, O(L k).

    Options: k (projected length, default 16 as LRA), share_kv (one projection for keys and values, LRA's
    choice; default True), reduction "linear" (learned E [k, max_len], sliced to the actual length L:
    K' = E[:, :L] K) or "conv" (a depthwise strided convolution over the sequence, kernel = stride =
    ceil(max_len / k), giving ceil(L / stride) <= k keys; the sequence is zero-padded to a multiple of the stride).
    Padded keys and values are zeroed before reducing, and a conv output made only of padding is masked, so
    appended padding changes nothing. ``dropout`` drops attention weights (L x k).
    """

    padding_invariant = True
    complexity = "n k"
    length_multiple = 1
    pallas = False

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", k: int = 16, share_kv: bool = True,
                 reduction: str = "linear"):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        _check_impl(impl, "linformer")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"linformer k must be a positive integer, got {k!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"linformer reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.dropout, self.impl, self.max_len = check_rate("linformer", "dropout", dropout), impl, max_len
        self.k, self.share_kv, self.reduction = k, bool(share_kv), reduction
        if reduction == "linear":
            init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)  # fan-in = max_len
            shape = (k, max_len)
        else:
            self.stride = -(-max_len // k)
            init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))  # fan-in = stride (depthwise)
            shape = (self.stride, num_heads, self.head_dim)
        self.proj_k = nnx.Param(init(rngs.params(), shape, jnp.float32))
        self.proj_v = None if self.share_kv else nnx.Param(init(rngs.params(), shape, jnp.float32))

    def _reduce(self, x, weight):
        """x [B, L, H, D] (padding already zeroed) -> [B, k', H, D]."""
        length = x.shape[1]
        if self.reduction == "linear":
            return jnp.einsum("rl,blhd->brhd", weight[:, :length].astype(x.dtype), x)
        blocks = -(-length // self.stride)
        x = jnp.pad(x, ((0, 0), (0, blocks * self.stride - length), (0, 0), (0, 0)))
        x = x.reshape(x.shape[0], blocks, self.stride, *x.shape[2:])
        return jnp.einsum("bnshd,shd->bnhd", x, weight.astype(x.dtype))

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        q, k, v = self.project_qkv(x)
        b, length = x.shape[:2]
        if length > self.max_len:
            raise ValueError(f"linformer: sequence length {length} exceeds max_len {self.max_len}")
        kv_valid = None
        if valid is not None:
            keep = jnp.asarray(valid, bool)[:, :, None, None]
            k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
            if self.reduction == "conv":  # a reduced key made only of padding would be a spurious zero key
                blocks = -(-length // self.stride)
                padded = jnp.pad(jnp.asarray(valid, bool), ((0, 0), (0, blocks * self.stride - length)))
                kv_valid = padded.reshape(b, blocks, self.stride).any(axis=-1)
        proj_v = self.proj_k if self.share_kv else self.proj_v
        k, v = self._reduce(k, self.proj_k[...]), self._reduce(v, proj_v[...])
        use_dropout = not deterministic and self.dropout > 0.0
        if use_dropout and rngs is None:
            raise ValueError("LinformerAttention with dropout needs rngs when deterministic=False")
        y = kernels.attention(q, k, v, kv_valid=kv_valid, impl=self.impl,
                              dropout_rate=self.dropout if use_dropout else 0.0,
                              dropout_rng=rngs.dropout() if use_dropout else None)
        return self.project_out(y)
