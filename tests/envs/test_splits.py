"""Split content: held-out sets never meet `seen`; overrides reach the env."""

from __future__ import annotations

import dataclasses

import pytest

import envs
from envs.splits import SPLIT_CONFIGS, SplitConfig
from envs.tasks import TASK_CLASSES


def _combos(name: str) -> set[tuple[str, str]]:
    s = SPLIT_CONFIGS[name]
    return set(s.target_combos) | set(s.distractor_combos)


def _objects(name: str) -> set[str]:
    return {o for _, o in _combos(name)}


def test_held_out_content_never_in_seen() -> None:
    seen = SPLIT_CONFIGS["seen"]
    # unseen_combo: target pairs are new, yet both parts of each pair were seen.
    combo = set(SPLIT_CONFIGS["unseen_combo"].target_combos)
    assert combo and not combo & _combos("seen")
    assert {c for c, _ in combo} <= {c for c, _ in _combos("seen")}
    assert {o for _, o in combo} <= _objects("seen")
    # unseen_object: target geometries (and their nouns) are new.
    new_objects = {o for _, o in SPLIT_CONFIGS["unseen_object"].target_combos}
    assert new_objects and not new_objects & _objects("seen")
    seen_nouns = {envs.catalog.BUILTIN_OBJECTS[o].noun for o in _objects("seen")}
    assert not {envs.catalog.BUILTIN_OBJECTS[o].noun for o in new_objects} & seen_nouns
    # unseen_instruction: no template shared with training, for every task.
    assert SPLIT_CONFIGS["unseen_instruction"].instructions == "held_out"
    assert seen.instructions == "train"
    for cls in TASK_CLASSES.values():
        assert cls.held_out_templates and cls.templates
        assert not set(cls.held_out_templates) & set(cls.templates), cls.name
    # distractors: more than training ever has.
    assert SPLIT_CONFIGS["distractors"].distractors[0] > seen.distractors[1]
    # backgrounds: table looks and light directions never used in training.
    bg = SPLIT_CONFIGS["backgrounds"]
    assert not set(bg.tables) & set(seen.tables)
    assert bg.light_azimuth[0] > seen.light_azimuth[1]


# What each split holds out; every other field must be seen's.
OWN_CONTENT: dict[str, set[str]] = {
    "seen": set(),
    "unseen_combo": {"target_combos"},
    "unseen_object": {"target_combos"},
    "unseen_instruction": {"instructions"},
    "distractors": {"distractors"},
    "backgrounds": {"tables", "light_azimuth", "light_tint", "ambient"},
}


@pytest.mark.parametrize("split", envs.SPLITS)
def test_each_split_differs_from_seen_in_its_own_fields_and_no_other(split: str) -> None:
    """Every SplitConfig field of every split, compared with seen's. Fails when a split also
    changes a field it does not hold out (checked with distractors given another
    object_scale) or when a new SplitConfig field or split is not listed here."""
    assert set(OWN_CONTENT) == set(envs.SPLITS)
    seen, cfg = SPLIT_CONFIGS["seen"], SPLIT_CONFIGS[split]
    for f in dataclasses.fields(SplitConfig):
        if f.name == "name":
            continue
        ours, theirs = getattr(cfg, f.name), getattr(seen, f.name)
        if f.name in OWN_CONTENT[split]:
            assert ours != theirs, f"{split}.{f.name} is seen's: {ours!r}"
        else:
            assert ours == theirs, f"{split}.{f.name} = {ours!r}, seen has {theirs!r}"


def test_yaml_overrides_reach_the_env() -> None:
    env = envs.make_env("pick", split="seen", skip_render=True,
                        split_overrides={"distractors": [3, 3], "templates": ["fetch the {obj}"]})
    obs, _ = env.reset(seed=0)
    assert obs["instruction"].startswith("fetch the ")
    assert len(env.task.objects) == 4
    env.close()


def test_instruction_names_target_by_colour_and_noun() -> None:
    env = envs.make_env("stack", split="unseen_object", skip_render=True)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        assert env.task.target.name in obs["instruction"]
        assert env.task.base.name in obs["instruction"]
        assert env.task.target.definition.name in {o for _, o in env.split.target_combos}
    env.close()
