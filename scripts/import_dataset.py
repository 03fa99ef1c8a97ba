"""Import a LeRobot v3 dataset into an episode store (hydra entry point).

    python scripts/import_dataset.py source=data/lerobot output=data/imported
    python scripts/import_dataset.py source=path/to/ds output=data/imported \
        '+import.features={observation.images.top: image}' 'import.ignore=[next.reward]'

All logic lives in envs/lerobot.py; this script composes conf/import_dataset.yaml and calls it.
A feature with no place in the store stops the import with an error naming it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from envs.lerobot import ImportConfig, import_lerobot  # noqa: E402

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="import_dataset", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: ImportConfig = instantiate(cfg["import"])
    report = import_lerobot(config)
    log.info("store %s: %d episodes, %d steps imported in %.1f s", report.output,
             report.episodes, report.steps, report.seconds)


if __name__ == "__main__":
    main()
