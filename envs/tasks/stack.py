"""Stack: set X on top of Y (RT-1's "stack X on Y")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pybullet as p

from envs.catalog import SpawnedObject, object_position
from envs.tasks.base import Placement
from envs.tasks.transport import TransportTask

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

CENTRED = 0.025  # m: X's centre must be this close (xy) to Y's centre


class StackTask(TransportTask):
    name = "stack"
    max_steps = 70
    base: SpawnedObject
    templates = (
        "stack the {obj} on the {ref}",
        "put the {obj} on top of the {ref}",
        "place the {obj} onto the {ref}",
        "set the {obj} on the {ref}",
        "stack the {obj} on top of the {ref}",
    )
    held_out_templates = (
        "pile the {obj} upon the {ref}",
        "balance the {obj} atop the {ref}",
        "heap the {obj} onto the {ref}",
    )

    def sample(self, env: TabletopEnv) -> dict[str, str]:
        d, c = self.draw_combo(env, env.split.target_combos, need_stackable=True)
        # The base's top must not be much narrower than the object put on it (a duck does
        # not rest on a 4 cm cylinder).
        bd, bc = self.draw_combo(env, env.split.distractor_combos, avoid={f"{c} {d.noun}"},
                                 need_flat_top=True, min_footprint=0.8 * d.footprint_radius)
        named = [Placement(d, c, d.footprint_radius), Placement(bd, bc, bd.footprint_radius)]
        self.objects = self.spawn_all(env, self.add_distractors(env, named))
        self.target, self.base = self.objects[0], self.objects[1]
        return {"obj": self.target.name, "ref": self.base.name}

    def prompt_objects(self) -> dict[str, SpawnedObject]:
        return {"obj": self.target, "ref": self.base}

    def _base_top(self, env: TabletopEnv) -> float:
        return float(object_position(env.client, self.base)[2]) + self.base.half_height

    def goal_xy(self, env: TabletopEnv) -> np.ndarray:
        return object_position(env.client, self.base)[:2]

    def release_z(self, env: TabletopEnv) -> float:
        return self._base_top(env) + self.target.half_height + 0.012

    def placed(self, env: TabletopEnv) -> bool:
        x = object_position(env.client, self.target)
        y = object_position(env.client, self.base)
        centred = float(np.linalg.norm(x[:2] - y[:2])) < CENTRED
        # The current AABB bottom: an object turned in the grasp has a new height.
        bottom = p.getAABB(self.target.body, physicsClientId=env.client)[0][2]
        resting_on = bottom > self._base_top(env) - 0.01
        base_upright = y[2] < env.table_z + self.base.half_height + 0.005
        return centred and resting_on and base_upright and x[2] < self.release_z(env) + 0.02
