"""Each task's oracle solves a handful of seeds on every split.

The full figure (>= 95% of 50 fixed seeds per task and split) is measured by
`scripts/demo_oracle.py check=true` and recorded in docs/experiments/2026-11-28-env-suite.md;
seeds here (1000+) are outside that set.
"""

from __future__ import annotations

import pytest

import envs
from envs.oracle_check import run_oracle_episode

SEEDS = (1000, 1001, 1002)


@pytest.mark.parametrize("split", envs.SPLITS)
@pytest.mark.parametrize("task", envs.TASKS)
def test_oracle_succeeds(task: str, split: str) -> None:
    env = envs.make_env(task, split=split, skip_render=True)
    results = [run_oracle_episode(env, s) for s in SEEDS]
    env.close()
    failed = [r for r in results if not r.success]
    assert not failed, failed
    # Episodes end on the oracle's terminate step, well inside the step limit.
    assert max(r.steps for r in results) < envs.TASK_CLASSES[task].max_steps
