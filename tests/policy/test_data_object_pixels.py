"""Object pixels in training batches: EpisodeDataset carries them per frame (T, 2, 2) when
the store has them (batches (B, T, 2, 2)), stores without them give the same items as
before, and the left-right mirror maps u to W - u with the front image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import envs
from envs.camera import _render_buffers
from envs.spec import DEFAULT_ACTION_SPEC, IMAGE, OBJECT_PIXELS, STATE_NAMES
from envs.store import Episode, ShardWriter, shard_name
from policy.augment import mirror_batch
from policy.data import EpisodeDataset

H, W = 6, 10  # not square: the mirror must use the width
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict()}
NAMES = DEFAULT_ACTION_SPEC.names


def numbered_episode(seed: int, first_step: int, steps: int, task: str = "place",
                     pixels: bool = True) -> Episode:
    """Every value encodes its global step number: object pixels [[n, n + 0.5], [n + 0.25,
    NaN for pick]]."""
    n = np.arange(first_step, first_step + steps, dtype=np.float32)
    px = np.stack([np.stack([n, n + 0.5], -1), np.stack([n + 0.25, n + 0.75], -1)], 1)
    if task == "pick":
        px[:, 1] = np.nan
    return Episode(
        image=np.broadcast_to((n % 256)[:, None, None, None], (steps, H, W, 3)).astype(
            np.uint8),
        state=np.repeat(n[:, None], 8, axis=1),
        action=np.repeat(n[:, None], 8, axis=1) / 100,
        executed_action=np.zeros((steps, 8), np.float32),
        instruction=f"{task} {seed}", task=task, split="seen", seed=seed,
        success=seed != 99, object_pixels=px if pixels else None,
    )


def _store(root: Path, pixels: tuple[bool, bool] = (True, True)) -> Path:
    w0 = ShardWriter(root / shard_name(0), INFO, image_shape=(H, W, 3), chunk_frames=2,
                     privileged_keys=[OBJECT_PIXELS] if pixels[0] else [])
    w0.append(numbered_episode(0, 0, 3, "pick", pixels[0]))
    w0.append(numbered_episode(1, 3, 5, "place", pixels[0]))
    w0.close()
    w1 = ShardWriter(root / shard_name(1), INFO, image_shape=(H, W, 3), chunk_frames=2,
                     privileged_keys=[OBJECT_PIXELS] if pixels[1] else [])
    w1.append(numbered_episode(2, 8, 4, "place", pixels[1]))
    w1.append(numbered_episode(99, 12, 2, "place", pixels[1]))  # a failure: not loaded
    w1.close()
    return root


@pytest.mark.parametrize("in_memory", [True, False])
def test_items_carry_the_object_pixels_of_their_frames(tmp_path: Path, in_memory: bool
                                                       ) -> None:
    ds = EpisodeDataset(_store(tmp_path), history=3, in_memory=in_memory)
    assert ds.label_keys == [OBJECT_PIXELS]
    # Window ending at step 4 (episode 1 starts at 3): steps 3, 3 (padded), 4.
    item = ds[4]
    px = item[OBJECT_PIXELS]
    assert px.dtype == torch.float32 and tuple(px.shape) == (3, 2, 2)
    assert px[:, 0, 0].tolist() == [3.0, 3.0, 4.0] == item["state"][:, 0].tolist()
    assert px[:, 0, 1].tolist() == [3.5, 3.5, 4.5]
    assert px[:, 1, 0].tolist() == [3.25, 3.25, 4.25]
    # The pick episode has no second object: NaN.
    first = ds[1][OBJECT_PIXELS]
    assert torch.isnan(first[:, 1]).all() and torch.isfinite(first[:, 0]).all()
    assert first[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert tuple(batch[OBJECT_PIXELS].shape) == (4, 3, 2, 2)
    torch.testing.assert_close(batch[OBJECT_PIXELS][:, :, 0, 0], batch["state"][:, :, 0])


def test_stores_without_object_pixels_give_the_same_items(tmp_path: Path) -> None:
    plain = EpisodeDataset(_store(tmp_path / "plain", (False, False)), history=2)
    labelled = EpisodeDataset(_store(tmp_path / "labelled"), history=2)
    assert plain.label_keys == []
    for i in range(len(plain)):
        a, b = plain[i], labelled[i]
        assert OBJECT_PIXELS not in a and set(b) - set(a) == {OBJECT_PIXELS}
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key]


def test_a_store_mixing_shards_with_and_without_gives_nan(tmp_path: Path) -> None:
    ds = EpisodeDataset(_store(tmp_path, (True, False)), history=1)
    assert ds.label_keys == [OBJECT_PIXELS]
    steps = [int(ds[i]["state"][0, 0]) for i in range(len(ds))]
    for i, step in enumerate(steps):
        px = ds[i][OBJECT_PIXELS]
        assert torch.isnan(px).all() == (step >= 8), step  # shard 1 has none


# ----------------------------------------------------------------------------- mirror


def _batch(b: int = 4, t: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    px = torch.rand(b, t, 2, 2, generator=g) * torch.tensor([W, H]) * 1.4 - 2
    px[0, :, 1] = float("nan")
    return {
        "image": torch.randint(0, 256, (b, t, H, W, 3), dtype=torch.uint8, generator=g),
        "state": torch.randn(b, t, len(STATE_NAMES), generator=g),
        "action": torch.rand(b, t, len(NAMES), generator=g) * 2 - 1,
        "instruction": ["put the cube to the left of the bowl"] * b,
        OBJECT_PIXELS: px,
    }


def test_mirror_maps_u_to_width_minus_u() -> None:
    batch = _batch()
    before = batch[OBJECT_PIXELS].clone()
    out = mirror_batch(batch, NAMES, prob=1.0)
    px, got = batch[OBJECT_PIXELS], out[OBJECT_PIXELS]
    torch.testing.assert_close(got[..., 0], W - px[..., 0], equal_nan=True)
    torch.testing.assert_close(got[..., 1], px[..., 1], equal_nan=True)
    assert torch.isnan(got[0, :, 1]).all()
    torch.testing.assert_close(px, before, equal_nan=True)  # the input is left as it was
    twice = mirror_batch(out, NAMES, prob=1.0)
    torch.testing.assert_close(twice[OBJECT_PIXELS], px, equal_nan=True)
    # The other keys are mirrored exactly as without object pixels.
    bare = {k: v for k, v in batch.items() if k != OBJECT_PIXELS}
    ref = mirror_batch(bare, NAMES, prob=1.0)
    for key in ("image", "state", "action", "instruction"):
        assert (torch.equal(ref[key], out[key]) if isinstance(ref[key], torch.Tensor)
                else ref[key] == out[key])
    assert OBJECT_PIXELS not in ref
    assert mirror_batch(batch, NAMES, prob=0.0)[OBJECT_PIXELS] is px


def test_mirror_flips_only_the_mirrored_samples() -> None:
    batch = _batch(b=64, t=1)
    out = mirror_batch(batch, NAMES, prob=0.5, generator=torch.Generator().manual_seed(1))
    image_flipped = (out["image"] != batch["image"]).flatten(1).any(1)
    u_moved = (out[OBJECT_PIXELS][:, 0, 0, 0] != batch[OBJECT_PIXELS][:, 0, 0, 0])
    assert 10 < int(image_flipped.sum()) < 54
    assert torch.equal(image_flipped, u_moved)


def test_mirrored_pixels_land_on_the_object_in_the_mirrored_frame() -> None:
    """Rendered check of W - u: flip a frame and its segmentation left-right; the mirrored
    label's pixel shows the same body."""
    size = 64
    env = envs.make_env("place", image_size=size)
    u = env.unwrapped
    try:
        same = total = 0
        for seed in range(6):
            obs, _ = env.reset(seed=seed)
            px = torch.from_numpy(u.object_pixels())[None, None]  # (1, 1, 2, 2)
            _, seg = _render_buffers(u.client, size, size, u.camera.view, u.camera.proj,
                                     u.lighting, True)
            batch = {"image": torch.from_numpy(obs[IMAGE])[None, None],
                     "state": torch.zeros(1, 1, len(STATE_NAMES)),
                     "action": torch.zeros(1, 1, len(NAMES)), "instruction": ["x"],
                     OBJECT_PIXELS: px}
            out = mirror_batch(batch, NAMES, prob=1.0)
            assert torch.equal(out["image"][0, 0], batch["image"][0, 0].flip(1))
            flipped_seg = seg[:, ::-1]
            for row in range(2):
                a = px[0, 0, row].tolist()
                b = out[OBJECT_PIXELS][0, 0, row].tolist()
                here = seg[math.floor(a[1]), math.floor(a[0])]
                there = flipped_seg[math.floor(b[1]), math.floor(b[0])]
                total += 1
                same += int(here == there)
        assert same == total, (same, total)
    finally:
        env.close()
