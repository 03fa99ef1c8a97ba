"""Visual prompts on the env side: the target shown by a studio crop instead of its name."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.catalog import COLOURS
from envs.spec import INSTRUCTION, MAX_PROMPT_IMAGES, PROMPT_IMAGES, PROMPT_SLOT, prompt_slots
from envs.splits import ALL_SPLITS, SPLITS, VISUAL_SPLITS, resolve_split

ALWAYS = {"visual_prompts": 1.0}


def _env(task: str, overrides: dict | None = None, split: str = "seen") -> envs.TabletopEnv:
    return envs.make_env(task=task, split=split, image_size=32, split_overrides=overrides)


@pytest.mark.parametrize("task", envs.TASKS)
def test_a_visual_prompt_replaces_the_targets_name_and_nothing_else(task: str) -> None:
    shown, named = _env(task, ALWAYS), _env(task)
    try:
        for seed in (3, 4):
            obs, _ = shown.reset(seed=seed)
            text, _ = named.reset(seed=seed)
            words = shown.prompt_words
            slots = prompt_slots(obs[INSTRUCTION])
            assert 1 <= slots == len(words) <= MAX_PROMPT_IMAGES
            # putting the words back into the slots gives the text-only instruction
            filled = obs[INSTRUCTION]
            for w in words:
                filled = filled.replace(PROMPT_SLOT, w, 1)
            assert filled == text[INSTRUCTION]
            assert words[0] == shown.task.target.name  # the target comes first
            # the same scene, pixels and all: the prompt draws from its own generator
            assert np.array_equal(obs["image"], text["image"])
            crops = obs[PROMPT_IMAGES]
            assert crops.shape == (MAX_PROMPT_IMAGES, 32, 32, 3) and crops.dtype == np.uint8
            assert all(crops[i].max() > 0 for i in range(slots))
            assert all(crops[i].max() == 0 for i in range(slots, MAX_PROMPT_IMAGES))
            assert shown.observation_space.contains(obs)
            # the crop stays for the whole episode
            step_obs, *_ = shown.step(np.zeros(8, dtype=np.float32))
            assert np.array_equal(step_obs[PROMPT_IMAGES], crops)
            assert step_obs[INSTRUCTION] == obs[INSTRUCTION]
    finally:
        shown.close()
        named.close()


def test_the_crop_shows_the_object_in_its_colour_on_a_grey_floor() -> None:
    env = _env("pick", ALWAYS)
    try:
        for seed in range(4):
            obs, _ = env.reset(seed=seed)
            crop = obs[PROMPT_IMAGES][0].astype(float)
            target = np.asarray(COLOURS[env.task.target.colour][:3]) * 255
            # the floor fills the corners (the object is centred and fills ~70% of the crop)
            corners = crop[[0, 0, -1, -1], [0, -1, 0, -1]]
            assert np.ptp(corners, axis=1).max() < 25, "corners are not the grey floor"
            # some pixel near the centre is close in hue to the object's colour
            centre = crop[8:24, 8:24].reshape(-1, 3)
            unit = target / (np.linalg.norm(target) + 1e-6)
            cosine = centre @ unit / (np.linalg.norm(centre, axis=1) + 1e-6)
            assert cosine.max() > 0.95, f"no {env.task.target.colour} pixel near the centre"
    finally:
        env.close()


def test_crops_are_a_function_of_the_seed_and_vary_with_it() -> None:
    a, b = _env("pick", ALWAYS), _env("pick", ALWAYS)
    try:
        first = a.reset(seed=11)[0][PROMPT_IMAGES]
        a.reset(seed=12)
        assert np.array_equal(b.reset(seed=11)[0][PROMPT_IMAGES], first)
        assert np.array_equal(a.reset(seed=11)[0][PROMPT_IMAGES], first)
        # another seed turns and views the object differently (and often another object)
        assert not np.array_equal(a.reset(seed=13)[0][PROMPT_IMAGES], first)
    finally:
        a.close()
        b.close()


def test_the_shares_of_visual_episodes_and_second_objects() -> None:
    env = _env("place", {"visual_prompts": 0.5, "visual_prompt_refs": 0.0})
    try:
        counts = [prompt_slots(env.reset(seed=s)[0][INSTRUCTION]) for s in range(60)]
    finally:
        env.close()
    assert set(counts) == {0, 1}, "with visual_prompt_refs=0 the container is always named"
    assert 18 <= sum(counts) <= 42  # 60 draws at 0.5: outside this is a 1-in-5,000 event
    env = _env("place", {"visual_prompts": 1.0, "visual_prompt_refs": 1.0})
    try:
        assert {prompt_slots(env.reset(seed=s)[0][INSTRUCTION]) for s in range(5)} == {2}
    finally:
        env.close()


def test_without_visual_prompts_nothing_changes() -> None:
    env = _env("pick")
    try:
        obs, _ = env.reset(seed=0)
        assert PROMPT_IMAGES not in obs and PROMPT_IMAGES not in env.observation_space.spaces
        assert env.prompt_words == () and PROMPT_SLOT not in obs[INSTRUCTION]
        assert env.describe()["prompt_images"] is None
        assert env._studio is None  # no second PyBullet client either
    finally:
        env.close()
    env = _env("pick", ALWAYS)
    try:
        assert env.describe()["prompt_images"]["image_size"] == 32
    finally:
        env.close()


def test_the_visual_levels_are_splits_beside_the_six() -> None:
    assert len(SPLITS) == 6 and set(VISUAL_SPLITS).isdisjoint(SPLITS)
    assert ALL_SPLITS == SPLITS + VISUAL_SPLITS
    seen, vp = resolve_split("seen"), resolve_split("visual_prompt")
    assert vp.visual_prompts == 1.0 and vp.target_combos == seen.target_combos
    unseen, vpu = resolve_split("unseen_object"), resolve_split("visual_prompt_unseen_object")
    assert vpu.visual_prompts == 1.0 and vpu.target_combos == unseen.target_combos
    assert seen.visual_prompts == 0.0  # training draws text only unless asked


def test_bad_shares_are_named() -> None:
    with pytest.raises(ValueError, match=r"visual_prompts=1.5; expected a share in \[0, 1\]"):
        resolve_split("seen", {"visual_prompts": 1.5})
    with pytest.raises(ValueError, match=r"visual_prompt_refs=-0.1; expected a share"):
        resolve_split("seen", {"visual_prompt_refs": -0.1})
    with pytest.raises(ValueError, match="prompt image_size=4; expected 8..256 px"):
        envs.make_env(task="pick", split="visual_prompt", image_size=32, prompt_image_size=4)
