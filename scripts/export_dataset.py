"""Export an episode store, or a selection of it, as a LeRobot v3 dataset (hydra entry point).

    python scripts/export_dataset.py store=data/demos output=data/lerobot
    python scripts/export_dataset.py store=data/demos output=data/lerobot_pick \
        'export.tasks=[pick]' 'export.splits=[seen]' export.episodes=200

All logic lives in envs/lerobot.py; this script composes conf/export_dataset.yaml and calls it.
Needs the optional extra `robotok[lerobot]` (pyarrow, av).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from envs.lerobot import ExportConfig, export_lerobot  # noqa: E402

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="export_dataset", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: ExportConfig = instantiate(cfg.export)
    report = export_lerobot(config)
    log.info("LeRobot v3 dataset %s: %d episodes, %d frames, %d tasks, splits %s; %.1f MB "
             "(videos %.1f MB) in %.1f s", report.output, report.episodes, report.frames,
             report.tasks, report.splits, report.bytes / 2**20, report.video_bytes / 2**20,
             report.seconds)


if __name__ == "__main__":
    main()
