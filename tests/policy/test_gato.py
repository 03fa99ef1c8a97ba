"""Gato's grounding options: RT-1's image tokens in Gato's sequence, the text in every step,
the frame-mean readout (a diagnostic), the text left out of the sequence and the auxiliary
frame-mean loss beside the per-token readout.

Building, saving, reloading, causality and cached decoding of these variants are covered with
every other variant in test_policies.py; these tests check what each option changes.
"""

from __future__ import annotations

import json

import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.gato import GatoPolicy
from policy.tokenizers.images import FiLM, RT1ImageTokenizer

NEW_FIELDS = ("image_tokenizer", "image_tokens", "conv_channels", "conv_strides", "conv_blocks",
              "conv_expand", "conv_fused_stages", "text_position", "readout",
              "text_in_sequence", "aux_frame_mean", "act_readout", "grid_pool")


def _build(compose_policy, env_info, *overrides: str) -> GatoPolicy:
    torch.manual_seed(0)
    # no dataset statistics: the state tokens are unnormalized, which these tests do not mind
    policy = make_policy(compose_policy("gato_tiny", overrides), DEFAULT_ACTION_SPEC, env_info)
    assert isinstance(policy, GatoPolicy)
    return policy


def test_rt1_tokens_are_film_conditioned_on_the_instruction(compose_policy, env_info,
                                                            text_encoder, make_batch) -> None:
    policy = _build(compose_policy, env_info, "image_tokenizer=rt1_tokens")
    assert isinstance(policy.image_tokenizer, RT1ImageTokenizer)
    films = [m for m in policy.image_tokenizer.modules() if isinstance(m, FiLM)]
    batch = make_batch(b=3, t=policy.config.history)
    loss, _ = policy(batch)
    loss.backward()
    # identity at start, but the gradient reaches every FiLM layer of the stem
    assert films and all(f.proj.weight.grad.abs().sum() > 0 for f in films)
    for film in films:
        torch.nn.init.normal_(film.proj.weight, std=0.1)
    policy.eval()
    image, state = batch["image"][:1], batch["state"][:1]
    tokens = []
    for instruction in ("pick up the red block", "pick up the blue cylinder"):
        cond = policy.text_tokens([instruction])[2]
        tokens.append(policy.observation_tokens(image, state, False, cond))
    n = policy.config.image_tokens
    assert tokens[0].shape[2] == n + 2  # image tokens, state, separator
    assert not torch.allclose(tokens[0][..., :n, :], tokens[1][..., :n, :])
    assert torch.equal(tokens[0][..., n:, :], tokens[1][..., n:, :])


def test_per_step_text_sits_after_the_image_in_every_step(compose_policy, env_info,
                                                          text_encoder, make_batch) -> None:
    policy = _build(compose_policy, env_info, "text_position=per_step").eval()
    prefix = _build(compose_policy, env_info)
    assert policy.step_len == prefix.step_len + 1
    batch = make_batch(b=2, t=policy.config.history)
    text, _, cond = policy.text_tokens(batch["instruction"])
    obs = policy.observation_tokens(batch["image"], batch["state"], False, cond, text)
    slot = policy.obs_len - 1  # just before the separator, after the image and state tokens
    for t in range(policy.config.history):
        assert torch.allclose(obs[:, t, slot], text[:, 0] + policy.local_pos[slot])
    # the instruction reaches the actions through the repeated token alone (no prefix)
    other = {**batch, "instruction": list(reversed(batch["instruction"]))}
    with torch.no_grad():
        a, b = policy.logits_and_targets(batch)[0], policy.logits_and_targets(other)[0]
    assert not torch.allclose(a, b)


def test_per_step_text_reads_the_frame_before_the_separator(compose_policy, env_info,
                                                            text_encoder, make_batch) -> None:
    """Where the text sits decides whether its output can depend on the current frame."""
    outputs = {}
    for position in ("prefix", "per_step"):
        policy = _build(compose_policy, env_info, f"text_position={position}").eval()
        seen = []
        policy.transformer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o))
        batch = make_batch(b=2, t=1)
        changed = {**batch, "image": 255 - batch["image"]}
        hidden = []
        for b in (batch, changed):
            with torch.no_grad():
                policy.logits_and_targets(b)
            hidden.append(seen[-1])
        # the text token: position 0 of the prefix, or its slot inside the (only) step
        slot = 0 if position == "prefix" else policy.obs_len - 1
        outputs[position] = torch.allclose(hidden[0][:, slot], hidden[1][:, slot], atol=1e-6)
    assert outputs == {"prefix": True, "per_step": False}


