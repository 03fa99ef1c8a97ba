"""Gato's diagnostic acting readout (``act_readout='aux_frame_mean'``): a trained Gato with the
auxiliary frame-mean head can act through that head instead of its per-token decoding, which
separates what the observation tokens hold from what the per-token readout makes of them.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.gato import GatoConfig, GatoPolicy


def _build(compose_policy, env_info, *overrides: str) -> GatoPolicy:
    torch.manual_seed(0)
    policy = make_policy(compose_policy("gato_tiny", ["image_tokenizer=film_grid",
                                                      "text_mode=sentence", *overrides]),
                         DEFAULT_ACTION_SPEC, env_info)
    assert isinstance(policy, GatoPolicy)
    return policy.eval()


def test_it_acts_through_the_aux_head_and_feeds_its_bins_back(compose_policy, env_info,
                                                              text_encoder, make_obs) -> None:
    per_token = _build(compose_policy, env_info, "aux_frame_mean=1.0", "history=2")
    aux = _build(compose_policy, env_info, "aux_frame_mean=1.0", "history=2",
                 "act_readout=aux_frame_mean")
    assert torch.equal(aux.aux_head.weight, per_token.aux_head.weight)  # same weights
    head_out = []
    aux.aux_head.register_forward_hook(lambda m, i, o: head_out.append(o))
    logits = {}
    for cached in (True, False):
        aux.use_kv_cache = cached
        aux.reset("pick up the red block")
        logits[cached] = []
        for i in range(4):  # history 2: the fed action tokens are context for the next step
            action = aux.select_action(make_obs(i))
            logits[cached].append(aux.last_logits.clone())
            assert aux.last_logits.shape == (len(DEFAULT_ACTION_SPEC), aux.config.action_bins)
            assert torch.equal(torch.as_tensor(action),
                               aux.action_tokenizer.decode(aux.last_logits.argmax(-1)))
    assert len(head_out) == 8  # every step read the aux head, cached or not
    # the cache holds what a full recomputation over the episode holds
    for a, b in zip(logits[True], logits[False], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # and it is another readout than the per-token decoding of the same weights
    per_token.reset("pick up the red block")
    per_token.select_action(make_obs(0))
    assert not torch.allclose(per_token.last_logits, logits[True][0])


def test_a_checkpoint_copy_with_the_option_acts_through_the_head(compose_policy, env_info,
                                                                 text_encoder, make_obs,
                                                                 tmp_path) -> None:
    trained = _build(compose_policy, env_info, "aux_frame_mean=1.0")
    trained.save_pretrained(tmp_path / "ckpt")
    shutil.copytree(tmp_path / "ckpt", tmp_path / "diag")
    config = json.loads((tmp_path / "diag" / "config.json").read_text())
    config["config"]["act_readout"] = "aux_frame_mean"
    (tmp_path / "diag" / "config.json").write_text(json.dumps(config))
    loaded = {k: Policy.from_pretrained(tmp_path / k) for k in ("ckpt", "diag")}
    assert loaded["ckpt"].config.act_readout == "per_token"  # the default, old checkpoints
    for p in loaded.values():
        p.reset("pick up the red block")
        p.select_action(make_obs(0))
    assert not torch.allclose(loaded["ckpt"].last_logits, loaded["diag"].last_logits)


@pytest.mark.parametrize("fields, message", [
    ({"act_readout": "mean"}, "act_readout='mean'; expected one of"),
    ({"act_readout": "aux_frame_mean"}, "expected aux_frame_mean > 0 (got 0.0)"),
])
def test_bad_settings_are_named(fields, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GatoConfig(**fields)
