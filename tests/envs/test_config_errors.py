"""Bad configuration fails with a ValueError that names the offending value."""

from __future__ import annotations

from pathlib import Path

import pytest

import envs
from envs.catalog import load_object_set
from envs.splits import resolve_split

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_unknown_task_and_split() -> None:
    with pytest.raises(ValueError, match="'fly'"):
        envs.make_env("fly")
    with pytest.raises(ValueError, match="'unseen_planet'"):
        envs.make_env("pick", split="unseen_planet")


def test_unknown_colour() -> None:
    with pytest.raises(ValueError, match="'mauve'"):
        resolve_split("seen", {"target_combos": [["mauve", "cube"]]})


def test_unknown_override_and_table() -> None:
    with pytest.raises(ValueError, match="'gravity'"):
        resolve_split("seen", {"gravity": 3})
    with pytest.raises(ValueError, match="'marble'"):
        resolve_split("seen", {"tables": ["marble"]})


def test_missing_mesh_file(tmp_path: Path) -> None:
    spec = tmp_path / "objs.yaml"
    spec.write_text("root: .\nobjects:\n  - {name: ghost, noun: ghost, file: nowhere.obj}\n")
    with pytest.raises(ValueError, match="nowhere.obj"):
        load_object_set(spec)


def test_object_set_unknown_colour(tmp_path: Path) -> None:
    spec = tmp_path / "objs.yaml"
    spec.write_text("root: pybullet_data\nobjects:\n"
                    "  - {name: d, noun: duck, file: duck_vhacd.urdf, colours: [plaid]}\n")
    with pytest.raises(ValueError, match="'plaid'"):
        load_object_set(spec)


def test_impossible_scene_is_named() -> None:
    env = envs.make_env("pick", skip_render=True, split_overrides={"distractors": [40, 40]})
    with pytest.raises(ValueError, match="impossible scene: cannot place 41 objects"):
        env.reset(seed=0)
    env.close()


def test_user_object_set_through_config_alone() -> None:
    path = CONF / "env" / "object_sets" / "example.yaml"
    env = envs.make_env("pick", split="seen", skip_render=True,
                        split_overrides={"object_set": str(path)})
    nouns = set()
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        nouns.add(env.task.target.definition.noun)
        assert env.task.target.definition.name in {"toy_block", "rubber_duck"}
        assert env.task.target.name in obs["instruction"]
    assert nouns <= {"toy", "duck"}
    env.close()
