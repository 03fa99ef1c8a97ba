"""Gato on patch tokens from RT-1's FiLM stem (GatoConfig.image_tokenizer="film_grid"): the
stem runs over the whole frame, conditioned on the sentence, and its feature map is averaged
over the patch grid, one token per patch."""

from __future__ import annotations

import math

import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.gato import GatoConfig

from .test_gato_grounding import marked_patch_accuracies
from .test_policies import STATS


@pytest.fixture
def build(compose_policy, env_info, text_encoder):
    def build_one(*overrides: str) -> Policy:
        torch.manual_seed(0)
        config = compose_policy("gato_tiny", ("image_tokenizer=film_grid", *overrides))
        return make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)

    return build_one


def test_one_token_per_patch_in_row_major_order(build) -> None:
    """32 px at 8 px patches: 16 tokens; darkening only the bottom-right quarter of the frame
    moves the bottom-right cells' tokens more than the top-left ones'."""
    policy = build("patch_size=8").eval()
    assert policy.n_image == 16
    tokenizer = policy.image_tokenizer
    text = torch.randn(1, policy.config.text_dim)
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[:, :, 16:, 16:] = 0.0
    with torch.no_grad():
        a, b = tokenizer(x, text), tokenizer(y, text)
    assert a.shape == (1, 16, policy.config.d_model)
    change = (a - b).norm(dim=-1)[0].view(4, 4)
    assert change[3, 3] > 3 * change[0, 0], change


def test_the_sentence_conditions_every_patch(build) -> None:
    policy = build().eval()
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for p in policy.image_tokenizer.parameters():  # FiLM starts at identity: open it
            p.add_(torch.randn_like(p) * 0.05)
        one = policy.image_tokenizer(image, torch.randn(1, policy.config.text_dim))
        two = policy.image_tokenizer(image, torch.randn(1, policy.config.text_dim))
    assert ((one - two).norm(dim=-1) > 1e-4).all()


def test_grounding_loss_scores_the_grid_and_learns_the_marked_patch(build, make_batch) -> None:
    """The grounding labels (the named object's patch) fit film_grid's tokens as they fit
    Gato's patches: a white square in one random cell per sample is found well above chance
    (1 in 16)."""
    accs = marked_patch_accuracies(build("patch_size=8", "grounding_loss=1.0", "augment_shift=0",
                                         "augment_mirror=0.0"), make_batch)
    assert math.fsum(accs[-10:]) / 10 > 0.6, accs[-10:]


def test_it_acts_and_round_trips_through_a_checkpoint(build, make_obs, tmp_path) -> None:
    policy = build("aux_frame_mean=1.0").eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.image_tokenizer == "film_grid"
    for p in (policy, loaded):
        p.reset()
    for seed in range(2):
        assert (policy.select_action(make_obs(seed)) == loaded.select_action(make_obs(seed))).all()


class FixedMap(torch.nn.Module):
    """A stand-in stem that returns a given feature map whatever the frame."""

    def __init__(self, fmap: torch.Tensor) -> None:
        super().__init__()
        self.fmap = fmap

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.fmap.expand(images.shape[0], -1, -1, -1)


def test_concat_pool_keeps_where_in_its_patch_a_feature_sits(build) -> None:
    """grid_pool='concat': a token is the projection of its cell's feature vectors in order
    (row-major cells, row-major positions within a cell); swapping two positions inside one
    cell moves that token alone, which the mean cannot see."""
    policy = build("patch_size=16", "grid_pool=concat").eval()
    tok = policy.image_tokenizer
    assert tok.cell == 2 and policy.n_image == 4  # 32 px: a 4x4 map, 2x2 cells of 2x2
    c = tok.proj.in_features // 4
    fmap = torch.randn(1, c, 4, 4)
    swapped = fmap.clone()
    swapped[..., 0, 0], swapped[..., 1, 1] = fmap[..., 1, 1], fmap[..., 0, 0]  # in cell 0
    tok.positions = None
    text = torch.randn(1, policy.config.text_dim)
    with torch.no_grad():
        tok.backbone = FixedMap(fmap)
        a = tok(torch.rand(1, 3, 32, 32), text)
        tok.backbone = FixedMap(swapped)
        b = tok(torch.rand(1, 3, 32, 32), text)
        cell = torch.cat([fmap[0, :, 2, 0], fmap[0, :, 2, 1], fmap[0, :, 3, 0], fmap[0, :, 3, 1]])
        assert torch.allclose(a[0, 2], tok.proj(cell), atol=1e-5)  # cell (1, 0)
    moved = (a - b).norm(dim=-1)[0]
    assert moved[0] > 1e-3 and torch.all(moved[1:] == 0)
    mean = build("patch_size=16").eval().image_tokenizer
    mean.positions = None
    with torch.no_grad():
        mean.backbone = FixedMap(fmap)
        x = mean(torch.rand(1, 3, 32, 32), text)
        mean.backbone = FixedMap(swapped)
        assert torch.allclose(x, mean(torch.rand(1, 3, 32, 32), text), atol=1e-6)


@pytest.mark.parametrize("fields, message", [
    ({"image_tokenizer": "film_grid", "patch_film": True}, "needs text_mode='sentence' and "
                                                           "patch_film=False"),
    ({"image_tokenizer": "film_grid", "text_mode": "subword"}, "needs text_mode='sentence'"),
    ({"image_tokenizer": "grid"}, "image_tokenizer='grid'; expected one of"),
    ({"image_tokenizer": "film_grid", "grid_pool": "max"}, "grid_pool='max'; expected one of"),
    ({"grid_pool": "concat"}, "grid_pool='concat' needs image_tokenizer='film_grid'"),
])
def test_bad_settings_are_named(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        GatoConfig(**fields)


def test_a_frame_that_does_not_cut_into_patches_is_named(compose_policy, env_info,
                                                        text_encoder) -> None:
    """Native 96 px at 36 px patches: the grid would not cover the frame."""
    config = compose_policy("gato_tiny", ("image_tokenizer=film_grid", "resize_to=null",
                                          "patch_size=36"))
    with pytest.raises(ValueError, match="96 px frame does not cut into 36 px patches"):
        make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)