def test_checkpoints_saved_before_the_options_load_as_gato(compose_policy, env_info,
                                                           text_encoder, make_batch,
                                                           tmp_path) -> None:
    policy = _build(compose_policy, env_info).eval()
    policy.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for name in NEW_FIELDS:  # a config.json written before these fields existed
        del saved["config"][name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = Policy.from_pretrained(tmp_path)
    assert loaded.config.image_tokenizer == "patches"
    assert loaded.config.text_position == "prefix"
    assert loaded.config.readout == "per_token" and loaded.config.text_in_sequence
    assert loaded.config.aux_frame_mean == 0.0 and loaded.aux_head is None
    assert loaded.config.act_readout == "per_token"
    batch = make_batch(b=2, t=policy.config.history)
    with torch.no_grad():
        assert torch.equal(loaded.logits_and_targets(batch)[0],
                           policy.logits_and_targets(batch)[0])


def test_frame_mean_reads_every_dimension_at_once_from_the_frame(compose_policy, env_info,
                                                                 text_encoder, make_batch) -> None:
    policy = _build(compose_policy, env_info, "readout=frame_mean").eval()
    per_token = _build(compose_policy, env_info)
    # no action tokens in the sequence: a step is its image, state and separator tokens
    assert policy.step_len == per_token.step_len - len(DEFAULT_ACTION_SPEC)
    assert not hasattr(policy, "action_embed")
    assert policy.head.out_features == len(DEFAULT_ACTION_SPEC) * policy.config.action_bins
    batch = make_batch(b=2, t=policy.config.history)
    changed = {**batch, "action": -batch["action"]}
    with torch.no_grad():
        logits = policy.logits_and_targets(batch)[0]
        # the labels are not inputs: no dimension conditions on another
        assert torch.equal(logits, policy.logits_and_targets(changed)[0])
    assert logits.shape[2:] == (len(DEFAULT_ACTION_SPEC), policy.config.action_bins)
    # the logits are the head over the mean of the last step's hidden states
    seen = []
    policy.transformer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        policy.logits_and_targets(batch)
    last = seen[-1][:, -policy.step_len:].mean(dim=1)
    expected = policy.head(last).view(2, len(DEFAULT_ACTION_SPEC), -1)
    assert torch.allclose(logits[:, -1], expected, atol=1e-5)


def test_text_outside_the_sequence_reaches_the_actions_through_film(compose_policy, env_info,
                                                                    text_encoder,
                                                                    make_batch) -> None:
    for stem in ("image_tokenizer=rt1_tokens", "patch_film=true"):
        policy = _build(compose_policy, env_info, stem, "text_in_sequence=false")
        with_text = _build(compose_policy, env_info, stem)
        for film in policy.modules():  # FiLM starts as identity: make it matter
            if isinstance(film, FiLM):
                torch.nn.init.normal_(film.proj.weight, std=0.1)
        policy.eval()
        seen = []
        policy.transformer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o))
        batch = make_batch(b=2, t=policy.config.history)
        other = {**batch, "instruction": list(reversed(batch["instruction"]))}
        with torch.no_grad():
            a, b = policy.logits_and_targets(batch)[0], policy.logits_and_targets(other)[0]
        # no text token: the sequence is the steps alone
        assert seen[-1].shape[1] == policy.config.history * policy.step_len
        assert policy.step_len == with_text.step_len
        assert not torch.allclose(a, b)  # the instruction still matters, through the stem
        policy.reset(batch["instruction"][0])
        assert policy._text.shape[1] == 0 and len(policy._cache) == 0


def test_aux_frame_mean_adds_a_frame_mean_loss_and_leaves_acting_per_token(
        compose_policy, env_info, text_encoder, make_batch, make_obs, tmp_path) -> None:
    base = _build(compose_policy, env_info, "image_tokenizer=rt1_tokens")
    assert base.aux_head is None  # off by default: no new parameters, old checkpoints load
    policies = {w: _build(compose_policy, env_info, "image_tokenizer=rt1_tokens",
                          f"aux_frame_mean={w}").eval() for w in (0.5, 2.0)}
    policy = policies[0.5]
    a = len(DEFAULT_ACTION_SPEC)
    assert policy.aux_head.out_features == a * policy.config.action_bins
    # the same seed builds the same per-token model; the aux head comes after it
    assert torch.equal(policy.head.weight, base.head.weight)
    batch = make_batch(b=2, t=policy.config.history)
    with torch.no_grad():
        logits, aux, targets, valid = policy._outputs_and_targets(batch)
        assert torch.equal(logits, base.eval().logits_and_targets(batch)[0])
        # the aux head reads the mean of the observation tokens, never its step's action
        # tokens (an earlier step's, inside the window, are context, as in acting)
        action = batch["action"].clone()
        action[:, -1] = -action[:, -1]
        changed = {**batch, "action": action}
        assert not torch.equal(logits, policy._outputs_and_targets(changed)[0])
        assert torch.equal(aux, policy._outputs_and_targets(changed)[1])
    seen = []
    policy.transformer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        policy.logits_and_targets(batch)
    obs = seen[-1][:, -policy.step_len:][:, :policy.obs_len + 1].mean(dim=1)
    assert torch.allclose(aux[:, -1], policy.aux_head(obs).view(2, a, -1), atol=1e-5)
    # the loss is the per-token loss plus the weighted aux loss, and grows with the weight
    losses = {}
    for w, p in policies.items():
        with torch.no_grad():
            loss, metrics = p(batch)
        assert metrics["loss"] == pytest.approx(metrics["token_loss"] + w * metrics["aux_loss"],
                                                rel=1e-5)
        losses[w] = loss.item()
    assert losses[2.0] > losses[0.5]
    with torch.no_grad():
        assert metrics["token_loss"] == pytest.approx(base(batch)[0].item(), rel=1e-5)
    # training reaches the aux head and, through the mean, the image stem
    policy.train()
    loss, _ = policy(batch)
    loss.backward()
    assert policy.aux_head.weight.grad.abs().sum() > 0
    # acting never calls the aux head: the same actions as the policy without it
    policy.eval()
    calls = []
    policy.aux_head.register_forward_hook(lambda m, i, o: calls.append(1))
    for p in (policy, base):
        p.reset("pick up the red block")
    for i in range(3):
        assert torch.equal(torch.as_tensor(policy.select_action(make_obs(i))),
                           torch.as_tensor(base.select_action(make_obs(i))))
        assert torch.equal(policy.last_logits, base.last_logits)
    assert not calls
    # saved and reloaded with its head
    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path).eval()
    assert loaded.config.aux_frame_mean == 0.5
    with torch.no_grad():
        assert torch.equal(loaded._outputs_and_targets(batch)[1], aux)
