"""Batches: deterministic order per (seed, step), bucketing, and evaluation that never drops an example."""
import numpy as np
import pytest

from lra import batching


def arrays(n=103, max_length=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, n).astype(np.int32)
    inputs = np.where(np.arange(max_length)[None] < lengths[:, None], rng.integers(1, 16, (n, max_length)), 0)
    return {"inputs": inputs.astype(np.int32), "targets": rng.integers(0, 10, n).astype(np.int32),
            "lengths": lengths}


@pytest.mark.parametrize("bucket_size", [None, 16])
def test_order_is_a_function_of_seed_and_step(bucket_size):
    data = arrays()
    a = batching.TrainBatches(data, 8, seed=3, max_length=64, bucket_size=bucket_size)
    b = batching.TrainBatches(data, 8, seed=3, max_length=64, bucket_size=bucket_size)
    steps = [0, 5, 12, 13, 40, 2, 27]
    for s in steps:  # random access in any order equals sequential access
        np.testing.assert_array_equal(a.indices(s), b.indices(s))
    seq = [a.indices(s).copy() for s in range(40)]
    for s in reversed(range(40)):
        np.testing.assert_array_equal(b.indices(s), seq[s])
    c = batching.TrainBatches(data, 8, seed=4, max_length=64, bucket_size=bucket_size)
    assert any(not np.array_equal(c.indices(s), seq[s]) for s in range(12))


@pytest.mark.parametrize("bucket_size", [None, 16])
def test_each_epoch_is_a_permutation(bucket_size):
    data = arrays()
    tb = batching.TrainBatches(data, 8, seed=0, max_length=64, bucket_size=bucket_size)
    assert tb.batches_per_epoch == 103 // 8
    for epoch in range(2):
        seen = np.concatenate([tb.indices(epoch * tb.batches_per_epoch + i) for i in range(tb.batches_per_epoch)])
        assert len(set(seen.tolist())) == len(seen) == tb.batches_per_epoch * 8


def test_bucketing_pads_to_few_shapes_and_keeps_tokens():
    data = arrays(n=400, max_length=64)
    tb = batching.TrainBatches(data, 16, seed=0, max_length=64, bucket_size=16)
    shapes = set()
    for step in range(60):
        batch = tb.batch(step)
        length = batch["inputs"].shape[1]
        shapes.add(length)
        idx = tb.indices(step)
        assert length % 16 == 0 and length >= data["lengths"][idx].max()
        np.testing.assert_array_equal(batch["valid"].sum(1), data["lengths"][idx])
        np.testing.assert_array_equal(batch["inputs"], data["inputs"][idx, :length])
    assert shapes <= set(tb.shapes()) and len(shapes) > 1
    # sorting inside pools makes batches tighter than random batching would
    loose = batching.TrainBatches(data, 16, seed=0, max_length=64, bucket_size=None)
    assert np.mean([tb.batch(s)["inputs"].shape[1] for s in range(20)]) < loose.batch(0)["inputs"].shape[1]


@pytest.mark.parametrize("n,batch_size,bucket_size", [(103, 8, None), (103, 8, 16), (16, 8, None), (5, 8, 16)])
def test_eval_covers_every_example_once(n, batch_size, bucket_size):
    data = arrays(n=n)
    batches = list(batching.eval_batches(data, batch_size, max_length=64, bucket_size=bucket_size))
    assert all(b["inputs"].shape[0] == batch_size for b in batches)
    weights = np.concatenate([b["weights"] for b in batches])
    lengths = [batching.bucket_length(x, bucket_size, 64) for x in data["lengths"]]
    # Batches never mix padded lengths: each example is padded to its own length rounded up to the bucket.
    assert weights.sum() == n and len(batches) == sum(-(-lengths.count(x) // batch_size) for x in set(lengths))
    got = sorted((int(v.sum()), b["inputs"].shape[1]) for b in batches for v, w in zip(b["valid"], b["weights"])
                 if w == 1)
    assert got == sorted(zip(data["lengths"].tolist(), lengths))
    # every (target, length) pair appears exactly once among weight-1 rows
    got = sorted((int(t), int(v.sum())) for b in batches for t, v, w in zip(b["targets"], b["valid"], b["weights"])
                 if w == 1)
    assert got == sorted(zip(data["targets"].tolist(), data["lengths"].tolist()))


def test_too_few_examples():
    with pytest.raises(ValueError, match="fewer than batch_size"):
        batching.TrainBatches(arrays(n=5), 8, seed=0, max_length=64)


def test_bucket_length():
    assert batching.bucket_length(1, 32, 100) == 32
    assert batching.bucket_length(33, 32, 100) == 64
    assert batching.bucket_length(99, 32, 100) == 100
    assert batching.bucket_length(5, None, 100) == 100


def test_pair_arrays_batch_with_a_pair_axis():
    """Retrieval: inputs [N, 2, L], lengths [N, 2]; a batch is padded to its longest document, valid per slot."""
    from lra.trainer import pair_arrays

    one, two = arrays(n=40, seed=1), arrays(n=40, seed=2)
    data = pair_arrays({"inputs1": one["inputs"], "inputs2": two["inputs"], "lengths1": one["lengths"],
                        "lengths2": two["lengths"], "targets": one["targets"]})
    assert data["inputs"].shape == (40, 2, 64) and data["lengths"].shape == (40, 2)
    batches = batching.TrainBatches(data, 8, seed=0, max_length=64, bucket_size=16)
    for step in range(10):
        batch, idx = batches.batch(step), batches.indices(step)
        length = batch["inputs"].shape[-1]
        assert batch["inputs"].shape == batch["valid"].shape == (8, 2, length)
        assert length == batching.bucket_length(data["lengths"][idx].max(), 16, 64)
        np.testing.assert_array_equal(batch["valid"].sum(-1), data["lengths"][idx])
        np.testing.assert_array_equal(batch["inputs"][:, 1], two["inputs"][idx, :length])
    seen = np.concatenate([b["targets"][b["weights"] > 0] for b in
                           batching.eval_batches(data, 6, max_length=64, bucket_size=16)])
    assert sorted(seen) == sorted(data["targets"])
