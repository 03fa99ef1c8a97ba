"""`EvalConfig`: the evaluation settings that conf/eval/*.yaml instantiate.

Training composes one of these (`eval: quick`) for in-training evaluation and calls
`cfg.run(policy, out_dir)`; scripts/evaluate.py composes `eval: default` and calls
`cfg.run(checkpoint, out_dir)`. Plain values only, validated on construction, so a typo in a
config fails when the config is built, not after the first hundred episodes.

The dataclass holds every default. Importing this module stores them in hydra's ConfigStore
as the node `eval/base`, on which conf/eval/default.yaml builds: the YAML files hold only
`_target_` and what an option changes, and a command-line override such as
`eval.episodes=20` still finds its key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from envs.spec import EVAL_SEED_START, config_defaults
from policy.evaluation.actors import BASELINES
from policy.evaluation.results import EvalReport
from policy.evaluation.runner import TRAINED, EnvSettings, evaluate


@dataclass
class EvalConfig:
    """Which episodes to run, how, and what to write (see `evaluate` for the semantics)."""

    tasks: Sequence[str] | str | None = None  # None: every task; "trained": the checkpoint's
    # None: the six zero-shot splits (envs.SPLITS); envs.VISUAL_SPLITS (visual_prompt,
    # visual_prompt_unseen_object) run when named, for policies that read image prompts
    splits: Sequence[str] | None = None
    episodes: int = 10  # per (task, split)
    seed_start: int | None = None  # None: envs.spec.EVAL_SEED_START
    workers: int = 2
    videos_per_split: int = 2
    baselines: Sequence[str] = ("oracle", "random")
    image_size: int | None = None  # None: as the checkpoint was trained
    wrist_camera: bool | None = None
    max_steps: int | None = None  # None: the task's default step limit
    split_overrides: dict | None = None
    shard_index: int = 0
    num_shards: int = 1
    policy_name: str | None = None
    progress: bool = True
    plot: bool = True
    fps: int = 10

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"eval.episodes={self.episodes}; expected >= 1")
        if self.workers < 0:
            raise ValueError(f"eval.workers={self.workers}; expected >= 0 (0: in-process)")
        if self.videos_per_split < 0:
            raise ValueError(f"eval.videos_per_split={self.videos_per_split}; expected >= 0")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"eval.baselines has {bad}; expected some of {list(BASELINES)}")
        if self.seed_start is not None and self.seed_start < EVAL_SEED_START:
            raise ValueError(
                f"eval.seed_start={self.seed_start} overlaps collection seeds; expected >= "
                f"{EVAL_SEED_START} or null"
            )
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"eval.shard_index={self.shard_index}, eval.num_shards={self.num_shards}; "
                "expected 0 <= shard_index < num_shards"
            )
        # OmegaConf hands lists over as ListConfig: keep plain lists for pickling to workers.
        if isinstance(self.tasks, str):
            if self.tasks != TRAINED:
                raise ValueError(f"eval.tasks={self.tasks!r}; expected a list, null or {TRAINED!r}")
        else:
            self.tasks = list(self.tasks) if self.tasks else None
        self.splits = list(self.splits) if self.splits else None
        self.baselines = list(self.baselines)
        self.split_overrides = dict(self.split_overrides) if self.split_overrides else None

    @property
    def env(self) -> EnvSettings:
        return EnvSettings(self.image_size, self.wrist_camera, self.max_steps,
                           self.split_overrides)

    def run(self, policy: Any, out_dir: str | Path | None, **overrides: Any) -> EvalReport:
        """`evaluate(policy, self, out_dir)`; keyword overrides of fields win (e.g.
        `progress=False` from training), checked as the fields are."""
        config = dataclasses.replace(self, **overrides) if overrides else self
        return evaluate(policy, config, out_dir)


def register_configs() -> None:
    """Store EvalConfig's defaults as the hydra node `eval/base` (see the module docstring)."""
    ConfigStore.instance().store(group="eval", name="base", node=config_defaults(EvalConfig))


register_configs()
