"""Background masks (collect.background_mask): the env's mask covers the table and not the
robot or the objects, leaves the pixels as they were, and the store keeps it per frame
while stores without masks read as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p
import pytest
from synthetic import synthetic_episode

import envs
from envs.camera import background_mask
from envs.collect import CollectConfig, collect
from envs.spec import BACKGROUND_MASK, DEFAULT_ACTION_SPEC, IMAGE
from envs.store import Episode, EpisodeStore, ShardWriter, StoreError, merge, shard_name

SIZE = 64
H = W = 16
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10}


def make_episode(seed: int, steps: int = 5) -> Episode:
    return synthetic_episode(seed, steps, H, W)


def assert_same(a: Episode, b: Episode) -> None:
    for key in ("image", "state", "action", "executed_action"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert (a.instruction, a.seed) == (b.instruction, b.seed)


def _project(env: Any, xyz: np.ndarray) -> tuple[int, int]:
    """(row, col) of a world point in the front camera's image."""
    view = np.asarray(env.camera.view).reshape(4, 4).T
    proj = np.asarray(env.camera.proj).reshape(4, 4).T
    clip = proj @ view @ np.append(xyz, 1.0)
    ndc = clip[:3] / clip[3]
    return int((1 - ndc[1]) / 2 * SIZE), int((ndc[0] + 1) / 2 * SIZE)


def test_the_mask_marks_the_table_and_not_the_objects_or_the_robot() -> None:
    env = envs.make_env("pick", image_size=SIZE, background_mask=True)
    plain = envs.make_env("pick", image_size=SIZE)
    try:
        obs, _ = env.reset(seed=5)
        ref, _ = plain.reset(seed=5)
        mask = obs[BACKGROUND_MASK]
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert env.observation_space[BACKGROUND_MASK].contains(mask)
        # Rendering with the segmentation buffer changes no pixel.
        np.testing.assert_array_equal(obs[IMAGE], ref[IMAGE])
        c = env.client
        bodies = [p.getBodyUniqueId(i, physicsClientId=c) for i in range(p.getNumBodies(
            physicsClientId=c))]
        objects = [b for b in bodies if b not in (env.table, env.robot.body)]
        assert objects
        # Every object's centre pixel is foreground; a table point far from everything is
        # background; the robot's hand is foreground.
        for body in objects:
            pos, _ = p.getBasePositionAndOrientation(body, physicsClientId=c)
            r, col = _project(env, np.asarray(pos))
            assert mask[r, col] == 0, body
        hand = p.getLinkState(env.robot.body, 8, physicsClientId=c)[4]
        r, col = _project(env, np.asarray(hand))
        assert mask[r, col] == 0
        # The same mask from the segmentation buffer directly: background = table or nothing.
        _, _, _, _, seg = p.getCameraImage(SIZE, SIZE, env.camera.view, env.camera.proj,
                                           renderer=p.ER_TINY_RENDERER, physicsClientId=c)
        seg = np.asarray(seg).reshape(SIZE, SIZE)
        np.testing.assert_array_equal(mask, np.isin(seg, [-1, env.table]).astype(np.uint8))
        assert 0.5 < mask.mean() < 0.99  # mostly table, with robot and objects cut out
        assert (seg == env.table)[mask == 1].mean() > 0.8
        # A step keeps giving masks.
        obs, *_ = env.step(np.zeros(8, dtype=np.float32))
        assert obs[BACKGROUND_MASK].shape == (SIZE, SIZE)
        assert BACKGROUND_MASK not in ref
    finally:
        env.close()
        plain.close()


def test_background_mask_ignores_link_indices() -> None:
    seg = np.array([[-1, 0, 2], [2 + (3 << 24), 1 + (1 << 24), 0]])
    np.testing.assert_array_equal(background_mask(seg, [1, 2]), [[1, 1, 0], [0, 0, 1]])


def _masked(seed: int, steps: int = 5) -> Episode:
    ep = make_episode(seed, steps)
    ep.background_mask = np.random.default_rng(seed + 1).integers(0, 2, (steps, H, W),
                                                                  dtype=np.uint8)
    return ep


def test_mask_round_trip_in_the_store(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3),
                         chunk_frames=4, mask_keys=[BACKGROUND_MASK])
    eps = [_masked(s, steps=3 + s) for s in range(4)]
    for ep in eps:
        writer.append(ep)
    with pytest.raises(ValueError, match="masks"):
        writer.append(make_episode(99))  # no mask: refused
    writer.close()
    store = EpisodeStore(tmp_path)
    assert store.mask_keys == [BACKGROUND_MASK] and store.info["mask_keys"] == [BACKGROUND_MASK]
    for i, ep in enumerate(eps):
        got = store.episode(i)
        assert_same(got, ep)
        np.testing.assert_array_equal(got.background_mask, ep.background_mask)
    data = store.load()
    np.testing.assert_array_equal(data.arrays[BACKGROUND_MASK],
                                  np.concatenate([e.background_mask for e in eps]))
    store.verify()
    # Reopening to append needs the same masks.
    with pytest.raises(StoreError, match="masks"):
        ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3))
    # Merge keeps them.
    merged = merge([tmp_path], tmp_path.parent / "merged")
    np.testing.assert_array_equal(merged.episode(2).background_mask, eps[2].background_mask)


def test_stores_without_masks_read_as_before(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "a" / shard_name(0), info=INFO, image_shape=(H, W, 3))
    writer.append(make_episode(1))
    with pytest.raises(ValueError, match="masks"):
        writer.append(_masked(2))  # a mask the shard does not store: refused
    writer.close()
    store = EpisodeStore(tmp_path / "a")
    assert store.mask_keys == [] and "mask_keys" not in store.info
    assert store.episode(0).background_mask is None
    with pytest.raises(KeyError, match="background_mask"):
        store.load(keys=[BACKGROUND_MASK])
    # A store whose shards disagree offers only the masks every shard has.
    masked = ShardWriter(tmp_path / "a" / shard_name(1), info=INFO, image_shape=(H, W, 3),
                         mask_keys=[BACKGROUND_MASK])
    masked.append(_masked(3))
    masked.close()
    both = EpisodeStore(tmp_path / "a")
    assert both.mask_keys == [] and both.num_episodes == 2
    assert both.episode(1).background_mask is not None


def test_episode_refuses_a_mask_of_the_wrong_shape() -> None:
    ep = make_episode(0)
    with pytest.raises(ValueError, match="background_mask"):
        Episode(**{**ep.__dict__, "background_mask": np.zeros((5, H, W + 1), np.uint8)})


def test_collect_stores_the_masks_of_the_frames_it_stores(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path / "data"), tasks=("pick",), episodes=2,
                        image_size=32, background_mask=True, progress=False)
    collect(cfg)
    store = EpisodeStore(tmp_path / "data")
    assert store.mask_keys == [BACKGROUND_MASK]
    ep = store.episode(0)
    assert ep.background_mask.shape == ep.image.shape[:3]
    env = envs.make_env("pick", image_size=32, background_mask=True)
    try:
        obs, _ = env.reset(seed=int(ep.seed))
        np.testing.assert_array_equal(ep.image[0], obs[IMAGE])
        np.testing.assert_array_equal(ep.background_mask[0], obs[BACKGROUND_MASK])
    finally:
        env.close()
