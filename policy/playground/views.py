"""Pictures the playground shows: enlarged frames, the TokenLearner heat map, and one bar chart
of bin probabilities per action dimension.

Drawn with numpy and Pillow's built-in bitmap font (no figure library per frame): a step at
the control rate leaves a few milliseconds for drawing, and matplotlib takes tens.
"""

from __future__ import annotations

import functools

import numpy as np
from einops import repeat

from policy.playground.introspect import StepInsight

_CHAR_PX = 6  # width of one character of Pillow's default bitmap font
ROW_PX = 40  # height of one action dimension's chart
HEADER_PX = 40  # the legend band above the charts (the page draws its label over the top)
LABEL_PX = 150  # width of the text column beside the charts
CHART_PX = 256  # chart width: one column per bin at RT-1's 256 bins (more bins are pooled)


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling (H, W, 3) -> (H * scale, W * scale, 3): pixels stay honest."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1; got {scale}")
    return repeat(np.asarray(image, dtype=np.uint8), "h w c -> (h a) (w b) c", a=scale, b=scale)


@functools.cache
def _inferno() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through matplotlib's 'inferno' lookup table."""
    return _inferno()[np.clip((values * 255).round(), 0, 255).astype(np.int64)]


def _resize_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A small map (h, w) stretched to (height, width) by bilinear interpolation (Pillow)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def attention_view(frame: np.ndarray, attention: np.ndarray, scale: int = 4,
                   alpha: float = 0.6) -> np.ndarray:
    """The frame with where the TokenLearner attends laid over it.

    attention (S, h, w): one spatial softmax per token. On top, the frame blended with the
    tokens' summed attention; below, one small tile per token. uint8 (H', W', 3).
    """
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 3:
        raise ValueError(f"attention has shape {attention.shape}; expected (tokens, h, w)")
    big = enlarge(frame, scale).astype(np.float32)
    height, width = big.shape[:2]
    total = _resize_map(attention.sum(0), height, width)
    total = (total - total.min()) / max(float(total.max() - total.min()), 1e-9)
    weight = alpha * total[..., None]  # little attention: the frame shows through
    top = (1 - weight) * big + weight * _colormap(total).astype(np.float32)
    tokens = attention.shape[0]
    tile = width // tokens
    strip = np.zeros((tile, width, 3), dtype=np.float32)
    grey = np.asarray(frame, dtype=np.float32).mean(-1)
    base = _resize_map(grey, tile, tile)[..., None]  # the frame in grey under each map
    for s in range(tokens):
        m = _resize_map(attention[s], tile, tile)
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-9)
        strip[:, s * tile:(s + 1) * tile] = 0.35 * base + 0.65 * _colormap(m)
    return np.concatenate([top, strip]).round().clip(0, 255).astype(np.uint8)


def _columns(probs: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(A, K) bin probabilities -> (A, C) chart columns near CHART_PX wide, and how bins map
    to columns: column = bin * up // down (max over bins sharing a column when K > CHART_PX,
    each bin repeated `up` times when K < CHART_PX)."""
    a, k = probs.shape
    if k >= CHART_PX:
        down = -(-k // CHART_PX)
        columns = -(-k // down)
        padded = np.zeros((a, columns * down), dtype=probs.dtype)
        padded[:, :k] = probs
        return padded.reshape(a, columns, down).max(-1), 1, down
    up = CHART_PX // k
    return np.repeat(probs, up, axis=1), up, 1


def distribution_view(insight: StepInsight, action: np.ndarray | None = None,
                      label_bins: np.ndarray | None = None) -> np.ndarray:
    """One row per action dimension: name, chosen bin, value and its probability, then the
    bin distribution (each row scaled to its own peak), the chosen bin in red and, when given,
    a stored label's bin in green, under a legend. uint8 (HEADER_PX + A * ROW_PX, ~LABEL_PX +
    CHART_PX, 3)."""
    from PIL import Image, ImageDraw

    names, probs, bins = insight.names, insight.probs, insight.bins
    a, k = probs.shape
    pooled, up, down = _columns(probs)
    columns = pooled.shape[1]

    def column(b: int) -> int:
        return int(b) * up // down + up // 2
    canvas = np.full((a * ROW_PX, LABEL_PX + columns, 3), 24, dtype=np.uint8)
    bar_h = ROW_PX - 6
    for i in range(a):
        top = i * ROW_PX + 3
        peak = max(float(pooled[i].max()), 1e-9)
        heights = np.round(pooled[i] / peak * bar_h).astype(int)
        chart = canvas[top:top + bar_h, LABEL_PX:]
        rows = np.arange(bar_h)[:, None]
        chart[rows >= bar_h - heights[None, :]] = (110, 150, 200)
        chart[:, columns // 2] = np.maximum(chart[:, columns // 2], 70)  # the zero line
        if label_bins is not None:
            chart[:, column(label_bins[i])] = (60, 210, 90)
        chart[:, column(bins[i])] = (235, 70, 60)
    legend = "red: chosen bin" + ("  green: stored label" if label_bins is not None else "")
    header = np.full((HEADER_PX, canvas.shape[1], 3), 24, dtype=np.uint8)
    image = Image.fromarray(np.concatenate([header, canvas]))
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), f"{legend}  (each row scaled to its peak)", fill=(200, 200, 200))
    conf = insight.confidence()
    for i, name in enumerate(names):
        top = HEADER_PX + i * ROW_PX
        value = "" if action is None else f" {float(action[i]):+.3f}"
        draw.text((4, top + 4), f"{name}{value}", fill=(240, 240, 240))
        draw.text((4, top + 18), f"bin {int(bins[i])}/{k}  p={conf[i]:.2f}",
                  fill=(170, 170, 170))
    return np.asarray(image)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two frames next to each other, the left one enlarged (nearest) to the right's height
    where it divides evenly, both padded to one height with black."""
    left, right = np.asarray(left, dtype=np.uint8), np.asarray(right, dtype=np.uint8)
    scale = max(1, right.shape[0] // left.shape[0])
    left = enlarge(left, scale)
    height = max(left.shape[0], right.shape[0])

    def pad(x: np.ndarray) -> np.ndarray:
        out = np.zeros((height, x.shape[1], 3), dtype=np.uint8)
        out[: x.shape[0]] = x
        return out

    return np.concatenate([pad(left), pad(right)], axis=1)


def with_prompt(picture: np.ndarray, crops: np.ndarray, count: int, scale: int = 2) -> np.ndarray:
    """`picture` with the first `count` prompt crops (uint8 (K, S, S, 3)) drawn in its top-left
    corner, `scale` times enlarged, each in a white frame: what "{image}" stands for."""
    if count <= 0:
        return picture
    out = np.asarray(picture).copy()
    x = 2
    for crop in np.asarray(crops)[:count]:
        tile = enlarge(crop, scale)
        h, w = tile.shape[:2]
        if x + w + 2 > out.shape[1] or h + 4 > out.shape[0]:
            break  # a picture too small to hold it: leave it as it is
        out[0:h + 4, x - 2:x + w + 2] = 255
        out[2:h + 2, x:x + w] = tile
        x += w + 6
    return out
