"""Rollout videos (mp4) with the instruction written on every frame.

Policy frames are small (64-96 px), so they are upscaled with nearest-neighbour (pixels stay
honest: what you see is what the policy saw) and a caption band is drawn above them with
Pillow's built-in bitmap font (Pillow ships with matplotlib; no font files needed).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from einops import repeat

# ffmpeg's H.264 encoder wants frame sides divisible by 16 (macro blocks).
_BLOCK = 16
_LINE_PX = 12  # height of one line of Pillow's default bitmap font, with spacing
_CHAR_PX = 6  # width of one character of that font


def caption_frames(
    frames: Sequence[np.ndarray], caption: str, footer: str = "", scale: int = 4
) -> np.ndarray:
    """Frames (T of H x W x 3 uint8) upscaled by `scale`, with `caption` above and `footer`
    (e.g. "success" or "failure") below; returns uint8 (T, H', W', 3), sides divisible
    by 16."""
    from PIL import Image, ImageDraw

    if not frames:
        raise ValueError("no frames to caption; expected at least one H x W x 3 image")
    video = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames have shape {video.shape[1:]}; expected (H, W, 3)")
    if scale < 1:
        raise ValueError(f"scale must be >= 1; got {scale}")
    video = repeat(video, "t h w c -> t (h sh) (w sw) c", sh=scale, sw=scale)
    t, h, w, _ = video.shape
    lines = textwrap.wrap(caption, width=max(8, (w - 8) // _CHAR_PX)) or [""]
    top = len(lines) * _LINE_PX + 6
    bottom = _LINE_PX + 6 if footer else 0
    height = top + h + bottom
    pad_h = -height % _BLOCK
    pad_w = -w % _BLOCK
    bottom += pad_h
    band = Image.new("RGB", (w + pad_w, top + h + bottom), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * _LINE_PX), line, fill=(255, 255, 255))
    if footer:
        colour = (80, 220, 80) if footer.startswith("success") else (240, 90, 90)
        draw.text((4, top + h + 3), footer, fill=colour)
    canvas = np.array(band, dtype=np.uint8)
    out = np.empty((t, *canvas.shape), dtype=np.uint8)
    out[:] = canvas
    out[:, top : top + h, :w] = video
    return out


def write_video(
    frames: Sequence[np.ndarray],
    path: str | Path,
    caption: str,
    footer: str = "",
    fps: int = 10,
    scale: int = 4,
) -> Path:
    """Write an H.264 mp4 of `frames` with `caption` (the instruction) on every frame."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = caption_frames(frames, caption, footer, scale)
    # yuv420p: the pixel format every browser and player decodes.
    with imageio.get_writer(
        path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=_BLOCK,
        ffmpeg_log_level="error",
    ) as writer:
        for frame in video:
            writer.append_data(frame)
    return path
