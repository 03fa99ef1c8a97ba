"""Background augmentation (RT1Config.augment_background, policy/background.py): the texture
bank never shows a held-out appearance, only background pixels change, the mirror keeps image
and mask aligned, the dataset carries the masks, and missing masks are named."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.scenes import FAMILIES, held_out_colours, min_distance
from envs.spec import BACKGROUND_MASK, DEFAULT_ACTION_SPEC, IMAGE
from envs.store import Episode, ShardWriter, shard_name
from policy.augment import mirror_batch
from policy.background import (
    BackgroundBank,
    background_batch,
    check_background_masks,
    replace_background,
    texture_bank,
)


def test_every_texel_of_the_bank_keeps_the_margin_from_held_out_colours() -> None:
    """All 256 textures, texel by texel: at least 0.15 RGB from every colour of the
    backgrounds split (flat tables, colours covering >= 2% of its textures) and every object
    colour; muted (HSV saturation <= 0.45); no checker or grid family exists to draw."""
    spec = BackgroundBank()
    assert spec.keep_away_from == "backgrounds" and spec.margin >= 0.15
    assert spec.saturation[1] <= 0.45
    bank = texture_bank().numpy()
    assert bank.shape == (spec.size, 64, 64, 3) and bank.dtype == np.uint8
    avoid = held_out_colours("backgrounds")
    worst = min(min_distance(tex, avoid) for tex in bank)
    assert worst >= spec.margin, worst
    assert not set(FAMILIES) & {"checker", "checkers", "grid"}
    for tex in bank[::8]:
        corners = tex[[0, 0, -1, -1], [0, -1, 0, -1]] / 255.0  # pure palette colours
        assert max(colorsys.rgb_to_hsv(*c)[1] for c in corners) <= spec.saturation[1] + 0.02
    assert len({t.tobytes() for t in bank}) == spec.size  # 256 distinct tables


def _scene(b: int = 6, t: int = 2, size: int = 32, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(30, 220, (b, t, size, size, 3), generator=g, dtype=torch.uint8)
    mask = (torch.rand(b, t, size, size, generator=g) < 0.7).to(torch.uint8)
    return image, mask


def test_only_background_pixels_change_and_frames_share_a_texture() -> None:
    image, mask = _scene()
    # a flat-lit table: one luminance everywhere on the background -> the texture itself
    image[mask.bool()] = 128
    out = replace_background(image, mask, 1.0, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == image.shape
    fg = ~mask.bool()
    assert torch.equal(out[fg], image[fg])  # robot and objects untouched
    assert (out[mask.bool()] != image[mask.bool()]).any(-1).float().mean() > 0.9
    # the two frames of a sample show the same table where both are background
    both = mask[:, 0].bool() & mask[:, 1].bool()
    assert torch.equal(out[:, 0][both], out[:, 1][both])
    # with uniform luminance, every new pixel is a texel of the bank (or within rounding)
    texels = texture_bank().reshape(-1, 3).unique(dim=0).float()
    new = out[mask.bool()].float()[:200]
    assert torch.cdist(new, texels).min(1).values.max() <= 1.0
    # prob 0 and samples not drawn come back unchanged; the input is never modified
    before = image.clone()
    assert torch.equal(replace_background(image, mask, 0.0), image)
    half = replace_background(image, mask, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(image, before)
    changed = [(half[i] != image[i]).any().item() for i in range(len(image))]
    assert 0 < sum(changed) < len(image)


def test_shading_carries_over() -> None:
    """A darker background pixel stays darker on the new table."""
    image, mask = _scene(b=1, t=1)
    mask[:] = 1
    image[0, 0, :16] = 100
    image[0, 0, 16:] = 200
    out = replace_background(image, mask, 1.0, bank=torch.full((1, 8, 8, 3), 120,
                                                               dtype=torch.uint8))
    lum = out.float().mean(-1)[0, 0]
    assert lum[:16].mean() < lum[16:].mean()
    # the frame's median luminance maps to the texel itself
    assert set(out[0, 0, 16:].flatten().tolist()) <= {119, 120, 121} or \
        set(out[0, 0, :16].flatten().tolist()) <= {119, 120, 121}


def test_mirror_keeps_image_and_mask_aligned() -> None:
    image, mask = _scene(b=8)
    image[..., 0] = mask * 255  # the red channel draws the mask
    batch = {IMAGE: image, BACKGROUND_MASK: mask, "state": torch.zeros(8, 2, 8),
             "action": torch.zeros(8, 2, 8), "instruction": ["pick the left block"] * 8}
    out = mirror_batch(batch, DEFAULT_ACTION_SPEC.names, 0.5,
                       generator=torch.Generator().manual_seed(0))
    flipped = [not torch.equal(out[IMAGE][i], image[i]) for i in range(8)]
    assert 0 < sum(flipped) < 8
    assert torch.equal(out[IMAGE][..., 0], out[BACKGROUND_MASK] * 255)
    # replacement, then the mirror (RT-1's order): the robot and object pixels are the
    # mirrored originals, and the mask still marks exactly the replaced pixels
    aug = mirror_batch(background_batch(batch, 1.0), DEFAULT_ACTION_SPEC.names, 0.5,
                       generator=torch.Generator().manual_seed(0))
    mirrored = torch.where(torch.tensor(flipped).view(8, 1, 1, 1, 1), image.flip(3), image)
    fg = ~aug[BACKGROUND_MASK].bool()
    assert torch.equal(aug[IMAGE][fg], mirrored[fg])
    assert (aug[IMAGE][~fg] != mirrored[~fg]).any(-1).float().mean() > 0.9


def test_errors_name_the_missing_masks() -> None:
    image, mask = _scene()
    with pytest.raises(ValueError, match="mask has shape"):
        replace_background(image, mask[:, :1], 0.5)
    with pytest.raises(ValueError, match="uint8"):
        replace_background(image.float(), mask, 0.5)
    with pytest.raises(KeyError, match="collect.background_mask"):
        background_batch({IMAGE: image}, 0.5)
    with pytest.raises(ValueError, match="collect.background_mask=true"):
        check_background_masks({"image_keys": ["image"]}, 0.5)
    check_background_masks({"mask_keys": [BACKGROUND_MASK]}, 0.5)


def test_rt1_option_validates_and_refuses_a_store_without_masks(env_info: dict) -> None:
    from policy import make_policy
    from policy.rt1 import RT1Config

    with pytest.raises(ValueError, match="augment_background"):
        RT1Config(augment_background=1.5)
    with pytest.raises(ValueError, match="background masks"):
        make_policy(RT1Config(augment_background=0.5), DEFAULT_ACTION_SPEC, env_info, None)
    assert RT1Config().augment_background == 0.0  # off by default


def test_conf_default_is_off(compose_policy) -> None:
    assert compose_policy("rt1").augment_background == 0.0
    assert compose_policy("rt1", ("augment_background=0.5",)).augment_background == 0.5


def _store(path: Path, masks: bool, size: int = 16) -> None:
    rng = np.random.default_rng(0)
    info = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10,
            "camera": {"eye": [0.9, 0.0, 0.5], "target": [0.45, 0.0, 0.04]}}
    writer = ShardWriter(path / shard_name(0), info=info, image_shape=(size, size, 3),
                         mask_keys=[BACKGROUND_MASK] if masks else [])
    for seed in range(3):
        n = 4 + seed
        writer.append(Episode(
            image=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            background_mask=(rng.integers(0, 2, (n, size, size), dtype=np.uint8)
                             if masks else None),
            state=rng.normal(size=(n, 8)).astype(np.float32),
            action=rng.uniform(-1, 1, (n, 8)).astype(np.float32),
            executed_action=rng.uniform(-1, 1, (n, 8)).astype(np.float32),
            instruction="pick up the red block", task="pick", split="seen", seed=seed,
            success=True))
    writer.close()


@pytest.mark.parametrize("in_memory", [True, False])
def test_dataset_items_carry_the_masks_of_their_frames(tmp_path: Path, in_memory: bool) -> None:
    from envs.store import EpisodeStore
    from policy.data import EpisodeDataset

    _store(tmp_path / "m", masks=True, size=12)  # 12 px: packing pads the row to 16 bits
    ds = EpisodeDataset(tmp_path / "m", history=2, in_memory=in_memory)
    assert ds.mask_keys == [BACKGROUND_MASK]
    raw = EpisodeStore(tmp_path / "m").load(keys=[IMAGE, BACKGROUND_MASK]).arrays
    items = ds.__getitems__(list(range(len(ds))))
    for i, item in enumerate(items):
        idx, _ = ds.window(i)
        assert item[BACKGROUND_MASK].dtype == torch.uint8
        np.testing.assert_array_equal(item[BACKGROUND_MASK].numpy(), raw[BACKGROUND_MASK][idx])
        np.testing.assert_array_equal(item[IMAGE].numpy(), raw[IMAGE][idx])
    _store(tmp_path / "plain", masks=False)
    plain = EpisodeDataset(tmp_path / "plain", history=1, in_memory=in_memory)
    assert plain.mask_keys == [] and BACKGROUND_MASK not in plain[0]


def test_rt1_trains_a_step_with_background_augmentation(tmp_path: Path, text_encoder) -> None:
    from torch.utils.data import default_collate

    from policy import make_policy
    from policy.data import EpisodeDataset
    from policy.rt1 import RT1Config

    _store(tmp_path, masks=True, size=16)
    ds = EpisodeDataset(tmp_path, history=1)
    cfg = RT1Config(history=1, resize_to=16, augment_background=1.0, conv_strides=(1, 1, 1),
                    d_model=32, n_layer=1, n_head=2)
    policy = make_policy(cfg, ds.action_spec, ds.info, ds.stats)
    policy.train()
    loss, _ = policy(default_collate(ds.__getitems__(list(range(8)))))
    loss.backward()
    assert torch.isfinite(loss)
