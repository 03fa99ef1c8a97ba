"""Synthetic store episodes for the store tests: every array is drawn from the episode's
seed, so a test can rebuild the same episode to compare against what the store returns."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.store import Episode


def synthetic_episode(seed: int, steps: int, height: int, width: int, *, task: str = "pick",
                      instruction: str = "pick up the red block", success: bool = True,
                      **extra: Any) -> Episode:
    """Random uint8 frames, 8-d states and actions from `seed`; `extra` goes to Episode
    as it is (object_boxes=..., object_pixels=...)."""
    rng = np.random.default_rng(seed)
    return Episode(
        image=rng.integers(0, 256, (steps, height, width, 3), dtype=np.uint8),
        state=rng.normal(size=(steps, 8)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(steps, 8)).astype(np.float32),
        executed_action=rng.uniform(-1, 1, size=(steps, 8)).astype(np.float32),
        instruction=instruction, task=task, split="seen", seed=seed, success=success,
        **extra,
    )
