"""Object boxes in training batches: EpisodeDataset carries them per frame (T, 8, 4) when the
store has them (batches (B, T, 8, 4)) in both in_memory modes, padded windows repeat the
episode's first step, stores without them give the same items as before, and a store
collected with collect.object_boxes reads back with the env's boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import envs
from envs.collect import CollectConfig, collect
from envs.spec import DEFAULT_ACTION_SPEC, MAX_OBJECT_BOXES, OBJECT_BOXES
from envs.store import Episode, EpisodeStore, ShardWriter, shard_name
from policy.data import EpisodeDataset

H, W = 6, 10
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict()}


def numbered_episode(seed: int, first_step: int, steps: int, boxes: bool = True) -> Episode:
    """Every value encodes its global step number n: box row 0 = [n, n + 0.25, n + 0.5,
    n + 0.75] / 100, row 1 the same + 0.005 in the place episodes, NaN past them."""
    n = np.arange(first_step, first_step + steps, dtype=np.float32)
    b = np.full((steps, MAX_OBJECT_BOXES, 4), np.nan, dtype=np.float32)
    b[:, 0] = (n[:, None] + np.array([0, 0.25, 0.5, 0.75], np.float32)) / 100
    if seed % 2:
        b[:, 1] = b[:, 0] + 0.005
    return Episode(
        image=np.broadcast_to((n % 256)[:, None, None, None], (steps, H, W, 3)).astype(
            np.uint8),
        state=np.repeat(n[:, None], 8, axis=1),
        action=np.repeat(n[:, None], 8, axis=1) / 100,
        executed_action=np.zeros((steps, 8), np.float32),
        instruction=f"pick {seed}", task="pick", split="seen", seed=seed,
        success=seed != 99, object_boxes=b if boxes else None,
    )


def _store(root: Path, boxes: bool = True) -> Path:
    keys = [OBJECT_BOXES] if boxes else []
    with ShardWriter(root / shard_name(0), INFO, image_shape=(H, W, 3), chunk_frames=2,
                     observation_keys=keys) as w0:
        w0.append(numbered_episode(0, 0, 3, boxes))
        w0.append(numbered_episode(1, 3, 5, boxes))
    with ShardWriter(root / shard_name(1), INFO, image_shape=(H, W, 3), chunk_frames=2,
                     observation_keys=keys) as w1:
        w1.append(numbered_episode(2, 8, 4, boxes))
        w1.append(numbered_episode(99, 12, 2, boxes))  # a failure: not loaded
    return root


@pytest.mark.parametrize("in_memory", [True, False])
def test_items_carry_the_object_boxes_of_their_frames(tmp_path: Path, in_memory: bool) -> None:
    ds = EpisodeDataset(_store(tmp_path), history=3, in_memory=in_memory)
    assert ds.has_object_boxes is True
    # Window ending at step 4 (episode 1 starts at 3): steps 3, 3 (padded), 4.
    item = ds[4]
    boxes = item[OBJECT_BOXES]
    assert boxes.dtype == torch.float32 and tuple(boxes.shape) == (3, MAX_OBJECT_BOXES, 4)
    assert item["pad"].tolist() == [True, False, False]
    torch.testing.assert_close(boxes[:, 0, 0] * 100, item["state"][:, 0])
    torch.testing.assert_close(boxes[:, 1], boxes[:, 0] + 0.005)
    assert torch.isnan(boxes[:, 2:]).all()
    # Episode 2 (steps 8..11) has one box a step.
    last = ds[len(ds) - 1][OBJECT_BOXES]
    torch.testing.assert_close(last[:, 0, 0] * 100, torch.tensor([9.0, 10.0, 11.0]))
    assert torch.isnan(last[:, 1:]).all()
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert tuple(batch[OBJECT_BOXES].shape) == (4, 3, MAX_OBJECT_BOXES, 4)
    torch.testing.assert_close(batch[OBJECT_BOXES][:, :, 0, 0] * 100, batch["state"][:, :, 0])


def test_stores_without_object_boxes_give_the_same_items(tmp_path: Path) -> None:
    plain = EpisodeDataset(_store(tmp_path / "plain", boxes=False), history=2)
    boxed = EpisodeDataset(_store(tmp_path / "boxed"), history=2)
    assert plain.has_object_boxes is False
    for i in range(len(plain)):
        a, b = plain[i], boxed[i]
        assert OBJECT_BOXES not in a and set(b) - set(a) == {OBJECT_BOXES}
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key]


def test_a_collected_store_reads_back_with_the_env_boxes(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path / "data"), tasks=("pick", "place"), episodes=2,
                        image_size=64, workers=1, object_boxes=True, progress=False)
    collect(cfg)
    store = EpisodeStore(tmp_path / "data")
    for in_memory in (True, False):
        ds = EpisodeDataset(tmp_path / "data", history=2, in_memory=in_memory)
        assert ds.has_object_boxes and len(ds) == store.num_steps
        start = 0
        for e in range(store.num_episodes):
            ep = store.episode(e)
            first = ds[start][OBJECT_BOXES]  # the window of the episode's first step: padded
            np.testing.assert_array_equal(first.numpy(), ep.object_boxes[[0, 0]])
            end = ds[start + len(ep) - 1][OBJECT_BOXES]
            np.testing.assert_array_equal(end.numpy(), ep.object_boxes[-2:])
            start += len(ep)
    # The first frame's boxes are what the env observes at reset.
    ep = store.episode(0)
    env = envs.make_env(ep.task, image_size=64, object_boxes=True)
    try:
        obs, _ = env.reset(seed=int(ep.seed))
        np.testing.assert_array_equal(ds[0][OBJECT_BOXES][-1].numpy(), obs[OBJECT_BOXES])
    finally:
        env.close()
