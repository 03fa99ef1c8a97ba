"""The left-right mirror augmentation and the Gaussian (HL-Gauss) action targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from envs.camera import CameraConfig
from envs.robot import down_quat
from envs.spec import DEFAULT_ACTION_SPEC, STATE_NAMES
from policy.augment import check_mirror_camera, mirror_batch, mirror_instruction
from policy.base import binned_action_loss

NAMES = DEFAULT_ACTION_SPEC.names


def _batch(b: int = 4, t: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randint(0, 256, (b, t, 8, 8, 3), dtype=torch.uint8, generator=g),
        "state": torch.randn(b, t, len(STATE_NAMES), generator=g),
        "action": torch.rand(b, t, len(NAMES), generator=g) * 2 - 1,
        "instruction": ["push the red cube to the left side", "lift the blue cube",
                        "Right of the bowl", "bright light"][:b],
    }


def test_mirror_instruction_swaps_only_whole_words() -> None:
    assert mirror_instruction("push the cube to the left side") == "push the cube to the right side"
    assert mirror_instruction("Right then left") == "Left then right"
    assert mirror_instruction("a bright leftover") == "a bright leftover"


def test_mirror_batch_flips_image_and_signs() -> None:
    batch = _batch()
    out = mirror_batch(batch, NAMES, prob=1.0)
    assert torch.equal(out["image"], batch["image"].flip(3))
    for i, name in enumerate(NAMES):
        sign = -1 if name in ("y", "roll", "yaw") else 1
        assert torch.allclose(out["action"][..., i], sign * batch["action"][..., i])
    for i, name in enumerate(STATE_NAMES):
        sign = -1 if name in ("ee_y", "ee_qx", "ee_qz") else 1
        assert torch.allclose(out["state"][..., i], sign * batch["state"][..., i])
    assert out["instruction"][0] == "push the red cube to the right side"
    assert out["instruction"][3] == "bright light"
    twice = mirror_batch(out, NAMES, prob=1.0)
    for key in ("image", "state", "action"):
        assert torch.equal(twice[key], batch[key])
    assert twice["instruction"] == batch["instruction"]


def test_mirror_batch_prob_zero_and_mixed() -> None:
    batch = _batch(b=64, t=1)
    batch["instruction"] = ["lift the cube"] * 64
    same = mirror_batch(batch, NAMES, prob=0.0)
    assert torch.equal(same["image"], batch["image"])
    out = mirror_batch(batch, NAMES, prob=0.5, generator=torch.Generator().manual_seed(1))
    flipped = (out["action"][:, 0, NAMES.index("y")] != batch["action"][:, 0, NAMES.index("y")])
    assert 10 < int(flipped.sum()) < 54  # about half, and image flips agree with label flips
    img_flipped = (out["image"] != batch["image"]).flatten(1).any(1)
    assert torch.equal(img_flipped, flipped)


@pytest.mark.parametrize("yaw", [0.0, 0.4, -1.3, 2.9])
def test_state_quaternion_mirror_matches_mirrored_yaw(yaw: float) -> None:
    """A downward hand at yaw mirrors to the downward hand at -yaw (up to quaternion sign)."""
    q = np.array(down_quat(yaw))
    mirrored = q * np.array([-1.0, 1.0, -1.0, 1.0])
    expected = np.array(down_quat(-yaw))
    assert min(np.abs(mirrored - expected).max(), np.abs(mirrored + expected).max()) < 1e-6


def test_check_mirror_camera() -> None:
    check_mirror_camera(CameraConfig().to_dict())  # the default front camera is symmetric
    with pytest.raises(ValueError, match="eye y=0.2"):
        check_mirror_camera({"eye": [0.9, 0.2, 0.5], "target": [0.45, 0.0, 0.04]})
    with pytest.raises(ValueError, match="needs the camera"):
        check_mirror_camera(None)


def test_binned_loss_one_hot_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, 16, generator=g)
    targets = torch.randint(0, 16, (3, 2, 4), generator=g)
    valid = torch.tensor([[True, True], [False, True], [True, False]])
    expected = F.cross_entropy(logits[valid].flatten(0, 1), targets[valid].flatten())
    assert torch.allclose(binned_action_loss(logits, targets, valid, 0.0), expected)


def test_binned_loss_gaussian_keeps_bin_order() -> None:
    """With Gaussian targets a near miss costs less than a far one; one-hot cannot tell."""
    k = 64
    targets = torch.full((1, 1, 1), 30)
    valid = torch.ones(1, 1, dtype=torch.bool)

    def peaked(at: int) -> torch.Tensor:
        logits = torch.full((1, 1, 1, k), -10.0)
        logits[..., at] = 10.0
        return logits

    near = binned_action_loss(peaked(31), targets, valid, 3.0)
    far = binned_action_loss(peaked(50), targets, valid, 3.0)
    assert near < far
    hit = binned_action_loss(peaked(30), targets, valid, 3.0)
    assert hit < near
    one_hot_near = binned_action_loss(peaked(31), targets, valid, 0.0)
    one_hot_far = binned_action_loss(peaked(50), targets, valid, 0.0)
    assert torch.isclose(one_hot_near, one_hot_far)
