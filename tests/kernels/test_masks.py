"""Masks: dense arrays against their definitions, composition, and block layouts against the dense mask."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import masks


def brute(rule, q_len, kv_len):
    return np.array([[rule(i, j) for j in range(kv_len)] for i in range(q_len)], dtype=bool)


@pytest.mark.parametrize("q_len,kv_len", [(7, 7), (16, 16), (5, 9), (12, 4)])
def test_dense_matches_definition(q_len, kv_len):
    cases = [
        (masks.Full(), lambda i, j: True),
        (masks.Local(2), lambda i, j: abs(i - j) <= 2),
        (masks.Local(0), lambda i, j: i == j),
        (masks.BlockLocal(4), lambda i, j: i // 4 == j // 4),
        (masks.Strided(3), lambda i, j: (i - j) % 3 == 0),
        (masks.Global(2), lambda i, j: i < 2 or j < 2),
        (masks.Local(1) | masks.Global(1), lambda i, j: abs(i - j) <= 1 or i < 1 or j < 1),
        (masks.Local(3) & masks.Strided(2), lambda i, j: abs(i - j) <= 3 and (i - j) % 2 == 0),
    ]
    for mask, rule in cases:
        np.testing.assert_array_equal(mask.dense(q_len, kv_len), brute(rule, q_len, kv_len), err_msg=repr(mask))


def test_bigbird_pattern():
    mask = masks.BigBird(block=4, num_random_blocks=1, seed=3)
    dense = mask.dense(32, 32)
    blocks = dense.reshape(8, 4, 8, 4).all(axis=(1, 3))
    assert (dense.reshape(8, 4, 8, 4).any(axis=(1, 3)) == blocks).all(), "BigBird is block-granular"
    for b in range(8):
        for n in (b - 1, b, b + 1):
            if 0 <= n < 8:
                assert blocks[b, n], "window of 3 blocks"
    assert blocks[0].all() and blocks[:, 0].all() and blocks[-1].all() and blocks[:, -1].all(), "global blocks"
    # Exactly window + global + the random blocks, and deterministic in the seed.
    assert (mask.dense(32, 32) == dense).all()
    patterns = {masks.BigBird(4, 2, seed=s).dense(64, 64).tobytes() for s in range(5)}
    assert len(patterns) > 1, "the random blocks depend on the seed"
    rand = mask.random_blocks(8, 8)
    assert rand.shape == (8, 1) and blocks[np.arange(8), rand[:, 0]].all()


def test_invalid_parameters():
    for bad in (lambda: masks.Local(-1), lambda: masks.BlockLocal(0), lambda: masks.Strided(0),
                lambda: masks.Global(-2), lambda: masks.BigBird(0)):
        with pytest.raises(ValueError, match="must be"):
            bad()


def check_layout(mask, q_len, kv_len, bq, bk):
    layout = mask.block_layout(q_len, kv_len, bq, bk)
    dense = mask.dense(q_len, kv_len)
    assert layout.shape == (-(-q_len // bq), -(-kv_len // bk))
    for a in range(layout.shape[0]):
        for b in range(layout.shape[1]):
            block = dense[a * bq:(a + 1) * bq, b * bk:(b + 1) * bk]
            full_size = block.shape == (bq, bk)
            expected = masks.FULL if block.all() and full_size else masks.PARTIAL if block.any() else masks.EMPTY
            assert layout[a, b] == expected, (mask, a, b)


@pytest.mark.parametrize("mask", [masks.Full(), masks.Local(5), masks.BlockLocal(8), masks.Strided(4),
                                  masks.Global(3), masks.BigBird(8, 2, 0), masks.Local(4) | masks.Global(2)])
@pytest.mark.parametrize("q_len,kv_len,bq,bk", [(32, 32, 8, 8), (30, 37, 8, 16), (64, 64, 16, 8)])
def test_block_layout_exact(mask, q_len, kv_len, bq, bk):
    check_layout(mask, q_len, kv_len, bq, bk)


@settings(max_examples=40, deadline=None)
@given(window=st.integers(0, 20), n_global=st.integers(0, 5), q_len=st.integers(1, 50), kv_len=st.integers(1, 50),
       bq=st.sampled_from([1, 4, 8, 16]), bk=st.sampled_from([1, 4, 8, 16]))
def test_block_layout_random(window, n_global, q_len, kv_len, bq, bk):
    check_layout(masks.Local(window) | masks.Global(n_global), q_len, kv_len, bq, bk)


def test_bigbird_is_exactly_window_global_and_random_blocks():
    mask = masks.BigBird(block=4, num_random_blocks=2, seed=7)
    n = 9
    expected = np.zeros((n, n), bool)
    rand = mask.random_blocks(n, n)
    for a in range(n):
        for b in range(n):
            expected[a, b] = abs(a - b) <= 1 or a in (0, n - 1) or b in (0, n - 1) or b in rand[a]
    dense = mask.dense(34, 34)  # 9 blocks, the last one ragged
    np.testing.assert_array_equal(dense, np.repeat(np.repeat(expected, 4, 0), 4, 1)[:34, :34])


@pytest.mark.parametrize("mask", [masks.Local(3), masks.Strided(3), masks.Global(2), masks.BigBird(4, 1, 2),
                                  masks.Local(2) | masks.BigBird(4, 1, 0), masks.Local(5) & masks.Global(3)])
def test_rows_are_slices_of_dense(mask):
    dense = mask.dense(24, 24)
    for start, stop in ((0, 8), (8, 16), (5, 13), (20, 24)):
        np.testing.assert_array_equal(mask.rows(start, stop, 24, 24), dense[start:stop])
