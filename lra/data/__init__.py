"""Data entry point of the LRA harness.

``source(task, split, ...)`` returns a random-access sequence (ArraySource) of examples, each a dict of
numpy arrays: ``inputs`` int32 [max_length] padded with 0, ``targets`` int32 scalar, ``lengths`` int32
scalar (number of real tokens). Kept free of jax imports; task modules are imported lazily.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def default_data_dir(data_dir=None) -> Path:
    """``data_dir`` if given, else the ``LRA_DATA`` environment variable, else ``data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("LRA_DATA") or "data")


class ArraySource:
    """Random-access sequence over a dict of equally long numpy arrays (first axis = example)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        if not arrays:
            raise ValueError("ArraySource needs at least one array")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError(f"ArraySource arrays must share the same first dimension, got {sizes}")
        self.arrays = arrays
        self._len = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i) -> dict[str, np.ndarray]:
        i = operator.index(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for ArraySource of length {self._len}")
        return {k: v[i] for k, v in self.arrays.items()}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.dtype}{list(v.shape)}" for k, v in self.arrays.items())
        return f"ArraySource(n={self._len}, {shapes})"


def _load_listops(split: str, *, data_dir, **options) -> dict[str, np.ndarray]:
    from . import listops

    return listops.load(split, data_dir=data_dir, **options)


# Task name -> loader(split, *, data_dir, **options) returning a dict of arrays.
TASKS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "listops": _load_listops,
}


def check_available(task: str, *, data_dir=None, **options) -> None:
    """Raise FileNotFoundError naming the command that gets the data when ``task``'s files are missing and
    cannot be generated. Cheap: checks paths only, so a run fails on missing data in well under a second."""
    if task not in TASKS:
        raise ValueError(f"unknown LRA task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    if task == "listops":
        from . import listops

        listops.check_available(data_dir=default_data_dir(data_dir), **options)


def source(task: str, split: str, *, data_dir=None, **options) -> ArraySource:
    """Examples of ``task``/``split``; ``options`` (e.g. max_length, generate) go to the task loader."""
    if task not in TASKS:
        raise ValueError(f"unknown LRA task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return ArraySource(TASKS[task](split, data_dir=default_data_dir(data_dir), **options))


__all__ = ["TASKS", "ArraySource", "check_available", "default_data_dir", "source"]
