"""EpisodeDataset with visual prompts: each window carries its episode's crops; old stores
give the same items as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from envs.spec import DEFAULT_ACTION_SPEC, INSTRUCTION, MAX_PROMPT_IMAGES, PROMPT_IMAGES
from envs.store import Episode, ShardWriter, shard_name
from policy.data import EpisodeDataset

H = W = 8
S = 4
K = MAX_PROMPT_IMAGES
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict()}


def episode(seed: int, first_step: int, steps: int, slots: int, task: str = "pick",
            success: bool = True) -> Episode:
    """State encodes the global step; crop pixels encode the seed (slot s: 10 * seed + s + 1)."""
    n = np.arange(first_step, first_step + steps)
    crops = np.zeros((K, S, S, 3), dtype=np.uint8)
    for s in range(slots):
        crops[s] = 10 * seed + s + 1
    instruction = {0: f"{task} the block {seed}", 1: f"{task} the {{image}} {seed}",
                   2: "put the {image} in the {image}"}[slots]
    return Episode(
        image=np.broadcast_to(n[:, None, None, None] % 256, (steps, H, W, 3)).astype(np.uint8),
        state=np.repeat(n[:, None], 8, axis=1).astype(np.float32),
        action=np.zeros((steps, 8), np.float32),
        executed_action=np.zeros((steps, 8), np.float32),
        instruction=instruction, task=task, split="seen", seed=seed, success=success,
        prompt_images=crops, prompt_words=tuple(f"word{seed}{s}" for s in range(slots)),
    )


def crop_seed(item: dict) -> int:
    """Which episode's crops an item carries (0 for a text-only one's zero crops)."""
    return int(item[PROMPT_IMAGES][0, 0, 0, 0]) // 10


@pytest.fixture
def store(tmp_path: Path) -> Path:
    # Shard 0 (prompts): seed 1 (1 slot, 3 steps), seed 2 (text-only, 2 steps), seed 3
    # (2 slots, 4 steps, push); shard 1 (no prompts): seed 4 (3 steps), seed 5 (a failure).
    with ShardWriter(tmp_path / shard_name(0), INFO, image_shape=(H, W, 3), chunk_frames=2,
                     prompt_image_size=S) as w:
        w.append(episode(1, 0, 3, slots=1))
        w.append(episode(2, 3, 2, slots=0))
        w.append(episode(3, 5, 4, slots=2, task="push"))
    with ShardWriter(tmp_path / shard_name(1), INFO, image_shape=(H, W, 3),
                     chunk_frames=2) as w:
        w.append(episode(4, 9, 3, slots=0))
        w.append(episode(5, 12, 2, slots=0, success=False))
    return tmp_path


@pytest.mark.parametrize("in_memory", [True, False])
def test_items_carry_their_episodes_crops(store: Path, in_memory: bool) -> None:
    ds = EpisodeDataset(store, history=2, in_memory=in_memory)
    assert ds.prompt_image_shape == (K, S, S, 3)
    assert len(ds) == 12  # the failure (seed 5) is dropped
    # Step -> episode: 0-2 seed 1, 3-4 seed 2, 5-8 seed 3, 9-11 seed 4 (no-prompt shard).
    want = [1, 1, 1, 0, 0, 3, 3, 3, 3, 0, 0, 0]
    items = [ds[i] for i in range(len(ds))]
    assert [crop_seed(it) for it in items] == want
    for it in items:
        assert it[PROMPT_IMAGES].shape == (K, S, S, 3) and it[PROMPT_IMAGES].dtype == torch.uint8
    # Seed 3's two slots differ and are both filled; seed 1's second slot is zero.
    assert items[5][PROMPT_IMAGES][:, 0, 0, 0].tolist() == [31, 32]
    assert items[0][PROMPT_IMAGES][:, 0, 0, 0].tolist() == [11, 0]
    # A window reaching back into its episode's padding still carries that episode's crops.
    assert items[3]["pad"].tolist() == [True, False] and crop_seed(items[3]) == 0
    assert items[5][INSTRUCTION] == "put the {image} in the {image}"  # markers kept
    assert items[0][INSTRUCTION] == "pick the {image} 1"


def test_batches_collate_to_b_k_s_s_3(store: Path) -> None:
    ds = EpisodeDataset(store, history=3)
    batch = next(iter(DataLoader(ds, batch_size=5, shuffle=False)))
    assert batch[PROMPT_IMAGES].shape == (5, K, S, S, 3)
    assert batch[PROMPT_IMAGES].dtype == torch.uint8
    assert batch["image"].shape == (5, 3, H, W, 3)
    assert [int(x) // 10 for x in batch[PROMPT_IMAGES][:, 0, 0, 0, 0]] == [1, 1, 1, 0, 0]
    assert isinstance(batch[INSTRUCTION], list) and len(batch[INSTRUCTION]) == 5


def test_task_selection_keeps_crops_aligned(store: Path) -> None:
    ds = EpisodeDataset(store, history=1, tasks=["push"])
    assert len(ds) == 4
    assert {crop_seed(ds[i]) for i in range(4)} == {3}
    ds = EpisodeDataset(store, history=1, tasks=["pick"], successes_only=False)
    assert [crop_seed(ds[i]) for i in range(len(ds))] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_store_without_prompts_gives_the_items_of_before(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / shard_name(0), INFO, image_shape=(H, W, 3)) as w:
        w.append(episode(1, 0, 3, slots=0))
        w.append(episode(2, 3, 2, slots=0))
    ds = EpisodeDataset(tmp_path, history=2)
    assert ds.prompt_image_shape is None
    item = ds[1]
    assert sorted(item) == ["action", "image", "instruction", "pad", "state"]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert PROMPT_IMAGES not in batch
