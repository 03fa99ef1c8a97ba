"""Env throughput: robotok steps/s with rendering, the bare renderer, and panda-gym.

Library code behind scripts/benchmark_env.py (the goal: >= 2x panda-gym's
PandaPickAndPlace-v3 with rendering at the same resolution, and >= 80% of the bare
renderer's frame rate for the same scene). All figures come from one process and one run,
so they are comparable with each other even on a shared machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from envs.tabletop import TabletopEnv


@dataclass(frozen=True)
class BenchResult:
    """`count` steps (or frames) in `seconds` of wall time and `cpu_seconds` of this
    process's CPU time (less sensitive to other processes on a shared machine)."""

    name: str
    count: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def per_cpu_second(self) -> float:
        return self.count / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


class _Timer:
    """Wall and process CPU time of a block."""

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _random_actions(steps: int, seed: int) -> np.ndarray:
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 8)).astype(np.float32)
    actions[:, 0] = -1.0  # never terminate: measure motion steps
    return actions


def bench_env(task: str = "pick", image_size: int = 96, steps: int = 300, seed: int = 0,
              skip_render: bool = False) -> BenchResult:
    """env.step() with random actions (resets on episode end are included)."""
    env = TabletopEnv(task=task, image_size=image_size, skip_render=skip_render)
    env.reset(seed=seed)
    actions = _random_actions(steps, seed)
    with _Timer() as t:
        for k, a in enumerate(actions):
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset(seed=seed + k + 1)
    env.close()
    name = f"robotok {task} step" + (" (no render)" if skip_render else f" + render {image_size}px")
    return BenchResult(name, steps, t.wall, t.cpu)


def bench_bare_render(task: str = "pick", image_size: int = 96, frames: int = 300,
                      seed: int = 0) -> BenchResult:
    """getCameraImage alone (same camera, light and scene as the env), no physics."""
    env = TabletopEnv(task=task, image_size=image_size)
    env.reset(seed=seed)
    with _Timer() as t:
        for _ in range(frames):
            env.camera.render(env.client, env.lighting)
    env.close()
    return BenchResult(f"bare TinyRenderer {image_size}px (same scene)", frames, t.wall, t.cpu)


def bench_panda_gym(image_size: int = 96, steps: int = 300, seed: int = 0
                    ) -> BenchResult | None:
    """panda-gym PandaPickAndPlace-v3, step + render(); None when panda-gym is missing."""
    try:
        import gymnasium as gym
        import panda_gym  # noqa: F401  (registers the Panda envs; optional dependency)
    except ImportError:
        return None
    env = gym.make("PandaPickAndPlace-v3", render_mode="rgb_array", renderer="Tiny",
                   render_width=image_size, render_height=image_size)
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 4)).astype(np.float32)
    with _Timer() as t:
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            env.render()
            if terminated or truncated:
                env.reset()
    env.close()
    return BenchResult(f"panda-gym PandaPickAndPlace-v3 step + render {image_size}px", steps,
                       t.wall, t.cpu)


def benchmark_markdown(results: list[BenchResult]) -> str:
    lines = ["| what | count | wall s | per wall s | CPU s | per CPU s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.count} | {r.seconds:.2f} | {r.per_second:.1f} "
              f"| {r.cpu_seconds:.2f} | {r.per_cpu_second:.1f} |" for r in results]
    return "\n".join(lines)
