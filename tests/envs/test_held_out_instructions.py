"""unseen_instruction episodes are phrased only with held-out templates.

At env level, not config level: every task's instructions over a few seeds are matched
against its templates. Shown to fail on a build whose `Task.templates_for` ignores
`split.instructions` (every episode then uses a training template).
"""

from __future__ import annotations

import re

import pytest

import envs
from envs.spec import EVAL_SEED_START


def pattern(template: str) -> re.Pattern[str]:
    """A template with each {field} as a wildcard, e.g. "pick up the {obj}" -> "pick up the .+"."""
    parts = re.split(r"\{[a-z_]+\}", template)
    return re.compile(".+".join(re.escape(p) for p in parts) + r"\Z")


def fits(instruction: str, templates: tuple[str, ...]) -> bool:
    return any(pattern(t).match(instruction) for t in templates)


@pytest.mark.parametrize("task", envs.TASKS)
def test_unseen_instruction_episodes_use_held_out_templates(task: str) -> None:
    held_out = envs.make_env(task, "unseen_instruction", image_size=32, skip_render=True)
    seen = envs.make_env(task, "seen", image_size=32, skip_render=True)
    t = held_out.unwrapped.task
    assert t.held_out_templates and not set(t.held_out_templates) & set(t.templates)
    try:
        for seed in range(EVAL_SEED_START, EVAL_SEED_START + 12):
            obs, _ = held_out.reset(seed=seed)
            text = obs["instruction"]
            assert fits(text, t.held_out_templates), (task, seed, text)
            assert not fits(text, t.templates), f"{task} seed {seed}: {text!r} fits a " \
                "training template"
            obs, _ = seen.reset(seed=seed)  # the matcher itself tells the two sets apart
            assert fits(obs["instruction"], t.templates), (task, seed, obs["instruction"])
    finally:
        held_out.close()
        seen.close()
