"""The Franka Panda: loading, end-effector control through IK, gripper, and its state vector.

The arm is pybullet_data's panda.urdf with its visual meshes swapped for the (much coarser)
collision meshes: TinyRenderer's cost is dominated by the Panda's triangles (18.5 ms
per 96 px frame with the visual meshes), and the coarse meshes render about 10x faster
while looking the same at 96 px (docs/experiments/2026-11-28-env-suite.md). The rewritten
URDF is written once per process into a temporary folder with absolute mesh paths.

Actions (envs/spec.py) are end-effector deltas in the world frame: the robot keeps a target
pose, adds the delta, and solves IK for the grasp point pointing down.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pybullet as p

from envs.catalog import PYBULLET_DATA

ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
GRASP_LINK = 11  # panda_grasptarget: between the fingertips
HAND_LINK = 8
# A comfortable elbow-up configuration over the workspace, also IK's rest pose.
REST_POSE = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4)
JOINT_LOWER = (-2.9, -1.76, -2.9, -3.07, -2.9, -0.02, -2.9)
JOINT_UPPER = (2.9, 1.76, 2.9, -0.07, 2.9, 3.75, 2.9)
FINGER_OPEN = 0.04  # m per finger
GRIPPER_FORCE = 100.0  # N per finger: high, so held objects do not pivot in the fingers
ARM_FORCE = 240.0


@dataclass(frozen=True)
class Workspace:
    """Box the end-effector target is clipped to (m, world frame)."""

    low: tuple[float, float, float] = (0.25, -0.35, 0.005)
    high: tuple[float, float, float] = (0.75, 0.35, 0.40)


@lru_cache(maxsize=1)
def lowpoly_panda_urdf() -> str:
    """Path of panda.urdf rewritten to render its collision meshes (see module docstring)."""
    src_path = os.path.join(PYBULLET_DATA, "franka_panda", "panda.urdf")
    with open(src_path) as f:
        text = f.read()
    mesh_dir = os.path.join(PYBULLET_DATA, "franka_panda", "meshes")
    text = text.replace("package://meshes/visual/", "package://meshes/collision/")
    text = text.replace("package://meshes/", mesh_dir + "/")
    out_dir = tempfile.mkdtemp(prefix="robotok-panda-")
    out = os.path.join(out_dir, "panda_lowpoly.urdf")
    with open(out, "w") as f:
        f.write(text)
    return out


def down_quat(yaw: float) -> tuple[float, float, float, float]:
    """Hand orientation pointing straight down, rotated by `yaw` about world z."""
    return p.getQuaternionFromEuler([math.pi, 0.0, yaw])


class Panda:
    """One Panda in one PyBullet client; every call passes that client's id."""

    def __init__(self, client: int, base_position: tuple[float, float, float],
                 workspace: Workspace, ik_iterations: int = 50,
                 ik_residual: float = 1e-4) -> None:
        self.client = client
        self.workspace = workspace
        self.ik_iterations = ik_iterations
        self.ik_residual = ik_residual
        self.body = p.loadURDF(lowpoly_panda_urdf(), base_position, useFixedBase=True,
                               flags=p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES,
                               physicsClientId=client)
        # The collision meshes carry no colours: paint the arm like the real one.
        for link in range(-1, p.getNumJoints(self.body, physicsClientId=client)):
            dark = link in (HAND_LINK, *FINGER_JOINTS)
            colour = (0.2, 0.2, 0.2, 1) if dark else (0.9, 0.9, 0.9, 1)
            p.changeVisualShape(self.body, link, rgbaColor=colour, physicsClientId=client)
        for j in FINGER_JOINTS:
            # Spinning friction resists an object pivoting about the finger axis; bullet
            # multiplies the two bodies' coefficients, objects carry 0.02 (envs/catalog.py).
            p.changeDynamics(self.body, j, lateralFriction=1.5, spinningFriction=1.0,
                             physicsClientId=client)
        self.target_pos = np.zeros(3)
        self.target_quat = np.array(down_quat(0.0))
        self.gripper_closed = False

    def reset(self, ee_position: np.ndarray, yaw: float = 0.0) -> None:
        """Put the arm at an IK solution for `ee_position` pointing down, gripper open."""
        for j, q in zip(ARM_JOINTS, REST_POSE, strict=True):
            p.resetJointState(self.body, j, q, physicsClientId=self.client)
        for j in FINGER_JOINTS:
            p.resetJointState(self.body, j, FINGER_OPEN, physicsClientId=self.client)
        self.target_pos = np.asarray(ee_position, dtype=np.float64)
        self.target_quat = np.asarray(down_quat(yaw))
        # Several IK passes from the rest pose converge to an exact start pose.
        for _ in range(4):
            q = self._ik()
            for j, v in zip(ARM_JOINTS, q, strict=True):
                p.resetJointState(self.body, j, v, physicsClientId=self.client)
        self.gripper_closed = False
        self._command()

    def _ik(self) -> list[float]:
        q = p.calculateInverseKinematics(
            self.body, GRASP_LINK, self.target_pos.tolist(), self.target_quat.tolist(),
            lowerLimits=list(JOINT_LOWER), upperLimits=list(JOINT_UPPER),
            jointRanges=[u - lo for lo, u in zip(JOINT_LOWER, JOINT_UPPER, strict=True)],
            restPoses=list(REST_POSE), maxNumIterations=self.ik_iterations,
            residualThreshold=self.ik_residual,
            physicsClientId=self.client)
        return list(q[:7])

    def apply(self, delta_pos: np.ndarray, delta_rpy: np.ndarray, close: bool) -> None:
        """Move the target by a world-frame delta (m, rad) and command joints and gripper."""
        ee = self.ee_position()
        # Anti wind-up: when the arm is blocked (pressing on an object or the table) the
        # target is kept within 4 cm of the real end effector so it does not run away.
        target = np.clip(self.target_pos + delta_pos, self.workspace.low, self.workspace.high)
        offset = target - ee
        dist = float(np.linalg.norm(offset))
        if dist > 0.04:
            target = ee + offset * (0.04 / dist)
        self.target_pos = target
        if np.any(delta_rpy != 0):
            dq = p.getQuaternionFromEuler(delta_rpy.tolist())
            _, q = p.multiplyTransforms([0, 0, 0], dq, [0, 0, 0], self.target_quat.tolist())
            self.target_quat = np.asarray(q)
        self.gripper_closed = close
        self._command()

    def _command(self) -> None:
        q = self._ik()
        p.setJointMotorControlArray(self.body, list(ARM_JOINTS), p.POSITION_CONTROL,
                                    targetPositions=q, forces=[ARM_FORCE] * 7,
                                    physicsClientId=self.client)
        finger = 0.0 if self.gripper_closed else FINGER_OPEN
        p.setJointMotorControlArray(self.body, list(FINGER_JOINTS), p.POSITION_CONTROL,
                                    targetPositions=[finger, finger],
                                    forces=[GRIPPER_FORCE] * 2, physicsClientId=self.client)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        st = p.getLinkState(self.body, GRASP_LINK, computeForwardKinematics=1,
                            physicsClientId=self.client)
        return np.asarray(st[4]), np.asarray(st[5])

    def ee_velocity(self) -> np.ndarray:
        """Linear velocity (m/s, world frame) of the grasp point."""
        st = p.getLinkState(self.body, GRASP_LINK, computeLinkVelocity=1,
                            computeForwardKinematics=1, physicsClientId=self.client)
        return np.asarray(st[6])

    def ee_position(self) -> np.ndarray:
        return self.ee_pose()[0]

    def gripper_width(self) -> float:
        states = p.getJointStates(self.body, list(FINGER_JOINTS), physicsClientId=self.client)
        return float(states[0][0] + states[1][0])

    def finger_axis_yaw(self) -> float:
        """World yaw of the direction the fingers close along (the hand's y axis)."""
        _, quat = self.ee_pose()
        m = np.asarray(p.getMatrixFromQuaternion(quat.tolist())).reshape(3, 3)
        return math.atan2(m[1, 1], m[0, 1])

    def state(self) -> np.ndarray:
        """STATE_NAMES layout: ee xyz, ee quaternion xyzw, gripper width."""
        pos, quat = self.ee_pose()
        return np.concatenate([pos, quat, [self.gripper_width()]]).astype(np.float32)

    def touching(self, body: int) -> tuple[bool, bool]:
        """Whether the left and right finger each touch `body`."""
        return tuple(  # type: ignore[return-value]
            len(p.getContactPoints(self.body, body, linkIndexA=j, physicsClientId=self.client))
            > 0 for j in FINGER_JOINTS)

    def holds(self, body: int) -> bool:
        left, right = self.touching(body)
        return left and right

    def touches(self, body: int) -> bool:
        return len(p.getContactPoints(self.body, body, physicsClientId=self.client)) > 0
