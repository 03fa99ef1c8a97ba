"""Gato's grounding loss (GatoConfig.grounding_loss): from the instruction's tokens, pick the
patch that holds the named object, with the simulator's object pixels as labels."""

from __future__ import annotations

import math

import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC, OBJECT_PIXELS
from policy import make_policy

from .test_policies import STATS

# 96 px images at 32 px model resolution with 8 px patches: a 4 x 4 grid, 3 image px per
# model px
GROUNDED = ("grounding_loss=1.0", "patch_size=8")


@pytest.fixture
def build(compose_policy, env_info, text_encoder):
    def build_one(overrides: tuple[str, ...] = GROUNDED):
        torch.manual_seed(0)
        return make_policy(compose_policy("gato_tiny", overrides), DEFAULT_ACTION_SPEC,
                           env_info, STATS)

    return build_one


def _pixels(b: int, t: int, cells: torch.Tensor) -> torch.Tensor:
    """(B, T, 2, 2) object pixels: the named object at the centre of 4x4 cell `cells` (B,),
    in 96 px image coordinates; no second object (NaN)."""
    row, col = cells // 4, cells % 4
    uv = torch.stack([col * 24.0 + 12.0, row * 24.0 + 12.0], dim=-1)  # (B, 2)
    out = torch.full((b, t, 2, 2), math.nan)
    out[:, :, 0] = uv[:, None]
    return out


def test_the_loss_joins_training_with_its_metrics_and_gradients(build, make_batch) -> None:
    policy = build()
    batch = make_batch(b=3, t=policy.config.history)
    with pytest.raises(KeyError, match="collect.object_pixels=true"):
        policy(batch)
    batch[OBJECT_PIXELS] = _pixels(3, policy.config.history, torch.tensor([0, 5, 15]))
    loss, metrics = policy(batch)
    assert {"grounding_loss", "grounding_acc"} <= set(metrics)
    assert 0.5 < metrics["grounding_loss"] < 5.0  # about log(16) from a fresh model
    loss.backward()
    for module in (policy.ground_query, policy.ground_key, policy.image_tokenizer):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    # evaluation mode computes no grounding term; a label outside the frame counts for nothing
    policy.eval()
    assert "grounding_loss" not in policy(batch)[1]
    policy.train()
    batch[OBJECT_PIXELS] = torch.full_like(batch[OBJECT_PIXELS], -5.0)
    assert policy(batch)[1]["grounding_loss"] == 0.0


def marked_patch_accuracies(policy, make_batch, steps: int = 80) -> list[float]:
    """Train `policy` (4 x 4 grid at 96 px) on dark noise with a white square in one random
    cell per sample, labelled as the object; the grounding accuracy of every step."""
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    t = policy.config.history
    accs = []
    for step in range(steps):
        batch = make_batch(b=16, t=t, seed=step)
        batch["image"] = batch["image"] // 4  # dark noise
        cells = torch.randint(0, 16, (16,), generator=gen)
        for i, cell in enumerate(cells.tolist()):
            r, c = divmod(cell, 4)
            batch["image"][i, :, r * 24 + 6:r * 24 + 18, c * 24 + 6:c * 24 + 18] = 255
        batch[OBJECT_PIXELS] = _pixels(16, t, cells)
        loss, metrics = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append(metrics["grounding_acc"])
    return accs


def test_it_learns_to_find_the_marked_patch(build, make_batch) -> None:
    """The patch scores learn to find the marked cell (chance is 1 in 16)."""
    accs = marked_patch_accuracies(build((*GROUNDED, "augment_shift=0", "augment_mirror=0.0")),
                                   make_batch)
    assert sum(accs[-10:]) / 10 > 0.6, accs[-10:]


def test_it_needs_patches() -> None:
    from policy.gato import GatoConfig

    with pytest.raises(ValueError, match="grounding_loss=1.0 needs image_tokenizer='patches'"):
        GatoConfig(grounding_loss=1.0, image_tokenizer="rt1_tokens")
    with pytest.raises(ValueError, match="grounding_loss=-1.0; expected a finite weight"):
        GatoConfig(grounding_loss=-1.0)
