"""Pick X, carry it and set it down somewhere: the shared core of move_near, place, stack.

A subclass says where to set the object down (`goal_xy`, `release_z`) and when it counts as
placed (`placed`); the oracle is then: grasp (base.Task.grasp_step) -> carry and lower ->
open -> success. Closed loop: which phase applies is read from the simulator every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from envs.catalog import SpawnedObject, object_position
from envs.tasks.base import Task

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv


class TransportTask(Task):
    """Base for tasks that move `self.target` to a goal and release it there."""

    target: SpawnedObject
    milestones = ("reached", "grasped", "carried")  # carried: at the goal, not yet released

    def milestone(self, env: TabletopEnv) -> int:
        if self.placed(env):
            return 3
        return super().milestone(env)

    def goal_xy(self, env: TabletopEnv) -> np.ndarray:
        raise NotImplementedError

    def release_z(self, env: TabletopEnv) -> float:
        """Height (m) of the object's centre at which the gripper opens."""
        raise NotImplementedError

    def placed(self, env: TabletopEnv) -> bool:
        """The geometric goal holds (the robot may still touch the object)."""
        raise NotImplementedError

    def success(self, env: TabletopEnv) -> bool:
        # Released: a placement still held by the fingers does not count.
        return self.placed(env) and not env.robot.touches(self.target.body)

    def oracle(self, env: TabletopEnv) -> np.ndarray:
        if self.success(env):
            return self.action(close=False, terminate=True)
        if self.holding(env, self.target):
            return self.carry_and_release_step(env, self.target, self.goal_xy(env),
                                               self.release_z(env))
        if self.placed(env):
            return self.retreat_step(env)  # just released, still touching: back off
        return self.grasp_step(env, self.target)

    def rest_z(self, env: TabletopEnv) -> float:
        """Centre height of the target resting on the table."""
        return env.table_z + self.target.half_height

    def on_table(self, env: TabletopEnv) -> bool:
        return float(object_position(env.client, self.target)[2]) < self.rest_z(env) + 0.015
