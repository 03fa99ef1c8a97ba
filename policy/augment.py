"""Label-preserving training augmentation shared by the policies: the left-right mirror.

The front camera sits on the world's x axis looking back at the robot (envs/camera.py), so
the image's horizontal axis is world y and the scene mirrored about the x-z plane is another
valid scene: flip the image left-right, negate y (and the rotations that mirror with it) in
the state and the action, and swap "left" and "right" in the instruction. Every mirrored
sample is a new table layout with the same instruction, which is what grounding an
instruction in an image needs most (a probe's held-out error to the named object fell 30-40%
with it: docs/experiments/2026-11-28-what-made-it-learn.md). Only valid for a camera whose
eye and target lie in the y = 0 plane: :func:`check_mirror_camera` refuses any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from envs.spec import (
    ACTION,
    BACKGROUND_MASK,
    IMAGE,
    INSTRUCTION,
    OBJECT_BOXES,
    OBJECT_PIXELS,
    STATE,
    STATE_NAMES,
    WRIST_IMAGE,
)
from policy.tokenizers.objects import mirror_boxes

# Reflection y -> -y. A rotation R becomes M R M (M = diag(1, -1, 1)): rotations about x and
# z reverse, rotations about y do not; for a quaternion (x, y, z, w) that is (-x, y, -z, w).
MIRROR_ACTION_SIGNS: dict[str, float] = {"y": -1.0, "roll": -1.0, "yaw": -1.0}
MIRROR_STATE_SIGNS: dict[str, float] = {"ee_y": -1.0, "ee_qx": -1.0, "ee_qz": -1.0}
_SWAP = {"left": "right", "right": "left"}
_SWAP_RE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_instruction(text: str) -> str:
    """Swap the words "left" and "right" (keeping capitalisation of the first letter)."""
    def swap(m: re.Match[str]) -> str:
        word = _SWAP[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word
    return _SWAP_RE.sub(swap, text)


def _signs(names: Sequence[str], signs: Mapping[str, float]) -> torch.Tensor:
    return torch.tensor([signs.get(n, 1.0) for n in names])


def _check_in_xz_plane(camera: Mapping[str, Any] | None, keys: tuple[str, str],
                       what: str) -> None:
    """Raise unless `camera` gives both `keys` and each lies in its frame's y = 0 plane."""
    if not isinstance(camera, Mapping) or any(k not in camera for k in keys):
        raise ValueError(f"augment_mirror needs the {what}'s {keys[0]} and {keys[1]} in "
                         f"env_info; got {camera!r}")
    a, b = (float(camera[k][1]) for k in keys)
    if abs(a) > 1e-6 or abs(b) > 1e-6:
        raise ValueError(f"augment_mirror assumes a {what} in the y = 0 plane; this one has "
                         f"{keys[0]} y={a}, {keys[1]} y={b}. Set augment_mirror=0.")


def check_mirror_camera(camera: Mapping[str, Any] | None) -> None:
    """Raise unless the camera looks along the x-z plane (eye and target at y = 0)."""
    _check_in_xz_plane(camera, ("eye", "target"), "camera")


def check_mirror_wrist(wrist_camera: Mapping[str, Any] | None) -> None:
    """Raise unless the wrist camera sits in its hand's x-z plane (offset and look-at y = 0,
    "up" along the hand's x axis, as envs/camera.py mounts it).

    Then the mirrored hand pose (quaternion (-x, y, -z, w)) carries the mirror image of the
    camera: eye, target and up all reflect, and a reflected camera over the reflected scene
    sees the original image flipped left-right, as the front camera does.
    tests/policy/test_wrist.py renders both sides and compares.
    """
    _check_in_xz_plane(wrist_camera, ("offset", "look_at"), "wrist camera")


def mirror_batch(batch: Mapping[str, Any], action_names: Sequence[str], prob: float,
                 generator: torch.Generator | None = None, wrist: bool = False
                 ) -> dict[str, Any]:
    """A copy of a contract batch with each sample mirrored with probability `prob`.

    All frames of a sample are mirrored together. Images (B, T, H, W, 3) flip along W. The
    wrist image flips along W too when `wrist` (a camera that :func:`check_mirror_wrist`
    accepts); otherwise it is dropped, for policies that do not read it. Object pixels
    (B, T, 2, 2) of (u, v) in the front image follow its flip: u -> W - u (continuous pixel
    coordinates, pixel c covering [c, c + 1), so pixel c goes to W - 1 - c), v and NaN
    as they were.
    """
    out = dict(batch)
    if prob <= 0:
        return out
    image = batch[IMAGE]
    b = image.shape[0]
    flip = torch.rand(b, generator=generator) < prob
    if not bool(flip.any()):
        return out
    f_img = flip.view(b, 1, 1, 1, 1).to(image.device)
    out[IMAGE] = torch.where(f_img, image.flip(3), image)
    if BACKGROUND_MASK in batch:  # (B, T, H, W): flips with the front image
        mask = batch[BACKGROUND_MASK]
        out[BACKGROUND_MASK] = torch.where(flip.view(b, 1, 1, 1).to(mask.device), mask.flip(3),
                                           mask)
    if OBJECT_PIXELS in batch:  # (B, T, 2, 2) of (u, v): u -> W - u with the front image
        px = batch[OBJECT_PIXELS]
        flipped = px.clone()
        flipped[..., 0] = image.shape[3] - px[..., 0]
        out[OBJECT_PIXELS] = torch.where(flip.view(b, 1, 1, 1).to(px.device), flipped, px)
    if OBJECT_BOXES in batch:  # (B, T, K, 4) fractions: u -> 1 - u, rows sorted again
        boxes = batch[OBJECT_BOXES]
        out[OBJECT_BOXES] = torch.where(flip.view(b, 1, 1, 1).to(boxes.device),
                                        mirror_boxes(boxes), boxes)
    if wrist and WRIST_IMAGE in batch:
        w_img = batch[WRIST_IMAGE]
        out[WRIST_IMAGE] = torch.where(f_img.to(w_img.device), w_img.flip(3), w_img)
    else:
        out.pop(WRIST_IMAGE, None)
    state = batch[STATE]
    s_signs = _signs(STATE_NAMES, MIRROR_STATE_SIGNS).to(state.device, state.dtype)
    out[STATE] = torch.where(flip.view(b, 1, 1).to(state.device), state * s_signs, state)
    action = batch[ACTION]
    a_signs = _signs(action_names, MIRROR_ACTION_SIGNS).to(action.device, action.dtype)
    out[ACTION] = torch.where(flip.view(b, 1, 1).to(action.device), action * a_signs, action)
    out[INSTRUCTION] = [mirror_instruction(s) if f else s
                        for s, f in zip(batch[INSTRUCTION], flip.tolist(), strict=True)]
    return out
