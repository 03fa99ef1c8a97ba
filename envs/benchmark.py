"""Env throughput: robotok steps/s with rendering, the bare renderer, and panda-gym.

Library code behind scripts/benchmark_env.py (the goal: >= 2x panda-gym's
PandaPickAndPlace-v3 with rendering at the same resolution, and >= 80% of the bare
renderer's frame rate for the same scene). All figures come from one process and one run,
so they are comparable with each other even on a shared machine. `profile_step` splits a
step's time between the PyBullet calls behind it; `bench_episodes` counts oracle episodes
with rendering per second, the env's share of an evaluation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet

from envs.oracle_check import run_oracle_episode
from envs.tabletop import TabletopEnv

# The PyBullet calls a step is made of, by part (every other call and all Python: "other").
PROFILE_PARTS: dict[str, tuple[str, ...]] = {
    "render (getCameraImage)": ("getCameraImage",),
    "physics (stepSimulation)": ("stepSimulation",),
    "IK (calculateInverseKinematics)": ("calculateInverseKinematics",),
    "motor commands (setJointMotorControlArray)": ("setJointMotorControlArray",),
    "state queries (link/joint/contact/base)": ("getLinkState", "getJointStates",
                                                "getContactPoints",
                                                "getBasePositionAndOrientation",
                                                "getBaseVelocity"),
}


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
              skip_render: bool = False, physics: Mapping[str, Any] | None = None,
              label: str = "") -> BenchResult:
    """env.step() with random actions (resets on episode end are included); `label` is
    appended to the row's name (e.g. the physics settings)."""
    env = TabletopEnv(task=task, image_size=image_size, skip_render=skip_render,
                      physics=physics)
    env.reset(seed=seed)
    actions = _random_actions(steps, seed)
    with _Timer() as t:
        for k, a in enumerate(actions):
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset(seed=seed + k + 1)
    env.close()
    name = f"robotok {task} step" + (" (no render)" if skip_render else f" + render {image_size}px")
    return BenchResult(name + (f" {label}" if label else ""), steps, t.wall, t.cpu)


def bench_episodes(tasks: list[str], image_size: int = 96, episodes: int = 10, seed: int = 0,
                   physics: Mapping[str, Any] | None = None, label: str = "") -> BenchResult:
    """Oracle episodes with rendering, round-robin over `tasks` (seen split): what one
    evaluation worker's env side sustains (a policy's own time per step comes on top)."""
    envs = {t: TabletopEnv(task=t, image_size=image_size, physics=physics) for t in tasks}
    with _Timer() as t:
        for k in range(episodes):
            run_oracle_episode(envs[tasks[k % len(tasks)]], seed + k)
    for env in envs.values():
        env.close()
    name = f"oracle episodes ({', '.join(tasks)}) + render {image_size}px"
    return BenchResult(name + (f" {label}" if label else ""), episodes, t.wall, t.cpu)


@contextlib.contextmanager
def _timed_pybullet(totals: dict[str, float]) -> Iterator[None]:
    """Time every call to the PyBullet functions of PROFILE_PARTS (process CPU seconds,
    summed per part into `totals`); the env modules look them up on the module per call."""
    originals: dict[str, Any] = {}

    def wrap(part: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[part] += time.process_time() - t0
        return timed

    try:
        for part, names in PROFILE_PARTS.items():
            totals.setdefault(part, 0.0)
            for name in names:
                originals[name] = getattr(pybullet, name)
                setattr(pybullet, name, wrap(part, originals[name]))
        yield
    finally:
        for name, fn in originals.items():
            setattr(pybullet, name, fn)


def profile_step(task: str = "pick", image_size: int = 96, steps: int = 300, seed: int = 0,
                 physics: Mapping[str, Any] | None = None) -> dict[str, float]:
    """CPU milliseconds per env.step() (random actions, resets included), split by part;
    "other" is everything outside the timed PyBullet calls (Python, numpy, observation
    assembly, the task's success and milestone checks), "total" the whole step."""
    env = TabletopEnv(task=task, image_size=image_size, physics=physics)
    env.reset(seed=seed)
    actions = _random_actions(steps, seed)
    totals: dict[str, float] = {}
    with _timed_pybullet(totals), _Timer() as t:
        for k, a in enumerate(actions):
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset(seed=seed + k + 1)
    env.close()
    out = {part: 1e3 * v / steps for part, v in totals.items()}
    out["other (Python, numpy, observation assembly)"] = 1e3 * t.cpu / steps - sum(out.values())
    out["total"] = 1e3 * t.cpu / steps
    return out


def profile_markdown(profiles: Mapping[str, Mapping[str, float]]) -> str:
    """One column per profile (name -> profile_step output), one row per part."""
    names = list(profiles)
    parts = list(next(iter(profiles.values())))
    lines = ["| part, CPU ms per step | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for part in parts:
        cells = [f"{profiles[n][part]:.3f} ({profiles[n][part] / profiles[n]['total']:.0%})"
                 for n in names]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
