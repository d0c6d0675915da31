"""Data entry point of the LRA harness.

``source(task, split, ...)`` returns a random-access sequence (ArraySource) of examples, each a dict of
numpy arrays: ``inputs`` int32 [max_length] padded with 0, ``targets`` int32 scalar, ``lengths`` int32
scalar (number of real tokens). Kept free of jax imports; task modules are imported lazily.
"""

from __future__ import annotations

import inspect
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


# Task name -> the module that loads it (lazily imported). Every module has
# ``load(split, *, data_dir, max_length, **options) -> dict of arrays`` and ``check_available(*, data_dir, **options)``.
# The options a task accepts (task.data) are the keyword parameters of its ``load`` (_data_keys); others are refused.
_MODULES = {"listops": "listops", "text": "text", "retrieval": "retrieval", "image": "image",
            "pathfinder": "pathfinder", "pathx": "pathfinder"}


def _module(task: str):
    import importlib

    return importlib.import_module(f"{__name__}.{_MODULES[task]}")


def _data_keys(task: str) -> list[str]:
    """The ``task.data`` keys of ``task``: the keyword parameters of its module's ``load`` other than split,
    data_dir and max_length (``task.max_length``, passed beside them)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(_module(task).load).parameters.values()
            if p.kind in kinds and p.name not in ("split", "data_dir", "max_length")]


def _check_options(task: str, options: dict) -> None:
    """Refuse options the task's loader does not read: a typo, or a key added with '+', would otherwise be
    ignored (a ``**_`` catch-all) or crash the loader after compilation."""
    valid = _data_keys(task)
    unknown = [k for k in options if k not in valid and k != "max_length"]
    if unknown:
        names = ", ".join(f"task.data.{k}" for k in unknown)
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {names} for task {task} (a typo, or a "
                         f"key added with '+' that nothing reads): remove it; valid: "
                         f"{', '.join(f'task.data.{k}' for k in valid)} (and task.max_length)")


def _task_options(task: str, options: dict) -> dict:
    """The options with the task's own defaults: Path-X is Pathfinder at 128x128 unless told otherwise (the
    Pathfinder module's own default, 32, would silently load Pathfinder's data)."""
    if task == "pathx":
        return {"resolution": 128, **options}
    return options


def _check_pathfinder_length(task: str, options: dict) -> None:
    """Pathfinder/Path-X tokens are the pixels: max_length must be resolution squared."""
    if _MODULES[task] == "pathfinder" and "max_length" in options:
        res = options.get("resolution", 32)   # Path-X's options carry 128 already (_task_options)
        from lra.data.pathfinder import RESOLUTIONS  # the resolution first: no advice towards another error

        if res not in RESOLUTIONS:
            raise ValueError(f"task.data.resolution={res} is not one of Pathfinder's resolutions "
                             f"({', '.join(map(str, RESOLUTIONS))}); set it with task.max_length=resolution^2")
        if options["max_length"] != res * res:
            raise ValueError(f"task.max_length ({options['max_length']}) must be resolution^2 = {res * res} for "
                             f"{task} at resolution {res} (set task.max_length={res * res})")


def _loader(task: str) -> Callable[..., dict[str, np.ndarray]]:
    def load(split: str, *, data_dir, **options) -> dict[str, np.ndarray]:
        _check_options(task, options)
        options = _task_options(task, options)
        _check_pathfinder_length(task, options)
        return _module(task).load(split, data_dir=data_dir, **options)

    return load


# Task name -> loader(split, *, data_dir, **options) returning a dict of arrays.
TASKS: dict[str, Callable[..., dict[str, np.ndarray]]] = {task: _loader(task) for task in _MODULES}


def check_available(task: str, *, data_dir=None, **options) -> None:
    """Raise FileNotFoundError naming the command that gets the data when ``task``'s files are missing and
    cannot be generated (ValueError for options that cannot work, and for options the task's ``load`` does not
    take). Cheap: checks paths only, so a run fails on missing data in well under a second."""
    if task not in TASKS:
        raise ValueError(f"unknown LRA task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    _check_options(task, options)
    options = _task_options(task, options)
    _check_pathfinder_length(task, options)
    folder = default_data_dir(data_dir)
    if folder.exists() and not folder.is_dir():   # else the commands suggested below would name paths inside it
        raise ValueError(f"data_dir={folder}: {folder} is a file, not a folder; set data_dir=<the folder that holds "
                         f"(or will hold) the datasets> (or $LRA_DATA)")
    _module(task).check_available(data_dir=folder, **options)


def source(task: str, split: str, *, data_dir=None, **options) -> ArraySource:
    """Examples of ``task``/``split``; ``options`` (e.g. max_length, generate) go to the task loader, which
    must take each of them (ValueError naming an unknown one)."""
    if task not in TASKS:
        raise ValueError(f"unknown LRA task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return ArraySource(TASKS[task](split, data_dir=default_data_dir(data_dir), **options))


__all__ = ["TASKS", "ArraySource", "check_available", "default_data_dir", "source"]
