"""Visual prompts: the object crops that stand in for an object's name in an instruction.

A multimodal prompt (VIMA, Jiang et al. 2023, https://arxiv.org/abs/2210.03094) shows the
object instead of naming it: "put the {image} in the white tray". The crop must not be a
cut-out of the scene camera's frame, or a policy could match pixels instead of recognising
the object. So each crop is rendered in a studio of its own (a separate PyBullet client
holding one object on a grey floor) from a view that differs from the scene camera's in:

- pose: the object is turned to a random yaw and seen from a random azimuth, from 35-65
  degrees above the floor (the scene camera looks from the front, about 25 degrees down);
- scale: the camera stands at a distance proportional to the object's size, so every
  object fills about the same share of the crop, whatever its size on the table;
- light: a fixed studio light, brighter and from above, never one of the scene's draws.

The view is drawn from a generator the env derives from the episode's seed (envs/tabletop.py),
so a crop is a pure function of the seed, and drawing it changes nothing else in the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pybullet as p

from envs.camera import Lighting, _render
from envs.catalog import ObjectDef, spawn_object

STUDIO_LIGHT = Lighting(direction=(0.3, 0.2, 1.0), colour=(1.0, 1.0, 1.0), ambient=0.75,
                        diffuse=0.45, specular=0.1)
FLOOR_RGBA = (0.55, 0.55, 0.58, 1.0)  # a mid grey, so white and black objects both stand out


@dataclass(frozen=True)
class StudioConfig:
    """How prompt crops are rendered: size (px) and the ranges of the random view."""

    image_size: int = 32
    elevation_deg: tuple[float, float] = (35.0, 65.0)
    fov_deg: float = 40.0
    fill: float = 0.7  # the object's bounding sphere spans this share of the crop's height

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 256:
            raise ValueError(f"prompt image_size={self.image_size}; expected 8..256 px")
        lo, hi = self.elevation_deg
        if not 0 < lo <= hi < 90:
            raise ValueError(f"prompt elevation_deg={self.elevation_deg}; expected "
                             "(low, high) with 0 < low <= high < 90")
        if not 0.1 <= self.fill <= 1.0:
            raise ValueError(f"prompt fill={self.fill}; expected 0.1..1.0")

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "elevation_deg": list(self.elevation_deg),
                "fov_deg": self.fov_deg, "fill": self.fill}


class PromptStudio:
    """Renders one object alone, from a random view, as a uint8 (S, S, 3) crop."""

    def __init__(self, config: StudioConfig | None = None) -> None:
        self.config = config or StudioConfig()
        self.client = p.connect(p.DIRECT)
        half = [1.0, 1.0, 0.01]
        floor = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=list(FLOOR_RGBA),
                                    physicsClientId=self.client)
        p.createMultiBody(0, -1, floor, [0.0, 0.0, -half[2]], physicsClientId=self.client)
        size = self.config.image_size
        self.proj = p.computeProjectionMatrixFOV(self.config.fov_deg, 1.0, 0.01, 5.0)
        self.shape = (size, size, 3)

    def render(self, definition: ObjectDef, colour: str, scale: float,
               rng: np.random.Generator) -> np.ndarray:
        """`definition` in `colour` at `scale`, turned and viewed as `rng` draws."""
        c = self.client
        yaw = float(rng.uniform(-math.pi, math.pi))
        azimuth = float(rng.uniform(-math.pi, math.pi))
        elevation = math.radians(float(rng.uniform(*self.config.elevation_deg)))
        obj = spawn_object(c, definition, colour, (0.0, 0.0), yaw, 0.0, scale)
        try:
            lo, hi = p.getAABB(obj.body, physicsClientId=c)
            centre = (np.asarray(lo) + np.asarray(hi)) / 2
            radius = float(np.linalg.norm(np.asarray(hi) - np.asarray(lo))) / 2
            # Distance at which the bounding sphere spans `fill` of the vertical field of view.
            half_fov = math.radians(self.config.fov_deg) / 2
            distance = radius / (self.config.fill * math.tan(half_fov))
            eye = centre + distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                                math.cos(elevation) * math.sin(azimuth),
                                                math.sin(elevation)])
            view = p.computeViewMatrix(eye.tolist(), centre.tolist(), [0.0, 0.0, 1.0])
            size = self.config.image_size
            return _render(c, size, size, view, self.proj, STUDIO_LIGHT)
        finally:
            p.removeBody(obj.body, physicsClientId=c)

    def close(self) -> None:
        if self.client >= 0:
            p.disconnect(physicsClientId=self.client)
            self.client = -1
