"""RT-1 and Gato reading multimodal prompts: "pick up the {image}" with the object's crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC, MAX_PROMPT_IMAGES, PROMPT_IMAGES
from policy import Policy, make_policy
from policy.tokenizers.images import FiLM
from policy.tokenizers.prompt import PromptImageEncoder, slot_mask

from .test_policies import STATS

S = 32
VISUAL = "pick up the {image}"
TEXT = "pick up the red cube"
KINDS = [("rt1_tiny", ()), ("gato_tiny", ()), ("gato_tiny", ("text_mode=subword",)),
         ("gato_tiny", ("image_tokenizer=rt1_tokens",))]


@pytest.fixture
def prompt_env_info(env_info) -> dict:
    return {**env_info, "prompt_image_shape": [MAX_PROMPT_IMAGES, S, S, 3]}


@pytest.fixture
def build(compose_policy, prompt_env_info, text_encoder):
    def build_one(name: str, overrides: tuple[str, ...] = ()) -> Policy:
        torch.manual_seed(0)
        config = compose_policy(name, (*overrides, "prompt_images=true"))
        policy = make_policy(config, DEFAULT_ACTION_SPEC, prompt_env_info, STATS)
        # FiLM starts as the identity (no gradient reaches its input): as after some training
        for film in (m for m in policy.modules() if isinstance(m, FiLM)):
            torch.nn.init.normal_(film.proj.weight, std=0.05)
        return policy

    return build_one


def _crops(seed: int, n: int = 1) -> np.ndarray:
    out = np.zeros((MAX_PROMPT_IMAGES, S, S, 3), dtype=np.uint8)
    out[:n] = np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    return out


def _batch(make_batch, instructions: list[str], t: int) -> dict:
    batch = make_batch(b=len(instructions), t=t)
    batch["instruction"] = instructions
    batch[PROMPT_IMAGES] = torch.stack([torch.from_numpy(_crops(i, 1 if "{image}" in text else 0))
                                        for i, text in enumerate(instructions)])
    return batch


@pytest.mark.parametrize(("name", "overrides"), KINDS, ids=["-".join([n, *o]) for n, o in KINDS])
def test_the_crop_changes_what_the_policy_does_and_survives_a_reload(
        build, make_batch, make_obs, tmp_path, name, overrides) -> None:
    policy = build(name, overrides)
    assert policy.reads_prompt_images and policy.prompt_encoder is not None
    batch = _batch(make_batch, [VISUAL, TEXT, VISUAL], policy.config.history)
    loss, _ = policy(batch)
    loss.backward()
    grads = [p.grad for p in policy.prompt_encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    policy.eval()
    with torch.no_grad():
        logits = policy.logits_and_targets(batch)[0]
        other = dict(batch, **{PROMPT_IMAGES: batch[PROMPT_IMAGES].flip(0)})
        swapped = policy.logits_and_targets(other)[0]
    # sample 1 is text only: its crops (zeros) do not matter; samples 0 and 2 swap crops
    assert torch.equal(logits[1], swapped[1])
    assert not torch.allclose(logits[0], swapped[0])
    # acting: the crop comes with the observation, constant over the episode
    obs = [dict(make_obs(i, VISUAL), **{PROMPT_IMAGES: _crops(7)}) for i in range(3)]
    actions = [policy.select_action(o) for o in obs]
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert loaded.reads_prompt_images and loaded.prompt_shape == (MAX_PROMPT_IMAGES, S, S, 3)
    loaded.reset(VISUAL, _crops(7)[:1])  # one crop per slot works as well as the padded array
    for o, a in zip(obs, actions, strict=True):
        assert np.array_equal(loaded.select_action(o), a)


def test_the_same_words_with_another_crop_start_another_episode(build, make_obs) -> None:
    policy = build("rt1_tiny")
    first = [policy.select_action(dict(make_obs(i, VISUAL), **{PROMPT_IMAGES: _crops(1)}))
             for i in range(2)]
    again = policy.select_action(dict(make_obs(0, VISUAL), **{PROMPT_IMAGES: _crops(2)}))
    policy.reset(VISUAL, _crops(1))
    assert np.array_equal(policy.select_action(dict(make_obs(0, VISUAL),
                                                    **{PROMPT_IMAGES: _crops(1)})), first[0])
    assert policy.instruction == VISUAL and not np.array_equal(again, first[0])


def test_text_only_policies_and_missing_crops_are_refused_by_name(
        build, compose_policy, env_info, make_obs, text_encoder) -> None:
    text_only = make_policy(compose_policy("rt1_tiny"), DEFAULT_ACTION_SPEC, env_info, STATS)
    assert not text_only.reads_prompt_images
    with pytest.raises(ValueError, match=r"shows 1 object\(s\) by image, and this policy reads "
                                         "text prompts only"):
        text_only.reset(VISUAL)
    with pytest.raises(ValueError, match="env_info has none: collect its store with "
                                         r"collect.visual_prompts > 0"):
        make_policy(compose_policy("rt1_tiny", ("prompt_images=true",)), DEFAULT_ACTION_SPEC,
                    env_info, STATS)
    policy = build("gato_tiny")
    with pytest.raises(ValueError, match="no prompt images came with reset"):
        policy.select_action(make_obs(0, VISUAL))
    with pytest.raises(ValueError, match=r"expected uint8 \(1, 32, 32, 3\), one per '\{image\}'"):
        policy.reset(VISUAL, np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="has 3 image slots; expected at most 2"):
        policy.reset("put {image} on {image} by {image}")
    with pytest.raises(KeyError, match="batch lacks 'prompt_images'"):
        policy.unpack_prompt({"instruction": [VISUAL]})


def test_text_only_prompts_add_nothing_to_rt1s_conditioning() -> None:
    enc = PromptImageEncoder(out_dim=16, image_size=S, empty_token=True)
    images = torch.from_numpy(np.stack([_crops(0, 2), _crops(1, 0)]))
    filled = slot_mask(["put {image} in {image}", TEXT])
    assert filled.tolist() == [[True, True], [False, False]]
    pooled = enc.pooled(images, filled)
    assert torch.equal(pooled[1], torch.zeros(16)) and pooled[0].abs().sum() > 0
    tokens = enc.slot_tokens(images, filled)
    assert torch.equal(tokens[1, 0], (enc.empty + enc.slot_embedding[0]).detach())
    with pytest.raises(ValueError, match=r"expected uint8 \(B, 2, 32, 32, 3\)"):
        enc(images.float())
