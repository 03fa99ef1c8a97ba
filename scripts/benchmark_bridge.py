"""Benchmark the robot bridge: `python scripts/benchmark_bridge.py [checkpoint=PATH]`.

Thin hydra entry point (conf/benchmark_bridge.yaml) around policy/bridge/benchmark.py:
round-trip latency beside in-process select_action in the same run, then a load test of
several robots at a fixed control rate. Prints a markdown summary.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from policy.bridge.benchmark import format_markdown, run_benchmark


@hydra.main(config_path="../conf", config_name="benchmark_bridge", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_benchmark(
        cfg.checkpoint, preset=cfg.preset, image_size=cfg.image_size, steps=cfg.latency.steps,
        rounds=cfg.latency.rounds, gap_ms=cfg.latency.gap_ms, clients=cfg.load.clients,
        hz=cfg.load.hz, seconds=cfg.load.seconds, out=cfg.out)
    print(format_markdown(result), flush=True)


if __name__ == "__main__":
    main()
