"""Push: slide X to one side of the table with the closed gripper (RT-1's "push X ...").

Sides are named from the robot's point of view (the robot stands at the origin facing +x):
left is +y, right is -y, far is +x (away from the robot), near is -x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pybullet as p

from envs.catalog import SpawnedObject, object_position
from envs.tasks.base import Placement, Task

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

PUSH_Z = 0.02  # m above the table of the grasp point while pushing (fingertips ~1 cm up)
MARGIN = 0.05  # m: the object starts this far (at least) before its goal line
TABLE_CENTRE = np.array([0.49, 0.0])  # m, middle of the objects' region
DISTRACTOR_REGION = ((0.33, 0.66), (-0.24, 0.24))  # m, x and y ranges


@dataclass(frozen=True)
class Side:
    """A goal region: the half plane where dot(xy, direction) > threshold."""

    name: str
    phrase: str
    direction: tuple[float, float]
    threshold: float


SIDES = (
    Side("left", "left side", (0.0, 1.0), 0.10),
    Side("right", "right side", (0.0, -1.0), 0.10),
    Side("far", "far side", (1.0, 0.0), 0.58),
    Side("near", "near side", (-1.0, 0.0), -0.40),
)


class PushTask(Task):
    name = "push"
    max_steps = 60
    target: SpawnedObject
    templates = (
        "push the {obj} to the {side}",
        "slide the {obj} to the {side} of the table",
        "shove the {obj} toward the {side}",
        "push the {obj} over to the {side} of the table",
        "nudge the {obj} to the {side}",
    )
    held_out_templates = (
        "sweep the {obj} across to the {side}",
        "scoot the {obj} in the direction of the {side}",
        "drive the {obj} along the table to the {side}",
    )

    def sample(self, env: TabletopEnv) -> dict[str, str]:
        self.side = SIDES[int(env.np_random.integers(len(SIDES)))]
        d, c = self.draw_combo(env, env.split.target_combos)
        u = np.asarray(self.side.direction)
        # The object starts 5-10 cm before the goal line, up to 4 cm off the table's centre
        # line along the push.
        across = np.array([-u[1], u[0]])
        gap = env.np_random.uniform(MARGIN, 0.1)
        xy = (TABLE_CENTRE - u * float(TABLE_CENTRE @ u) + u * (self.side.threshold - gap)
              + across * env.np_random.uniform(-0.04, 0.04))
        target = self.spawn_all(env, [Placement(d, c, d.footprint_radius)],
                                region=((xy[0], xy[0]), (xy[1], xy[1])))[0]
        # Distractors stay out of the corridor the push sweeps (and the approach behind it).
        rest = self.add_distractors(env, [Placement(d, c, d.footprint_radius)])[1:]
        corridor = (xy, u)
        self.objects = [target, *self._spawn_outside(env, rest, corridor, target)]
        self.target = target
        return {"obj": target.name, "side": self.side.phrase}

    def _spawn_outside(self, env: TabletopEnv, rest: list[Placement],
                       corridor: tuple[np.ndarray, np.ndarray], target: SpawnedObject
                       ) -> list[SpawnedObject]:
        """Spawn distractors clear of the push corridor, anywhere the camera sees (the
        corridor takes most of the usual region, so this one is wider)."""
        start, u = corridor
        (x0, x1), (y0, y1) = DISTRACTOR_REGION
        r_t = target.definition.footprint_radius
        for _ in range(30):  # whole-layout retries: greedy placement can corner itself
            taken = [(float(start[0]), float(start[1]), r_t)]
            for pl in rest:
                for _ in range(100):
                    x, y = env.np_random.uniform(x0, x1), env.np_random.uniform(y0, y1)
                    rel = np.array([x, y]) - start
                    along = float(rel @ u)
                    lateral = abs(float(rel[0] * u[1] - rel[1] * u[0]))
                    # Clear of the fingers' approach behind the object (5 cm) and of its
                    # path ahead (at most 10 cm to the goal line, plus a 2 cm overshoot);
                    # the hand itself passes well above every object.
                    r = r_t + pl.radius
                    in_corridor = -(r + 0.05) < along < r + 0.12 and lateral < r + 0.01
                    if not in_corridor and all(math.hypot(x - a, y - b) > pl.radius + rb + 0.01
                                               for a, b, rb in taken):
                        taken.append((x, y, pl.radius))
                        break
                else:
                    break
            else:
                return [self.spawn_all(env, [pl], region=((x, x), (y, y)))[0]
                        for pl, (x, y, _) in zip(rest, taken[1:], strict=True)]
        raise ValueError(f"impossible scene: cannot place {len(rest)} distractors outside "
                         f"the push corridor of the {target.name}")

    def _reach(self, env: TabletopEnv) -> float:
        """Distance (m) from the object's centre to its back face along the push (from the
        AABB: exact for axis-aligned boxes, a little generous for rotated ones)."""
        lo, hi = p.getAABB(self.target.body, physicsClientId=env.client)
        u = np.abs(np.asarray(self.side.direction))
        return 0.5 * float(u[0] * (hi[0] - lo[0]) + u[1] * (hi[1] - lo[1]))

    milestones = ("reached", "touched")

    def milestone(self, env: TabletopEnv) -> int:
        if env.robot.touches(self.target.body):
            return 2
        return 1 if self.reached(env, self.target) else 0

    def success(self, env: TabletopEnv) -> bool:
        x = object_position(env.client, self.target)
        beyond = float(x[:2] @ np.asarray(self.side.direction)) > self.side.threshold
        return beyond and x[2] < env.table_z + self.target.half_height + 0.015

    def oracle(self, env: TabletopEnv) -> np.ndarray:
        if self.success(env):
            return self.action(close=True, terminate=True)
        ee = env.robot.ee_position()
        o = object_position(env.client, self.target)
        u = np.asarray(self.side.direction)
        rel = ee[:2] - o[:2]
        along = float(rel @ u)
        lateral = float(rel[0] * u[1] - rel[1] * u[0])  # signed offset across the push
        r = self._reach(env)
        # Low objects: push lower, so the fingertips (~7 mm below the grasp point) hit them.
        push_z = env.table_z + min(PUSH_Z, max(self.target.half_height, 0.012))
        top = o[2] + self.target.half_height
        low = ee[2] < top
        if low and along < -(r - 0.01) and abs(lateral) < 0.02:
            # Pushing: advance along u, steering back onto the line through the centre.
            goal_xy = o[:2] - u * (r + 0.005) + u * 0.04
            goal = np.array([goal_xy[0], goal_xy[1], push_z])
            return self.action(self.move_units(ee, goal, 0.6), close=True)
        if low and float(np.linalg.norm(rel)) < r + 0.03:
            # Beside or on the object: lift clear before repositioning.
            goal = np.array([ee[0], ee[1], top + 0.04])
            return self.action(self.move_units(ee, goal, 0.6), close=True)
        pre = o[:2] - u * (r + 0.025)
        err = float(np.linalg.norm(ee[:2] - pre))
        frac = float(np.clip((err - 0.008) / 0.03, 0.0, 1.0))
        z_goal = push_z + frac * (top + 0.05 - push_z)
        goal = np.array([pre[0], pre[1], z_goal])
        near = float(np.linalg.norm(goal - ee))
        vmax = 0.4 + 0.6 * float(np.clip(near / 0.08, 0.0, 1.0))
        return self.action(self.move_units(ee, goal, vmax), close=True)
