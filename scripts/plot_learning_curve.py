"""Plot success rate vs training time from run directories' metrics.jsonl.

    python scripts/plot_learning_curve.py runs=[outputs/2026-11-28/10-00-00_rt1] \
        out=docs/results/learning_curve_rt1.png

The config is a structured node in ConfigStore (the logic is policy.train.curves); hydra
writes nothing for this script: run dir ".", no .hydra/ folder, logs to stdout only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import MISSING

from policy.train.curves import plot_learning_curve


@dataclass
class PlotConfig:
    runs: list[str] = MISSING  # run directories (each with metrics.jsonl)
    out: str = "learning_curve.png"
    policy: str | None = None  # the policy row of the evaluations; None: the first one
    title: str | None = None
    # a plotting script leaves no run directory behind
    hydra: Any = field(default_factory=lambda: {
        "run": {"dir": "."}, "output_subdir": None,
    })


ConfigStore.instance().store(name="plot_learning_curve", node=PlotConfig)


@hydra.main(config_path="../conf", config_name="plot_learning_curve", version_base="1.3")
def main(cfg: PlotConfig) -> None:
    out = plot_learning_curve(
        [Path(to_absolute_path(r)) for r in cfg.runs], Path(to_absolute_path(cfg.out)),
        policy=cfg.policy, title=cfg.title,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.argv.insert(1, "hydra/job_logging=stdout")  # no log file beside the plot
    main()
