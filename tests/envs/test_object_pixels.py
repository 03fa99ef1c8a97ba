"""Object pixels (TabletopEnv.object_pixels, collect.object_pixels): the front camera's
projection of the named objects' centres lands on those objects in the rendered frame, moves
with the camera jitter, and the store, collection and replay keep it per step while stores
without it read as before."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p
import pytest
from synthetic import synthetic_episode

import envs
from envs.camera import CameraConfig, FrontCamera, _render_buffers
from envs.catalog import object_position
from envs.collect import CollectConfig, collect, replay
from envs.spec import DEFAULT_ACTION_SPEC, IMAGE, OBJECT_PIXELS
from envs.store import Episode, EpisodeStore, ShardWriter, StoreError, merge, shard_name

SIZE = 96
TASKS = ("pick", "place", "stack", "move_near", "push")
SECOND = {"pick": False, "push": False, "place": True, "stack": True, "move_near": True}
H = W = 16
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10}


# ----------------------------------------------------------------------------- projection


def _pinhole(config: CameraConfig, offsets: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(u, v) of world points through a look-at pinhole built here from the config alone
    (vertical field of view, square pixels): an implementation independent of pybullet's
    matrices."""
    eye = np.asarray(config.eye) + offsets[:3]
    target = np.asarray(config.target) + offsets[3:]
    f = (target - eye) / np.linalg.norm(target - eye)
    r = np.cross(f, config.up)
    r /= np.linalg.norm(r)
    up = np.cross(r, f)
    d = np.asarray(points) - eye
    x, y, z = d @ r, d @ up, d @ f
    focal = config.height / 2 / math.tan(math.radians(config.fov_deg) / 2)
    return np.stack([config.width / 2 + focal * x / z, config.height / 2 - focal * y / z], -1)


def test_projection_matches_an_independent_pinhole_camera() -> None:
    config = CameraConfig(width=80, height=60)  # not square: catches a swapped u and v
    cam = FrontCamera(config)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(0.3, 0.7, 50), rng.uniform(-0.3, 0.3, 50),
                              rng.uniform(0.0, 0.2, 50)])
    for offsets in (np.zeros(6), rng.uniform(-0.05, 0.05, 6), rng.uniform(-0.05, 0.05, 6)):
        cam.set_jitter(offsets)
        np.testing.assert_allclose(cam.project(points), _pinhole(config, offsets, points),
                                   atol=1e-3)
    # The look-at point is the image centre; +y is to the right (the camera faces -x).
    cam.set_jitter(np.zeros(6))
    np.testing.assert_allclose(cam.project(np.asarray(config.target)), [40, 30], atol=1e-4)
    assert cam.project(np.array([0.45, 0.05, 0.04]))[0] > 40
    # Outside the frame keeps its value; NaN stays NaN; leading dims are kept.
    far = cam.project(np.array([0.45, -2.0, 0.04]))
    assert far[0] < 0 and 0 < far[1] < 60
    assert np.isnan(cam.project(np.full(3, np.nan))).all()
    assert cam.project(points.reshape(5, 10, 3)).shape == (5, 10, 2)


# ----------------------------------------------------------------------------- rendering


def _seg(env: Any, obs: dict[str, Any]) -> np.ndarray:
    """Body id per pixel of the frame `obs` shows (-1: nothing), from pybullet's
    segmentation buffer with the env's own camera matrices and lighting."""
    u = env.unwrapped
    rgb, _ = _render_buffers(u.client, SIZE, SIZE, u.camera.view, u.camera.proj, u.lighting,
                             False)
    np.testing.assert_array_equal(rgb, obs[IMAGE])  # the matrices the observation uses
    _, seg = _render_buffers(u.client, SIZE, SIZE, u.camera.view, u.camera.proj, u.lighting,
                             True)
    return np.where(seg >= 0, seg & ((1 << 24) - 1), -1)


