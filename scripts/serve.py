"""Serve a checkpoint to robots over the bridge: `python scripts/serve.py checkpoint=PATH`.

Thin hydra entry point (conf/serve.yaml); the server is policy/bridge/server.py and the
checkpoint loading policy/bridge/loading.py. Exits 0 on SIGTERM after closing connections.
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from policy.bridge.server import ServerConfig, run_server


@hydra.main(config_path="../conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.log_level)
    # Validate the listening address (and token) before the slow model load, so a refused
    # configuration fails in milliseconds.
    server_config: ServerConfig = instantiate(cfg.server)
    from policy.bridge.loading import load_served_policy  # imports torch

    served = load_served_policy(cfg.checkpoint, warmup_steps=cfg.warmup_steps,
                                torch_threads=server_config.torch_threads)
    run_server(served, server_config, ready_file=cfg.ready_file)


if __name__ == "__main__":
    main()
