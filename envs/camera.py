"""Cameras: the fixed front camera, the optional wrist camera, and their lighting.

Both render with PyBullet's TinyRenderer without shadows: it is CPU-only, identical on
every machine (so the same seed gives the same pixels), and a frame costs about 2 ms at
96 px with the low-poly Panda (envs/robot.py). `CameraConfig.to_dict()` goes into the env's
`describe()`, because checkpoints and evaluation refuse a camera that does not match.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pybullet as p

from envs.spec import MAX_OBJECT_BOXES

RENDERER = "tiny_renderer"


class _CameraDescription:
    """What both camera configs report: the image shape and the renderer, for describe()."""

    width: int
    height: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["renderer"] = RENDERER
        return d


@dataclass(frozen=True)
class CameraConfig(_CameraDescription):
    """A pinhole camera looking at `target` from `eye` (m, world frame)."""

    width: int = 96
    height: int = 96
    eye: tuple[float, float, float] = (0.9, 0.0, 0.5)  # in front of the robot, facing it
    target: tuple[float, float, float] = (0.45, 0.0, 0.04)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 50.0
    near: float = 0.05
    far: float = 3.0
    jitter_m: float = 0.0  # uniform jitter of eye and target per episode (set by the split)

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"camera image size {(self.height, self.width)} must be >= 8 px")


@dataclass(frozen=True)
class WristCameraConfig(_CameraDescription):
    """A camera fixed to the hand, looking along the fingers (hand frame offsets, m)."""

    width: int = 96
    height: int = 96
    offset: tuple[float, float, float] = (0.06, 0.0, 0.02)  # behind the fingers
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.2)  # ahead of the fingertips
    fov_deg: float = 70.0
    near: float = 0.01
    far: float = 2.0


@dataclass(frozen=True)
class Lighting:
    """TinyRenderer's single directional light, drawn per episode by the split."""

    direction: tuple[float, float, float] = (1.0, 0.0, 1.0)
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.6
    diffuse: float = 0.5
    specular: float = 0.1


def _render_buffers(client: int, width: int, height: int, view: list, proj: list,
                    light: Lighting, segmentation: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 (H, W, 3) and, with `segmentation`, the body id of every pixel int32 (H, W)
    (-1 where no body is drawn; pybullet's default flags give the body id alone)."""
    _, _, rgba, _, seg = p.getCameraImage(
        width, height, viewMatrix=view, projectionMatrix=proj, renderer=p.ER_TINY_RENDERER,
        shadow=0, lightDirection=list(light.direction), lightColor=list(light.colour),
        lightAmbientCoeff=light.ambient, lightDiffuseCoeff=light.diffuse,
        lightSpecularCoeff=light.specular,
        flags=0 if segmentation else p.ER_NO_SEGMENTATION_MASK, physicsClientId=client)
    # pybullet returns a flat or (H, W, 4) buffer depending on its numpy support.
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3].copy()
    if not segmentation:
        return rgb, None
    return rgb, np.asarray(seg, dtype=np.int32).reshape(height, width)


def _render(client: int, width: int, height: int, view: list, proj: list,
            light: Lighting) -> np.ndarray:
    return _render_buffers(client, width, height, view, proj, light, False)[0]


def _body_ids(seg: np.ndarray) -> np.ndarray:
    """int64 (H, W): the body id of every pixel of a segmentation buffer, -1 where none. Ids
    may carry a link index in bits 24 and up (ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX);
    only the body id counts."""
    seg = np.asarray(seg, dtype=np.int64)
    return np.where(seg >= 0, seg & ((1 << 24) - 1), -1)


def background_mask(seg: np.ndarray, foreground: Iterable[int]) -> np.ndarray:
    """uint8 (H, W): 1 where a segmentation buffer shows no `foreground` body (the table, the
    empty space behind it), 0 on the robot and the objects. Ids may carry a link index in
    bits 24 and up (ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX); only the body id counts."""
    body = _body_ids(seg)
    return (~np.isin(body, np.fromiter(foreground, dtype=np.int64))).astype(np.uint8)


def object_boxes(seg: np.ndarray, objects: Iterable[int],
                 max_boxes: int = MAX_OBJECT_BOXES) -> np.ndarray:
    """float32 (max_boxes, 4): the box of each of the `objects` bodies a segmentation buffer
    (H, W) shows, [u0, v0, u1, v1] as fractions of its width and height: u0 = min column / W,
    v0 = min row / H, u1 = (max column + 1) / W, v1 = (max row + 1) / H of the body's visible
    pixels (envs.spec.OBJECT_BOXES). A body without a visible pixel has no row. Rows are
    sorted by box centre u, then centre v (then u0, v0, u1, v1), never by body id or role;
    rows past the last visible body are NaN. With more than `max_boxes` visible bodies the
    `max_boxes` with the most visible pixels are kept (ties: the lower body id), then
    sorted. Ids may carry a link index in bits 24 and up, as in `background_mask`."""
    body = _body_ids(seg)
    if body.ndim != 2:
        raise ValueError(f"segmentation buffer of shape {body.shape}; expected (H, W)")
    h, w = body.shape
    out = np.full((max_boxes, 4), np.nan, dtype=np.float32)
    found: list[tuple[int, float, float, float, float]] = []
    for b in sorted({int(b) for b in objects}):
        rows, cols = np.nonzero(body == b)
        if rows.size:
            found.append((int(rows.size), cols.min() / w, rows.min() / h,
                          (cols.max() + 1) / w, (rows.max() + 1) / h))
    if not found:
        return out
    if len(found) > max_boxes:  # the largest by visible pixels; a stable sort keeps id order
        order = np.argsort([-n for n, *_ in found], kind="stable")[:max_boxes]
        found = [found[i] for i in order]
    boxes = np.array([box for _, *box in found], dtype=np.float64)  # (n, 4)
    cu, cv = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], cv, cu))
    out[: len(boxes)] = boxes[order]
    return out


