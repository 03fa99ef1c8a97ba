"""What an evaluation produces: per-episode rows, aggregates, and their JSON form.

`eval_info.json` is a pure function of (checkpoint, env, seeds, plan): it holds no wall-clock
times, host names or absolute output paths, so the same checkpoint on the same seeds gives a
byte-identical file. Timings go to `timing.json` beside it.
Shards of one evaluation write the same structure over a subset of the episodes;
`merge_reports` joins them back into the report of the whole plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from policy.evaluation.episodes import EpisodeSpec, plan_episodes
from policy.evaluation.stats import Aggregate, aggregate_groups

EVAL_INFO = "eval_info.json"
TIMING = "timing.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode. `success` is info["is_success"] at the episode's last step."""

    policy: str
    task: str
    split: str
    index: int
    seed: int
    instruction: str
    success: bool
    steps: int
    episode_return: float  # serialised as "return"
    ended_by: str  # "terminate" (the actor's terminate flag), "step_limit", or "error"
    # Why the env could not build this episode's scene (then nobody acted, and the episode
    # is left out of every aggregate, for every policy alike); None for a real episode.
    error: str | None = None
    # The furthest of the task's milestones the episode reached (envs/tasks/base.py:
    # Task.milestones, e.g. "reached", "grasped", "carried"), "none" before the first,
    # "" where unknown (reports written before milestones existed).
    furthest: str = ""
    # A multimodal prompt's words that the crops stood for, in slot order (envs/prompts.py:
    # the env's prompt_words, e.g. ("red octagon",)); empty for a text-only instruction.
    prompt_words: tuple[str, ...] = ()

    @property
    def key(self) -> EpisodeSpec:
        return EpisodeSpec(self.policy, self.task, self.split, self.index, self.seed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["return"] = d.pop("episode_return")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeResult:
        d = dict(d)
        try:
            d["episode_return"] = d.pop("return")
            d["prompt_words"] = tuple(d.get("prompt_words", ()))
            return cls(**d)
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed episode row {d!r}: {err}") from err


@dataclass(frozen=True)
class VideoRecord:
    """One rollout video, relative to the report directory."""

    path: str
    policy: str
    task: str
    split: str
    seed: int
    instruction: str
    success: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalReport:
    """Everything an evaluation measured. `meta` describes the run (checkpoint hash, env,
    plan); it must hold only values that are the same whenever the run is repeated."""

    rows: list[EpisodeResult]
    meta: dict = field(default_factory=dict)
    videos: list[VideoRecord] = field(default_factory=list)
    timing: dict = field(default_factory=dict)  # wall-clock figures, kept out of eval_info

    def __post_init__(self) -> None:
        # One canonical order, whatever order workers finished in.
        self.rows = sorted(self.rows, key=lambda r: self._order(r.key))
        seen: set[EpisodeSpec] = set()
        for r in self.rows:
            if r.key in seen:
                raise ValueError(f"episode {r.key} appears twice in the report")
            seen.add(r.key)

    def _order(self, key: EpisodeSpec) -> tuple:
        """Sort by the plan's order (policies, tasks, splits as listed in meta), then j."""
        def pos(values: Sequence[str], v: str) -> tuple[int, str]:
            return (values.index(v), "") if v in values else (len(values), v)

        return (
            pos(self.meta.get("policies", []), key.policy),
            pos(self.meta.get("tasks", []), key.task),
            pos(self.meta.get("splits", []), key.split),
            key.index,
        )

    @property
    def errors(self) -> list[EpisodeResult]:
        """Episodes whose scene the env could not build (listed in report.md)."""
        return [r for r in self.rows if r.error is not None]

    @property
    def aggregates(self) -> list[Aggregate]:
        return aggregate_groups(
            [r for r in self.rows if r.error is None],
            policy_of=lambda r: r.policy,
            task_of=lambda r: r.task,
            split_of=lambda r: r.split,
            success_of=lambda r: r.success,
        )

    @property
    def policies(self) -> list[str]:
        return list(dict.fromkeys(r.policy for r in self.rows))

    def failure_phases(self, policy: str) -> dict[str, dict[str, int]]:
        """Per task, how many of `policy`'s failed episodes stalled after each milestone
        ("none": never reached the object), over every split; tasks with no recorded
        milestones are left out."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            if r.policy == policy and r.error is None and not r.success and r.furthest:
                counts = out.setdefault(r.task, {})
                counts[r.furthest] = counts.get(r.furthest, 0) + 1
        return out

    def failures_terminated(self, policy: str) -> dict[str, int]:
        """Per task, how many of `policy`'s failed episodes ended by its own terminate flag
        (it stopped, believing it was done) rather than at the step limit."""
        out: dict[str, int] = {}
        for r in self.rows:
            if r.policy == policy and r.error is None and not r.success:
                out[r.task] = out.get(r.task, 0) + int(r.ended_by == "terminate")
        return out

    def aggregate(
        self, policy: str, task: str | None = None, split: str | None = None
    ) -> Aggregate:
        """The aggregate of one group; task/split None means "all"."""
        for a in self.aggregates:
            if (a.policy, a.task, a.split) == (policy, task, split):
                return a
        raise KeyError(
            f"no episodes for policy={policy!r}, task={task!r}, split={split!r}; "
            f"policies are {self.policies}"
        )

    def scalars(self, prefix: str = "eval") -> dict[str, float]:
        """Flat success rates for loggers: `eval/<policy>/success`, `.../split/<s>`,
        `.../task/<t>`, plus interval bounds of the overall rate."""
        out: dict[str, float] = {}
        for a in self.aggregates:
            base = f"{prefix}/{a.policy}"
            if a.task is None and a.split is None:
                out[f"{base}/success"] = a.success_rate
                out[f"{base}/success_ci_low"] = a.ci_low
                out[f"{base}/success_ci_high"] = a.ci_high
            elif a.task is None:
                out[f"{base}/split/{a.split}"] = a.success_rate
            elif a.split is None:
                out[f"{base}/task/{a.task}"] = a.success_rate
        return out

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
            "aggregates": [a.to_dict() for a in self.aggregates],
            "episodes": [r.to_dict() for r in self.rows],
            "videos": [v.to_dict() for v in self.videos],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> EvalReport:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"eval_info format_version {d.get('format_version')!r}; expected {FORMAT_VERSION}"
            )
        return cls(
            rows=[EpisodeResult.from_dict(r) for r in d["episodes"]],
            meta=d.get("meta", {}),
            videos=[VideoRecord(**v) for v in d.get("videos", [])],
        )

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read `eval_info.json` (or a directory holding one), with timing.json if present."""
        path = Path(path)
        if path.is_dir():
            path = path / EVAL_INFO
        if not path.is_file():
            raise FileNotFoundError(f"no {EVAL_INFO} at {path}")
        report = cls.from_dict(json.loads(path.read_text()))
        timing = path.with_name(TIMING)
        if timing.is_file():
            report.timing = json.loads(timing.read_text())
        return report


# Meta keys that legitimately differ between shards of one evaluation.
_SHARD_KEYS = ("shard_index", "num_shards")


def merge_reports(reports: Iterable[EvalReport], require_complete: bool = True) -> EvalReport:
    """Join the shards of one evaluation into one report.

    Refuses shards of different evaluations (any meta difference other than the shard index,
    e.g. another checkpoint hash or seed range) and, with `require_complete`, a set of shards
    that misses episodes of the plan or repeats one.
    """
    reports = list(reports)
    if not reports:
        raise ValueError("no shard reports to merge")
    common = {k: v for k, v in reports[0].meta.items() if k not in _SHARD_KEYS}
    for i, rep in enumerate(reports[1:], start=1):
        other = {k: v for k, v in rep.meta.items() if k not in _SHARD_KEYS}
        diff = sorted(k for k in set(common) | set(other) if common.get(k) != other.get(k))
        if diff:
            k = diff[0]
            raise ValueError(
                f"shard {i} belongs to another evaluation: meta[{k!r}] = {other.get(k)!r}, "
                f"expected {common.get(k)!r} as in shard 0"
            )
    rows = [r for rep in reports for r in rep.rows]
    planned_shards = reports[0].meta.get("num_shards", "?")
    meta = dict(common)
    meta["shard_index"], meta["num_shards"] = 0, 1
    merged = EvalReport(rows=rows, meta=meta, videos=[v for rep in reports for v in rep.videos])
    if require_complete and "episodes_per_cell" in meta:
        plan = plan_episodes(
            meta["policies"], meta["tasks"], meta["splits"], meta["episodes_per_cell"],
            meta["seed_start"],
        )
        missing = sorted(set(plan) - {r.key for r in merged.rows})
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(plan)} planned episodes are missing from the shards "
                f"(first: {missing[0]}); pass all {planned_shards} shards"
            )
    merged.timing = {
        "shards": [rep.timing for rep in reports],
        "wall_s": sum(float(rep.timing.get("wall_s", 0.0)) for rep in reports),
    }
    return merged
