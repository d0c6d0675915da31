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
        data.check_available(task["name"], data_dir=config["data_dir"], max_length=task["max_length"],
                             **task.get("data", {}))
    except (FileNotFoundError, ValueError) as e:
        _fail(e)

    from lra import parallel, trainer
    from lra.checkpoint import CheckpointUnreadable
    from lra.config import ConfigError

    parallel.maybe_initialize_distributed()
    try:
        record = trainer.train(config, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FileNotFoundError, trainer.DoesNotFit, trainer.TrainingDiverged, CheckpointUnreadable,
            ValueError) as e:
        _fail(e)
    return record["test_accuracy"]


def _fail(error: Exception) -> None:
    """A clear reason instead of a traceback; the exit status says the run failed."""
    log.error("%s: %s", type(error).__name__, error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
