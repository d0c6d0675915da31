"""Fixed sparse attention patterns, computed on gathered key blocks (``kernels.block_sparse``), never on an
L x L mask.

    local        sliding window |i - j| <= window (Beltagy et al. 2020's window alone)
    block_local  non-overlapping blocks i // block == j // block (LRA's local attention baseline, block 50)
    strided      (i - j) % stride == 0 (the strided half of Child et al. 2019, "Generating Long Sequences with
                 Sparse Transformers")
    global       n global tokens attend to and are attended by every token (the CLS-style half of Longformer)
    longformer   Beltagy, Peters and Cohan 2020, "Longformer: The Long-Document Transformer": (dilated) sliding
                 window plus global tokens
    sparse       Child, Gray, Radford and Sutskever 2019, "Generating Long Sequences with Sparse Transformers":
                 the fixed pattern, non-causal (own block plus the last ``summary`` positions of every block)
    bigbird      Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences": window of 3 blocks, first and
                 last block global, random blocks (block granularity, as LRA ran it)
    mixed_heads  a different pattern in each head group of one layer (as Longformer and the Sparse Transformer
                 do with per-head windows / dilations / factorised patterns)

Every variant pads the sequence internally to its block multiple (padding marked invalid) and slices back, so
any length works. Rows whose pattern would need every key block (global queries, BigBird's first/last blocks)
are computed separately against all keys (a few rows x L), so the gathered block lists stay short.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kernels
from kernels import block_sparse
from kernels import masks as masks_lib
from models.attention.base import AttentionBase, register

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- extra masks


@dataclasses.dataclass(frozen=True)
class KeyPrefix(masks_lib.Mask):
    """Every query may attend to the first ``n`` keys (the key half of ``Global(n)``)."""

    n: int

    def _allowed(self, i, j):
        return np.broadcast_to(j < self.n, np.broadcast_shapes(np.shape(i), np.shape(j)))


@dataclasses.dataclass(frozen=True)
class FixedSparse(masks_lib.Mask):
    """Sparse Transformer's fixed pattern, non-causal: query i attends to its own block (i // block == j // block)
    and to every summary position, the last ``summary`` positions of each block (j % block >= block - summary)."""

    block: int
    summary: int

    def __post_init__(self):
        if isinstance(self.block, bool) or not isinstance(self.block, int | np.integer) or self.block < 1:
            raise ValueError(f"sparse block must be a positive integer, got {self.block!r}")
        if isinstance(self.summary, bool) or not isinstance(self.summary, int | np.integer) \
                or not 0 <= self.summary <= self.block:
            raise ValueError(f"sparse summary must be an integer in [0, block={self.block}], got {self.summary!r}")

    def _allowed(self, i, j):
        return (i // self.block == j // self.block) | (j % self.block >= self.block - self.summary)

    def positions(self, length: int) -> np.ndarray:
        """Permutation of range(length) (length a multiple of block): all summary positions first (block by block),
        then the other positions block by block. In that order a block's non-summary keys are contiguous."""
        return _fixed_sparse_order(np.arange(length), length, self.block, self.summary)


