"""Object boxes (TabletopEnv object_boxes=True, collect.object_boxes): one box per task object
the front image shows, read from the segmentation buffer of the same render, sorted by box
centre and never by role; the pixels stay as they were, and the store, collection, merge and
replay keep the boxes per step while stores without them read as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p
import pytest
from synthetic import synthetic_episode

import envs
from envs.camera import object_boxes
from envs.collect import CollectConfig, collect, replay
from envs.spec import (
    BACKGROUND_MASK,
    DEFAULT_ACTION_SPEC,
    IMAGE,
    MAX_OBJECT_BOXES,
    OBJECT_BOXES,
    OBJECT_PIXELS,
)
from envs.store import Episode, EpisodeStore, ShardWriter, StoreError, merge, shard_name

SIZE = 64
H = W = 16
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10}


# ----------------------------------------------------------------------------- the boxes


def test_boxes_from_a_segmentation_buffer() -> None:
    seg = np.full((4, 5), -1)
    seg[0:2, 3:5] = 7  # right, top
    seg[2, 0] = 9 + (2 << 24)  # left, one pixel, with a link index in the high bits
    seg[3, 0:2] = 4  # left, lower
    seg[1, 1] = 1  # the robot: not asked for
    boxes = object_boxes(seg, [7, 9, 4, 12])  # 12 draws no pixel: no row
    assert boxes.shape == (MAX_OBJECT_BOXES, 4) and boxes.dtype == np.float32
    # sorted by centre u (0.1, 0.2, 0.8), then v; fractions of W = 5 and H = 4
    np.testing.assert_allclose(boxes[:3], [[0.0, 0.5, 0.2, 0.75], [0.0, 0.75, 0.4, 1.0],
                                           [0.6, 0.0, 1.0, 0.5]])
    assert np.isnan(boxes[3:]).all()
    assert np.isnan(object_boxes(seg, [12])).all()
    # Same centre u: then by centre v.
    seg = np.full((4, 4), -1)
    seg[3, 1] = 5
    seg[0, 1] = 6
    np.testing.assert_allclose(object_boxes(seg, [5, 6])[:2], [[0.25, 0.0, 0.5, 0.25],
                                                              [0.25, 0.75, 0.5, 1.0]])


def test_more_visible_objects_than_rows_keep_the_largest() -> None:
    seg = np.full((8, 40), -1)
    for body in range(10):  # body b: 4 columns, b % 5 + 1 rows; bodies 0 and 5 are smallest
        seg[: body % 5 + 1, 4 * body:4 * body + 4] = body
    boxes = object_boxes(seg, range(10), max_boxes=8)
    assert np.isfinite(boxes).all()
    u0 = np.round(boxes[:, 0] * 40).astype(int) // 4
    assert u0.tolist() == [1, 2, 3, 4, 6, 7, 8, 9]  # the two 4-pixel bodies dropped, sorted
    three = object_boxes(seg, range(10), max_boxes=3)  # 20 px: 4, 9; of 16 px the lower id
    assert (np.round(three[:, 0] * 40).astype(int) // 4).tolist() == [3, 4, 9]


def _segmentation(env: Any) -> np.ndarray:
    """Body id per pixel of the front camera, from a render of its own (pybullet directly)."""
    _, _, _, _, seg = p.getCameraImage(SIZE, SIZE, env.camera.view, env.camera.proj,
                                       renderer=p.ER_TINY_RENDERER, physicsClientId=env.client)
    return np.asarray(seg).reshape(SIZE, SIZE)


def _box_of(seg: np.ndarray, body: int) -> np.ndarray | None:
    rows, cols = np.nonzero(seg == body)
    if not rows.size:
        return None
    return np.array([cols.min() / SIZE, rows.min() / SIZE, (cols.max() + 1) / SIZE,
                     (rows.max() + 1) / SIZE], dtype=np.float32)


def _check_boxes(env: Any, boxes: np.ndarray) -> dict[int, int]:
    """Asserts the contract on one frame; returns the row of each visible task object."""
    u = env.unwrapped
    assert boxes.shape == (MAX_OBJECT_BOXES, 4) and boxes.dtype == np.float32
    n = int(np.isfinite(boxes[:, 0]).sum())
    assert np.isfinite(boxes[:n]).all() and np.isnan(boxes[n:]).all()
    live = boxes[:n]
    assert ((live >= 0) & (live <= 1)).all()
    assert (live[:, 0] < live[:, 2]).all() and (live[:, 1] < live[:, 3]).all()
    centre_u = (live[:, 0] + live[:, 2]) / 2
    assert (np.diff(centre_u) >= 0).all()
    # The task objects are every body but the robot and the table.
    c = u.client
    bodies = {p.getBodyUniqueId(i, physicsClientId=c) for i in range(p.getNumBodies(
        physicsClientId=c))}
    assert bodies - {u.table, u.robot.body} == {o.body for o in u.task.objects}
    seg = _segmentation(u)
    rows: dict[int, int] = {}
    for obj in u.task.objects:
        want = _box_of(seg, obj.body)
        if want is None:
            continue
        match = [i for i in range(n) if np.array_equal(live[i], want)]
        assert match, (obj.body, want, live)
        rows[obj.body] = match[0]
    assert len(rows) == n  # one row per visible task object, no other rows
    return rows


@pytest.mark.parametrize("task,split,seeds", [("pick", "distractors", (0, 1, 2)),
                                              ("place", "seen", (0, 1, 2, 3))])
def test_one_sorted_box_per_visible_task_object(task: str, split: str,
                                                seeds: tuple[int, ...]) -> None:
    env = envs.make_env(task, split=split, image_size=SIZE, object_boxes=True)
    try:
        counts = []
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            rows = _check_boxes(env, obs[OBJECT_BOXES])
            counts.append(len(rows))
            if task == "place":  # the tray is a task object with its box
                assert env.unwrapped.task.container.body in rows
            for _ in range(3):  # and after the robot moved
                obs, *_ = env.step(env.unwrapped.oracle_action())
            _check_boxes(env, obs[OBJECT_BOXES])
        assert max(counts) >= (4 if split == "distractors" else 2)
    finally:
        env.close()


def test_the_target_box_holds_its_projected_centre_and_rows_hide_the_role() -> None:
    env = envs.make_env("place", split="distractors", image_size=SIZE, object_boxes=True)
    u = env.unwrapped
    try:
        target_rows = set()
        for seed in range(6):
            obs, _ = env.reset(seed=seed)
            rows = _check_boxes(env, obs[OBJECT_BOXES])
            target = u.task.target.body
            assert target in rows, seed  # at reset every target is in view
            box = obs[OBJECT_BOXES][rows[target]]
            cu, cv = u.object_pixels()[0] / SIZE  # (u, v) pixels -> fractions
            assert box[0] <= cu <= box[2] and box[1] <= cv <= box[3], (seed, box, cu, cv)
            target_rows.add(rows[target])
        assert len(target_rows) > 1  # the target is not always the first row
    finally:
        env.close()


def test_pixels_are_the_same_with_and_without_boxes() -> None:
    boxed = envs.make_env("place", image_size=SIZE, object_boxes=True)
    both = envs.make_env("place", image_size=SIZE, object_boxes=True, background_mask=True)
    masked = envs.make_env("place", image_size=SIZE, background_mask=True)
    plain = envs.make_env("place", image_size=SIZE)
    try:
        for seed in (0, 7):
            a, _ = boxed.reset(seed=seed)
            b, _ = both.reset(seed=seed)
            m, _ = masked.reset(seed=seed)
            ref, _ = plain.reset(seed=seed)
            for _ in range(4):
                np.testing.assert_array_equal(a[IMAGE], ref[IMAGE])
                np.testing.assert_array_equal(b[IMAGE], ref[IMAGE])
                np.testing.assert_array_equal(a[OBJECT_BOXES], b[OBJECT_BOXES])
                np.testing.assert_array_equal(b[BACKGROUND_MASK], m[BACKGROUND_MASK])
                np.testing.assert_array_equal(a["state"], ref["state"])
                assert OBJECT_BOXES not in ref and OBJECT_BOXES not in m
                act = plain.unwrapped.oracle_action()
                a, *_ = boxed.step(act)
                b, *_ = both.step(act)
                m, *_ = masked.step(act)
                ref, *_ = plain.step(act)
    finally:
        for e in (boxed, both, masked, plain):
            e.close()


def test_space_describe_and_skip_render() -> None:
    env = envs.make_env("pick", image_size=SIZE, object_boxes=True)
    plain = envs.make_env("pick", image_size=SIZE)
    blind = envs.make_env("pick", image_size=SIZE, object_boxes=True, skip_render=True)
    try:
        space = env.observation_space[OBJECT_BOXES]
        assert space.shape == (MAX_OBJECT_BOXES, 4) and space.dtype == np.float32
        assert (space.low == 0).all() and (space.high == 1).all()
        assert OBJECT_BOXES not in plain.observation_space.spaces
        obs, _ = env.reset(seed=1)
        live = obs[OBJECT_BOXES][np.isfinite(obs[OBJECT_BOXES][:, 0])]
        assert space.contains(np.resize(live, (MAX_OBJECT_BOXES, 4)))  # finite rows fit
        # step hands out a fresh array each call
        first, *_ = env.step(np.zeros(8, np.float32))
        first[OBJECT_BOXES][:] = 5.0
        again, *_ = env.step(np.zeros(8, np.float32))
        assert np.nanmax(again[OBJECT_BOXES]) <= 1.0
        assert env.describe()["object_boxes"] is True
        assert plain.describe()["object_boxes"] is False
        obs, _ = blind.reset(seed=1)
        assert np.isnan(obs[OBJECT_BOXES]).all() and obs[OBJECT_BOXES].shape == (8, 4)
        # Checkpoints recorded before the entry existed still fit an env that has it.
        from policy.evaluation.compat import env_mismatches

        old = {k: v for k, v in plain.describe().items() if k != "object_boxes"}
        assert env_mismatches(old, env.describe()) == []
        assert env_mismatches(env.describe(), old) == []
    finally:
        for e in (env, plain, blind):
            e.close()


# ----------------------------------------------------------------------------- store


def make_episode(seed: int, steps: int = 5, boxes: bool = True) -> Episode:
    # the boxes come from their own generator so that the frames match the plain episode's
    rng = np.random.default_rng(seed + 10_000)
    b = np.full((steps, MAX_OBJECT_BOXES, 4), np.nan, dtype=np.float32)
    b[:, : 1 + seed % 3] = rng.uniform(0, 1, (steps, 1 + seed % 3, 4))
    return synthetic_episode(seed, steps, H, W, object_boxes=b if boxes else None)


def _writer(path: Path, boxes: bool = True) -> ShardWriter:
    return ShardWriter(path, info=INFO, image_shape=(H, W, 3), chunk_frames=4,
                       observation_keys=[OBJECT_BOXES] if boxes else [])


def test_object_boxes_round_trip_in_the_store(tmp_path: Path) -> None:
    writer = _writer(tmp_path / shard_name(0))
    eps = [make_episode(s, steps=3 + s) for s in range(4)]
    for ep in eps:
        writer.append(ep)
    with pytest.raises(ValueError, match="collect.object_boxes"):
        writer.append(make_episode(10, boxes=False))
    writer.close()
    store = EpisodeStore(tmp_path)
    assert store.observation_keys == [OBJECT_BOXES]
    assert store.info["observation_keys"] == [OBJECT_BOXES]
    assert store.privileged_keys == [] and "privileged_keys" not in store.info
    for i, ep in enumerate(eps):
        got = store.episode(i)
        assert got.object_boxes.dtype == np.float32
        np.testing.assert_array_equal(got.object_boxes, ep.object_boxes)  # NaN included
    data = store.load(keys=[OBJECT_BOXES])
    np.testing.assert_array_equal(data.arrays[OBJECT_BOXES],
                                  np.concatenate([e.object_boxes for e in eps]))
    assert OBJECT_BOXES in store.load().arrays
    # A reopened shard keeps the setting; another setting is refused.
    with pytest.raises(StoreError, match="collect.object_boxes"):
        _writer(tmp_path / shard_name(0), boxes=False)
    # Rows of another shape on disk are refused when the shard opens.
    import zarr

    group = zarr.open_group(str(tmp_path / shard_name(0)), mode="r+")
    del group[f"data/{OBJECT_BOXES}"]
    arr = group.create_array(f"data/{OBJECT_BOXES}", shape=(store.num_steps, 4, 4),
                             dtype="float32")
    arr[:] = np.ones(arr.shape, np.float32)
    with pytest.raises(StoreError, match=r"object_boxes: array has row shape \(4, 4\)"):
        EpisodeStore(tmp_path)


def test_stores_without_object_boxes_read_as_before(tmp_path: Path) -> None:
    with _writer(tmp_path / "bare" / shard_name(0), boxes=False) as w:
        w.append(make_episode(0, boxes=False))
    store = EpisodeStore(tmp_path / "bare")
    assert store.observation_keys == [] and "observation_keys" not in store.info
    assert "observation_keys" not in store.shards[0].info
    assert store.episode(0).object_boxes is None
    assert OBJECT_BOXES not in store.load().arrays
    with pytest.raises(KeyError, match="object_boxes"):
        store.load(keys=[OBJECT_BOXES])
    with pytest.raises(ValueError, match="observation key"):
        ShardWriter(tmp_path / "x" / shard_name(0), INFO, image_shape=(H, W, 3),
                    observation_keys=[OBJECT_PIXELS])


def test_merge_keeps_boxes_only_when_every_source_has_them(tmp_path: Path) -> None:
    for name, seeds, boxes in (("a", (0, 1), True), ("b", (2,), True), ("c", (3,), False)):
        with _writer(tmp_path / name / shard_name(0), boxes=boxes) as w:
            for s in seeds:
                w.append(make_episode(s, boxes=boxes))
    merged = merge([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert merged.observation_keys == [OBJECT_BOXES]
    for i, s in enumerate((0, 1, 2)):
        np.testing.assert_array_equal(merged.episode(i).object_boxes,
                                      make_episode(s).object_boxes)
    mixed = merge([tmp_path / "a", tmp_path / "c"], tmp_path / "ac")
    assert mixed.observation_keys == [] and mixed.episode(0).object_boxes is None
    # Shards with and without boxes side by side: the store has none (NaN would read as
    # "no object visible"), and its info does not claim any.
    (tmp_path / "side").mkdir()
    (tmp_path / "a" / shard_name(0)).rename(tmp_path / "side" / shard_name(0))
    (tmp_path / "c" / shard_name(0)).rename(tmp_path / "side" / shard_name(1))
    side = EpisodeStore(tmp_path / "side")
    assert side.observation_keys == [] and "observation_keys" not in side.info
    with pytest.raises(KeyError, match="object_boxes"):
        side.load(keys=[OBJECT_BOXES])


def test_episode_refuses_object_boxes_of_the_wrong_shape() -> None:
    ep = make_episode(0)
    with pytest.raises(ValueError, match="object_boxes"):
        Episode(**{**ep.__dict__, "object_boxes": np.zeros((5, 4, 4), np.float32)})
    with pytest.raises(ValueError, match="object_boxes"):
        Episode(**{**ep.__dict__, "object_boxes": np.zeros((4, 8, 4), np.float32)})
    with pytest.raises(ValueError, match="object_boxes"):
        Episode(**{**ep.__dict__, "object_boxes": np.zeros((5, 8, 4), np.int32)})
    half = Episode(**{**ep.__dict__, "object_boxes": ep.object_boxes.astype(np.float64)})
    assert half.object_boxes.dtype == np.float32


# ----------------------------------------------------------------------------- collection


def test_collect_and_replay_keep_the_boxes_of_the_frames(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path / "data"), tasks=("pick", "place"), episodes=2,
                        image_size=SIZE, workers=1, object_boxes=True, progress=False)
    collect(cfg)
    store = EpisodeStore(tmp_path / "data")
    assert store.observation_keys == [OBJECT_BOXES]
    assert store.info["observation_keys"] == [OBJECT_BOXES]
    assert store.info["collection"]["object_boxes"] is True
    assert all(d["object_boxes"] is True for d in store.info["env_by_task"].values())
    tasks = set()
    for i in range(store.num_episodes):
        ep = store.episode(i)
        tasks.add(ep.task)
        assert ep.object_boxes.shape == (len(ep), MAX_OBJECT_BOXES, 4)
        assert np.isfinite(ep.object_boxes[0, 0]).all()  # something in view at the start
        env = envs.make_env(ep.task, image_size=SIZE, object_boxes=True)
        try:
            obs, _ = env.reset(seed=int(ep.seed))
            np.testing.assert_array_equal(ep.object_boxes[0], obs[OBJECT_BOXES])
            again = replay(env, ep)  # re-observed exactly, step by step
            np.testing.assert_array_equal(again.image, ep.image)
            np.testing.assert_array_equal(again.object_boxes, ep.object_boxes)
        finally:
            env.close()
        plain = envs.make_env(ep.task, image_size=SIZE)
        try:
            bare = replay(plain, ep)  # an env without boxes: an episode without them
            assert bare.object_boxes is None
            np.testing.assert_array_equal(bare.image, ep.image)
        finally:
            plain.close()
        # The boxes are per step: the robot moves the target.
        assert not np.array_equal(ep.object_boxes[0], ep.object_boxes[-1])
    assert tasks == {"pick", "place"}
    # A resumed run must keep the setting.
    with pytest.raises(StoreError, match="object_boxes"):
        collect(CollectConfig(output=str(tmp_path / "data"), tasks=("pick", "place"),
                              episodes=3, image_size=SIZE, workers=1, progress=False))
