"""The committed reference checkpoints (policy/pretrained/rt1_full, gato_objects_full and
gato_full) load, match
the env they were trained in, and still pick: a regression test for the weights, the model
code that reads them, the tokenizers and the env's rendering together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.spec import EVAL_SEED_START
from policy import Policy

PRETRAINED = Path(__file__).resolve().parents[2] / "policy" / "pretrained"
REFERENCE = PRETRAINED / "rt1_full"
GATO = PRETRAINED / "gato_full"
GATO_OBJECTS = PRETRAINED / "gato_objects_full"


@pytest.mark.parametrize("directory", [REFERENCE, GATO_OBJECTS, GATO], ids=lambda p: p.name)
def test_reference_checkpoint_is_small_and_complete(directory: Path) -> None:
    files = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "action_spec.json", "env.json",
            "stats.json", "eval_info.json", "README.md"} <= files
    assert (directory / "model.safetensors").stat().st_size < 25 * 2**20
    assert "training_state" not in files  # optimizer state stays out of the repo


@pytest.fixture(scope="module")
def reference() -> Policy:
    policy = Policy.from_pretrained(REFERENCE)
    policy.eval()
    return policy


def _episode(policy: Policy, task: str, seed: int, directory: Path = REFERENCE) -> bool:
    image_size = json.loads((directory / "env.json").read_text())["image_shape"][0]
    env = envs.make_env(task=task, split="seen", image_size=image_size,
                        object_boxes=policy.reads_object_boxes)
    try:
        policy.check_env(env.describe())
        obs, _ = env.reset(seed=seed)
        policy.reset(obs["instruction"])
        for _ in range(env.max_steps):
            action = policy.select_action(obs)
            assert action.shape == (8,) and np.all(np.abs(action) <= 1.0)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        return bool(info["is_success"])
    finally:
        env.close()


EPISODES, BAR = 16, 10


def test_reference_checkpoint_picks(reference: Policy) -> None:
    """The first 16 evaluation seeds (never trained on) of seen-split pick: at least 10 win.

    The model card (README.md) says 85% on 20 episodes (Wilson [64, 95]); the committed
    eval_info.json has 13 of these 16 seeds as successes, and a policy at 85% falls below 10
    of 16 with probability 0.6%. Fails (0 of 16) on broken builds: the same config with
    untrained weights, and the checkpoint reset with an empty instruction.
    """
    wins = sum(_episode(reference, "pick", EVAL_SEED_START + i) for i in range(EPISODES))
    assert wins >= BAR, f"{wins}/{EPISODES} pick episodes succeeded; expected >= {BAR}"


def test_gato_reference_checkpoint_picks() -> None:
    """Gato's reference: the same 16 seeds, at least 4 win.

    Its eval_info.json has 8 of these 16 as successes (11 of 20 on the split, 55%, Wilson
    [34, 74]); a policy at 34% (the interval's low end) falls below 4 of 16 with probability
    15%, one at 55% with 0.3%; evaluation is deterministic, so the margin is for other CPUs'
    numerics.
    Fails (0 of 16) on the same config with untrained weights.
    """
    gato = Policy.from_pretrained(GATO)
    gato.eval()
    assert gato.kind == "gato" and gato.config.image_tokenizer == "film_grid"
    wins = sum(_episode(gato, "pick", EVAL_SEED_START + i, GATO) for i in range(EPISODES))
    assert wins >= 4, f"{wins}/{EPISODES} pick episodes succeeded; expected >= 4"


def test_gato_objects_reference_checkpoint_picks() -> None:
    """The reference Gato with object tokens: the same 16 seeds, at least 10 win.

    Its eval_info.json has 15 of these 16 as successes (18 of 20 on the split, 90%, Wilson
    [70, 97]); a policy at 90% falls below 10 of 16 with probability 0.05%, one at 70% (the
    interval's low end) with 18%. The env gives it the object boxes it reads.
    Fails (0 of 16) on the same config with untrained weights.
    """
    gato = Policy.from_pretrained(GATO_OBJECTS)
    gato.eval()
    assert gato.kind == "gato" and gato.config.image_tokenizer == "film_objects"
    assert gato.reads_object_boxes
    wins = sum(_episode(gato, "pick", EVAL_SEED_START + i, GATO_OBJECTS) for i in range(EPISODES))
    assert wins >= 10, f"{wins}/{EPISODES} pick episodes succeeded; expected >= 10"
