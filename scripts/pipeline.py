"""One command, end to end: collect demonstrations -> train a policy -> evaluate it.

    python scripts/pipeline.py                 # recipe=demo, what `make demo` runs
    python scripts/pipeline.py recipe=full     # the full recipe (about 90 min of training)
    python scripts/pipeline.py steps=[train,evaluate] run_dir=outputs/pipeline/<earlier run>

Each step is the very same hydra entry point a user can run alone (scripts/collect.py,
scripts/train.py, scripts/evaluate.py); the recipe (conf/recipe/) only supplies their
overrides. Steps run as child processes so that each owns its threads (processes that
share the two cores must not oversubscribe them: docs/experiments/2026-11-28-prototype.md)
and a crash names the failing step.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from policy.pipeline import PipelineConfig, run_pipeline


@hydra.main(config_path="../conf", config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_pipeline(PipelineConfig.from_omegaconf(cfg))


if __name__ == "__main__":
    main()