def _shown(seg: np.ndarray, uv: np.ndarray) -> int:
    """The body at continuous pixel (u, v) (pixel (r, c) covers [c, c+1) x [r, r+1))."""
    c, r = math.floor(uv[0]), math.floor(uv[1])
    return int(seg[r, c]) if 0 <= r < seg.shape[0] and 0 <= c < seg.shape[1] else -2


def _distance_to_mask(mask: np.ndarray, uv: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return math.inf
    return float(np.hypot(cols + 0.5 - uv[0], rows + 0.5 - uv[1]).min())


def _check_at_reset(env: Any, seeds: range) -> tuple[int, int]:
    """(hits, named objects) over `seeds`; asserts that every miss is within a pixel of the
    object's own mask."""
    u = env.unwrapped
    hits = total = 0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        px = u.object_pixels()
        assert px.shape == (2, 2) and px.dtype == np.float32
        seg = _seg(env, obs)
        named = u.task.prompt_objects()
        assert np.isnan(px[1]).all() == ("ref" not in named)
        for row, key in enumerate(("obj", "ref")):
            if key not in named:
                continue
            total += 1
            body = named[key].body
            if _shown(seg, px[row]) == body:
                hits += 1
                continue
            # The AABB centre of a concave mesh (the random-blob rocks, a few pixels wide)
            # can fall just between its visible pixels; it is still at the object.
            dist = _distance_to_mask(seg == body, px[row])
            assert dist < 1.0, (u.task_name, seed, key, named[key].name, px[row], dist)
    return hits, total


@pytest.mark.parametrize("task", TASKS)
def test_object_pixels_land_on_the_named_objects(task: str) -> None:
    env = envs.make_env(task, image_size=SIZE)
    try:
        hits, total = _check_at_reset(env, range(8))
        assert total == 8 * (2 if SECOND[task] else 1)
        assert hits >= 0.85 * total, (hits, total)
    finally:
        env.close()


def test_object_pixels_follow_the_objects_through_oracle_episodes() -> None:
    """Along whole oracle episodes the projected centre shows the named object, unless the
    robot is in front of it (the fingers around a grasped object, the arm passing over) or,
    for the second object, the target that is carried over it or set on or in it. Never the
    table, a distractor or empty space: those would be a wrong projection."""
    for task in ("pick", "place", "move_near"):
        env = envs.make_env(task, image_size=SIZE)
        u = env.unwrapped
        shown: dict[str, list[bool]] = {"obj": [], "ref": []}
        try:
            for seed in (0, 3):
                obs, _ = env.reset(seed=seed)
                named = u.task.prompt_objects()
                bodies = {k: o.body for k, o in named.items()}
                while True:
                    px = u.object_pixels()
                    seg = _seg(env, obs)
                    for row, key in enumerate(("obj", "ref")):
                        if key not in named:
                            continue
                        body = _shown(seg, px[row])
                        allowed = {bodies[key], u.robot.body} | (
                            {bodies["obj"]} if key == "ref" else set())
                        if body not in allowed:  # a concave rock: next to its pixels
                            assert _distance_to_mask(seg == bodies[key], px[row]) < 1.0, (
                                task, seed, key, body)
                        shown[key].append(body == bodies[key])
                    obs, _, terminated, truncated, _ = env.step(u.oracle_action())
                    if terminated or truncated:
                        break
        finally:
            env.close()
        for key, seen in shown.items():
            if seen:
                assert np.mean(seen) > 0.7, (task, key, np.mean(seen), len(seen))


def test_object_pixels_move_with_the_camera_jitter() -> None:
    env = envs.make_env("place", image_size=SIZE, split_overrides={"camera_jitter": 0.05})
    u = env.unwrapped
    nominal = FrontCamera(u.camera_config)  # the same camera without this episode's jitter
    try:
        # The jittered projection still lands on the objects in the jittered frames ...
        hits, total = _check_at_reset(env, range(8))
        assert hits >= 0.85 * total
        # ... and differs from the unjittered one by pixels.
        moved = []
        for seed in range(8):
            env.reset(seed=seed)
            centre = object_position(u.client, u.task.target)
            moved.append(np.abs(u.object_pixels()[0] - nominal.project(centre)).max())
        assert np.median(moved) > 1.5, moved
        # A known jitter gives the independent pinhole's answer for both objects.
        env.reset(seed=0)
        offsets = np.array([0.03, -0.04, 0.02, -0.01, 0.05, 0.0])
        u.camera.set_jitter(offsets)
        centres = np.stack([object_position(u.client, u.task.target),
                            object_position(u.client, u.task.container)])
        np.testing.assert_allclose(u.object_pixels(),
                                   _pinhole(u.camera_config, offsets, centres), atol=1e-2)
    finally:
        env.close()


def test_object_pixels_are_privileged_and_follow_prompt_objects() -> None:
    env = envs.make_env("pick", image_size=32)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            env.unwrapped.object_pixels()
        obs, _ = env.reset(seed=1)
        assert OBJECT_PIXELS not in obs and OBJECT_PIXELS not in env.observation_space.spaces
        px = env.unwrapped.object_pixels()
        assert np.isfinite(px[0]).all() and np.isnan(px[1]).all()
        obs, *_ = env.step(np.zeros(8, dtype=np.float32))
        assert OBJECT_PIXELS not in obs
    finally:
        env.close()
    env = envs.make_env("stack", image_size=32)
    try:
        env.reset(seed=2)
        u = env.unwrapped
        want = u.camera.project(np.stack([object_position(u.client, u.task.target),
                                          object_position(u.client, u.task.base)]))
        np.testing.assert_allclose(u.object_pixels(), want, rtol=1e-6)
    finally:
        env.close()


# ----------------------------------------------------------------------------- store


def make_episode(seed: int, steps: int = 5, pixels: bool = True) -> Episode:
    # the pixels come from their own generator so that the frames match the plain episode's
    rng = np.random.default_rng(seed + 10_000)
    px = rng.uniform(-5, 40, (steps, 2, 2)).astype(np.float32)
    if seed % 2:
        px[:, 1] = np.nan  # no second object
    return synthetic_episode(seed, steps, H, W, object_pixels=px if pixels else None)


def _writer(path: Path, pixels: bool = True) -> ShardWriter:
    return ShardWriter(path, info=INFO, image_shape=(H, W, 3), chunk_frames=4,
                       privileged_keys=[OBJECT_PIXELS] if pixels else [])


def test_object_pixels_round_trip_in_the_store(tmp_path: Path) -> None:
    writer = _writer(tmp_path / shard_name(0))
    eps = [make_episode(s, steps=3 + s) for s in range(4)]
    for ep in eps:
        writer.append(ep)
    with pytest.raises(ValueError, match="privileged"):
        writer.append(make_episode(99, pixels=False))  # none: refused
    writer.close()
    store = EpisodeStore(tmp_path)
    assert store.privileged_keys == [OBJECT_PIXELS]
    assert store.info["privileged_keys"] == [OBJECT_PIXELS]
    for i, ep in enumerate(eps):
        got = store.episode(i)
        assert got.object_pixels.dtype == np.float32
        np.testing.assert_array_equal(got.object_pixels, ep.object_pixels)  # NaN included
        np.testing.assert_array_equal(got.image, ep.image)
    data = store.load()
    assert data.arrays[OBJECT_PIXELS].shape == (sum(len(e) for e in eps), 2, 2)
    np.testing.assert_array_equal(data.arrays[OBJECT_PIXELS],
                                  np.concatenate([e.object_pixels for e in eps]))
    store.verify()
    # Reopening to append needs the same labels.
    with pytest.raises(StoreError, match="object_pixels"):
        _writer(tmp_path / shard_name(0), pixels=False)
    again = _writer(tmp_path / shard_name(0))
    again.append(make_episode(10))
    again.close()
    assert EpisodeStore(tmp_path).num_episodes == 5


def test_stores_without_object_pixels_read_as_before(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "a" / shard_name(0), pixels=False)
    writer.append(make_episode(1, pixels=False))
    with pytest.raises(ValueError, match="privileged"):
        writer.append(make_episode(2))  # labels the shard does not store: refused
    writer.close()
    store = EpisodeStore(tmp_path / "a")
    assert store.privileged_keys == [] and "privileged_keys" not in store.info
    assert "privileged_keys" not in store.shards[0].info
    assert store.episode(0).object_pixels is None
    assert OBJECT_PIXELS not in store.load().arrays
    with pytest.raises(KeyError, match="object_pixels"):
        store.load(keys=[OBJECT_PIXELS])
    with pytest.raises(ValueError, match="privileged key"):
        ShardWriter(tmp_path / "b" / shard_name(0), info=INFO, image_shape=(H, W, 3),
                    privileged_keys=["where_the_cube_is"])


def test_shards_with_and_without_object_pixels_read_and_merge_with_nan(tmp_path: Path
                                                                       ) -> None:
    """Chosen over refusing: NaN already means "no value" in these labels (pick's second
    object), so a store that mixes labelled and unlabelled episodes keeps all of them and
    the loss skips the non-finite entries."""
    plain = _writer(tmp_path / "plain" / shard_name(0), pixels=False)
    plain.append(make_episode(0, steps=3, pixels=False))
    plain.close()
    labelled = _writer(tmp_path / "labelled" / shard_name(0))
    labelled.append(make_episode(2, steps=4))
    labelled.close()
    merged = merge([tmp_path / "plain", tmp_path / "labelled"], tmp_path / "merged")
    assert merged.privileged_keys == [OBJECT_PIXELS]
    assert np.isnan(merged.episode(0).object_pixels).all()
    assert merged.episode(0).object_pixels.shape == (3, 2, 2)
    np.testing.assert_array_equal(merged.episode(1).object_pixels,
                                  make_episode(2, steps=4).object_pixels)
    # One store with one shard of each kind reads the same way.
    mixed = tmp_path / "mixed"
    for i, (pixels, seed) in enumerate(((False, 0), (True, 2))):
        w = _writer(mixed / shard_name(i), pixels=pixels)
        w.append(make_episode(seed, steps=3 + i, pixels=pixels))
        w.close()
    store = EpisodeStore(mixed)
    assert store.privileged_keys == [OBJECT_PIXELS]
    assert store.info["privileged_keys"] == [OBJECT_PIXELS]  # the first shard has none
    px = store.load(keys=[OBJECT_PIXELS]).arrays[OBJECT_PIXELS]
    assert px.shape == (7, 2, 2) and np.isnan(px[:3]).all()
    np.testing.assert_array_equal(px[3:], make_episode(2, steps=4).object_pixels)
    assert np.isnan(store.episode(0).object_pixels).all()
    # Stores without them on both sides merge without them.
    none = merge([tmp_path / "plain"], tmp_path / "none")
    assert none.privileged_keys == [] and none.episode(0).object_pixels is None


def test_episode_refuses_object_pixels_of_the_wrong_shape() -> None:
    ep = make_episode(0)
    with pytest.raises(ValueError, match="object_pixels"):
        Episode(**{**ep.__dict__, "object_pixels": np.zeros((5, 2), np.float32)})
    with pytest.raises(ValueError, match="object_pixels"):
        Episode(**{**ep.__dict__, "object_pixels": np.zeros((4, 2, 2), np.float32)})
    with pytest.raises(ValueError, match="object_pixels"):
        Episode(**{**ep.__dict__, "object_pixels": np.zeros((5, 2, 2), np.int32)})
    half = Episode(**{**ep.__dict__, "object_pixels": ep.object_pixels.astype(np.float64)})
    assert half.object_pixels.dtype == np.float32


# ----------------------------------------------------------------------------- collection


def test_collect_stores_the_object_pixels_of_the_frames_it_stores(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path / "data"), tasks=("pick", "place"), episodes=2,
                        image_size=32, object_pixels=True, progress=False)
    collect(cfg)
    store = EpisodeStore(tmp_path / "data")
    assert store.privileged_keys == [OBJECT_PIXELS]
    assert store.info["collection"]["object_pixels"] is True
    tasks = set()
    for i in range(store.num_episodes):
        ep = store.episode(i)
        tasks.add(ep.task)
        assert ep.object_pixels.shape == (len(ep), 2, 2)
        assert np.isfinite(ep.object_pixels[:, 0]).all()
        assert np.isnan(ep.object_pixels[:, 1]).all() == (ep.task == "pick")
        env = envs.make_env(ep.task, image_size=32)
        try:
            obs, _ = env.reset(seed=int(ep.seed))
            np.testing.assert_array_equal(ep.image[0], obs[IMAGE])
            np.testing.assert_array_equal(ep.object_pixels[0], env.unwrapped.object_pixels())
            # Replay re-observes them exactly, step by step.
            again = replay(env, ep)
            np.testing.assert_array_equal(again.image, ep.image)
            np.testing.assert_array_equal(again.object_pixels, ep.object_pixels)
            bare = Episode(**{**ep.__dict__, "object_pixels": None})
            assert replay(env, bare).object_pixels is None
            np.testing.assert_array_equal(replay(env, bare, object_pixels=True).object_pixels,
                                          ep.object_pixels)
        finally:
            env.close()
        # The target moves in the frames: the labels are per step, not per episode.
        assert np.abs(ep.object_pixels[-1, 0] - ep.object_pixels[0, 0]).max() > 1.0
    assert tasks == {"pick", "place"}
    # Without the flag: the same episodes, no labels.
    plain = CollectConfig(output=str(tmp_path / "plain"), tasks=("pick", "place"), episodes=2,
                          image_size=32, progress=False)
    collect(plain)
    other = EpisodeStore(tmp_path / "plain")
    assert other.privileged_keys == [] and "privileged_keys" not in other.info
    for i in range(other.num_episodes):
        a, b = other.episode(i), store.episode(i)
        assert a.object_pixels is None and a.seed == b.seed
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.executed_action, b.executed_action)
    # A resumed run must keep the setting.
    with pytest.raises(StoreError, match="object_pixels"):
        collect(CollectConfig(output=str(tmp_path / "data"), tasks=("pick", "place"),
                              episodes=3, image_size=32, progress=False))


def test_the_pick_target_pixel_shows_the_target_colour() -> None:
    """The plain-colour check: at the projected centre the frame shows the target's colour
    (its visual shape's RGBA under the scene's lighting), as the segmentation says."""
    env = envs.make_env("pick", image_size=SIZE)
    u = env.unwrapped
    try:
        close = 0
        for seed in range(6):
            obs, _ = env.reset(seed=seed)
            uv = u.object_pixels()[0]
            c, r = math.floor(uv[0]), math.floor(uv[1])
            rgba = p.getVisualShapeData(u.task.target.body, physicsClientId=u.client)[0][7]
            want = np.asarray(rgba[:3])
            got = obs[IMAGE][r, c] / 255.0
            # Same hue: the pixel is a shaded version of the object's colour (cosine of the
            # colour directions), far from the table's.
            if np.linalg.norm(want) > 0.2 and np.linalg.norm(got) > 0.05:
                cos = float(want @ got / np.linalg.norm(want) / np.linalg.norm(got))
                close += cos > 0.9
            else:  # a black object: a dark pixel
                close += float(got.max()) < 0.35
        assert close >= 5, close
    finally:
        env.close()
