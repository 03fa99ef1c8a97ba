"""Pick: lift the named object off the table (RT-1's "pick X")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from envs.catalog import SpawnedObject, object_position
from envs.tasks.base import Placement, Task

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

LIFT = 0.06  # m the object's centre must rise above its resting height
LIFT_GOAL = 0.09  # m the oracle aims for: a margin over LIFT


class PickTask(Task):
    name = "pick"
    max_steps = 40
    templates = (
        "pick up the {obj}",
        "lift the {obj}",
        "pick the {obj} up",
        "grab the {obj} and lift it",
        "raise the {obj} off the table",
    )
    held_out_templates = (
        "grasp the {obj}",
        "hoist the {obj} into the air",
        "could you elevate the {obj}",
        "take hold of the {obj} and hold it up",
    )

    def sample(self, env: TabletopEnv) -> dict[str, str]:
        d, c = self.draw_combo(env, env.split.target_combos)
        placements = self.add_distractors(env, [Placement(d, c, d.footprint_radius)])
        self.objects = self.spawn_all(env, placements)
        self.target: SpawnedObject = self.objects[0]
        self.rest_z = float(object_position(env.client, self.target)[2])
        return {"obj": self.target.name}

    def success(self, env: TabletopEnv) -> bool:
        z = float(object_position(env.client, self.target)[2])
        return z > self.rest_z + LIFT and env.robot.holds(self.target.body)

    def oracle(self, env: TabletopEnv) -> np.ndarray:
        if self.success(env):
            return self.action(close=True, terminate=True)
        if self.holding(env, self.target):
            ee = env.robot.ee_position()
            goal = np.array([ee[0], ee[1], ee[2] + (self.rest_z + LIFT_GOAL - object_position(
                env.client, self.target)[2])])
            return self.action(self.move_units(ee, goal, 1.0), close=True)
        return self.grasp_step(env, self.target)
