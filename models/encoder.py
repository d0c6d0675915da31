"""The LRA encoder classifier in Flax NNX.

Token embedding + positions (sinusoidal or learned) -> optional learned CLS vector -> pre-LayerNorm blocks
(attention from ``models.attention.build``, GELU MLP, dropout) -> final LayerNorm -> CLS, mean or first-token pooling ->
head Dense(mlp_dim) - ReLU - Dense(num_classes). Calling returns ``(logits, aux)``; aux holds named
intermediates (the pooled vector) so probing needs no code change.

Pair tasks (LRA Retrieval) use the same classifier as a dual encoder: tokens [B, 2, L] are two documents that the
one shared encoder reads separately (each with its own CLS vector, no cross attention); the two pooled vectors
X1, X2 are combined as [X1, X2, X1 * X2, X1 - X2] (``pair="paper"``, the LRA paper) or [X1, X2]
(``pair="concat"``, the official LRA code) before the head.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kernels
from models import attention as attention_lib

dense_init = nnx.initializers.xavier_uniform()
POOLINGS = ("cls", "mean", "first")   # first: position 0 itself, no CLS vector (LRA code's Retrieval)
POSITIONS = ("sinusoidal", "learned")
PAIRS = {"paper": 4, "concat": 2}   # pair combination -> pooled vectors in the head's input


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    num_classes: int
    max_length: int
    emb_dim: int = 64
    num_heads: int = 2
    num_layers: int = 2
    qkv_dim: int = 64
    mlp_dim: int = 128
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pooling: str = "cls"
    positions: str = "sinusoidal"
    attention: str = "full"
    attention_options: dict = dataclasses.field(default_factory=dict)
    pair: str | None = None

    def __post_init__(self):
        for key in ("vocab_size", "num_classes", "max_length", "emb_dim", "num_heads", "num_layers", "qkv_dim",
                    "mlp_dim"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
        for key in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"model.{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.qkv_dim % self.num_heads:
            raise ValueError(f"model.qkv_dim ({self.qkv_dim}) must be divisible by model.num_heads "
                             f"({self.num_heads})")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"model.positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.pair is not None and self.pair not in PAIRS:
            raise ValueError(f"task.pair must be null or one of {tuple(PAIRS)}, got {self.pair!r}")


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """float32 [length, dim]: sin on the first half of the features, cos on the second (as in LRA/flax)."""
    half = dim // 2
    position = np.arange(length, dtype=np.float64)[:, None]
    inv_freq = np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float64) / max(half - 1, 1))
    table = np.zeros((length, dim))
    table[:, :half] = np.sin(position * inv_freq)
    table[:, half:2 * half] = np.cos(position * inv_freq)
    return table.astype(np.float32)


def dropout(x, rate: float, deterministic: bool, rngs: nnx.Rngs | None):
    """Inverted dropout with an explicit key stream (keys are functions of the train step, see lra.train)."""
    if deterministic or rate == 0.0:
        return x
    return kernels.dropout(x, rate, rngs.dropout())


class EncoderBlock(nnx.Module):
    """Pre-LN block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(self, cfg: EncoderConfig, seq_len: int, rngs: nnx.Rngs):
        options = {"qkv_dim": cfg.qkv_dim, "dropout": cfg.attention_dropout, **cfg.attention_options}
        self.attention_norm = nnx.LayerNorm(cfg.emb_dim, rngs=rngs)
        self.attention = attention_lib.build(cfg.attention, dim=cfg.emb_dim, num_heads=cfg.num_heads,
                                             max_len=seq_len, rngs=rngs, **options)
        self.mlp_norm = nnx.LayerNorm(cfg.emb_dim, rngs=rngs)
        self.mlp_in = nnx.Linear(cfg.emb_dim, cfg.mlp_dim, kernel_init=dense_init, rngs=rngs)
        self.mlp_out = nnx.Linear(cfg.mlp_dim, cfg.emb_dim, kernel_init=dense_init, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x, valid, deterministic: bool, rngs):
        h = self.attention(self.attention_norm(x), valid=valid, deterministic=deterministic, rngs=rngs)
        x = x + dropout(h, self.rate, deterministic, rngs)
        h = jax.nn.gelu(self.mlp_in(self.mlp_norm(x)))
        h = self.mlp_out(dropout(h, self.rate, deterministic, rngs))
        return x + dropout(h, self.rate, deterministic, rngs)


