"""EpisodeDataset: windows, padding at episode starts, task filter, batches, lazy reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from envs.spec import DEFAULT_ACTION_SPEC
from envs.store import Episode, ShardWriter, StoreError, shard_name
from policy.data import EpisodeDataset

H = W = 8
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict()}


def numbered_episode(seed: int, first_step: int, steps: int, task: str) -> Episode:
    """Every value encodes its global step number, so a window shows where it came from."""
    n = np.arange(first_step, first_step + steps)
    return Episode(
        image=np.broadcast_to(n[:, None, None, None] % 256, (steps, H, W, 3)).astype(np.uint8),
        state=np.repeat(n[:, None], 8, axis=1).astype(np.float32),
        action=np.repeat(n[:, None], 8, axis=1).astype(np.float32) / 100,
        executed_action=np.zeros((steps, 8), np.float32),
        instruction=f"{task} {seed}",
        task=task,
        split="seen",
        seed=seed,
        success=seed != 99,
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    # Shard 0: episodes of 3 and 5 steps; shard 1: one of 4 steps (task push) and a failure.
    w0 = ShardWriter(tmp_path / shard_name(0), INFO, image_shape=(H, W, 3), chunk_frames=2)
    w0.append(numbered_episode(0, 0, 3, "pick"))
    w0.append(numbered_episode(1, 3, 5, "pick"))
    w1 = ShardWriter(tmp_path / shard_name(1), INFO, image_shape=(H, W, 3), chunk_frames=2)
    w1.append(numbered_episode(2, 8, 4, "push"))
    w1.append(numbered_episode(99, 12, 2, "push"))
    return tmp_path


def steps_of(item: dict) -> list[int]:
    return item["state"][:, 0].int().tolist()


def test_windows_pad_by_repeating_the_first_frame(store: Path) -> None:
    ds = EpisodeDataset(store, history=4)
    assert len(ds) == 12  # the failed episode is dropped by default
    # Step 1 of episode 0: two padded copies of frame 0, then frames 0 and 1.
    item = ds[1]
    assert steps_of(item) == [0, 0, 0, 1]
    assert item["pad"].tolist() == [True, True, False, False]
    assert item["image"].shape == (4, H, W, 3) and item["image"].dtype == torch.uint8
    assert item["image"][:, 0, 0, 0].tolist() == [0, 0, 0, 1]
    # The first step of episode 1 never sees episode 0.
    assert steps_of(ds[3]) == [3, 3, 3, 3]
    assert ds[3]["pad"].tolist() == [True, True, True, False]
    # A full window inside episode 1, and the first window of the second shard.
    assert steps_of(ds[7]) == [4, 5, 6, 7]
    assert not ds[7]["pad"].any()
    assert steps_of(ds[8]) == [8, 8, 8, 8]
    assert ds[8]["instruction"] == "push 2"
    np.testing.assert_allclose(ds[7]["action"][:, 0].numpy(), [0.04, 0.05, 0.06, 0.07])
    with pytest.raises(IndexError, match="outside dataset of 12"):
        ds[12]


def test_history_one_and_attributes(store: Path) -> None:
    ds = EpisodeDataset(store, history=1)
    assert [steps_of(ds[i]) for i in range(len(ds))] == [[s] for s in range(12)]
    assert ds.action_spec == DEFAULT_ACTION_SPEC
    assert ds.info["renderer"] == "tiny"
    assert ds.stats["state"]["max"][0] == 11.0  # over the selected (successful) steps only
    assert set(ds.stats["action"]) == {"min", "max", "mean", "std", "p01", "p99"}


def test_task_filter_and_failures(store: Path) -> None:
    ds = EpisodeDataset(store, history=2, tasks=["push"])
    assert [steps_of(ds[i]) for i in range(len(ds))] == [[8, 8], [8, 9], [9, 10], [10, 11]]
    ds_all = EpisodeDataset(store, history=2, tasks=["push"], successes_only=False)
    assert len(ds_all) == 6 and steps_of(ds_all[4]) == [12, 12]
    with pytest.raises(ValueError, match=r"tasks \['stack'\] are not in store"):
        EpisodeDataset(store, tasks=["stack"])
    with pytest.raises(ValueError, match="history must be >= 1"):
        EpisodeDataset(store, history=0)


def test_lazy_reads_match_memory_and_batches_collate(store: Path) -> None:
    mem = EpisodeDataset(store, history=3)
    lazy = EpisodeDataset(store, history=3, in_memory=False)
    for i in range(len(mem)):
        a, b = mem[i], lazy[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["pad"], b["pad"])
    batch = next(iter(DataLoader(mem, batch_size=5, shuffle=False)))
    assert batch["image"].shape == (5, 3, H, W, 3)
    assert batch["state"].shape == (5, 3, 8) and batch["state"].dtype == torch.float32
    assert batch["pad"].shape == (5, 3) and batch["pad"].dtype == torch.bool
    assert batch["instruction"] == ["pick 0"] * 3 + ["pick 1"] * 2


def test_skip_bad_shards_drops_a_corrupted_shard(store: Path) -> None:
    chunk = store / shard_name(0) / "data" / "image" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated: fails its checksum when read
    with pytest.raises(StoreError, match="corrupted chunk 1"):
        EpisodeDataset(store)
    with pytest.warns(UserWarning, match="skipping bad shard"):
        ds = EpisodeDataset(store, history=2, skip_bad_shards=True)
    assert [steps_of(ds[i]) for i in range(len(ds))] == [[8, 8], [8, 9], [9, 10], [10, 11]]


def test_each_window_knows_its_task(store: Path) -> None:
    ds = EpisodeDataset(store, history=2)
    assert ds.tasks == ["pick", "push"]
    assert [ds.tasks[t] for t in ds.task_of_window] == ["pick"] * 8 + ["push"] * 4
    only_push = EpisodeDataset(store, tasks=["push"])
    assert [only_push.tasks[t] for t in only_push.task_of_window] == ["push"] * 4


def test_wrist_frames_load_only_when_asked(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / shard_name(0), INFO, image_shape=(H, W, 3), chunk_frames=2,
                    image_keys=("image", "wrist_image"))
    ep = numbered_episode(0, 0, 3, "pick")
    ep.wrist_image = ep.image.copy()
    w.append(ep)
    assert EpisodeDataset(tmp_path).image_keys == ["image", "wrist_image"]
    assert "wrist_image" in EpisodeDataset(tmp_path, wrist_camera=True)[0]
    front = EpisodeDataset(tmp_path, wrist_camera=False)
    assert front.image_keys == ["image"] and "wrist_image" not in front[0]


def test_a_wrist_policy_on_a_front_only_store_is_refused(store: Path) -> None:
    with pytest.raises(ValueError, match="reads the wrist camera but store .* no 'wrist_image'"):
        EpisodeDataset(store, wrist_camera=True)
