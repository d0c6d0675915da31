"""Attention masks: which (query, key) pairs may attend.

A mask is a small immutable description, not an array. It gives the dense boolean array for reference code and
tests (``.dense(q_len, kv_len)``) and a block layout for block-sparse kernels (``.block_layout(...)``).
Masks compose with ``|`` (union of allowed pairs) and ``&`` (intersection).

    Full()                          every pair
    Local(window)                   |i - j| <= window
    BlockLocal(block)               i // block == j // block
    Strided(stride)                 (i - j) % stride == 0
    Global(n)                       i < n or j < n
    BigBird(block, num_random_blocks, seed)
                                    block window of 3 + first/last block global + random key blocks per query block
    Explicit(array)                 any fixed boolean [L, L] pattern
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Block layout codes: a block of the (q_len, kv_len) grid is empty (skip), partial (apply the mask) or full.
EMPTY, PARTIAL, FULL = 0, 1, 2


class Mask:
    """Base class. Subclasses implement ``_allowed(i, j)`` on broadcastable integer index arrays."""

    def _allowed(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rows(self, q_start: int, q_stop: int, q_len: int, kv_len: int) -> np.ndarray:
        """Boolean [q_stop - q_start, kv_len]: the rows q_start..q_stop-1 of ``dense(q_len, kv_len)``, built
        without the other rows (block-sparse planning walks the mask a block of rows at a time)."""
        i = np.arange(q_start, q_stop)[:, None]
        j = np.arange(kv_len)[None, :]
        return np.broadcast_to(self._allowed(i, j), (q_stop - q_start, kv_len)).copy()

    def dense(self, q_len: int, kv_len: int) -> np.ndarray:
        """Boolean [q_len, kv_len] array, True where query i may attend to key j."""
        return self.rows(0, q_len, q_len, kv_len)

    def block_layout(self, q_len: int, kv_len: int, block_q: int, block_k: int) -> np.ndarray:
        """int8 [ceil(q_len / block_q), ceil(kv_len / block_k)] of EMPTY / PARTIAL / FULL.

        Positions beyond q_len / kv_len in the last blocks count as not allowed, so a ragged last block is
        never FULL unless the caller pads its own mask.
        """
        nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
        dense = np.zeros((nq * block_q, nk * block_k), dtype=bool)
        dense[:q_len, :kv_len] = self.dense(q_len, kv_len)
        blocks = dense.reshape(nq, block_q, nk, block_k)
        any_ = blocks.any(axis=(1, 3))
        all_ = blocks.all(axis=(1, 3))
        return np.where(all_, FULL, np.where(any_, PARTIAL, EMPTY)).astype(np.int8)

    def __or__(self, other: Mask) -> Mask:
        return Union(self, other)

    def __and__(self, other: Mask) -> Mask:
        return Intersection(self, other)


@dataclasses.dataclass(frozen=True)
class Union(Mask):
    a: Mask
    b: Mask

    def _allowed(self, i, j):
        return self.a._allowed(i, j) | self.b._allowed(i, j)

    def rows(self, q_start, q_stop, q_len, kv_len):
        return self.a.rows(q_start, q_stop, q_len, kv_len) | self.b.rows(q_start, q_stop, q_len, kv_len)


@dataclasses.dataclass(frozen=True)
class Intersection(Mask):
    a: Mask
    b: Mask

    def _allowed(self, i, j):
        return self.a._allowed(i, j) & self.b._allowed(i, j)

    def rows(self, q_start, q_stop, q_len, kv_len):
        return self.a.rows(q_start, q_stop, q_len, kv_len) & self.b.rows(q_start, q_stop, q_len, kv_len)


@dataclasses.dataclass(frozen=True)
class Full(Mask):
    def _allowed(self, i, j):
        return np.ones(np.broadcast_shapes(i.shape, j.shape), dtype=bool)


@dataclasses.dataclass(frozen=True)
class Local(Mask):
    window: int

    def __post_init__(self):
        _check_nonneg("Local.window", self.window)

    def _allowed(self, i, j):
        return np.abs(i - j) <= self.window


@dataclasses.dataclass(frozen=True)
class BlockLocal(Mask):
    block: int

    def __post_init__(self):
        _check_pos("BlockLocal.block", self.block)

    def _allowed(self, i, j):
        return (i // self.block) == (j // self.block)


@dataclasses.dataclass(frozen=True)
class Strided(Mask):
    stride: int

    def __post_init__(self):
        _check_pos("Strided.stride", self.stride)

    def _allowed(self, i, j):
        return (i - j) % self.stride == 0


@dataclasses.dataclass(frozen=True)
class Global(Mask):
    n: int

    def __post_init__(self):
        _check_nonneg("Global.n", self.n)

    def _allowed(self, i, j):
        return (i < self.n) | (j < self.n)


@dataclasses.dataclass(frozen=True)
class BigBird(Mask):
    """BigBird (Zaheer et al. 2020) at block granularity, as in LRA's configuration.

    Query block b attends to key blocks b-1, b, b+1 (window of 3 blocks), to the first and last block (global,
    both directions), and to ``num_random_blocks`` key blocks drawn per query block from a generator seeded by
    ``seed`` (a function of the number of blocks, so the same (length, seed) always gives the same pattern).
    """

    block: int
    num_random_blocks: int = 3
    seed: int = 0

    def __post_init__(self):
        _check_pos("BigBird.block", self.block)
        _check_nonneg("BigBird.num_random_blocks", self.num_random_blocks)
        _check_nonneg("BigBird.seed", self.seed)   # numpy's generator takes no negative seed

    def random_blocks(self, num_q_blocks: int, num_k_blocks: int) -> np.ndarray:
        """int [num_q_blocks, r] key-block indices (r = min(num_random_blocks, num_k_blocks))."""
        rng = np.random.default_rng([self.seed, num_q_blocks, num_k_blocks])
        r = min(self.num_random_blocks, num_k_blocks)
        return np.stack([rng.choice(num_k_blocks, size=r, replace=False) for _ in range(num_q_blocks)]) \
            if r else np.zeros((num_q_blocks, 0), dtype=np.int64)

    def rows(self, q_start: int, q_stop: int, q_len: int, kv_len: int) -> np.ndarray:
        # Computed on the block grid of the needed rows only: no q_len x kv_len array.
        nq, nk = -(-q_len // self.block), -(-kv_len // self.block)
        qb = (np.arange(q_start, q_stop) // self.block)[:, None]
        kb = np.arange(nk)[None, :]
        blocks = (np.abs(qb - kb) <= 1) | (qb == 0) | (kb == 0) | (qb == nq - 1) | (kb == nk - 1)
        blocks |= (self.random_blocks(nq, nk)[qb[:, 0]][:, :, None] == kb[:, None, :]).any(axis=1)
        return np.repeat(blocks, self.block, axis=1)[:, :kv_len].copy()

    def _allowed(self, i, j):
        # Element-wise evaluation needs the sequence length, which (i, j) alone do not give. BigBird is a
        # self-attention pattern, so take one length L for queries and keys: the largest index + 1. ``rows``
        # passes every key index 0..kv_len-1, so any subset of rows of ``dense(L, L)`` gets the right L (the
        # largest query index alone would not: rows 8..11 of a length-40 mask are not a length-12 mask). A
        # q_len != kv_len pattern is only defined through ``rows`` / ``dense``, which take both lengths.
        i, j = np.asarray(i), np.asarray(j)
        if i.size == 0 or j.size == 0:
            return np.zeros(np.broadcast_shapes(i.shape, j.shape), dtype=bool)
        length = int(max(np.max(i), np.max(j))) + 1
        n = -(-length // self.block)
        qb, kb = i // self.block, j // self.block
        allowed = (np.abs(qb - kb) <= 1) | (qb == 0) | (kb == 0) | (qb == n - 1) | (kb == n - 1)
        rand = self.random_blocks(n, n)                                   # the same draw as rows(.., L, L)
        if rand.shape[1]:
            allowed = allowed | (rand[qb] == np.asarray(kb)[..., None]).any(axis=-1)
        return allowed


@dataclasses.dataclass(frozen=True, eq=False)
class Explicit(Mask):
    """Any fixed pattern, given as a boolean [q_len, kv_len] numpy array (compared and hashed by identity)."""

    array: np.ndarray

    def __post_init__(self):
        a = np.asarray(self.array)
        if a.ndim != 2:
            raise ValueError(f"Explicit mask must be a 2-d boolean array, got shape {a.shape}")
        object.__setattr__(self, "array", a.astype(bool))

    def rows(self, q_start, q_stop, q_len, kv_len):
        if (q_len, kv_len) != self.array.shape:
            raise ValueError(f"Explicit mask of shape {self.array.shape} used for a ({q_len}, {kv_len}) attention")
        return self.array[q_start:q_stop].copy()

    def _allowed(self, i, j):
        return self.array[i, j]


def _check_pos(name: str, value: int) -> None:
    # bool is an int in Python: Strided(True) would be stride 1; the model options refuse it too.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_nonneg(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
