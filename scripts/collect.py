"""Collect oracle demonstrations into an episode store (hydra entry point).

    python scripts/collect.py collect.episodes=200 collect.workers=2 output=data/demos
    python scripts/collect.py output=data/all 'merge_from=[data/a,data/b]'

All logic lives in envs/collect.py; this script composes conf/collect.yaml and calls it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from envs.collect import CollectConfig, collect, register_configs  # noqa: E402
from envs.store import merge  # noqa: E402

log = logging.getLogger(__name__)


register_configs()  # conf/collect.yaml builds on CollectConfig's defaults


@hydra.main(config_path="../conf", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.merge_from:
        merged = merge(list(cfg.merge_from), cfg.output)
        log.info("merged %d stores into %s: %d episodes, %d steps", len(cfg.merge_from),
                 cfg.output, merged.num_episodes, merged.num_steps)
        return
    config: CollectConfig = instantiate(cfg.collect)
    report = collect(config)
    log.info(
        "store %s: %d episodes before, %d kept now from %d attempts (%.0f%% success), "
        "%d steps in %.1f s (%.2f episodes/s)",
        report.output, report.existing, report.kept, report.attempts,
        100 * report.success_rate, report.steps, report.seconds, report.episodes_per_s,
    )
    for w in report.workers:
        if w.gave_up:
            log.warning("worker %d gave up after %d attempts with %d kept: success rate too "
                        "low for its quota", w.global_worker, w.attempts, w.kept)


if __name__ == "__main__":
    main()
