"""Grasp faults: executed-gripper perturbations that put recovery into demonstrations.

DART noise (envs/collect.py) moves the executed hand a few millimetres, which the oracle
corrects; it almost never makes a grasp fail, so the stored episodes hardly ever show what to
do after one. A policy trained on them closes, lifts and stops even when the object stayed on
the table or slipped out (docs/experiments/2026-11-30-competence.md, section 9). A grasp
fault overrides the executed gripper command for a few steps in a chosen share of episodes:

- ``close_early``: the gripper closes while the hand is still descending towards the object,
  so it shuts on air or on the object's edge;
- ``drop``: the gripper opens for a moment while the oracle lifts a grasped object, so it
  falls back.

Only the executed action changes. The label stays the oracle's action for the state the
fault produced (re-open and back up, then approach and grasp again), so the policy learns the
recovery, never the fault; the state's gripper width is what tells it a grasp failed. The
store keeps the executed action beside the label, as it does for DART noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.spec import DEFAULT_ACTION_SPEC, STATE_NAMES

FAULT_KINDS = ("close_early", "drop")
_GRIP = DEFAULT_ACTION_SPEC.index("gripper")
_Z = DEFAULT_ACTION_SPEC.index("z")
_EE_Z = STATE_NAMES.index("ee_z")
CLOSE_EARLY_BELOW = 0.07  # m: the hand's height under which a descent may close early
DROP_AFTER = 2  # closed label steps before a drop may fire (the grasp is made, lifting starts)


@dataclass
class GraspFault:
    """One episode's fault: which kind, how many executed steps it overrides, and its state.

    Call :meth:`apply` once per step with the oracle's label, the action about to be executed
    and the observed state; it returns the action to execute.
    """

    kind: str
    steps: int = 3
    fired: bool = False
    _left: int = 0
    _forced: float = 0.0
    _closed_for: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"grasp fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.steps < 1:
            raise ValueError(f"grasp fault steps={self.steps}; expected >= 1")

    @classmethod
    def draw(cls, seed: int, prob: float, kinds: Sequence[str] = FAULT_KINDS,
             steps: int = 3) -> GraspFault | None:
        """The fault of the episode with `seed`, or None: a function of the seed alone (its
        own generator, so DART noise draws stay what they were without faults)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"grasp fault probability {prob}; expected in [0, 1]")
        if not kinds:
            raise ValueError("grasp fault kinds is empty; expected some of "
                             f"{FAULT_KINDS}")
        rng = np.random.default_rng([seed, 0xFA17])
        if rng.random() >= prob:
            return None
        return cls(kind=str(kinds[int(rng.integers(len(kinds)))]), steps=steps)

    def apply(self, label: np.ndarray, act: np.ndarray, state: np.ndarray) -> np.ndarray:
        closing = float(label[_GRIP]) > 0
        self._closed_for = self._closed_for + 1 if closing else 0
        if not self.fired:
            if self.kind == "close_early":
                start = (not closing and float(label[_Z]) < 0
                         and float(state[_EE_Z]) < CLOSE_EARLY_BELOW)
                forced = 1.0
            else:
                start = closing and self._closed_for > DROP_AFTER and float(label[_Z]) > 0
                forced = -1.0
            if start:
                self.fired, self._left, self._forced = True, self.steps, forced
        if self._left > 0:
            self._left -= 1
            act = act.copy()
            act[_GRIP] = self._forced
        return act
