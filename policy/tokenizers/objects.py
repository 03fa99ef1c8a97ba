"""Object boxes for object-centric image tokens (VIMA, Jiang et al. 2023).

An observation's ``object_boxes`` (envs.spec.OBJECT_BOXES) holds up to MAX_OBJECT_BOXES rows
``[u0, v0, u1, v1]`` in fractions of the front image's width and height, one per object the
camera sees, sorted by the box centre's u then v (never by role), NaN rows after the last.
In simulation they come from the renderer's segmentation buffer; on a robot from a detector.

This module keeps them consistent with the image augmentations (the random shift and the
left-right mirror move the boxes with the pixels) and turns them into what an image tokenizer
reads: each box's overlap with the cells of a feature map (to pool the map per object) and a
Fourier embedding of its place and size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def box_present(boxes: torch.Tensor) -> torch.Tensor:
    """(..., K, 4) -> bool (..., K): rows that hold a box (no NaN)."""
    return torch.isfinite(boxes).all(-1)


def check_boxes(boxes: torch.Tensor, slots: int, where: str) -> None:
    """ValueError unless `boxes` is (..., slots, 4) with present rows inside [0, 1] and
    u0 < u1, v0 < v1."""
    if boxes.ndim < 2 or tuple(boxes.shape[-2:]) != (slots, 4):
        raise ValueError(f"{where}: object boxes of shape {tuple(boxes.shape)}; expected "
                         f"(..., {slots}, 4) rows of [u0, v0, u1, v1]")
    present = box_present(boxes)
    partial = torch.isnan(boxes).any(-1) & ~torch.isnan(boxes).all(-1)
    if bool(partial.any()) or not bool((torch.isfinite(boxes) | torch.isnan(boxes)).all()):
        raise ValueError(f"{where}: object boxes hold infinities or rows only partly NaN; "
                         "expected each row either a finite box or all NaN (no object)")
    rows = boxes[present]
    if rows.numel() and (bool((rows < 0).any()) or bool((rows > 1).any())
                         or bool((rows[:, 2] <= rows[:, 0]).any())
                         or bool((rows[:, 3] <= rows[:, 1]).any())):
        bad = rows[((rows < 0) | (rows > 1)).any(-1) | (rows[:, 2] <= rows[:, 0])
                   | (rows[:, 3] <= rows[:, 1])][0]
        bad = [round(float(v), 4) for v in bad]
        raise ValueError(f"{where}: object box {bad}; expected [u0, v0, u1, v1] fractions of the "
                         "image in [0, 1] with u0 < u1 and v0 < v1 (NaN rows for no object)")


def sort_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Rows of (..., K, 4) ordered by centre u, then centre v; NaN rows last."""
    cu = (boxes[..., 0] + boxes[..., 2]) / 2
    cv = (boxes[..., 1] + boxes[..., 3]) / 2
    # one key: u dominates (boxes are fractions in [0, 1]), v breaks ties, absent rows last
    key = torch.where(box_present(boxes), cu * 4.0 + cv, torch.full_like(cu, 1e9))
    order = key.argsort(dim=-1, stable=True)
    return torch.gather(boxes, -2, order[..., None].expand_as(boxes))


def mirror_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes of the image flipped left-right: u -> 1 - u (u0 and u1 swap), rows re-sorted."""
    out = boxes.clone()
    out[..., 0] = 1.0 - boxes[..., 2]
    out[..., 2] = 1.0 - boxes[..., 0]
    return sort_boxes(out)


def shift_boxes(boxes: torch.Tensor, offsets: torch.Tensor, pad: int, size: int) -> torch.Tensor:
    """Boxes (B, T, K, 4) after policy.tokenizers.images.random_shift's crop: a sample's
    pixels move by (pad - dx, pad - dy) of a `size` px frame; (B, 2) offsets are (dy, dx).
    Boxes are clipped to the frame (a box pushed wholly out keeps a sliver at the edge; the
    shift is at most `pad` px)."""
    d = (pad - offsets.to(boxes.device, boxes.dtype)) / size  # (B, 2): dv, du
    delta = torch.stack([d[:, 1], d[:, 0], d[:, 1], d[:, 0]], dim=-1)  # (B, 4)
    out = boxes + delta[:, None, None, :]
    lo = out[..., :2].clamp(0.0, 1.0 - 1.0 / size)
    hi = torch.maximum(out[..., 2:].clamp(0.0, 1.0), lo + 1.0 / size)
    return torch.cat([lo, hi], dim=-1)  # NaN rows stay NaN (clamp keeps NaN)


def cell_weights(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """How much of each cell of a (height x width) map each box covers: (N, K, 4) ->
    (N, K, height, width), each present box's row normalized to sum 1, absent rows 0."""
    present = box_present(boxes)
    b = boxes.nan_to_num(0.0)
    cols = torch.arange(width, device=b.device, dtype=b.dtype)
    rows = torch.arange(height, device=b.device, dtype=b.dtype)
    # overlap of [u0, u1] with cell j's [j / W, (j + 1) / W], in cell widths
    ou = ((torch.minimum(b[..., 2:3], (cols + 1) / width)
           - torch.maximum(b[..., 0:1], cols / width)) * width).clamp(min=0)  # (N, K, W)
    ov = ((torch.minimum(b[..., 3:4], (rows + 1) / height)
           - torch.maximum(b[..., 1:2], rows / height)) * height).clamp(min=0)  # (N, K, H)
    w = ov[..., :, None] * ou[..., None, :]  # (N, K, H, W)
    w = w * present[..., None, None]
    return w / w.sum((-2, -1), keepdim=True).clamp(min=1e-6)


class BoxEmbedding(nn.Module):
    """A box's centre and size (4 numbers) with Fourier features -> (…, d)."""

    def __init__(self, d_model: int, frequencies: int = 6) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(frequencies).float(),
                             persistent=False)
        self.proj = nn.Linear(4 + 8 * frequencies, d_model)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        b = boxes.nan_to_num(0.0)
        geo = torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                           b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], dim=-1)  # (…, 4)
        angles = geo[..., None] * self.freqs.to(geo.dtype)  # (…, 4, F)
        feats = torch.cat([geo, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        return self.proj(feats)
