"""Move near: put X down next to Y (RT-1's "move X near Y")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from envs.catalog import SpawnedObject, object_position
from envs.tasks.base import Placement
from envs.tasks.transport import TransportTask

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

NEAR = 0.12  # m between centres (xy) that counts as "near"
START_CLEARANCE = 0.1  # m kept free around Y at the start, so X never starts near it


class MoveNearTask(TransportTask):
    name = "move_near"
    ref: SpawnedObject
    max_steps = 70
    templates = (
        "move the {obj} near the {ref}",
        "put the {obj} next to the {ref}",
        "place the {obj} close to the {ref}",
        "bring the {obj} over to the {ref}",
        "set the {obj} down beside the {ref}",
    )
    held_out_templates = (
        "relocate the {obj} so it sits by the {ref}",
        "carry the {obj} to the vicinity of the {ref}",
        "get the {obj} alongside the {ref}",
    )

    def sample(self, env: TabletopEnv) -> dict[str, str]:
        d, c = self.draw_combo(env, env.split.target_combos)
        rd, rc = self.draw_combo(env, env.split.distractor_combos, avoid={f"{c} {d.noun}"})
        named = [Placement(d, c, d.footprint_radius), Placement(rd, rc, START_CLEARANCE)]
        self.objects = self.spawn_all(env, self.add_distractors(env, named))
        self.target, self.ref = self.objects[0], self.objects[1]
        self.offset = self._free_offset(env)
        return {"obj": self.target.name, "ref": self.ref.name}

    def prompt_objects(self) -> dict[str, SpawnedObject]:
        return {"obj": self.target, "ref": self.ref}

    def _free_offset(self, env: TabletopEnv) -> np.ndarray:
        """Where beside Y to put X: of 8 directions, the one farthest from other objects
        and inside the table region, at a distance that clears both footprints."""
        ref = object_position(env.client, self.ref)[:2]
        dist = min(self.target.definition.footprint_radius
                   + self.ref.definition.footprint_radius + 0.015, NEAR - 0.03)
        others = [object_position(env.client, o)[:2] for o in self.objects[2:]]
        (x0, x1), (y0, y1) = env.table_region
        best, best_score = np.zeros(2), -math.inf
        for k in range(8):
            a = 2 * math.pi * k / 8
            off = dist * np.array([math.cos(a), math.sin(a)])
            g = ref + off
            inside = x0 - 0.02 <= g[0] <= x1 + 0.02 and y0 - 0.02 <= g[1] <= y1 + 0.02
            clear = min((float(np.linalg.norm(g - o)) for o in others), default=1.0)
            score = clear - (0 if inside else 10.0)
            if score > best_score:
                best, best_score = off, score
        return best

    def goal_xy(self, env: TabletopEnv) -> np.ndarray:
        return object_position(env.client, self.ref)[:2] + self.offset

    def release_z(self, env: TabletopEnv) -> float:
        return self.rest_z(env) + 0.012

    def placed(self, env: TabletopEnv) -> bool:
        x = object_position(env.client, self.target)[:2]
        y = object_position(env.client, self.ref)[:2]
        return float(np.linalg.norm(x - y)) < NEAR and self.on_table(env)
