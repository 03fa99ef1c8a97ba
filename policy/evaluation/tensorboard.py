"""Logging an evaluation report to TensorBoard (in-training evaluation).

Scalars: the flat success rates of `EvalReport.scalars()`. Text: report.md's table.
Videos: TensorBoard shows animated GIFs in its image tab; `SummaryWriter.add_video` needs
moviepy to encode them, which this project does not install, so the GIF is encoded here with
imageio (Pillow) and written as the same image summary `add_video` would write.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from policy.evaluation.report import markdown_report
from policy.evaluation.results import EvalReport


def gif_bytes(frames: np.ndarray, fps: int = 10) -> bytes:
    """uint8 (T, H, W, 3) frames as an endlessly looping GIF."""
    import imageio.v2 as imageio

    buf = io.BytesIO()
    imageio.mimwrite(buf, list(frames), format="GIF", duration=1000 / fps, loop=0)
    return buf.getvalue()


def add_gif(writer: Any, tag: str, frames: np.ndarray, step: int, fps: int = 10) -> None:
    """Write `frames` (T, H, W, 3 uint8) to a SummaryWriter as an animated GIF."""
    from torch.utils.tensorboard.summary import Summary

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames have shape {frames.shape}; expected (T, H, W, 3)")
    _, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c,
                          encoded_image_string=gif_bytes(frames, fps))
    writer._get_file_writer().add_summary(
        Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def log_report(report: EvalReport, writer: Any, step: int, prefix: str = "eval",
               out_dir: str | Path | None = None, max_videos: int = 2, fps: int = 10) -> None:
    """Log success rates, the report table and up to `max_videos` rollout videos (read back
    from `out_dir`, where `evaluate` wrote them) at global step `step`."""
    for tag, value in report.scalars(prefix).items():
        writer.add_scalar(tag, value, step)
    writer.add_text(f"{prefix}/report", markdown_report(report), step)
    if out_dir is None or max_videos <= 0:
        return
    import imageio.v2 as imageio

    for video in report.videos[:max_videos]:
        path = Path(out_dir) / video.path
        if not path.is_file():
            continue
        frames = np.stack(imageio.mimread(path, memtest=False))
        outcome = "success" if video.success else "failure"
        add_gif(writer, f"{prefix}/video/{video.split}/{video.task}_{outcome}", frames, step, fps)
