"""Collection with visual prompts: the config, the split override, the crops in the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs.collect import CollectConfig, collect, env_factory, prompt_image_size, replay
from envs.spec import MAX_PROMPT_IMAGES, PROMPT_IMAGES, prompt_slots
from envs.store import EpisodeStore

ROOT = Path(__file__).resolve().parents[2]


def test_config_validates_and_merges_the_split_override(tmp_path: Path) -> None:
    out = str(tmp_path / "d")
    with pytest.raises(ValueError, match=r"visual_prompts=1.5; expected a share in \[0, 1\]"):
        CollectConfig(output=out, visual_prompts=1.5)
    with pytest.raises(ValueError, match="visual_prompts=-0.1"):
        CollectConfig(output=out, visual_prompts=-0.1)
    with pytest.raises(ValueError, match="split_overrides sets visual_prompts=0.2; set it in "
                                         "one place"):
        CollectConfig(output=out, visual_prompts=0.5, split_overrides={"visual_prompts": 0.2})
    cfg = CollectConfig(output=out, visual_prompts=0.5, split_overrides={"distractors": [1, 1]})
    assert cfg.env_split_overrides == {"distractors": [1, 1], "visual_prompts": 0.5}
    assert cfg.split_overrides == {"distractors": [1, 1]}  # the field keeps what was given
    plain = CollectConfig(output=out, split_overrides={"distractors": [1, 1]})
    assert plain.env_split_overrides == {"distractors": [1, 1]}
    assert CollectConfig(output=out).env_split_overrides is None


def test_text_only_envs_have_no_prompt_crops(tmp_path: Path) -> None:
    env = env_factory(CollectConfig(output=str(tmp_path / "d"), image_size=32))("pick")
    try:
        assert prompt_image_size(env) is None
        obs, _ = env.reset(seed=0)
        assert PROMPT_IMAGES not in obs
    finally:
        env.close()


def test_hydra_override_reaches_the_config(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from envs.collect import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose(config_name="collect", overrides=[f"output={tmp_path}"])
        cfg = compose(config_name="collect", overrides=[
            f"output={tmp_path}", "collect.visual_prompts=0.25"])
    assert default.collect.visual_prompts == 0.0  # the dataclass default, via collect_base
    config = instantiate(cfg.collect)
    assert config.visual_prompts == 0.25
    assert config.env_split_overrides == {"visual_prompts": 0.25}


def test_collect_records_crops_and_words_and_replay_reproduces_them(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path / "demos"), tasks=("pick",), episodes=2,
                        workers=1, image_size=32, progress=False, visual_prompts=1.0)
    assert collect(cfg).kept == 2
    store = EpisodeStore(cfg.output)
    shape = store.prompt_image_shape
    assert shape is not None and shape[0] == MAX_PROMPT_IMAGES and shape[1] == shape[2]
    assert store.info["collection"]["visual_prompts"] == 1.0
    assert store.info["env_by_task"]["pick"]["split_overrides"] == {"visual_prompts": 1.0}
    env = env_factory(cfg)("pick")
    try:
        assert prompt_image_size(env) == shape[1]
        for i in range(store.num_episodes):
            ep = store.episode(i)
            slots = prompt_slots(ep.instruction)
            assert slots >= 1, ep.instruction  # every episode shows its target by image
            assert len(ep.prompt_words) == slots and all(ep.prompt_words)
            assert all(ep.prompt_images[s].any() for s in range(slots))
            assert not ep.prompt_images[slots:].any()
            again = replay(env, ep)
            np.testing.assert_array_equal(again.prompt_images, ep.prompt_images)
            assert again.prompt_words == ep.prompt_words
            np.testing.assert_array_equal(again.image, ep.image)
    finally:
        env.close()
