"""robotok's simulation side: PyBullet tabletop tasks with oracles, as gymnasium envs.

    import envs
    env = envs.make_env(task="pick", split="seen")          # or
    env = gymnasium.make("robotok/Pick-v0", split="seen")
    obs, info = env.reset(seed=0)
    label = env.unwrapped.oracle_action()

See docs/CONTRACTS.md ("Env: envs") for the full contract and envs/spec.py for the action
and state layout. envs/ never imports policy/.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from envs.splits import SPLITS
from envs.tabletop import TabletopEnv
from envs.tasks import TASK_CLASSES

TASKS: tuple[str, ...] = tuple(TASK_CLASSES)

# Versioned gymnasium ids: "pick" -> "robotok/Pick-v0", "move_near" -> "robotok/MoveNear-v0".
ENV_IDS: dict[str, str] = {
    t: "robotok/" + "".join(w.capitalize() for w in t.split("_")) + "-v0" for t in TASKS
}


def make_env(
    task: str = "pick",
    split: str = "seen",
    image_size: int = 96,
    wrist_camera: bool = False,
    render_mode: str | None = "rgb_array",
    max_steps: int | None = None,
    split_overrides: dict[str, Any] | None = None,
    skip_render: bool = False,
) -> TabletopEnv:
    """Build one env (no gymnasium wrappers). `skip_render=True` returns black images:
    a fast path for oracle-only checks; the default always renders."""
    return TabletopEnv(task=task, split=split, image_size=image_size,
                       wrist_camera=wrist_camera, render_mode=render_mode,
                       max_steps=max_steps, split_overrides=split_overrides,
                       skip_render=skip_render)


def _register() -> None:
    for task, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.tabletop:TabletopEnv",
                         kwargs={"task": task})


_register()

__all__ = ["ENV_IDS", "SPLITS", "TASKS", "TASK_CLASSES", "TabletopEnv", "make_env"]
