"""Train one attention variant on one LRA task: the command-line entry point.

    python -m lra.train task=listops attention=full profile=smoke [key=value ...]
    python -m lra.train -m task=listops attention=full seed=0,1,2      # a sweep

Hydra composes configs/train.yaml with the groups task/, attention/, profile/, logger/ and the recipe of the
(task, profile) pair. The run directory is a function of the command line, so rerunning the same command
resumes the run from its latest checkpoint. Every run writes result.json in its run directory and appends the
same record to <results_dir>/runs.jsonl.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
log = logging.getLogger("lra.train")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lra import data

    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        # Missing data that cannot be generated fails here, before jax is even imported.
        task = config["task"]
        options = task.get("data") or {}
        if not isinstance(options, dict) or "max_length" in options:
            raise ValueError(f"task.data must be a mapping of the task's data options without max_length (set "
                             f"task.max_length), got {options!r}")
        data.check_available(task["name"], data_dir=config["data_dir"], max_length=task["max_length"], **options)
    except (FileNotFoundError, ValueError) as e:
        fail_run(e)
        return None

    from lra import parallel, trainer
    from lra.checkpoint import CheckpointUnreadable
    from lra.config import ConfigError

    parallel.maybe_initialize_distributed()
    try:
        record = trainer.train(config, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FileNotFoundError, trainer.DoesNotFit, trainer.TrainingDiverged, CheckpointUnreadable,
            ValueError) as e:
        fail_run(e)
        return None
    return record["test_accuracy"]


# The runs of a sweep (-m) that failed on bad input, divergence or a memory refusal: the sweep goes on with its
# other runs and the process exits with status 1 at its end, naming them.
FAILED_RUNS: list[str] = []


def fail_run(error: Exception, logger: logging.Logger | None = None) -> None:
    """A clear reason instead of a traceback; the exit status says the run failed. In a sweep run by Hydra's basic
    launcher (its runs share this process) the failure is remembered and the sweep goes on. ``logger``: the
    command's own (default: lra.train's)."""
    (logger or log).error("%s: %s", type(error).__name__, error)
    print(f"error: {error}", file=sys.stderr)
    hydra_config = HydraConfig.get()
    if hydra_config.mode == RunMode.MULTIRUN and hydra_config.launcher.get("_target_", "").endswith("BasicLauncher"):
        FAILED_RUNS.append(f"{' '.join(hydra_config.overrides.task)}: {error}")
        return
    sys.exit(1)


def run_command(main) -> None:
    """A Hydra ``main`` as a command: exit status 1 when any run of a sweep failed (each named on stderr)."""
    main()
    if FAILED_RUNS:
        print(f"error: {len(FAILED_RUNS)} run(s) of this sweep failed (the others finished):", file=sys.stderr)
        for line in FAILED_RUNS:
            print(f"  {line.splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_command(main)
