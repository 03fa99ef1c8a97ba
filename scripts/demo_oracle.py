"""Oracle demo: one mp4 per task, and (check=true) the oracle success-rate table.

    python scripts/demo_oracle.py                       # videos -> outputs/demo_oracle/
    python scripts/demo_oracle.py check=true check_seeds=50
    python scripts/demo_oracle.py check=true 'physics={substeps: 12}'   # other physics
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.oracle_check import check_oracles, summary_markdown, write_demo_videos


@hydra.main(config_path="../conf", config_name="demo_oracle", version_base="1.3")
def main(cfg: DictConfig) -> None:
    physics = OmegaConf.to_container(cfg.physics) if cfg.physics is not None else None
    paths = write_demo_videos(list(cfg.tasks), cfg.out_dir, split=cfg.split, seed=cfg.seed,
                              image_size=cfg.image_size, physics=physics)
    for path in paths:
        print(f"wrote {path}")
    if cfg.check:
        summaries = check_oracles(list(cfg.tasks), list(cfg.check_splits),
                                  range(int(cfg.check_seeds)), physics=physics)
        print(summary_markdown(summaries))
        for s in summaries:
            if s.failed_seeds:
                print(f"{s.task}/{s.split}: failed seeds {s.failed_seeds}")


if __name__ == "__main__":
    main()