class FrontCamera:
    """The fixed camera; `eye`/`target` include this episode's jitter."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.proj = p.computeProjectionMatrixFOV(config.fov_deg, config.width / config.height,
                                                 config.near, config.far)
        self.set_jitter(np.zeros(6))

    def set_jitter(self, offsets: np.ndarray) -> None:
        """Shift eye and target by `offsets` (6,) metres: eye xyz then target xyz."""
        eye = np.asarray(self.config.eye) + offsets[:3]
        target = np.asarray(self.config.target) + offsets[3:]
        self.view = p.computeViewMatrix(eye.tolist(), target.tolist(), list(self.config.up))
        # Column-major 4x4 lists, as pybullet takes them: transposed into row-major arrays.
        self._view_proj = (np.asarray(self.proj, dtype=np.float64).reshape(4, 4).T
                           @ np.asarray(self.view, dtype=np.float64).reshape(4, 4).T)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Where this camera (this episode's jitter included) draws world points (..., 3):
        float64 (..., 2) of (u, v) = (column, row) in pixels of its image, continuous, pixel
        (r, c) covering [c, c + 1) x [r, r + 1). The same view and projection matrices
        `render` draws with; a point outside the frame keeps its projected value (< 0 or
        beyond the width or height), a NaN point stays NaN."""
        pts = np.asarray(points, dtype=np.float64)
        homo = np.concatenate([pts, np.ones((*pts.shape[:-1], 1))], axis=-1)
        clip = homo @ self._view_proj.T
        ndc = clip[..., :2] / clip[..., 3:4]
        u = (ndc[..., 0] + 1.0) / 2.0 * self.config.width
        v = (1.0 - ndc[..., 1]) / 2.0 * self.config.height  # image rows run down
        return np.stack([u, v], axis=-1)

    def render(self, client: int, light: Lighting) -> np.ndarray:
        return _render(client, self.config.width, self.config.height, self.view, self.proj,
                       light)

    def render_segmented(self, client: int, light: Lighting) -> tuple[np.ndarray, np.ndarray]:
        """The same frame as `render` (the same pixels) and the body id of each of its pixels,
        int32 (H, W), -1 where no body is drawn: one render with pybullet's segmentation
        buffer on, from which `background_mask` and `object_boxes` are read."""
        rgb, seg = _render_buffers(client, self.config.width, self.config.height, self.view,
                                   self.proj, light, True)
        assert seg is not None
        return rgb, seg

    def render_with_mask(self, client: int, light: Lighting, foreground: Iterable[int]
                         ) -> tuple[np.ndarray, np.ndarray]:
        """The same frame as `render` and its background mask (see `background_mask`), from
        one render with pybullet's segmentation buffer on."""
        rgb, seg = self.render_segmented(client, light)
        return rgb, background_mask(seg, foreground)


class WristCamera:
    """Follows the hand link every frame."""

    def __init__(self, config: WristCameraConfig) -> None:
        self.config = config
        self.proj = p.computeProjectionMatrixFOV(config.fov_deg, config.width / config.height,
                                                 config.near, config.far)

    def render(self, client: int, hand_pos: np.ndarray, hand_quat: np.ndarray,
               light: Lighting) -> np.ndarray:
        eye, _ = p.multiplyTransforms(hand_pos.tolist(), hand_quat.tolist(),
                                      list(self.config.offset), [0, 0, 0, 1])
        target, _ = p.multiplyTransforms(hand_pos.tolist(), hand_quat.tolist(),
                                         list(self.config.look_at), [0, 0, 0, 1])
        # The hand's x axis serves as "up" so the image does not spin with the view axis.
        rot = np.asarray(p.getMatrixFromQuaternion(hand_quat.tolist())).reshape(3, 3)
        view = p.computeViewMatrix(list(eye), list(target), rot[:, 0].tolist())
        return _render(client, self.config.width, self.config.height, view, self.proj, light)
