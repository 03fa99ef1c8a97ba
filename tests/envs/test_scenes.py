"""Scene sets: the training randomization keeps the backgrounds split held out (in colour,
pattern and light, not just in name), user scene sets load and render, errors are named,
and a table look never leaks into the next episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import envs
from envs.catalog import COLOURS, TABLE_COLOURS
from envs.scenes import (
    FAMILIES,
    Procedural,
    held_out_colours,
    load_scene_set,
    min_distance,
    procedural_table,
)
from envs.splits import SPLIT_CONFIGS

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "conf/env/scene_sets/train_random.yaml"
EXAMPLE = REPO / "conf/env/scene_sets/example.yaml"


def test_every_generated_table_keeps_the_margin_from_held_out_colours() -> None:
    """All 1,024 tables of the training bank, texel by texel (blends included)."""
    spec = load_scene_set(TRAIN).procedural
    assert spec is not None and spec.keep_away_from == "backgrounds" and spec.margin >= 0.1
    avoid = held_out_colours("backgrounds")
    families = set()
    for i in range(spec.bank):
        family, image = spec.table(i)
        families.add(family)
        assert min_distance(image, avoid) >= spec.margin, (i, family)
    # Checkerboards and labelled grids are the held-out pattern families.
    assert families == set(FAMILIES) and not families & {"checker", "grid"}


def test_the_avoided_colours_are_the_backgrounds_splits_own() -> None:
    """The margin is measured against the right set: each held-out flat table colour, the
    grid texture's black and white, the blue checker's blue, and every object colour."""
    avoid = held_out_colours("backgrounds")
    for name in ("slate", "dark_wood", "mint", "lilac"):
        assert min_distance(np.asarray(TABLE_COLOURS[name][:3]), avoid) < 0.01
    for rgb in ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]):  # checker_grid.jpg
        assert min_distance(np.asarray(rgb), avoid) < 0.05
    for rgba in COLOURS.values():
        assert min_distance(np.asarray(rgba[:3]), avoid) < 0.01
    # Without a split to keep away from, only the object colours remain.
    assert len(held_out_colours("")) == len(COLOURS) < len(avoid)


def test_a_table_inside_the_margin_is_never_returned() -> None:
    """The generator redraws colours instead of returning a table near a held-out colour:
    with a huge margin every draw fails, and it says so."""
    with pytest.raises(RuntimeError, match="margin"):
        procedural_table(np.random.default_rng(0), Procedural(margin=0.5))


def test_muted_tables_keep_to_their_saturation() -> None:
    import colorsys

    spec = load_scene_set(REPO / "conf/env/scene_sets/train_muted.yaml").procedural
    assert spec is not None and spec.saturation[1] <= 0.45
    avoid = held_out_colours(spec.keep_away_from)
    for i in range(0, spec.bank, 16):
        family, image = spec.table(i)
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]] / 255.0  # pure palette colours
        sat = max(colorsys.rgb_to_hsv(*c)[1] for c in corners)
        assert sat <= spec.saturation[1] + 0.02, (i, family)
        assert min_distance(image, avoid) >= spec.margin


def test_training_episodes_draw_no_held_out_table_or_light() -> None:
    held_out = set(SPLIT_CONFIGS["backgrounds"].tables)
    bg = SPLIT_CONFIGS["backgrounds"]
    env = envs.make_env("pick", "seen", image_size=16, skip_render=True,
                        split_overrides={"scene_set": str(TRAIN)})
    looks = []
    for seed in range(60):
        env.reset(seed=seed)
        looks.append(env.table_look)
        az = np.arctan2(env.lighting.direction[1], env.lighting.direction[0])
        assert abs(az) <= 1.4 < bg.light_azimuth[0]  # backgrounds lights from 1.8 rad on
        tint = 1.0 - min(env.lighting.colour)
        assert tint <= 0.05 < bg.light_tint[0]
        assert env.lighting.ambient >= 0.55 > bg.ambient[1]
    env.close()
    assert not set(looks) & held_out
    procedural = [k for k in looks if k.startswith("procedural/")]
    assert 0.6 < len(procedural) / len(looks) < 0.95  # share 0.8
    assert len(set(procedural)) == len(procedural)  # 1,024 tables: no repeats in 60


def test_table_look_does_not_leak_into_the_next_episode() -> None:
    """A flat table after a textured one renders exactly as in a fresh env. (Before the
    texture was cleared, a flat backgrounds table kept the previous episode's texture, so
    an episode's pixels depended on the episodes its worker ran before.)"""
    used = envs.make_env("pick", "backgrounds", image_size=32)
    looks = {}
    for seed in range(40):
        used.reset(seed=seed)
        looks[seed] = used.table_look
    textured = {"checker", "grid", "noise"}
    flat_after_texture = [s for s in range(1, 40)
                          if looks[s] not in textured and looks[s - 1] in textured]
    assert flat_after_texture
    for seed in flat_after_texture[:3]:
        used.reset(seed=seed - 1)
        after, _ = used.reset(seed=seed)
        fresh = envs.make_env("pick", "backgrounds", image_size=32)
        alone, _ = fresh.reset(seed=seed)
        fresh.close()
        np.testing.assert_array_equal(after["image"], alone["image"])
    used.close()


def test_same_seed_same_pixels_with_generated_tables() -> None:
    a = envs.make_env("pick", "seen", image_size=32, split_overrides={"scene_set": str(TRAIN)})
    b = envs.make_env("pick", "seen", image_size=32, split_overrides={"scene_set": str(TRAIN)})
    for seed in (3, 4, 3):  # b runs seed 3 after seed 4: its texture cache must not matter
        oa, _ = a.reset(seed=seed)
        b.reset(seed=seed + 1)
        ob, _ = b.reset(seed=seed)
        np.testing.assert_array_equal(oa["image"], ob["image"])
    a.close()
    b.close()


def test_user_scene_set_renders_its_own_tables_and_light() -> None:
    env = envs.make_env("pick", "seen", image_size=32,
                        split_overrides={"scene_set": "conf/env/scene_sets/example.yaml"})
    assert env.split.light_tint == (0.0, 0.1)
    frames = {}
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        frames.setdefault(env.table_look, obs["image"])
    env.close()
    assert set(frames) == {"marble", "cork", "navy"}
    # The table fills the lower middle of the frame: the three looks differ there.
    patch = {k: v[24:, :8].astype(float).mean((0, 1)) for k, v in frames.items()}
    assert np.abs(patch["marble"] - patch["navy"]).max() > 40
    assert np.abs(patch["cork"] - patch["marble"]).max() > 20


@pytest.mark.parametrize(("text", "match"), [
    ("tables: [{name: a}]", "exactly one of colour or texture"),
    ("tables: [{name: a, colour: [1, 2, 3]}]", r"colour \[1, 2, 3\]"),
    ("tables: [{name: a, texture: missing.png}]", "missing.png"),
    ("tables: [{name: a, colour: [0, 0, 0]}, {name: a, colour: [1, 1, 1]}]", "repeat"),
    ("tables: [{name: a, colour: [0, 0, 0]}]\nlight: {azimuth: [1, 0]}", "light.azimuth"),
    ("tables: [{name: a, colour: [0, 0, 0]}]\nlight: {sun: [0, 1]}", "sun"),
    ("tables: [{name: a, colour: [0, 0, 0]}]\nfloor: 1", "floor"),
    ("procedural: {share: 1.0, families: [checker]}", "checker"),
    ("procedural: {share: 1.5}", "share=1.5"),
    ("procedural: {share: 0.5}", "no tables"),
    ("procedural: {share: 1.0, keep_away_from: moon}", "moon"),
    ("procedural: {share: 1.0, saturation: [0.6, 0.2]}", r"saturation=\[0.6, 0.2\]"),
])
def test_bad_scene_sets_are_refused_naming_the_value(tmp_path: Path, text: str,
                                                     match: str) -> None:
    path = tmp_path / "scenes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        spec = load_scene_set(path)
        if spec.procedural is not None:
            held_out_colours(spec.procedural.keep_away_from)


def test_missing_scene_set_is_refused_when_the_env_is_built() -> None:
    with pytest.raises(ValueError, match="nowhere.yaml"):
        envs.make_env("pick", "seen", split_overrides={"scene_set": "nowhere.yaml"})


def test_backgrounds_episodes_draw_no_seen_table_or_light() -> None:
    """The converse of the training check: every backgrounds scene has a held-out table
    and a light the seen split never uses (from behind, dimmer ambient)."""
    seen = SPLIT_CONFIGS["seen"]
    env = envs.make_env("pick", "backgrounds", image_size=16, skip_render=True)
    looks = set()
    for seed in range(40):
        env.reset(seed=seed)
        looks.add(env.table_look)
        az = abs(float(np.arctan2(env.lighting.direction[1], env.lighting.direction[0])))
        assert az >= 1.8 - 1e-9 > seen.light_azimuth[1]  # |azimuth| of the seen light <= 1.2
        assert env.lighting.ambient <= 0.5 < seen.ambient[0]
    env.close()
    assert looks <= set(SPLIT_CONFIGS["backgrounds"].tables)
    assert not looks & set(seen.tables) and len(looks) >= 5
