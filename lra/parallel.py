"""Data parallelism with ``jax.sharding``: a Mesh over the batch axis of all devices, parameters replicated.

With one device nothing changes (no mesh). With several, each train and eval batch is split evenly over the
devices along its first axis and XLA (GSPMD) inserts the gradient all-reduce; the loss is the same global-batch
mean as on one device, up to float32 summation order. Several hosts: ``maybe_initialize_distributed`` calls
``jax.distributed.initialize()`` when the environment describes a multi-process job (Slurm with more than one
task, or JAX's coordinator variables), each process feeds its slice of the global batch, and only process 0
writes records (Orbax coordinates the checkpoint writes itself).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lra.config import ConfigError


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` for multi-process jobs (it reads Slurm's or JAX's variables)."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if slurm_tasks > 1 or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def data_mesh(batch_size: int, key: str = "train.batch_size") -> Mesh | None:
    """A 1-d mesh ("batch",) over all devices, or None with one device. The batch must split evenly (``key``
    names the config key of ``batch_size`` in the error)."""
    n = jax.device_count()
    if n == 1:
        return None
    if batch_size % n:
        options = ", ".join(str(n * k) for k in range(1, 5))
        raise ConfigError(f"{key}={batch_size} does not split evenly over {n} devices; use a multiple "
                          f"of {n} (e.g. {options})")
    return jax.make_mesh((n,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))  # GSPMD propagation


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("batch"))


def replicate(tree, mesh: Mesh | None):
    return tree if mesh is None else jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict, mesh: Mesh | None) -> dict:
    """Put a global batch (numpy, the same on every process) on the mesh, split along its first axis."""
    if mesh is None:
        return batch
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def local(x):
        x = np.asarray(x)
        per = x.shape[0] // jax.process_count()
        mine = x[jax.process_index() * per:(jax.process_index() + 1) * per]
        return jax.make_array_from_process_local_data(sharding, mine, x.shape)

    return jax.tree.map(local, batch)


def sharded_struct(tree, mesh: Mesh | None):
    """Shape structs of a batch with the batch sharding attached (for ahead-of-time compilation)."""
    if mesh is None:
        return tree
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def is_writer() -> bool:
    """Only process 0 writes records."""
    return jax.process_index() == 0


__all__ = ["maybe_initialize_distributed", "data_mesh", "replicate", "shard_batch", "sharded_struct", "is_writer"]