class Encoder(nnx.Module):
    """Token ids [B, L] -> encoded [B, L (+1 with CLS), emb_dim] and the matching validity mask."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.use_cls = cfg.pooling == "cls"
        # A variant that needs a length multiple (``length_multiple``) gets the sequence (CLS included) padded up
        # to it with invalid positions, cut off again after the blocks.
        self.multiple = attention_lib.REGISTRY[cfg.attention].length_multiple
        seq_len = -(-(cfg.max_length + int(self.use_cls)) // self.multiple) * self.multiple
        # LRA's embedding: normal(stddev=1) token table; learned positions normal(stddev=0.02).
        self.embed = nnx.Embed(cfg.vocab_size, cfg.emb_dim, embedding_init=nnx.initializers.normal(1.0),
                               rngs=rngs)
        if cfg.positions == "learned":
            self.pos_embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (cfg.max_length, cfg.emb_dim)))
        if self.use_cls:
            self.cls = nnx.Param(jnp.zeros((1, 1, cfg.emb_dim)))
        self.blocks = nnx.List([EncoderBlock(cfg, seq_len, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = nnx.LayerNorm(cfg.emb_dim, rngs=rngs)

    def __call__(self, tokens, valid, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        b, length = tokens.shape
        if length > self.cfg.max_length:
            raise ValueError(f"sequence length {length} exceeds the model's max_length {self.cfg.max_length}")
        x = self.embed(tokens)
        if self.cfg.positions == "learned":
            x = x + self.pos_embed[...][None, :length]
        else:
            x = x + sinusoidal_positions(length, self.cfg.emb_dim)[None]
        if self.use_cls:
            x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, self.cfg.emb_dim)), x], axis=1)
            valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
        n, extra = x.shape[1], -x.shape[1] % self.multiple
        if extra:
            x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
            valid = jnp.pad(valid, ((0, 0), (0, extra)))
        x = dropout(x, self.cfg.dropout, deterministic, rngs)
        for block in self.blocks:
            x = block(x, valid, deterministic, rngs)
        return self.final_norm(x[:, :n]), valid[:, :n]


class Classifier(nnx.Module):
    """Encoder + pooling + Dense(mlp_dim)-ReLU-Dense(num_classes) head. Returns (logits, aux)."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs)
        head_in = cfg.emb_dim * (PAIRS[cfg.pair] if cfg.pair else 1)
        self.head_hidden = nnx.Linear(head_in, cfg.mlp_dim, kernel_init=dense_init, rngs=rngs)
        self.head_out = nnx.Linear(cfg.mlp_dim, cfg.num_classes, kernel_init=dense_init, rngs=rngs)

    def pool(self, x, valid):
        if self.cfg.pooling in ("cls", "first"):   # the CLS vector, or (first) the first token itself
            return x[:, 0]
        weights = valid.astype(x.dtype)[..., None]
        return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)

    def __call__(self, tokens, valid, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        """tokens int [B, L] (pair tasks: [B, 2, L]), valid bool of the same shape -> logits float32
        [B, num_classes], aux dict."""
        pair = tokens.ndim == 3
        if pair != bool(self.cfg.pair):
            raise ValueError(f"the classifier was built with pair={self.cfg.pair!r} but got tokens of shape "
                             f"{tokens.shape}: pair tasks take [batch, 2, length], the others [batch, length]")
        if pair:
            b, _, length = tokens.shape
            tokens, valid = tokens.reshape(2 * b, length), valid.reshape(2 * b, length)
        x, valid = self.encoder(tokens, valid, deterministic, rngs)
        pooled = self.pool(x, valid)
        aux = {"pooled": pooled}
        if pair:
            pooled = pooled.reshape(b, 2, -1)
            x1, x2 = pooled[:, 0], pooled[:, 1]
            parts = [x1, x2, x1 * x2, x1 - x2] if self.cfg.pair == "paper" else [x1, x2]
            pooled = jnp.concatenate(parts, axis=-1)
            aux = {"pooled": aux["pooled"].reshape(b, 2, -1), "combined": pooled}
        logits = self.head_out(jax.nn.relu(self.head_hidden(pooled)))
        return logits, aux


def count_params(module: nnx.Module) -> int:
    """Number of scalar parameters (nnx.Param leaves) in a module."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))
