"""Simulated rollout evaluation and the zero-shot report.

`evaluate(...)` runs a checkpoint (or a live policy object), the scripted oracle and
baselines over every task x split from seeds disjoint from collection's, in parallel worker
processes or in-process, and writes eval_info.json, report.md, report.png and videos.
`EvalConfig` is what conf/eval/*.yaml instantiate (training's in-training evaluation and
scripts/evaluate.py); `merge_reports` joins the shards of a cluster run.
"""

from policy.evaluation.config import EvalConfig
from policy.evaluation.episodes import EpisodeSpec, episode_seed, plan_episodes, shard
from policy.evaluation.report import markdown_report, plot_report, write_report
from policy.evaluation.results import (
    EpisodeResult,
    EvalReport,
    VideoRecord,
    merge_reports,
)
from policy.evaluation.runner import EnvSettings, evaluate, select_videos
from policy.evaluation.stats import Aggregate, wilson_interval
from policy.evaluation.tensorboard import log_report

__all__ = [
    "Aggregate",
    "EnvSettings",
    "EpisodeResult",
    "EpisodeSpec",
    "EvalConfig",
    "EvalReport",
    "VideoRecord",
    "episode_seed",
    "evaluate",
    "log_report",
    "markdown_report",
    "merge_reports",
    "plan_episodes",
    "plot_report",
    "select_videos",
    "shard",
    "wilson_interval",
    "write_report",
]
