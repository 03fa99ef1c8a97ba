"""Milestones (Task.milestones): the privileged "how far did it get" label behind the
report's failure-phase table. The oracle passes every milestone of every task before it
succeeds; an arm that never moves reaches none; the report counts failures by phase."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.tasks import TASK_CLASSES
from policy.evaluation.actors import NoopActor, OracleActor
from policy.evaluation.episodes import EpisodeSpec
from policy.evaluation.report import markdown_report
from policy.evaluation.results import EvalReport
from policy.evaluation.rollout import run_episode


@pytest.mark.parametrize("task", sorted(TASK_CLASSES))
def test_the_oracle_passes_every_milestone(task: str) -> None:
    env = envs.make_env(task, "seen", image_size=16, skip_render=True)
    names = TASK_CLASSES[task].milestones
    env.reset(seed=11)
    seen = [int(env.task.milestone(env))]
    done = False
    while not done:
        _, _, term, trunc, info = env.step(env.oracle_action())
        seen.append(info["milestone"])
        done = term or trunc
    env.close()
    assert info["is_success"]
    assert seen[0] == 0 and max(seen) == len(names)  # starts away from it, passes them all


def test_rollout_records_the_furthest_milestone() -> None:
    env = envs.make_env("pick", "seen", image_size=16, skip_render=True, max_steps=5)
    spec = EpisodeSpec("noop", "pick", "seen", 0, 5)
    still = run_episode(env, NoopActor(envs.spec.DEFAULT_ACTION_SPEC), spec).result
    assert not still.success and still.furthest == "none"
    env.close()
    env = envs.make_env("pick", "seen", image_size=16, skip_render=True)
    done = run_episode(env, OracleActor(env), EpisodeSpec("oracle", "pick", "seen", 0, 5)).result
    env.close()
    assert done.success and done.furthest == "grasped"


def test_report_counts_failures_by_phase() -> None:
    rows = []
    for i, (task, furthest, success) in enumerate([
        ("stack", "none", False), ("stack", "grasped", False), ("stack", "grasped", False),
        ("stack", "carried", False), ("stack", "carried", True), ("push", "touched", False),
    ]):
        rows.append({"policy": "rt1", "task": task, "split": "seen", "index": i,
                     "seed": 100 + i, "instruction": "x", "success": success, "steps": 3,
                     "return": 0.0, "ended_by": "terminate" if i == 0 else "step_limit",
                     "error": None, "furthest": furthest})
    report = EvalReport.from_dict({"format_version": EvalReport([]).to_dict()["format_version"],
                                   "meta": {}, "episodes": rows})
    assert report.failure_phases("rt1") == {"stack": {"none": 1, "grasped": 2, "carried": 1},
                                            "push": {"touched": 1}}
    md = markdown_report(report)
    assert report.failures_terminated("rt1") == {"stack": 1, "push": 0}
    assert "| stack | 4 | 25% | 0% | 50% | 25% | - | 25% |" in md
    assert "| push | 1 | 0% | 0% | - | - | 100% | 0% |" in md


def test_old_reports_without_milestones_still_load() -> None:
    row = {"policy": "rt1", "task": "pick", "split": "seen", "index": 0, "seed": 1,
           "instruction": "x", "success": False, "steps": 3, "return": 0.0,
           "ended_by": "step_limit", "error": None}
    report = EvalReport.from_dict({"format_version": EvalReport([]).to_dict()["format_version"],
                                   "meta": {}, "episodes": [row]})
    assert report.rows[0].furthest == "" and report.failure_phases("rt1") == {}
    assert "Where failures stall" not in markdown_report(report)
    assert np.isfinite(report.aggregate("rt1").success_rate)
