"""robotok's simulation side: PyBullet tabletop tasks with oracles, as gymnasium envs.

    import envs
    env = envs.make_env(task="pick", split="seen")          # or
    env = gymnasium.make("robotok/Pick-v0", split="seen")
    obs, info = env.reset(seed=0)
    label = env.unwrapped.oracle_action()

See docs/CONTRACTS.md ("Env: envs") for the full contract and envs/spec.py for the action
and state layout. envs/ never imports policy/.

The simulator is imported lazily (PEP 562), as in `policy/__init__.py`: a policy config
imports envs.spec for the action layout, and Python runs this file first, so loading
PyBullet here would make every policy import pay for a simulator it does not use. Importing
`envs` registers the gymnasium ids (their entry points are strings, resolved on `make`);
TabletopEnv, TASK_CLASSES and SPLITS load the simulator modules on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

# The registered task names, in the order of envs.tasks.TASK_CLASSES (a test checks that
# they agree): the names are needed to register ids without importing the tasks.
TASKS: tuple[str, ...] = ("pick", "move_near", "place", "push", "stack")

# Versioned gymnasium ids: "pick" -> "robotok/Pick-v0", "move_near" -> "robotok/MoveNear-v0".
ENV_IDS: dict[str, str] = {
    t: "robotok/" + "".join(w.capitalize() for w in t.split("_")) + "-v0" for t in TASKS
}

_LAZY = {
    "TabletopEnv": "envs.tabletop",
    "TASK_CLASSES": "envs.tasks",
    "SPLITS": "envs.splits",
    "VISUAL_SPLITS": "envs.splits",
    "ALL_SPLITS": "envs.splits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


def make_env(
    task: str = "pick",
    split: str = "seen",
    image_size: int = 96,
    wrist_camera: bool = False,
    background_mask: bool = False,
    render_mode: str | None = "rgb_array",
    max_steps: int | None = None,
    split_overrides: dict[str, Any] | None = None,
    skip_render: bool = False,
    physics: dict[str, Any] | None = None,
    prompt_image_size: int = 32,
    object_boxes: bool = False,
) -> TabletopEnv:
    """Build one TabletopEnv (no gymnasium wrappers). `skip_render=True` returns black
    images: a fast path for oracle-only checks; the default always renders. `physics`:
    envs.physics.PhysicsConfig fields (None: the defaults stores and checkpoints use).
    `background_mask=True` adds obs["background_mask"], `object_boxes=True` obs["object_boxes"]
    (per visible task object its box in the front image); a split with `visual_prompts` > 0
    adds obs["prompt_images"], crops of prompt_image_size px (envs/tabletop.py)."""
    from envs.tabletop import TabletopEnv

    return TabletopEnv(task=task, split=split, image_size=image_size,
                       wrist_camera=wrist_camera, background_mask=background_mask,
                       render_mode=render_mode,
                       max_steps=max_steps, split_overrides=split_overrides,
                       skip_render=skip_render, physics=physics,
                       prompt_image_size=prompt_image_size, object_boxes=object_boxes)


def _register() -> None:
    for task, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="envs.tabletop:TabletopEnv",
                         kwargs={"task": task})


_register()

__all__ = ["ALL_SPLITS", "ENV_IDS", "SPLITS", "TASKS", "TASK_CLASSES", "VISUAL_SPLITS",
           "TabletopEnv", "make_env"]
