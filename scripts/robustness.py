"""Robustness sweeps: `python scripts/robustness.py checkpoint=PATH`.

Success against the number of distractors (0-6), camera pose jitter (0-3 cm) and object
scale (0.7-1.4x), one factor at a time on the seen split, beside the oracle on the same
seeds. Writes robustness.json, robustness.png and one report per point into hydra's run
directory. Logic: policy/evaluation/robustness.py.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from policy.evaluation.robustness import RobustnessConfig


@hydra.main(config_path="../conf", config_name="robustness", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    sweep: RobustnessConfig = instantiate(cfg.robustness)
    checkpoint = to_absolute_path(cfg.checkpoint) if cfg.checkpoint else None
    for p in sweep.run(checkpoint, out_dir):
        print(f"{p.axis:>14} {p.value:>6g} {p.policy:>10}: {100 * p.success_rate:5.1f}% "
              f"[{100 * p.ci_low:.0f}, {100 * p.ci_high:.0f}] (n={p.episodes})")
    print(f"plot: {out_dir}/robustness.png")


if __name__ == "__main__":
    main()
