"""Batches for training and evaluation.

Training order is a pure function of (seed, step): epoch e uses a permutation drawn from (seed, e), so a resumed
run sees exactly the batches an uninterrupted run would. With length bucketing, each epoch's permutation is cut
into pools of ``pool_batches`` batches; inside a pool examples are sorted by length and cut into batches, and
the batch order is shuffled again. Each batch is padded to its longest example rounded up to a multiple of
``bucket_size`` (capped at max_length), so only a few shapes ever compile.

Evaluation covers every example: grouped by padded length (each example's own length rounded up to a multiple of
``bucket_size``, or max_length), batched, each group's last batch filled with weight-0 rows.

Pair tasks (Retrieval) hold ``inputs`` [N, 2, max_length] and ``lengths`` [N, 2]: one document per slot of the
pair axis. Batches keep that axis (inputs/valid [B, 2, length]); an example's length is its longer document's.
"""
from __future__ import annotations

import numpy as np


def bucket_length(longest: int, bucket_size: int | None, max_length: int) -> int:
    """The padded length for a batch whose longest example has ``longest`` tokens."""
    if not bucket_size:
        return max_length
    return int(min(max_length, max(bucket_size, -(-int(longest) // bucket_size) * bucket_size)))


def example_lengths(arrays: dict) -> np.ndarray:
    """int [N]: each example's length (a pair's longer document)."""
    lengths = arrays["lengths"]
    return lengths.max(axis=-1) if lengths.ndim > 1 else lengths


def make_batch(arrays: dict, indices: np.ndarray, length: int, weights: np.ndarray | None = None) -> dict:
    """Gather rows ``indices`` cut to ``length``: inputs int32 [B, (2,) length], valid bool, targets, weights."""
    lengths = np.minimum(arrays["lengths"][indices], length)
    return {
        "inputs": np.ascontiguousarray(arrays["inputs"][indices][..., :length], dtype=np.int32),
        "valid": np.arange(length) < lengths[..., None],
        "targets": arrays["targets"][indices].astype(np.int32),
        "weights": np.ones(len(indices), np.float32) if weights is None else weights.astype(np.float32),
    }


class TrainBatches:
    """Deterministic training batches: ``batch(step)`` depends only on (seed, step) and the data."""

    def __init__(self, arrays: dict, batch_size: int, seed: int, *, max_length: int,
                 bucket_size: int | None = None, pool_batches: int = 50):
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.max_length, self.bucket_size, self.pool_batches = max_length, bucket_size, pool_batches
        self.num_examples = len(arrays["targets"])
        if self.num_examples < batch_size:
            raise ValueError(f"the training set has {self.num_examples} examples, fewer than batch_size="
                             f"{batch_size}; lower train.batch_size or generate more data")
        self.batches_per_epoch = self.num_examples // batch_size
        self._epoch, self._plan = None, None

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """int [batches_per_epoch, batch_size] example indices of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_examples)[: self.batches_per_epoch * self.batch_size]
        if self.bucket_size:
            pool = self.pool_batches * self.batch_size
            lengths = example_lengths(self.arrays)
            chunks = [order[s: s + pool] for s in range(0, len(order), pool)]
            order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
            plan = order.reshape(self.batches_per_epoch, self.batch_size)
            return plan[rng.permutation(self.batches_per_epoch)]
        return order.reshape(self.batches_per_epoch, self.batch_size)

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(int(step), self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, self.epoch_plan(epoch)
        return self._plan[i]

    def batch(self, step: int) -> dict:
        idx = self.indices(step)
        length = bucket_length(example_lengths(self.arrays)[idx].max(), self.bucket_size, self.max_length)
        return make_batch(self.arrays, idx, length)

    def shapes(self) -> list[int]:
        """Every padded length a batch can have (largest last)."""
        if not self.bucket_size:
            return [self.max_length]
        return sorted({bucket_length(n, self.bucket_size, self.max_length)
                       for n in range(1, self.max_length + 1, self.bucket_size)} | {self.max_length})


def eval_batches(arrays: dict, batch_size: int, *, max_length: int, bucket_size: int | None = None):
    """Yield batches covering every example exactly once (weight 1); padding rows have weight 0.

    With ``bucket_size``, each example is padded to its own length rounded up to a multiple of it (batches never
    mix two padded lengths): an example's padding does not depend on which others share its batch, so a variant
    that is not padding-invariant is still evaluated as a function of its parameters alone, whatever
    ``batch_size``. Without it every batch is padded to ``max_length``, as LRA does."""
    n = len(arrays["targets"])
    lengths = example_lengths(arrays)
    if bucket_size:
        padded = np.array([bucket_length(x, bucket_size, max_length) for x in lengths], dtype=np.int64)
        groups = [(int(p), np.flatnonzero(padded == p)) for p in np.unique(padded)]
    else:
        groups = [(max_length, np.arange(n))]
    for length, members in groups:
        for start in range(0, len(members), batch_size):
            idx = members[start: start + batch_size]
            weights = np.ones(batch_size, np.float32)
            if len(idx) < batch_size:
                weights[len(idx):] = 0.0
                idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
            yield make_batch(arrays, idx, length, weights)
