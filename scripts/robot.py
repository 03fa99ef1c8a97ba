"""Drive a simulated robot through the bridge: `python scripts/robot.py url=ws://HOST:PORT`.

Thin hydra entry point (conf/robot.yaml) around policy/bridge/robot.py, which holds the
control loop and the Robot protocol that a real arm's integration implements. Needs no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from policy.bridge.protocol import TOKEN_ENV
from policy.bridge.robot import run_sim_robot


@hydra.main(config_path="../conf", config_name="robot", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report = run_sim_robot(
        cfg.url, token=cfg.token or os.environ.get(TOKEN_ENV), task=cfg.task,
        split=cfg.split, episodes=cfg.episodes, seed_start=cfg.seed_start,
        control_hz=cfg.control_hz, max_steps=cfg.max_steps, timeout_s=cfg.timeout_s,
        expected_checkpoint_sha256=cfg.expected_checkpoint_sha256)
    print(report.table(), flush=True)
    if cfg.report_file:
        Path(cfg.report_file).write_text(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    main()
