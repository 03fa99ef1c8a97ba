"""Training augmentation of the background pixels: new table looks under the same scene.

A store collected with `collect.background_mask=true` holds, per front-camera frame, a 0/1
mask of the pixels that show neither the robot nor an object (the table and the empty space
behind it; envs/camera.py `background_mask`). `replace_background` paints those pixels of
a share of the training samples with a generated table texture and keeps every object and
robot pixel as rendered, so the policy sees the same scene and the same labels on many
tables it was never collected on. RT1Config.augment_background sets the share.

The textures come from the generator that builds the env's procedural tables
(envs/scenes.py `procedural_table`): the same pattern families (no checkerboards, no
labelled grids: those are the held-out backgrounds split's), and every texel at least
`margin` RGB from each colour of the backgrounds split and from each object colour
(tests/policy/test_background.py checks the whole bank). The palette is muted (HSV
saturation <= 0.45, value 0.25-0.85, as conf/env/scene_sets/train_muted.yaml): saturated
generated tables hurt at the demo's budget (docs/experiments/2026-11-30-competence.md,
section 3).

Shading is kept: a replaced pixel is the texel times the pixel's luminance over the median
luminance of that frame's background, so the way this episode's light falls across the
table (its direction, ambient level) carries over to the new surface. All frames of a
sample share one texture (and one orientation of it), like a table that does not change
within an episode. Runs on uint8 frames before the mirror and the random shift.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.spec import BACKGROUND_MASK, IMAGE

# The bank: 256 generated tables, fixed by (seed, index) like a scene set's procedural bank.
BANK_SIZE = 256
BANK_SEED = 0
MUTED_SATURATION = (0.0, 0.45)
MUTED_VALUE = (0.25, 0.85)
# Per-pixel shading factor bounds (luminance / median background luminance): the table's
# own lighting varies by about +-30% across a frame; the empty space behind it is brighter.
SHADE_RANGE = (0.25, 2.0)


@dataclass(frozen=True)
class BackgroundBank:
    """The texture settings: which generated tables the augmentation draws from."""

    size: int = BANK_SIZE
    seed: int = BANK_SEED
    saturation: tuple[float, float] = MUTED_SATURATION
    value: tuple[float, float] = MUTED_VALUE
    keep_away_from: str = "backgrounds"
    margin: float = 0.15

    @property
    def procedural(self) -> Any:
        """The envs.scenes.Procedural spec of the bank (imported here: envs.scenes loads the
        simulator's object catalogue, which importing a policy config must not)."""
        from envs.scenes import FAMILIES, Procedural

        return Procedural(share=1.0, families=FAMILIES, keep_away_from=self.keep_away_from,
                          margin=self.margin, bank=self.size, seed=self.seed,
                          saturation=self.saturation, value=self.value)


@functools.cache
def texture_bank(bank: BackgroundBank = BackgroundBank()) -> torch.Tensor:
    """uint8 (N, 64, 64, 3): table i of the bank (built once per process, about 1 s)."""
    spec = bank.procedural
    return torch.from_numpy(np.stack([spec.table(i)[1] for i in range(bank.size)]))


@functools.cache
def _oriented(bank: BackgroundBank, h: int, w: int) -> torch.Tensor:
    """uint8 (8 N, h, w, 3): every table of the bank in its 8 orientations (4 quarter turns,
    each with and without a left-right flip), resized to the frame by nearest neighbour (so
    every pixel is a texel of the bank). Built once per frame size (N=256, 64 px: 25 MB)."""
    return _orient_and_fit(texture_bank(bank), h, w)


def _orient_and_fit(textures: torch.Tensor, h: int, w: int) -> torch.Tensor:
    turns = [torch.rot90(textures, r, dims=(1, 2)) for r in range(4)]
    views = torch.cat([v for t in turns for v in (t, t.flip(2))])  # (8 N, n, n, 3)
    rows = torch.arange(h) * views.shape[1] // h
    cols = torch.arange(w) * views.shape[2] // w
    return views[:, rows][:, :, cols].contiguous()


_LUMA = torch.tensor([0.299, 0.587, 0.114])


def replace_background(image: torch.Tensor, mask: torch.Tensor, prob: float,
                       bank: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of `image` uint8 (B, T, H, W, 3) whose background pixels (`mask` (B, T, H, W),
    nonzero = background) are replaced in a share `prob` of the samples.

    Each chosen sample draws one texture of `bank` (uint8 (N, n, n, 3); default: the
    `texture_bank()` of `BackgroundBank()`) in one of its eight orientations (quarter turns,
    with or without a flip), shared by all its frames; new pixel = texel * luminance / median
    background luminance of that frame, clipped to [0, 255]. Robot and object pixels are
    returned unchanged.
    """
    if image.dtype != torch.uint8 or image.ndim != 5 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, T, H, W, 3); got {image.dtype} "
                         f"{tuple(image.shape)}")
    if tuple(mask.shape) != tuple(image.shape[:4]):
        raise ValueError(f"background mask has shape {tuple(mask.shape)}; expected "
                         f"{tuple(image.shape[:4])} (one mask per frame)")
    if prob <= 0:
        return image
    b, t, h, w, _ = image.shape
    chosen = torch.nonzero(torch.rand(b, generator=generator) < prob).flatten()
    if chosen.numel() == 0:
        return image
    views = _oriented(BackgroundBank(), h, w) if bank is None else _orient_and_fit(bank, h, w)
    dev = image.device
    pick = torch.randint(0, views.shape[0], (chosen.numel(),), generator=generator)
    texture = views[pick].to(dev).float()  # (K, H, W, 3)
    chosen = chosen.to(dev)
    frames = image[chosen]  # (K, T, H, W, 3)
    bg = (mask[chosen].to(dev) != 0)[..., None]  # (K, T, H, W, 1)
    lum = frames.float() @ _LUMA.to(dev)  # (K, T, H, W)
    # Median over each frame's background pixels (NaN elsewhere); a frame without background
    # pixels (never in practice) takes factor lum / 1.
    ref = torch.nanmedian(torch.where(bg[..., 0], lum, torch.nan).flatten(2), dim=2).values
    ref = torch.nan_to_num(ref, nan=1.0).clamp_(min=1.0)  # (K, T)
    shade = (lum / ref[:, :, None, None]).clamp_(*SHADE_RANGE)[..., None]
    new = (texture[:, None] * shade).add_(0.5).clamp_(0, 255).to(torch.uint8)
    out = image.clone()
    out[chosen] = torch.where(bg, new, frames)
    return out


def check_background_masks(env_info: Mapping[str, Any], share: float) -> None:
    """Raise unless the store behind `env_info` (its info) holds background masks."""
    keys = env_info.get("mask_keys") or []
    if BACKGROUND_MASK not in keys:
        raise ValueError(
            f"augment_background={share} needs per-frame background masks, and this store "
            f"has none (info mask_keys={list(keys)}); collect it with "
            "collect.background_mask=true, or set augment_background=0")


def background_batch(batch: Mapping[str, Any], share: float,
                     generator: torch.Generator | None = None) -> dict[str, Any]:
    """A copy of a contract batch with `replace_background` applied to its front images."""
    if BACKGROUND_MASK not in batch:
        raise KeyError(f"augment_background={share} needs {BACKGROUND_MASK!r} in the batch "
                       f"(a store collected with collect.background_mask=true); the batch has "
                       f"{sorted(batch)}")
    out = dict(batch)
    out[IMAGE] = replace_background(batch[IMAGE], batch[BACKGROUND_MASK], share,
                                    generator=generator)
    return out
