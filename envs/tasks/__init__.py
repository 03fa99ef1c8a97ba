"""Task classes by name: each samples its scene, owns its templates, success and oracle."""

from __future__ import annotations

from envs.tasks.base import Task
from envs.tasks.move_near import MoveNearTask
from envs.tasks.pick import PickTask
from envs.tasks.place import PlaceTask
from envs.tasks.push import PushTask
from envs.tasks.stack import StackTask

TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls for cls in (PickTask, MoveNearTask, PlaceTask, PushTask, StackTask)
}

__all__ = ["TASK_CLASSES", "Task"]
