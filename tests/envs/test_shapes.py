"""The procedural training shapes (envs/shapes.py) and the `extra_objects` split field.

What they must keep: held-out objects stay out of training with a margin (kinds, nouns,
no prism along any axis, volume IoU against the held-out prisms), a split without them is
exactly the split as it was (same episodes, frame for frame), with them every colour of
every shape joins the targets and the distractors, each shape spawns, rests and is picked
by the oracle, and bad values are named.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pybullet as p
import pytest

import envs
from envs.catalog import BUILTIN_OBJECTS, ObjectDef, spawn_object
from envs.collect import CollectConfig
from envs.shapes import FAMILY, IOU_MARGIN, PROCEDURAL_OBJECTS, best_iou, occupancy
from envs.spec import IMAGE, STATE, WRIST_IMAGE
from envs.splits import (
    ALL_SPLITS,
    CONTAINERS,
    HELD_OUT_OBJECTS,
    OBJECT_COLOURS,
    SEEN_OBJECTS,
    SPLIT_CONFIGS,
    resolve_split,
)

SHAPES = list(PROCEDURAL_OBJECTS.values())
HELD_OUT_PRISMS = [BUILTIN_OBJECTS[n] for n in HELD_OUT_OBJECTS
                   if BUILTIN_OBJECTS[n].kind == "prism"]


def test_no_shape_is_a_held_out_kind_or_noun() -> None:
    assert 10 <= len(SHAPES) <= 14
    builtin_nouns = {BUILTIN_OBJECTS[n].noun for n in (*SEEN_OBJECTS, *HELD_OUT_OBJECTS,
                                                        *CONTAINERS)}
    nouns = [d.noun for d in SHAPES]
    assert len(set(nouns)) == len(nouns), "two shapes share a noun"
    assert not set(nouns) & builtin_nouns
    assert not set(nouns) & set(HELD_OUT_OBJECTS)
    assert not set(PROCEDURAL_OBJECTS) & set(BUILTIN_OBJECTS)
    assert {p.kind for p in HELD_OUT_PRISMS} == {"prism"}  # the held-out primitives
    for d in SHAPES:
        # Not a regular prism (kind prism), not a mesh (duck, mug), not a file.
        assert d.kind in ("loft", "compound", "box"), d.name
        assert not d.file and d.sides in (0, 4), d.name


@pytest.mark.parametrize("d", SHAPES, ids=lambda d: d.name)
def test_no_shape_is_a_prism_along_any_axis(d: ObjectDef) -> None:
    """A prism keeps one cross-section along its axis: every shape's sections change
    along x, y and z, except the bar, a box of three unequal sides (like the seen brick,
    no square face, so not a regular prism)."""
    if d.kind == "box":
        assert len({round(v, 6) for v in d.size}) == 3, d.name
        return
    g = np.linspace(-1, 1, 41)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * np.asarray(d.size)
    occ = occupancy(d, pts * 0.995).reshape(41, 41, 41)
    for axis in range(3):
        sections = {np.take(occ, i, axis=axis).tobytes() for i in range(1, 40)}
        assert len(sections) > 1, f"{d.name} is a prism along axis {'xyz'[axis]}"


def test_no_shape_comes_nearer_a_held_out_prism_than_the_seen_objects() -> None:
    """Volume IoU at the best yaw and size (equal volume, then x0.85-1.15; envs/shapes.py
    best_iou): per held-out prism, every shape stays IOU_MARGIN under the seen object
    closest to it (the cylinder: ~0.77 hexagon, ~0.70 triangle, ~0.79 octagon)."""
    seen = [BUILTIN_OBJECTS[n] for n in SEEN_OBJECTS if BUILTIN_OBJECTS[n].kind != "mesh"]
    for held in HELD_OUT_PRISMS:
        closest_seen = max(best_iou(s, held) for s in seen)
        assert closest_seen > 0.65, (held.name, closest_seen)  # the measure sees likeness
        worst = max(SHAPES, key=lambda d: best_iou(d, held))
        iou = best_iou(worst, held)
        assert iou < closest_seen - IOU_MARGIN, (held.name, worst.name, iou, closest_seen)


def test_extra_objects_join_targets_and_distractors_in_every_colour() -> None:
    seen = SPLIT_CONFIGS["seen"]
    cfg = resolve_split("seen", {"extra_objects": [FAMILY]})
    added = [(c, o) for o in PROCEDURAL_OBJECTS for c in OBJECT_COLOURS]
    assert cfg.target_combos == seen.target_combos + tuple(added)
    assert cfg.distractor_combos == seen.distractor_combos + tuple(added)
    assert dataclasses.replace(cfg, name="again") == dataclasses.replace(cfg, name="again")
    assert dataclasses.replace(cfg).target_combos == cfg.target_combos  # idempotent
    two = resolve_split("seen", {"extra_objects": ["egg", "arch", "egg"]})
    assert two.target_combos[len(seen.target_combos):] == tuple(
        (c, o) for o in ("egg", "arch") for c in OBJECT_COLOURS)
    # Every other field is seen's.
    for f in dataclasses.fields(cfg):
        if f.name not in ("target_combos", "distractor_combos", "extra_objects"):
            assert getattr(cfg, f.name) == getattr(seen, f.name), f.name
    # Episodes draw them, named by their nouns.
    env = envs.make_env("pick", skip_render=True, split_overrides={"extra_objects": [FAMILY]})
    drawn = set()
    for seed in range(40):
        env.reset(seed=seed)
        drawn |= {o.definition.name for o in env.task.objects}
        assert env.task.target.definition.noun in env.instruction
    env.close()
    assert len(drawn & set(PROCEDURAL_OBJECTS)) >= 6


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_without_extra_objects_every_split_is_unchanged(split: str) -> None:
    assert SPLIT_CONFIGS[split].extra_objects == ()
    assert resolve_split(split, {"extra_objects": []}) == SPLIT_CONFIGS[split]
    assert not {o for _, o in SPLIT_CONFIGS[split].target_combos} & set(PROCEDURAL_OBJECTS)
    assert not {o for _, o in SPLIT_CONFIGS[split].distractor_combos} & set(PROCEDURAL_OBJECTS)


@pytest.mark.parametrize("task", ["pick", "stack"])
def test_episodes_without_extra_objects_are_identical_to_the_default(task: str) -> None:
    """Same seed: the same instruction, front and wrist frames, states and oracle actions
    with no override and with `extra_objects: []`. (Checked once against the commit before
    this field existed: the same digest over every task, seeds 0-2.)"""
    a = envs.make_env(task, image_size=32, wrist_camera=True)
    b = envs.make_env(task, image_size=32, wrist_camera=True,
                      split_overrides={"extra_objects": []})
    for seed in (3, 4):
        oa, _ = a.reset(seed=seed)
        ob, _ = b.reset(seed=seed)
        assert oa["instruction"] == ob["instruction"]
        for _ in range(20):
            act_a, act_b = a.oracle_action(), b.oracle_action()
            np.testing.assert_array_equal(act_a, act_b)
            oa, *_ = a.step(act_a)
            ob, *_ = b.step(act_b)
            for key in (IMAGE, WRIST_IMAGE, STATE):
                np.testing.assert_array_equal(oa[key], ob[key])
    a.close()
    b.close()


@pytest.mark.parametrize("d", SHAPES, ids=lambda d: d.name)
def test_each_shape_spawns_rests_and_fits_the_gripper(d: ObjectDef) -> None:
    client = p.connect(p.DIRECT)
    try:
        p.setGravity(0, 0, -9.81, physicsClientId=client)
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[0.5, 0.5, 0.01],
                                     physicsClientId=client)
        p.createMultiBody(0, col, -1, [0, 0, -0.01], physicsClientId=client)
        obj = spawn_object(client, d, "red", (0.1, 0.05), 0.7, 0.0, scale=1.1)
        start = np.asarray(p.getBasePositionAndOrientation(obj.body, physicsClientId=client)[0])
        for _ in range(240):
            p.stepSimulation(physicsClientId=client)
        pos, quat = p.getBasePositionAndOrientation(obj.body, physicsClientId=client)
        assert np.linalg.norm(np.asarray(pos) - start) < 0.003, "it moved or fell"
        tilt = math.degrees(math.acos(min(1.0, abs(p.getMatrixFromQuaternion(quat)[8]))))
        assert tilt < 2.0, f"tilted {tilt:.1f} deg"
        # Convex meshes' AABBs carry bullet's 2 mm collision margin (the held-out prisms'
        # too); box compounds are exact.
        assert obj.half_height == pytest.approx(
            d.size[2] * 1.1 + (0.002 if d.kind == "loft" else 0.0), abs=1e-3)
        assert 0.01 < obj.grasp_width <= 0.065  # the Panda opens 8 cm
    finally:
        p.disconnect(client)


def test_the_oracle_picks_every_shape() -> None:
    """One episode per shape, the shape as the only target (scripts/check_procedural.py
    measures every task over more seeds)."""
    failed = []
    for name in PROCEDURAL_OBJECTS:
        env = envs.make_env("pick", skip_render=True, split_overrides={
            "extra_objects": [name], "target_combos": [["red", name], ["blue", name]]})
        _, _ = env.reset(seed=11)
        info = {"is_success": False}
        for _ in range(env.max_steps):
            _, _, term, trunc, info = env.step(env.oracle_action())
            if term or trunc:
                break
        failed += [] if info["is_success"] else [name]
        env.close()
    assert not failed


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match=r"'duck'.*'procedural'"):
        resolve_split("seen", {"extra_objects": ["duck"]})  # held-out: never an extra
    with pytest.raises(ValueError, match="'hexagon'"):
        resolve_split("seen", {"extra_objects": ["ball", "hexagon"]})
    with pytest.raises(ValueError, match="extra_objects=3"):
        resolve_split("seen", {"extra_objects": 3})
    # A bare name from a config line is one entry, not a string of letters.
    assert resolve_split("seen", {"extra_objects": "egg"}).extra_objects == ("egg",)
    with pytest.raises(ValueError, match="'bal'"):
        CollectConfig(output="unused", split_overrides={"extra_objects": ["bal"]})
    with pytest.raises(ValueError, match="profile"):
        ObjectDef("x", "x", "loft", profile=((0.0, 1.0), (0.5, 0.2)))
    with pytest.raises(ValueError, match="sides 0"):
        ObjectDef("x", "x", "loft", profile=((0.0, 1.0), (1.0, 0.2)), sides=6)
    with pytest.raises(ValueError, match="boxes"):
        ObjectDef("x", "x", "compound", boxes=((0.01, 0.01, 0.01),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no solid model"):
        occupancy(BUILTIN_OBJECTS["duck"], np.zeros((1, 3)))
    assert all(isinstance(c, tuple) for c in itertools.islice(
        resolve_split("seen", {"extra_objects": [FAMILY]}).target_combos, 3))
