"""Running the scripted oracles: success-rate checks per task and split, and demo videos.

Library code behind scripts/demo_oracle.py (the interim `make demo`) and the oracle tests.
The oracle is the upper bound every policy is measured against (the goal: >= 95% of 50 fixed
seeds per task and split; docs/experiments/2026-11-28-env-suite.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.spec import IMAGE
from envs.tabletop import TabletopEnv


@dataclass(frozen=True)
class EpisodeResult:
    """One oracle episode."""

    task: str
    split: str
    seed: int
    success: bool
    steps: int
    instruction: str


@dataclass
class OracleSummary:
    """Oracle episodes of one task on one split."""

    task: str
    split: str
    episodes: list[EpisodeResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def success_rate(self) -> float:
        return sum(e.success for e in self.episodes) / max(len(self.episodes), 1)

    @property
    def mean_steps(self) -> float:
        return float(np.mean([e.steps for e in self.episodes])) if self.episodes else 0.0

    @property
    def failed_seeds(self) -> list[int]:
        return [e.seed for e in self.episodes if not e.success]


def run_oracle_episode(env: TabletopEnv, seed: int,
                       frames: list[np.ndarray] | None = None) -> EpisodeResult:
    """Reset with `seed` and execute the oracle's labels until the episode ends.

    Appends every observed front-camera frame to `frames` when given.
    """
    obs, info = env.reset(seed=seed)
    if frames is not None:
        frames.append(obs[IMAGE])
    steps = 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step(env.oracle_action())
        steps += 1
        if frames is not None:
            frames.append(obs[IMAGE])
    return EpisodeResult(task=env.task_name, split=env.split.name, seed=seed,
                         success=bool(info["is_success"]), steps=steps,
                         instruction=str(obs["instruction"]))


def check_oracles(tasks: Sequence[str], splits: Sequence[str], seeds: Iterable[int],
                  skip_render: bool = True, image_size: int = 96,
                  physics: Mapping[str, Any] | None = None) -> list[OracleSummary]:
    """Run the oracle on every (task, split) for `seeds`, under `physics`
    (envs/physics.py; None: the defaults).

    `skip_render` is safe here: images never feed the oracle, and rendering does not touch
    the physics, so success is the same as with rendering (only faster).
    """
    seeds = list(seeds)
    out = []
    for task in tasks:
        for split in splits:
            env = TabletopEnv(task=task, split=split, image_size=image_size,
                              skip_render=skip_render, physics=physics)
            summary = OracleSummary(task=task, split=split)
            t0 = time.perf_counter()
            summary.episodes = [run_oracle_episode(env, s) for s in seeds]
            summary.seconds = time.perf_counter() - t0
            env.close()
            out.append(summary)
    return out


def summary_markdown(summaries: Sequence[OracleSummary]) -> str:
    """A task x split table of oracle success rates (and mean episode lengths)."""
    tasks = list(dict.fromkeys(s.task for s in summaries))
    splits = list(dict.fromkeys(s.split for s in summaries))
    by = {(s.task, s.split): s for s in summaries}
    lines = ["| task | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for t in tasks:
        cells = []
        for sp in splits:
            s = by.get((t, sp))
            cells.append("-" if s is None else
                         f"{s.success_rate:.0%} ({s.mean_steps:.1f} steps)")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_demo_videos(tasks: Sequence[str], out_dir: str | Path, split: str = "seen",
                      seed: int = 0, image_size: int = 96, fps: int = 10,
                      physics: Mapping[str, Any] | None = None) -> list[Path]:
    """One mp4 per task of the oracle solving it (the interim `make demo`)."""
    import imageio.v2 as imageio  # optional at import time: only videos need ffmpeg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in tasks:
        env = TabletopEnv(task=task, split=split, image_size=image_size, physics=physics)
        frames: list[np.ndarray] = []
        result = run_oracle_episode(env, seed, frames)
        env.close()
        path = out / f"{task}_{split}_seed{seed}{'' if result.success else '_FAILED'}.mp4"
        # ffmpeg wants even sizes; macro_block_size=1 keeps small frames unscaled.
        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
        paths.append(path)
    return paths
