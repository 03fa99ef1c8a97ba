"""Shared fixtures for the policy tests: one text encoder per session, env info, batches.

Batches follow the contract layout of policy/data.py (CONTRACTS.md, "Dataset for torch"),
built synthetically so these tests do not depend on an episode store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
INSTRUCTIONS = ("pick up the red block", "pick up the blue cylinder", "push the green cube left")


@pytest.fixture(scope="session")
def text_encoder():
    """The process-wide sentence encoder, loaded once (it takes seconds)."""
    from policy.text import get_text_encoder

    enc = get_text_encoder()
    enc.encode(list(INSTRUCTIONS))
    return enc


@pytest.fixture
def env_info() -> dict:
    """The real env's describe() (96 px front camera): what a trained policy is built from.
    Rendering is skipped; the camera, renderer and action spec are those of a rendering env."""
    import envs

    env = envs.make_env("pick", "seen", image_size=96, skip_render=True)
    try:
        return env.unwrapped.describe()
    finally:
        env.close()


@pytest.fixture(scope="session")
def compose_policy() -> Callable[..., object]:
    """conf/policy/<name>.yaml through hydra's compose API -> the config dataclass."""

    def compose_one(name: str, overrides: tuple[str, ...] = ()) -> object:
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        from policy.base import register_policy_configs

        register_policy_configs()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=f"policy/{name}",
                          overrides=[f"policy.{o}" for o in overrides])
        return instantiate(cfg.policy)

    return compose_one


@pytest.fixture
def make_batch() -> Callable[..., dict]:
    def make(b: int = 3, t: int = 2, seed: int = 0, size: int = 96) -> dict:
        g = torch.Generator().manual_seed(seed)
        pad = torch.zeros(b, t, dtype=torch.bool)
        pad[0, : t - 1] = True  # the first sample starts its episode at its last frame
        return {
            "image": torch.randint(0, 256, (b, t, size, size, 3), generator=g,
                                   dtype=torch.uint8),
            "state": torch.randn(b, t, 8, generator=g),
            "action": torch.rand(b, t, 8, generator=g) * 2 - 1,
            "pad": pad,
            "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(b)],
        }

    return make


@pytest.fixture
def make_obs() -> Callable[..., dict]:
    """An observation as the env returns it: uint8 image, float32 state, instruction."""

    def make(seed: int, instruction: str = INSTRUCTIONS[0]) -> dict:
        rng = np.random.default_rng(seed)
        return {"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
                "state": rng.standard_normal(8).astype(np.float32), "instruction": instruction}

    return make