def _fixed_sparse_order(t, length: int, block: int, summary: int):
    """Original position of permuted index t (see ``FixedSparse.positions``)."""
    num_summary = (length // block) * summary
    rest = t - num_summary
    body = block - summary
    s = max(summary, 1)
    b = max(body, 1)
    return np.where(t < num_summary, (t // s) * block + body + t % s, (rest // b) * block + rest % b)


@dataclasses.dataclass(frozen=True)
class _FixedSparseKeys(masks_lib.Mask):
    """``FixedSparse`` with queries in their own order and keys in the order of ``FixedSparse.positions(length)``:
    the summary keys form one contiguous prefix and each block's other keys are contiguous, so a query block
    needs the summary key blocks plus the few blocks of its own block's body."""

    length: int
    block: int
    summary: int

    def _allowed(self, i, j):
        fixed = FixedSparse(self.block, self.summary)
        return fixed._allowed(i, _fixed_sparse_order(j, self.length, self.block, self.summary))


@dataclasses.dataclass(frozen=True)
class _BigBirdRows(masks_lib.Mask):
    """BigBird's pattern for the non-global query blocks at a fixed (padded) length: window of 3 blocks, the first
    and last key blocks, and the same random blocks as ``masks.BigBird(block, num_random_blocks, seed)``. The
    first and last query blocks (global rows) are computed against all keys separately."""

    block: int
    num_random_blocks: int
    seed: int
    length: int

    def _allowed(self, i, j):
        n = self.length // self.block
        qb, kb = i // self.block, j // self.block
        allowed = (np.abs(qb - kb) <= 1) | (kb == 0) | (kb == n - 1)
        rand = masks_lib.BigBird(self.block, self.num_random_blocks, self.seed).random_blocks(n, n)
        if rand.shape[1]:
            allowed = allowed | (rand[qb] == np.asarray(kb)[..., None]).any(axis=-1)
        return allowed


# ------------------------------------------------------------------------------------------------ helpers


def _default_block(span: int) -> int:
    """Computation block for a window of one-sided ``span``: the span rounded up to a power of two, within [8, 32].
    A block near the span keeps 3 slots per query block; capping it at 32 keeps the gathered keys close to the
    2 * span + 1 needed for long windows (more, thinner slots) without tiny, gather-bound blocks."""
    return min(max(8, 1 << max(int(span) - 1, 0).bit_length()), 32)


def _check_int(name: str, value, low: int):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _pad(q, k, v, valid, multiple: int):
    """Pad [B, L, H, D] arrays at the end to a multiple of ``multiple``; padded keys are marked invalid."""
    b, length = q.shape[:2]
    extra = -length % multiple
    if extra:
        if valid is None:
            valid = jnp.ones((b, length), bool)
        widths = ((0, 0), (0, extra), (0, 0), (0, 0))
        q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
        valid = jnp.pad(valid, ((0, 0), (0, extra)))
    return q, k, v, valid


def _split(rng, count: int):
    return [None] * count if rng is None else list(jax.random.split(rng, count))


def _dense_rows(q_rows, k, v, valid, rate, rng):
    """A few query rows against every key (O(rows x L)): global tokens' rows."""
    return kernels.attention(q_rows, k, v, kv_valid=valid, dropout_rate=rate, dropout_rng=rng)


# ------------------------------------------------------------------------------- patterns on projected q/k/v
# Each pattern is a hashable static description with ``__call__(q, k, v, valid, rate, rng) -> out`` on arrays
# [B, L, H, D] (valid bool [B, L] or None; rate/rng: attention dropout, rate 0.0 when deterministic).


@dataclasses.dataclass(frozen=True)
class LocalPattern:
    window: int = 32
    block: int | None = None
    quadratic = False
    padding_invariant = True

    def __post_init__(self):
        _check_int("local window", self.window, 0)
        if self.block is not None:
            _check_int("local block", self.block, 1)

    def mask(self):
        return masks_lib.Local(self.window)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        # The block is only a computation granule (the mask is exact): a block near the window keeps 3 slots.
        block = min(self.block or _default_block(self.window), length)
        q, k, v, valid = _pad(q, k, v, valid, block)
        out = block_sparse.block_sparse_attention(q, k, v, self.mask(), block=block, kv_valid=valid,
                                                  dropout_rate=rate, dropout_rng=rng)
        return out[:, :length]


@dataclasses.dataclass(frozen=True)
class BlockLocalPattern:
    block: int = 50
    quadratic = False
    padding_invariant = True

    def __post_init__(self):
        _check_int("block_local block", self.block, 1)

    def mask(self):
        return masks_lib.BlockLocal(self.block)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        block = min(self.block, length)  # a sequence shorter than one block is one block
        q, k, v, valid = _pad(q, k, v, valid, block)
        out = block_sparse.block_sparse_attention(q, k, v, self.mask(), block=block, kv_valid=valid,
                                                  dropout_rate=rate, dropout_rng=rng)
        return out[:, :length]


@dataclasses.dataclass(frozen=True)
class StridedPattern:
    stride: int = 32
    quadratic = True  # each query sees L / stride keys
    padding_invariant = True

    def __post_init__(self):
        _check_int("strided stride", self.stride, 1)

    def mask(self):
        return masks_lib.Strided(self.stride)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        # Padding at the end keeps every position's residue class; padded keys are invalid.
        q, k, v, valid = _pad(q, k, v, valid, self.stride)
        out = block_sparse.strided_attention(q, k, v, stride=self.stride, kv_valid=valid, dropout_rate=rate,
                                             dropout_rng=rng)
        return out[:, :length]


@dataclasses.dataclass(frozen=True)
class GlobalPattern:
    n: int = 1
    quadratic = False
    padding_invariant = True

    def __post_init__(self):
        _check_int("global n", self.n, 0)

    def mask(self):
        return masks_lib.Global(self.n)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        n = min(self.n, length)
        if n == 0:
            return jnp.zeros_like(q)
        rng_rows, rng_rest = _split(rng, 2)
        rows = _dense_rows(q[:, :n], k, v, valid, rate, rng_rows)                     # [B, n, H, D]: n x L
        rest = kernels.attention(q[:, n:], k[:, :n], v[:, :n], kv_valid=None if valid is None else valid[:, :n],
                                 dropout_rate=rate, dropout_rng=rng_rest)            # (L - n) x n
        return jnp.concatenate([rows, rest], axis=1)


@dataclasses.dataclass(frozen=True)
class LongformerPattern:
    window: int = 256
    dilation: int = 1
    n: int = 0
    block: int | None = None
    quadratic = False
    padding_invariant = True

    def __post_init__(self):
        _check_int("longformer window", self.window, 0)
        _check_int("longformer dilation", self.dilation, 1)
        _check_int("longformer n", self.n, 0)
        if self.block is not None:
            _check_int("longformer block", self.block, 1)

    def window_mask(self):
        span = masks_lib.Local(self.window * self.dilation)
        return span if self.dilation == 1 else span & masks_lib.Strided(self.dilation)

    def mask(self):
        return self.window_mask() | masks_lib.Global(self.n)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        block = min(self.block or _default_block(self.window * self.dilation), length)
        n = min(self.n, length)
        q, k, v, valid = _pad(q, k, v, valid, block)
        rng_rows, rng_rest = _split(rng, 2)
        # Non-global queries: window keys plus the global keys (a few leading key blocks in every block row).
        out = block_sparse.block_sparse_attention(q, k, v, self.window_mask() | KeyPrefix(n), block=block,
                                                  kv_valid=valid, dropout_rate=rate, dropout_rng=rng_rest)
        if n == 0:
            return out[:, :length]
        rows = _dense_rows(q[:, :n], k, v, valid, rate, rng_rows)  # global queries see every key
        return jnp.concatenate([rows, out[:, n:length]], axis=1)


@dataclasses.dataclass(frozen=True)
class FixedSparsePattern:
    block: int = 50
    summary: int = 10
    quadratic = True  # L x (L * summary / block) summary pairs
    padding_invariant = True

    def __post_init__(self):
        FixedSparse(self.block, self.summary)  # validates

    def mask(self):
        return FixedSparse(self.block, self.summary)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        q, k, v, valid = _pad(q, k, v, valid, self.block)
        padded = q.shape[1]
        if valid is None:
            valid = jnp.ones(q.shape[:2], bool)
        # Keys reordered (summary positions first, then each block's body); queries stay in place. With the
        # computation block g = gcd(block, summary) every key block is all-summary or one block's body, so a query
        # block gathers exactly the summary keys plus its own body. A tiny gcd would make the gathers inefficient:
        # then the blocks of ``block`` positions are used (a body may straddle two key blocks).
        g = np.gcd(self.block, self.summary)
        compute_block = int(g) if g >= 8 else self.block
        order = self.mask().positions(padded)
        out = block_sparse.block_sparse_attention(
            q, k[:, order], v[:, order], _FixedSparseKeys(padded, self.block, self.summary), block=compute_block,
            kv_valid=valid[:, order], dropout_rate=rate, dropout_rng=rng)
        return out[:, :length]


@dataclasses.dataclass(frozen=True)
class BigBirdPattern:
    block: int = 64
    num_random_blocks: int = 3
    seed: int = 0
    quadratic = False
    padding_invariant = False  # the last (global) block and the random blocks depend on the padded length

    def __post_init__(self):
        masks_lib.BigBird(self.block, self.num_random_blocks, self.seed)  # validates

    def mask(self):
        return masks_lib.BigBird(self.block, self.num_random_blocks, self.seed)

    def __call__(self, q, k, v, valid, rate, rng):
        length = q.shape[1]
        q, k, v, valid = _pad(q, k, v, valid, self.block)
        padded, block = q.shape[1], self.block
        rng_first, rng_mid, rng_last = _split(rng, 3)
        if padded <= 2 * block:  # every block is the first or the last: all global
            return _dense_rows(q, k, v, valid, rate, rng_mid)[:, :length]
        mid = block_sparse.block_sparse_attention(
            q, k, v, _BigBirdRows(block, self.num_random_blocks, self.seed, padded), block=block, kv_valid=valid,
            dropout_rate=rate, dropout_rng=rng_mid)
        first = _dense_rows(q[:, :block], k, v, valid, rate, rng_first)
        last = _dense_rows(q[:, -block:], k, v, valid, rate, rng_last)
        return jnp.concatenate([first, mid[:, block:-block], last], axis=1)[:, :length]


PATTERNS = {"local": LocalPattern, "block_local": BlockLocalPattern, "strided": StridedPattern,
            "global": GlobalPattern, "longformer": LongformerPattern, "sparse": FixedSparsePattern,
            "bigbird": BigBirdPattern}


# ------------------------------------------------------------------------------------------------ modules


class _PatternAttention(AttentionBase):
    """Shared constructor checks and call: project, run ``self.pattern`` on q/k/v, project out.

    ``impl="pallas"`` runs the pattern's mask (``pattern.mask()``) through the block-sparse Pallas kernel
    (``kernels.flash``): the same attention as the XLA path, whose empty blocks are skipped for real. Patterns
    that depend on the padded length (BigBird, the fixed Sparse Transformer) are padded to their block first,
    as their XLA path does. Attention dropout draws its bits per [B, H, L, L] weight in the kernel, so the
    dropped weights differ from the XLA path's (the same rate, another draw)."""

    pallas = True
    length_multiple = 1

    def _setup(self, dim, num_heads, qkv_dim, rngs, dropout, impl):
        super().__init__(dim=dim, num_heads=num_heads, qkv_dim=qkv_dim, rngs=rngs)
        if impl not in kernels.IMPLS:
            raise ValueError(f"impl must be one of {kernels.IMPLS}, got {impl!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout, self.impl = float(dropout), impl

    def _dropout(self, deterministic, rngs):
        if deterministic or self.dropout == 0.0:
            return 0.0, None
        if rngs is None:
            raise ValueError(f"{type(self).__name__} with dropout needs rngs when deterministic=False")
        return self.dropout, rngs.dropout()

    def _run(self, pattern, q, k, v, valid, rate, rng):
        if self.impl == "xla":
            return pattern(q, k, v, valid, rate, rng)
        length = q.shape[1]
        if not pattern.padding_invariant:
            q, k, v, valid = _pad(q, k, v, valid, pattern.block)
        out = kernels.attention(q, k, v, mask=pattern.mask(), kv_valid=valid, impl="pallas", dropout_rate=rate,
                                dropout_rng=rng)
        return out[:, :length]

    def _attend(self, q, k, v, valid, rate, rng):
        return self._run(self.pattern, q, k, v, valid, rate, rng)

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        rate, rng = self._dropout(deterministic, rngs)
        q, k, v = self.project_qkv(x)
        return self.project_out(self._attend(q, k, v, valid, rate, rng))


class _GlobalTokens(_PatternAttention):
    """Adds the ``mode`` option: "first" (the first n positions are global, e.g. CLS) or "learned" (n learned
    tokens are prepended inside the module, attend and are attended globally, and are dropped from the output)."""

    def _setup_tokens(self, dim, n, mode, rngs):
        if mode not in ("first", "learned"):
            raise ValueError(f"global mode must be 'first' or 'learned', got {mode!r}")
        self.mode, self.num_global = mode, int(n)
        if mode == "learned":
            self.global_tokens = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (n, dim)))

    def __call__(self, x, valid=None, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        if self.mode == "first":
            return super().__call__(x, valid, deterministic, rngs)
        b, n = x.shape[0], self.num_global
        tokens = jnp.broadcast_to(self.global_tokens[...].astype(x.dtype)[None], (b, n, x.shape[-1]))
        x = jnp.concatenate([tokens, x], axis=1)
        if valid is not None:
            valid = jnp.concatenate([jnp.ones((b, n), bool), jnp.asarray(valid, bool)], axis=1)
        return super().__call__(x, valid, deterministic, rngs)[:, n:]


@register("local")
class LocalAttention(_PatternAttention):
    """Sliding-window attention: query i attends to keys |i - j| <= window (the local window of Beltagy et al.
    2020, "Longformer"; LRA's "Local Attention" is ``block_local``), on gathered key blocks of ``block`` positions.

    Options: window (one-sided, default 32), block (computation block, default the window rounded up to a
    power of two, within [8, 32]; it does not change the result), dropout, impl.
    """

    padding_invariant = True
    complexity = "n k"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", window: int = 32, block: int | None = None):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = LocalPattern(window, block)


@register("block_local")
class BlockLocalAttention(_PatternAttention):
    """Non-overlapping block attention: i attends to j when i // block == j // block (LRA's local attention
    baseline, Tay et al. 2021, "Long Range Arena", block 50). The sequence is padded to a block multiple inside.

    Options: block (default 50), dropout, impl.
    """

    padding_invariant = True
    complexity = "n k"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", block: int = 50):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = BlockLocalPattern(block)


@register("strided")
class StridedAttention(_PatternAttention):
    """Strided attention, (i - j) % stride == 0: the strided pattern of Child et al. 2019, "Generating Long
    Sequences with Sparse Transformers", via the stride permutation (each residue class made contiguous).
    Each query sees L / stride keys, so cost is L^2 / stride: quadratic with a small constant.

    Options: stride (default 32, the Sparse Transformer's sqrt(1024)), dropout, impl.
    """

    padding_invariant = True
    complexity = "quadratic"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", stride: int = 32):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = StridedPattern(stride)


@register("global")
class GlobalAttention(_GlobalTokens):
    """Global-token attention, mask Global(n): n global tokens attend to every token and every token attends to
    them (the global half of Beltagy et al. 2020, "Longformer"); nothing else. Cost O(L n).

    Options: n (default 1: the CLS position), mode ("first": the first n positions; "learned": n learned tokens
    prepended inside the module and removed from the output), dropout, impl.
    """

    padding_invariant = True
    complexity = "n k"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", n: int = 1, mode: str = "first"):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = GlobalPattern(n)
        self._setup_tokens(dim, n, mode, rngs)


@register("longformer")
class LongformerAttention(_GlobalTokens):
    """Longformer (Beltagy, Peters and Cohan 2020, "Longformer: The Long-Document Transformer"): sliding window
    (optionally dilated) plus n global tokens, mask (Local(window * dilation) & Strided(dilation)) | Global(n).

    Options: window (one-sided, default 256: 513 keys, LRA's sliding_window_size is 512), dilation (default 1;
    d > 1 attends to offsets that are multiples of d up to window * d), n (global tokens, default 0 as in LRA's
    runs; 1 makes the CLS token global, the paper's classification setup), mode ("first" or
    "learned", as in ``global``; learned tokens sit before position 0), block (computation block, default the
    window span rounded up to a power of two, within [8, 32]; it does not change the result), dropout, impl.
    """

    padding_invariant = True
    complexity = "n k"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", window: int = 256, dilation: int = 1, n: int = 0,
                 mode: str = "first", block: int | None = None):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = LongformerPattern(window, dilation, n, block)
        self._setup_tokens(dim, n, mode, rngs)


@register("sparse")
class SparseTransformerAttention(_PatternAttention):
    """Sparse Transformer fixed pattern (Child, Gray, Radford and Sutskever 2019, "Generating Long Sequences with
    Sparse Transformers"), non-causal as in LRA: every query attends to its own block of ``block`` positions and
    to the last ``summary`` positions of every block. Computed on gathered key blocks, the keys permuted so that
    the summary positions come first. The summary keys number L * summary / block, so the cost is quadratic
    with constant summary / block.

    Options: block (default 50, LRA), summary (c, default 10, LRA), dropout, impl.
    """

    padding_invariant = True
    complexity = "quadratic"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", block: int = 50, summary: int = 10):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = FixedSparsePattern(block, summary)


@register("bigbird")
class BigBirdAttention(_PatternAttention):
    """BigBird (Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences") at block granularity as LRA ran
    it: each query block attends to its 3-block window, the first and last blocks (global both ways) and
    ``num_random_blocks`` random key blocks (``kernels.masks.BigBird``). Not padding invariant: the last block
    and the random draw depend on the (padded) length.

    Options: block (default 64, LRA), num_random_blocks (default 3, LRA), seed (of the random blocks, default 0),
    dropout, impl.
    """

    padding_invariant = False
    complexity = "n k"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", block: int = 64, num_random_blocks: int = 3,
                 seed: int = 0):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        self.pattern = BigBirdPattern(block, num_random_blocks, seed)


_SHARED_OPTIONS = ("window", "block", "stride", "n", "dilation", "summary", "num_random_blocks", "seed")


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _make_pattern(entry, shared: dict):
    """A heads entry (a pattern name, or a dict {"name": ..., **options}) -> pattern, with the shared options the
    pattern accepts (None: the pattern's default) under the entry's own."""
    if isinstance(entry, str):
        name, own = entry, {}
    elif isinstance(entry, Mapping) and "name" in entry:
        name, own = entry["name"], {k: v for k, v in entry.items() if k != "name"}
    else:
        raise ValueError(f"mixed_heads entries must be a pattern name or a dict with 'name', got {entry!r}")
    if name not in PATTERNS:
        raise ValueError(f"mixed_heads: unknown pattern {name!r}; valid: {sorted(PATTERNS)}")
    cls = PATTERNS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(own) - fields)
    if unknown:
        raise ValueError(f"mixed_heads: pattern {name!r} got unknown options {unknown}; it accepts {sorted(fields)}")
    options = {k: v for k, v in shared.items() if k in fields and v is not None}
    return cls(**{**options, **own})


