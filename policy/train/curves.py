"""Learning curves from a run's metrics.jsonl: success rate against training time.

A run directory's metrics.jsonl (policy/train/logger.py) holds "train" records (loss,
samples/s, ...) and "eval" records (success per policy, task and split, with Wilson 95%
bounds), each stamped with the cumulative training time that excludes evaluation and
checkpointing. `plot_learning_curve` draws the overall success rate with its interval and
the per-split rates against that time; scripts/plot_learning_curve.py is the entry point.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from policy.train.logger import METRICS_FILE


@dataclass
class Curve:
    """Evaluation points of one run, in step order."""

    run: str
    policy: str
    minutes: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    ci_low: list[float] = field(default_factory=list)
    ci_high: list[float] = field(default_factory=list)
    splits: dict[str, list[float]] = field(default_factory=dict)


def read_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The records of `run_dir`/metrics.jsonl (of one `kind` if given), in file order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a run directory of train.py")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def eval_curve(run_dir: Path, policy: str | None = None) -> Curve:
    """Success against training time for `policy` (default: the first evaluated one)."""
    evals = read_records(run_dir, "eval")
    if not evals:
        raise ValueError(
            f"{Path(run_dir) / METRICS_FILE} has no eval records; train with train.eval_every > 0"
        )
    found = sorted({k.split("/")[0] for k in evals[0] if k.endswith("/success")})
    name = policy or (found[0] if found else None)
    if name is None or f"{name}/success" not in evals[0]:
        raise ValueError(f"no success rate of policy {name!r} in {run_dir}; found {found}")
    run = Path(os.path.abspath(run_dir))  # not resolve(): a symlink names its run
    # a pipeline run keeps training in RUN/train: name the curve after RUN
    curve = Curve(run=run.parent.name if run.name == "train" else run.name, policy=name)
    split_keys = sorted(k for k in evals[0] if k.startswith(f"{name}/split/"))
    for r in evals:
        curve.minutes.append(r["train_time_s"] / 60)
        curve.steps.append(r["step"])
        curve.success.append(r[f"{name}/success"])
        curve.ci_low.append(r.get(f"{name}/success_ci_low", r[f"{name}/success"]))
        curve.ci_high.append(r.get(f"{name}/success_ci_high", r[f"{name}/success"]))
        for k in split_keys:
            curve.splits.setdefault(k.rsplit("/", 1)[1], []).append(r[k])
    return curve


def plot_learning_curve(
    run_dirs: list[Path], out: Path, policy: str | None = None, title: str | None = None
) -> Path:
    """One PNG: overall success (line + 95% band) and per-split rates (dashed) per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run_dir in run_dirs:
        c = eval_curve(Path(run_dir), policy)
        label = c.run if len(run_dirs) > 1 else c.policy
        (line,) = ax.plot(c.minutes, c.success, marker="o", label=f"{label}: all splits")
        ax.fill_between(c.minutes, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.15)
        for split, rates in c.splits.items():
            ax.plot(c.minutes, rates, linestyle="--", marker=".", alpha=0.8,
                    label=f"{label}: {split}")
    ax.set_xlabel("training time (minutes, excluding evaluation)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "success rate vs training time (band: Wilson 95%)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
