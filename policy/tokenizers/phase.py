"""The gripper-phase input (RT1Config.phase_state): where in a grasp-carry-release cycle the
policy is, from its own gripper commands.

The multi-step tasks (stack, move_near) fail most at the hand-over from grasping to placing
(docs/experiments/2026-11-30-competence.md, sections 2 and 22), and a history-1 policy sees
only the current frame and the gripper's width: it cannot tell "about to grasp" from "just
released" when the two look alike. The phase is what the robot's own control loop already
knows, never a simulator fact: per control step t, from the gripper commands c_0 .. c_{t-1}
that were sent before it (c_j = the action's "gripper" > 0, i.e. close; the gripper starts
open):

- closes: how many open -> close commands so far, capped at MAX_CLOSES;
- closed: whether the last command was close (0 before the first step);
- since: steps since the last change of command (or since the episode began), divided by
  SINCE_SCALE and capped at 1.

In training the commands are the demonstration's action labels (the policy's targets); while
acting they are the policy's own decoded actions, so the same function gives both:
:func:`phase_features` is the one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# batch / item key of the per-frame phase, float32 (B, T, 3): [closes, closed, since]
PHASE = "phase"
PHASE_DIM = 3
MAX_CLOSES = 3
SINCE_SCALE = 64.0


def gripper_index(action_names: Sequence[str], where: str) -> int:
    """The position of the "gripper" action the phase is read from, or a clear error naming
    `where` (a store, an action spec) and the actions it has."""
    names = list(action_names)
    if "gripper" not in names:
        raise ValueError(f"phase_state needs a 'gripper' action; {where} has actions {names}")
    return names.index("gripper")


def phase_features(commands: np.ndarray) -> np.ndarray:
    """Gripper commands of one episode, bool (T,) (True: close) -> float32 (T, 3): row t is
    [closes, closed, since] from the commands before step t (module docstring)."""
    c = np.asarray(commands, dtype=bool)
    if c.ndim != 1:
        raise ValueError(f"gripper commands have shape {c.shape}; expected (T,) for one episode")
    t = len(c)
    prev = np.concatenate([[False], c])  # prev[j] = c_{j-1}, c_{-1} = open
    closes_at = np.cumsum(c & ~prev[:-1])  # closes among c_0..c_j
    changed = c != prev[:-1]  # c_j differs from c_{j-1}
    out = np.zeros((t, PHASE_DIM), np.float32)
    if t == 0:
        return out
    # row t reads c_0..c_{t-1}: the features after step t-1, shifted by one
    out[1:, 0] = np.minimum(closes_at[:-1], MAX_CLOSES)
    out[1:, 1] = c[:-1]
    steps = np.arange(t)
    last_change = np.maximum.accumulate(np.where(changed, steps, -1))  # after step j, or -1
    # step t: the last change among c_<t was at last_change[t-1] (-1: none; count from 0)
    out[1:, 2] = steps[1:] - np.maximum(last_change[:-1], 0)
    out[:, 2] = np.minimum(out[:, 2] / SINCE_SCALE, 1.0)
    return out


def episode_phases(gripper: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """The gripper channel of consecutive episodes' actions (N,) and their ends (E,)
    (cumulative, the last = N) -> float32 (N, 3), each episode from its own first step."""
    gripper = np.asarray(gripper)
    ends = np.asarray(episode_ends, dtype=np.int64)
    if gripper.ndim != 1 or (len(ends) and int(ends[-1]) != len(gripper)):
        raise ValueError(f"gripper channel of shape {gripper.shape} with episode ends ending at "
                         f"{int(ends[-1]) if len(ends) else None}; expected (N,) and N")
    out = np.zeros((len(gripper), PHASE_DIM), np.float32)
    start = 0
    for end in ends:
        out[start:end] = phase_features(gripper[start:end] > 0)
        start = int(end)
    return out


class PhaseTracker:
    """The phase while acting: the episode's own gripper commands so far."""

    def __init__(self) -> None:
        self.commands: list[bool] = []

    def reset(self) -> None:
        self.commands.clear()

    def current(self) -> np.ndarray:
        """float32 (3,): the phase of the step about to be taken."""
        return phase_features(np.array([*self.commands, False]))[-1]

    def sent(self, gripper: float) -> None:
        self.commands.append(bool(gripper > 0))


class PhaseEmbedding(nn.Module):
    """float (..., 3) [closes, closed, since] -> (..., d): a learned vector per (closes,
    closed) pair plus a linear map of `since`."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.table = nn.Embedding((MAX_CLOSES + 1) * 2, d_model)
        self.since = nn.Linear(1, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, phase: torch.Tensor) -> torch.Tensor:
        closes = phase[..., 0].round().long().clamp(0, MAX_CLOSES)
        closed = (phase[..., 1] > 0.5).long()
        return self.table(closes * 2 + closed) + self.since(phase[..., 2:3].float())
