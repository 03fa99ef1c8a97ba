"""Writers for the zero-shot report: eval_info.json, timing.json, report.md, report.png.

report.md is the table a person pastes into a paper: one row per (split, policy), one column
per task plus "all tasks", every cell a success rate with its Wilson 95% interval and n.
The scripted oracle (upper bound on the very same seeds) and the baselines (lower bound)
sit under the checkpoint's row of each split, so a reader sees the gap at a glance.
"""

from __future__ import annotations

import json
from pathlib import Path

from policy.evaluation.results import EVAL_INFO, TIMING, EvalReport

REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def write_report(report: EvalReport, out_dir: str | Path, plot: bool = True) -> Path:
    """Write eval_info.json, timing.json, report.md and (with `plot`) report.png into
    `out_dir`; return the eval_info.json path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / EVAL_INFO
    info_path.write_text(report.to_json())
    (out / TIMING).write_text(json.dumps(report.timing, indent=2, sort_keys=True) + "\n")
    (out / REPORT_MD).write_text(markdown_report(report))
    if plot and report.aggregates:  # a shard can be empty when shards outnumber episodes
        plot_report(report, out / REPORT_PNG)
    return info_path


def _cells(report: EvalReport) -> tuple[list[str], list[str], list[str]]:
    meta = report.meta
    pols = [p for p in meta.get("policies", []) if p in report.policies] or report.policies
    tasks = [t for t in meta.get("tasks", []) if any(r.task == t for r in report.rows)]
    splits = [s for s in meta.get("splits", []) if any(r.split == s for r in report.rows)]
    tasks = tasks or list(dict.fromkeys(r.task for r in report.rows))
    splits = splits or list(dict.fromkeys(r.split for r in report.rows))
    return pols, tasks, splits


def markdown_report(report: EvalReport) -> str:
    """The split x task table (policy rows within each split) as Markdown."""
    pols, tasks, splits = _cells(report)
    by_key = {(a.policy, a.task, a.split): a for a in report.aggregates}
    meta = report.meta
    lines = ["# Zero-shot evaluation", ""]
    for label, key in (
        ("checkpoint", "checkpoint"),
        ("checkpoint sha256", "checkpoint_sha256"),
        ("env version", "env_version"),
        ("episodes per task x split", "episodes_per_cell"),
        ("first seed", "seed_start"),
    ):
        if key in meta:
            lines.append(f"- {label}: `{meta[key]}`")
    if meta.get("num_shards", 1) > 1:
        # A shard's report covers only its share of the episodes: say so at the top.
        lines.append(f"- shard: `{meta['shard_index']} of {meta['num_shards']}` (partial; "
                     "merge the shards for the full report)")
    lines += [
        "- cells: success rate [Wilson 95% interval] (n episodes); success = the simulator's "
        "`is_success` at the episode's end (terminate or step limit)",
        "- oracle: the scripted expert on the same seeds (upper bound); "
        "random / noop: baselines (lower bound)",
        "",
    ]
    header = ["split", "policy", *tasks, "all tasks"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for split in [*splits, None]:
        for pol in pols:
            cells = [by_key.get((pol, t, split)) for t in [*tasks, None]]
            if not any(cells):
                continue
            name = split if split is not None else "**all splits**"
            row = [name, pol] + [c.label if c else "-" for c in cells]
            lines.append("| " + " | ".join(row) + " |")
    lines += _failure_phase_lines(report, pols)
    if report.errors:
        scenes = sorted({(r.task, r.split, r.seed, r.error) for r in report.errors},
                        key=lambda e: (e[0], e[1], e[2]))
        lines += ["", "## Episodes the env could not build (left out of every row above)", ""]
        lines += [f"- {task} / {split} / seed {seed}: {err}" for task, split, seed, err in scenes]
    if report.videos:
        lines += ["", "## Videos", ""]
        for v in report.videos:
            outcome = "success" if v.success else "failure"
            lines.append(
                f"- [{v.split} / {v.task} / seed {v.seed}]({v.path}) {outcome}: "
                f"\"{v.instruction}\""
            )
    return "\n".join(lines) + "\n"


# Columns of the failure-phase table: "none", then every task's milestones in order.
PHASES = ("none", "reached", "grasped", "carried", "touched")


def _failure_phase_lines(report: EvalReport, pols: list[str]) -> list[str]:
    """Where each policy's failures stalled, per task: the share of failed episodes whose
    furthest milestone was each phase (privileged simulator facts, envs/tasks/base.py)."""
    from envs.tasks import TASK_CLASSES

    lines: list[str] = []
    for pol in pols:
        phases = report.failure_phases(pol)
        if not phases:
            continue
        if not lines:
            lines += ["", "## Where failures stall (all splits)", "",
                      "Share of each task's failed episodes by the furthest milestone "
                      "reached: `none` = the hand never got to the target object; "
                      "`reached` = it got there but never held it; `grasped` = held it "
                      "but did not finish (lift, carry or place); `carried` = put it at the "
                      "goal but did not release it there; `touched` = pushed without "
                      "getting it past the line. `stopped` = the share of failures that "
                      "ended by the policy's own terminate flag (the rest ran to the step "
                      "limit).", ""]
        terminated = report.failures_terminated(pol)
        lines += [f"**{pol}**", "",
                  "| task | failures | " + " | ".join(PHASES) + " | stopped |",
                  "|" + "---|" * (len(PHASES) + 3)]
        for task, counts in phases.items():
            n = sum(counts.values())
            known = ("none", *getattr(TASK_CLASSES.get(task), "milestones", ()))
            cells = [f"{100 * counts.get(k, 0) / n:.0f}%" if k in known else "-"
                     for k in PHASES]
            cells.append(f"{100 * terminated.get(task, 0) / n:.0f}%")
            lines.append(f"| {task} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot_report(report: EvalReport, path: str | Path) -> None:
    """Bar chart: success per split (all tasks) and per task (all splits), one bar per
    policy, with Wilson 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    import numpy as np

    pols, tasks, splits = _cells(report)
    by_key = {(a.policy, a.task, a.split): a for a in report.aggregates}
    panels = [
        ("per split (all tasks)", [(None, s) for s in splits] + [(None, None)],
         [*splits, "all"]),
        ("per task (all splits)", [(t, None) for t in tasks], tasks),
    ]
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * (len(splits) + 1) * len(pols) / 2 + 3),
                                           7.5))
    width = 0.8 / max(1, len(pols))
    for ax, (title, keys, labels) in zip(axes, panels, strict=True):
        x = np.arange(len(keys))
        for i, pol in enumerate(pols):
            aggs = [by_key.get((pol, t, s)) for t, s in keys]
            rate = np.array([a.success_rate if a else np.nan for a in aggs])
            low = np.array([a.success_rate - a.ci_low if a else 0.0 for a in aggs])
            high = np.array([a.ci_high - a.success_rate if a else 0.0 for a in aggs])
            ax.bar(x + (i - (len(pols) - 1) / 2) * width, rate, width, yerr=[low, high],
                   capsize=3, label=pol)
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    n = report.meta.get("episodes_per_cell")
    fig.suptitle("zero-shot success, 95% Wilson intervals" + (f", n={n} per task x split"
                                                              if n else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
