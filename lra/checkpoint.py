"""Orbax checkpoints of a run: ``latest`` (for resuming) and ``best`` (by validation accuracy).

Each checkpoint holds the train state pytree (params, optimiser state) and a JSON dict of trainer metadata
(step, best validation accuracy so far, timing). Orbax writes into a temporary folder and renames it when
complete, so a run killed mid-save keeps its previous checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class RunCheckpoints:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
        self.managers = {name: ocp.CheckpointManager(self.directory / name, options=options)
                         for name in ("latest", "best")}

    def latest_step(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def save(self, which: str, step: int, state, meta: dict) -> None:
        manager = self.managers[which]
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                     force=True)
        manager.wait_until_finished()

    def restore(self, which: str, abstract_state):
        """(state, meta) of the newest checkpoint of ``which``, or None when there is none."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                 meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
