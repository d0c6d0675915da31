"""Orbax checkpoints of a run: ``latest`` (for resuming) and ``best`` (by validation accuracy).

Each checkpoint holds the train state pytree (params, optimiser state) and a JSON dict of trainer metadata
(step, best validation accuracy so far, timing). Orbax writes into a temporary folder and renames it when
complete, so a run killed mid-save keeps its previous checkpoint. ``latest`` keeps the two newest steps: when
the newest cannot be read (truncated or corrupted files), ``restore`` says so and falls back to the one before.
``best`` keeps two too, so that a resumed run can drop a ``best`` newer than its resume step (``discard_after``)
and still find the best before it.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointUnreadable(RuntimeError):
    """No checkpoint of a run could be read."""


# ``best`` keeps two as well: a run killed between saving ``best`` and ``latest`` at one step leaves a ``best``
# newer than the step it resumes from; ``discard_after`` removes it and the previous best is still there.
KEEP = {"latest": 2, "best": 2}


def has_checkpoints(directory: str | Path) -> bool:
    """Whether a run saved any checkpoint under ``directory`` (Orbax writes one folder per step, named by the
    step, in ``latest/`` and ``best/``); reads the folder names only."""
    return any(p.name.isdigit() for which in KEEP for p in (Path(directory) / which).glob("*"))


class RunCheckpoints:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory).absolute()
        self.managers = {}
        for name, keep in KEEP.items():
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
            self.managers[name] = ocp.CheckpointManager(self.directory / name, options=options)

    def latest_step(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def save(self, which: str, step: int, state, meta: dict) -> None:
        manager = self.managers[which]
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                     force=True)
        manager.wait_until_finished()

    def restore(self, which: str, abstract_state):
        """(state, meta) of the newest readable checkpoint of ``which``, or None when there is none.

        An unreadable checkpoint is reported (which folder, why) and the previous one is tried; when none can be
        read, CheckpointUnreadable says which folder to delete to start the run afresh."""
        manager = self.managers[which]
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        errors = []
        for step in steps:
            try:
                restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                         meta=ocp.args.JsonRestore()))
                state, meta = restored.state, restored.meta
                if not isinstance(meta, dict) or meta.get("step") != step:
                    raise ValueError(f"its metadata says step {meta.get('step') if isinstance(meta, dict) else meta}")
            except Exception as e:  # Orbax raises many types for truncated or corrupted files
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                errors.append(f"step {step} ({reason})")
                log.error("checkpoint %s/%d is unreadable (%s)%s", manager.directory, step, reason,
                          "; falling back to the previous one" if step != steps[-1] else "")
                continue
            if errors:
                log.warning("restored %s checkpoint of step %d after skipping %s", which, step, "; ".join(errors))
                self._set_aside(which, [s for s in steps if s > step])
            return state, meta
        raise CheckpointUnreadable(f"no {which} checkpoint in {manager.directory} could be read: {'; '.join(errors)}. "
                                   f"Delete {self.directory} to start this run from scratch.")

    def discard_after(self, which: str, step: int) -> None:
        """Delete the ``which`` checkpoints newer than ``step``, the step a run resumes from: they were written
        after it by the run that was killed (a ``best`` saved just before its ``latest``), and the resumed run
        writes them again if its evaluations still call for them."""
        manager = self.managers[which]
        newer = [s for s in manager.all_steps() if s > step]
        for s in newer:
            manager.delete(s)
            log.warning("deleted the %s checkpoint of step %d, newer than the step %d this run resumes from",
                        which, s, step)
        if newer:
            manager.reload()

    def _set_aside(self, which: str, steps) -> None:
        """Move unreadable steps to ``<directory>/unreadable/`` (kept for inspection), so the resumed run can
        write those steps again."""
        manager = self.managers[which]
        for step in steps:
            target = self.directory / "unreadable" / f"{which}-{step}-{int(time.time())}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(manager.directory / str(step), target)
            log.warning("moved the unreadable checkpoint of step %d to %s", step, target)
        manager.reload()

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
