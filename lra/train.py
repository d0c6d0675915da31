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
    from lra import trainer
    from lra.config import ConfigError

    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        record = trainer.train(config, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FileNotFoundError, trainer.DoesNotFit, trainer.TrainingDiverged, ValueError) as e:
        # A clear one-line reason instead of a traceback; the exit status says it failed.
        log.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    return record["test_accuracy"]


if __name__ == "__main__":
    main()
