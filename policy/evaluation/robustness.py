"""Robustness beyond the six splits: success against one scene factor at a time.

Each axis sweeps one `SplitConfig` field of the seen split (envs/splits.py) through a list
of values, with everything else as in training, and evaluates the checkpoint (and the
oracle, on the very same seeds) at each value:

| axis          | split field      | value meaning                                        |
|---------------|------------------|------------------------------------------------------|
| distractors   | distractors      | exactly n distractor objects (training saw 0-2)      |
| camera_jitter | camera_jitter    | eye and target jitter, m, uniform per axis (train 1 cm) |
| object_scale  | object_scale     | every object scaled by s (training 0.9-1.1)          |

`scripts/robustness.py` runs the sweeps and writes robustness.json and robustness.png.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from policy.evaluation.config import EvalConfig

AXES: dict[str, str] = {
    "distractors": "number of distractor objects",
    "camera_jitter": "camera pose jitter (m, per axis)",
    "object_scale": "object scale (x training size)",
}


def axis_overrides(axis: str, value: float) -> dict[str, Any]:
    """The split override that puts the seen split at `value` on `axis`."""
    if axis == "distractors":
        if value < 0 or value != int(value):
            raise ValueError(f"distractors value {value!r}; expected a whole number >= 0")
        return {"distractors": [int(value), int(value)]}
    if axis == "camera_jitter":
        if not 0 <= value <= 0.1:
            raise ValueError(f"camera_jitter value {value!r}; expected metres in [0, 0.1]")
        return {"camera_jitter": float(value)}
    if axis == "object_scale":
        if not 0.3 <= value <= 3.0:
            raise ValueError(f"object_scale value {value!r}; expected a factor in [0.3, 3]")
        return {"object_scale": [float(value), float(value)]}
    raise ValueError(f"unknown robustness axis {axis!r}; expected one of {list(AXES)}")


@dataclass
class SweepPoint:
    axis: str
    value: float
    policy: str
    success_rate: float
    ci_low: float
    ci_high: float
    episodes: int


@dataclass
class RobustnessConfig:
    """Which axes and values; `eval` holds everything else (tasks, episodes, workers)."""

    eval: EvalConfig
    axes: dict[str, list[float]] = field(default_factory=lambda: {
        "distractors": [0, 1, 2, 3, 4, 5, 6],
        "camera_jitter": [0.0, 0.01, 0.02, 0.03],
        "object_scale": [0.7, 0.85, 1.0, 1.2, 1.4],
    })

    def __post_init__(self) -> None:
        for axis, values in self.axes.items():
            if not values:
                raise ValueError(f"robustness axis {axis!r} has no values")
            for v in values:
                axis_overrides(axis, v)  # names a bad axis or value now, not mid-sweep
        self.axes = {k: [float(v) for v in vs] for k, vs in self.axes.items()}

    def run(self, checkpoint: str | None, out_dir: str | Path) -> list[SweepPoint]:
        out = Path(out_dir)
        points: list[SweepPoint] = []
        for axis, values in self.axes.items():
            for value in values:
                cfg = replace(self.eval, splits=["seen"], videos_per_split=0, plot=False,
                              split_overrides={**(self.eval.split_overrides or {}),
                                               **axis_overrides(axis, value)})
                report = cfg.run(checkpoint, out / axis / f"{value:g}")
                for agg in report.aggregates:
                    if agg.task is None and agg.split is None:
                        points.append(SweepPoint(axis, value, agg.policy, agg.success_rate,
                                                 agg.ci_low, agg.ci_high, agg.episodes))
        (out / "robustness.json").write_text(
            json.dumps([asdict(p) for p in points], indent=2) + "\n")
        plot_sweeps(points, out / "robustness.png")
        return points


def plot_sweeps(points: list[SweepPoint], path: str | Path) -> None:
    """One panel per axis: success against the value, one line per policy, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(dict.fromkeys(p.axis for p in points))
    fig, panels = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.6), squeeze=False)
    for ax, axis in zip(panels[0], axes, strict=True):
        for pol in dict.fromkeys(p.policy for p in points):
            pts = sorted((p for p in points if p.axis == axis and p.policy == pol),
                         key=lambda p: p.value)
            x = [p.value for p in pts]
            ax.plot(x, [p.success_rate for p in pts], marker="o", label=pol)
            ax.fill_between(x, [p.ci_low for p in pts], [p.ci_high for p in pts], alpha=0.15)
        ax.set_xlabel(AXES[axis])
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    panels[0][0].set_ylabel("success rate")
    panels[0][-1].legend(loc="lower left", fontsize="small")
    n = points[0].episodes if points else 0
    fig.suptitle(f"robustness on the seen split, n={n} episodes per point, 95% Wilson bands")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
