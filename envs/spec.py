"""The contracts shared by env, episode store, tokenizers, checkpoints and the bridge.

One source of truth for the action layout (docs/CONTRACTS.md, "The map"), the state layout,
the key names every package uses, the control rate, and the disjoint seed ranges of
collection and evaluation. envs/ owns this module; policy/ imports it (never the reverse).

Normalized actions live in [-1, 1] per dimension. The env maps them to the robot:

| dim       | unit per 1.0          | meaning                                            |
|-----------|-----------------------|----------------------------------------------------|
| terminate | flag                  | > 0 ends the episode (success: simulator state)    |
| x, y, z   | 0.03 m                | end-effector translation per control step (world frame) |
| roll, pitch, yaw | 0.25 rad       | end-effector rotation per control step (world frame) |
| gripper   | absolute command      | > 0 close, <= 0 open                               |
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

# Key names: the same in env observations, stored episodes, training batches and bridge
# messages (docs/CONTRACTS.md, "The map"). No renaming layers anywhere.
IMAGE = "image"
WRIST_IMAGE = "wrist_image"
# Optional per-frame uint8 (H, W) mask of the front camera: 1 on the table and the empty
# background, 0 on the robot and the objects (collect.background_mask; training-time
# background augmentation, policy/background.py). Never part of an observation a policy acts on.
BACKGROUND_MASK = "background_mask"
# Optional per-frame float32 (2, 2): where the front camera sees the centres of the task's
# named objects, [target, second object] x (u, v) = (column, row) in pixels of the front
# image, NaN for a task without a second object (TabletopEnv.object_pixels;
# collect.object_pixels; labels for grounding losses). Privileged simulator state: never
# part of an observation a policy acts on.
OBJECT_PIXELS = "object_pixels"
# Optional per-frame float32 (MAX_OBJECT_BOXES, 4): one row per task object (every body of
# the scene but the robot and the table) visible in the front image, [u0, v0, u1, v1] as
# fractions of its width (u, columns) and height (v, rows), from the segmentation buffer
# of the same render as obs["image"]; rows sorted by box centre u then v (never by role),
# NaN past the last visible object (TabletopEnv object_boxes=True; collect.object_boxes;
# envs/camera.py object_boxes). Unlike OBJECT_PIXELS an observation a policy may act on.
OBJECT_BOXES = "object_boxes"
MAX_OBJECT_BOXES = 8
STATE = "state"
INSTRUCTION = "instruction"
ACTION = "action"

# Multimodal prompts: an instruction may name an object by showing it. Each occurrence of
# PROMPT_SLOT in the instruction ("pick up the {image}") stands for one image, in order:
# obs[PROMPT_IMAGES] is uint8 (MAX_PROMPT_IMAGES, S, S, 3), the crops in the order of their
# slots, zero-filled past the instruction's slot count. Text-only instructions have no slot;
# an env or store without visual prompts has no PROMPT_IMAGES at all.
PROMPT_IMAGES = "prompt_images"
PROMPT_SLOT = "{image}"
MAX_PROMPT_IMAGES = 2


def prompt_slots(instruction: str) -> int:
    """How many images `instruction` refers to (its PROMPT_SLOT markers)."""
    return instruction.count(PROMPT_SLOT)

# Control: physics at 240 Hz, 24 substeps per action -> 10 Hz control.
PHYSICS_HZ = 240
CONTROL_HZ = 10

# Seeds: collection draws from [0, EVAL_SEED_START); evaluation from [EVAL_SEED_START, ...).
# The ranges never overlap, so an evaluation scene is never a training scene.
COLLECT_SEED_START = 0
EVAL_SEED_START = 1_000_000_000


@dataclass(frozen=True)
class ActionDim:
    """One named action dimension: normalized bounds and what one unit means physically."""

    name: str
    low: float = -1.0
    high: float = 1.0
    unit: str = ""  # "m", "rad", "flag", "command"
    scale: float = 1.0  # physical units per normalized unit

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(
                f"action dim {self.name!r}: low={self.low} must be < high={self.high}"
            )


@dataclass(frozen=True)
class ActionSpec:
    """An ordered list of named action dimensions with bounds."""

    dims: tuple[ActionDim, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ValueError(f"action spec has duplicate dimension names: {names}")
        if not names:
            raise ValueError("action spec needs at least one dimension")

    def __len__(self) -> int:
        return len(self.dims)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    @property
    def low(self) -> np.ndarray:
        return np.array([d.low for d in self.dims], dtype=np.float32)

    @property
    def high(self) -> np.ndarray:
        return np.array([d.high for d in self.dims], dtype=np.float32)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no action dimension {name!r}; expected one of {self.names}") from None

    def clip(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self.low, self.high).astype(np.float32)

    def validate(self, action: np.ndarray) -> np.ndarray:
        """Return `action` as float32 of shape (len(self),) or raise naming what is wrong."""
        a = np.asarray(action)
        if a.shape != (len(self),):
            raise ValueError(
                f"action has shape {a.shape}; expected ({len(self)},) for dims {self.names}"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"action has non-finite values: {a.tolist()}")
        return a.astype(np.float32)

    def to_dict(self) -> dict:
        return {"dims": [asdict(d) for d in self.dims]}

    @classmethod
    def from_dict(cls, data: dict) -> ActionSpec:
        try:
            return cls(dims=tuple(ActionDim(**d) for d in data["dims"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed action spec {data!r}: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ActionSpec:
        return cls.from_dict(json.loads(text))

    def mismatch(self, other: ActionSpec) -> str | None:
        """A sentence naming the first difference from `other`, or None when equal."""
        if self.names != other.names:
            return f"action dimensions {self.names} != {other.names}"
        for a, b in zip(self.dims, other.dims, strict=True):
            if a != b:
                return f"action dimension {a.name!r}: {a} != {b}"
        return None


def make_action_spec(
    names: Sequence[str] = ("terminate", "x", "y", "z", "roll", "pitch", "yaw", "gripper"),
    metres_per_unit: float = 0.03,
    radians_per_unit: float = 0.25,
) -> ActionSpec:
    """The default spec: RT-1's arm layout without the mobile base, all in [-1, 1]."""
    units = {
        "terminate": ("flag", 1.0),
        "x": ("m", metres_per_unit),
        "y": ("m", metres_per_unit),
        "z": ("m", metres_per_unit),
        "roll": ("rad", radians_per_unit),
        "pitch": ("rad", radians_per_unit),
        "yaw": ("rad", radians_per_unit),
        "gripper": ("command", 1.0),
    }
    dims = []
    for n in names:
        if n not in units:
            raise ValueError(f"unknown action dimension {n!r}; expected one of {list(units)}")
        unit, scale = units[n]
        dims.append(ActionDim(name=n, unit=unit, scale=scale))
    return ActionSpec(dims=tuple(dims))


DEFAULT_ACTION_SPEC = make_action_spec()

# State layout: end-effector position (m, world frame), orientation quaternion (x, y, z, w),
# gripper opening (m, distance between the fingers).
STATE_NAMES: tuple[str, ...] = ("ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw",
                                "gripper_width")


def config_defaults(config_class: type) -> dict[str, Any]:
    """A config dataclass's defaults as plain YAML-able values (tuples become lists; fields
    without a default are left out). Every config's defaults live in its dataclass; the
    entry points store these as hydra nodes that the YAML files build on (`collect_base`,
    `eval/base`, `policy/<kind>_base`)."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in fields(config_class) if f.default is not MISSING}
