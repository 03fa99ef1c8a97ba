"""Gato's ImageNet per-patch encoder (GatoConfig.patch_encoder="efficientnet_lite0")."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.gato import GatoConfig
from policy.tokenizers.images import LITE0_IMAGENET

from .test_policies import STATS


@pytest.fixture
def lite(compose_policy, env_info, text_encoder):
    def build(**fields) -> Policy:
        torch.manual_seed(0)
        config = replace(compose_policy("gato_tiny"), patch_encoder="efficientnet_lite0",
                         lite_blocks=5, lite_frozen=3, **fields)
        return make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)

    return build


def test_imagenet_weights_load_and_only_the_top_blocks_train(lite, make_batch) -> None:
    policy = lite(pretrained_backbone="imagenet").train()
    encoder = policy.image_tokenizer.lite
    shipped = load_file(str(LITE0_IMAGENET))
    own = encoder.state_dict()
    loaded = [k for k in own if k in shipped]
    assert len(loaded) == 3 + 6 + 4 * 9  # stem, block 0, blocks 1-4: every pretrained layer
    assert sorted({k.split(".")[0] for k in own if k not in shipped}) == ["head"]  # no FiLM
    for k in loaded:
        assert torch.equal(own[k], shipped[k]), k
    frozen = {n: p.detach().clone() for n, p in encoder.named_parameters()
              if n.startswith(("stem.", "blocks.0.", "blocks.1.", "blocks.2."))}
    trained = {n: p.detach().clone() for n, p in encoder.named_parameters()
               if n.startswith(("blocks.3.", "blocks.4.", "head."))}
    assert frozen and trained and not any(p.requires_grad for n, p in encoder.named_parameters()
                                          if n in frozen)
    optim = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = policy(make_batch(b=2, t=policy.config.history))
    loss.backward()
    optim.step()
    after = dict(encoder.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert sum(not torch.equal(after[n], v) for n, v in trained.items()) >= len(trained) - 2


def test_each_patch_is_encoded_on_its_own(lite) -> None:
    """Changing one patch's pixels changes that patch's token only (Gato's patch encoding)."""
    tokenizer = lite().image_tokenizer.eval()
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[:, :, :16, 16:] = torch.rand(1, 3, 16, 16)  # the top-right patch of the 2 x 2 grid
    with torch.no_grad():
        changed = (tokenizer(x) - tokenizer(y)).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [False, True, False, False]


def test_it_acts_and_round_trips_through_a_checkpoint(lite, make_obs, tmp_path) -> None:
    policy = lite(pretrained_backbone="imagenet").eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.patch_encoder == "efficientnet_lite0"
    for p in (policy, loaded):
        p.reset()
    for seed in range(2):
        assert (policy.select_action(make_obs(seed)) == loaded.select_action(make_obs(seed))).all()


@pytest.mark.parametrize("fields, message", [
    ({"patch_encoder": "vit"}, "patch_encoder='vit'; expected one of"),
    ({"patch_encoder": "efficientnet_lite0", "image_tokenizer": "rt1_tokens"},
     "needs image_tokenizer='patches'"),
    ({"pretrained_backbone": "imagenet"}, "needs patch_encoder='efficientnet_lite0'"),
    ({"patch_encoder": "efficientnet_lite0", "lite_blocks": 5, "lite_frozen": 5},
     "lite_frozen=5; expected 0..4"),
    ({"patch_encoder": "efficientnet_lite0", "patch_size": 12},
     "needs patch_size a multiple of 8"),
])
def test_bad_settings_are_named(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        GatoConfig(**fields)