@register("mixed_heads")
class MixedHeadsAttention(_GlobalTokens):
    """Different sparse patterns in different heads of one layer (per-head patterns as in Child et al. 2019,
    "Generating Long Sequences with Sparse Transformers", and Beltagy et al. 2020, "Longformer"). Each head group
    runs its pattern on its q/k/v head slices; the outputs are put back in head order before the output
    projection.

    Options: heads (list of pattern names from local, block_local, strided, global, longformer, sparse, bigbird,
    or dicts {"name": ..., **options}; length num_heads, or a divisor of it: each entry then covers
    num_heads / len(heads) consecutive heads; default [local, global]); window, block, stride, n, dilation,
    summary, num_random_blocks, seed (shared options, None: each pattern's default; a dict entry's own options
    win); mode ("first": global tokens are the first n positions; "learned": max n over the heads' global/longformer
    patterns learned tokens are prepended to the sequence that every head sees, and removed from the output;
    a head whose pattern has no global tokens treats them as ordinary leading positions); dropout, impl.
    Flags: complexity becomes "quadratic" and padding_invariant False on instances whose heads need it.
    """

    padding_invariant = True
    complexity = "n k"

    def __init__(self, *, dim: int, num_heads: int, max_len: int, rngs: nnx.Rngs, qkv_dim: int | None = None,
                 dropout: float = 0.0, impl: str = "xla", heads=("local", "global"), window: int | None = None,
                 block: int | None = None, stride: int | None = None, n: int | None = None,
                 dilation: int | None = None, summary: int | None = None, num_random_blocks: int | None = None,
                 seed: int | None = None, mode: str = "first"):
        self._setup(dim, num_heads, qkv_dim, rngs, dropout, impl)
        if isinstance(heads, str | bytes | Mapping) or not isinstance(heads, Sequence):
            # list("local") would be five one-letter entries, list(5) a raw TypeError
            what = f"the string {heads!r}" if isinstance(heads, str | bytes) else f"{type(heads).__name__} {heads!r}"
            raise ValueError(f"mixed_heads: attention.heads must be a list of pattern names (or dicts with 'name' "
                             f"and options), one per head group, e.g. attention.heads=[local,global], or "
                             f"attention.heads=[local] for one pattern in every head; got {what}")
        heads = list(heads)
        if not heads or num_heads % len(heads):
            raise ValueError(f"mixed_heads: heads has {len(heads)} entries; it must be num_heads ({num_heads}) "
                             f"or a divisor of it")
        shared = dict(window=window, block=block, stride=stride, n=n, dilation=dilation, summary=summary,
                      num_random_blocks=num_random_blocks, seed=seed)
        per_entry = [_make_pattern(entry, shared) for entry in heads]
        used = set().union(*(_fields(type(p)) for p in per_entry))
        unused = sorted(k for k, v in shared.items() if v is not None and k not in used)
        if unused:   # it changes nothing: meant for a head that is not in the list? (a warning: the shipped config
            # sets window and n for its default heads, which other head lists may not use)
            takers = "; ".join(f"{k} is used by " + ", ".join(sorted(n for n, c in PATTERNS.items() if k in _fields(c)))
                               for k in unused)
            log.warning("mixed_heads: %s applies to none of the heads %s (%s), so it changes nothing",
                        ", ".join("attention." + k for k in unused), heads, takers)
        repeat = num_heads // len(heads)
        per_head = [p for p in per_entry for _ in range(repeat)]
        groups: dict = {}
        for head, pattern in enumerate(per_head):
            groups.setdefault(pattern, []).append(head)
        # Static: ((pattern, head indices), ...) and the order that puts the concatenated groups back.
        self.groups = tuple((pattern, tuple(idx)) for pattern, idx in groups.items())
        order = [h for _, idx in self.groups for h in idx]
        self.head_order = tuple(int(i) for i in np.argsort(order))
        if any(p.quadratic for p in per_head):
            self.complexity = "quadratic"
        if not all(p.padding_invariant for p in per_head):
            self.padding_invariant = False
        self.head_patterns = tuple(per_head)
        global_n = [p.n for p in per_head if isinstance(p, (GlobalPattern, LongformerPattern))]
        if mode == "learned" and not any(global_n):
            raise ValueError("mixed_heads: mode='learned' adds learned global tokens, but no head has a global or "
                             "longformer pattern with n >= 1; add one to heads or use mode='first'")
        self._setup_tokens(dim, max(global_n, default=0), mode, rngs)

    def _attend(self, q, k, v, valid, rate, rng):
        rngs = _split(rng, len(self.groups))
        outs = []
        for (pattern, idx), key in zip(self.groups, rngs):
            sel = np.asarray(idx)
            outs.append(self._run(pattern, q[:, :, sel], k[:, :, sel], v[:, :, sel], valid, rate, key))
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
        return out[:, :, np.asarray(self.head_order)]


__all__ = ["KeyPrefix", "FixedSparse", "PATTERNS", "LocalAttention", "BlockLocalAttention", "StridedAttention",
           "GlobalAttention", "LongformerAttention", "SparseTransformerAttention", "BigBirdAttention",
           "MixedHeadsAttention"]
