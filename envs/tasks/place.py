"""Place: put X into a container, a tray or a bowl (RT-1's "place X into Y")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pybullet as p

from envs.catalog import SpawnedObject, object_position
from envs.tasks.base import Placement
from envs.tasks.transport import TransportTask

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

FLOOR = 0.006  # m, container floor thickness (envs/catalog.py builds it)


class PlaceTask(TransportTask):
    name = "place"
    max_steps = 70
    container: SpawnedObject
    templates = (
        "put the {obj} in the {ref}",
        "place the {obj} into the {ref}",
        "drop the {obj} in the {ref}",
        "move the {obj} into the {ref}",
        "put the {obj} inside the {ref}",
    )
    held_out_templates = (
        "deposit the {obj} within the {ref}",
        "stow the {obj} in the {ref}",
        "load the {obj} into the {ref}",
    )

    def sample(self, env: TabletopEnv) -> dict[str, str]:
        d, c = self.draw_combo(env, env.split.target_combos)
        cc, cn = env.split.containers[int(env.np_random.integers(len(env.split.containers)))]
        cd = self.defs[cn]
        named = [Placement(d, c, d.footprint_radius), Placement(cd, cc, cd.footprint_radius)]
        self.objects = self.spawn_all(env, self.add_distractors(env, named))
        self.target, self.container = self.objects[0], self.objects[1]
        return {"obj": self.target.name, "ref": self.container.name}

    def prompt_objects(self) -> dict[str, SpawnedObject]:
        return {"obj": self.target, "ref": self.container}

    def goal_xy(self, env: TabletopEnv) -> np.ndarray:
        pos, _ = p.getBasePositionAndOrientation(self.container.body, physicsClientId=env.client)
        return np.asarray(pos[:2])

    def release_z(self, env: TabletopEnv) -> float:
        return env.table_z + FLOOR + self.target.half_height + 0.015

    def placed(self, env: TabletopEnv) -> bool:
        pos, quat = p.getBasePositionAndOrientation(self.container.body,
                                                    physicsClientId=env.client)
        x = object_position(env.client, self.target)
        # Into the container's frame: inside its inner walls and below the rim.
        inv_pos, inv_quat = p.invertTransform(pos, quat)
        local, _ = p.multiplyTransforms(inv_pos, inv_quat, x.tolist(), [0, 0, 0, 1])
        half_w, _, wall_h = self.container.definition.size
        sides = self.container.definition.sides or 4
        # Inside a regular polygon with inner apothem half_w: every face's normal distance.
        angles = [2 * math.pi * k / sides for k in range(sides)]
        inside = all(local[0] * math.cos(a) + local[1] * math.sin(a) < half_w for a in angles)
        return inside and x[2] < env.table_z + wall_h + self.target.half_height
