"""RT-1 with object-centric tokens beside TokenLearner's (RT1Config.object_tokens): the front
stem's feature map pooled over each object box plus an embedding of the box, after the
TokenLearner tokens; the boxes follow the shift augmentation, are required exactly when the
option is on, and cross a saved checkpoint and the evaluation's env set-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC, MAX_OBJECT_BOXES, OBJECT_BOXES
from policy import Policy, make_policy
from policy.tokenizers.images import RT1ImageTokenizer

from .test_gato_objects import boxes_of, with_boxes
from .test_policies import STATS

K = MAX_OBJECT_BOXES


@pytest.fixture
def build(compose_policy, env_info, text_encoder):
    def build_one(*overrides: str) -> Policy:
        torch.manual_seed(0)
        config = compose_policy("rt1_tiny", ("object_tokens=true", *overrides))
        return make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)

    return build_one


def test_object_tokens_follow_the_learner_tokens(build) -> None:
    policy = build().eval()
    c = policy.config
    assert policy.reads_object_boxes
    assert policy.tokens_per_frame == c.image_tokens + K + int(c.use_state)
    assert policy.observation_shapes()[OBJECT_BOXES] == ((K, 4), "float32")
    tok = policy.image_tokenizer
    x = torch.rand(1, 3, 64, 64)
    text = torch.randn(1, c.text_dim)
    two = boxes_of([0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 1.0, 1.0])[None]
    moved = boxes_of([0.0, 0.0, 0.25, 0.25], [0.5, 0.0, 0.75, 0.25])[None]
    with torch.no_grad():
        a, b = tok(x, text, two), tok(x, text, moved)
    assert a.shape == (1, c.image_tokens + K, c.d_model)
    n = c.image_tokens
    assert torch.equal(a[0, :n], b[0, :n])  # TokenLearner's tokens do not read the boxes
    assert torch.equal(a[0, n], b[0, n])  # the unmoved box
    assert not torch.allclose(a[0, n + 1], b[0, n + 1])  # the moved one
    assert torch.equal(a[0, n + 2:], tok.empty_object.expand(K - 2, -1))  # empty slots


def test_the_default_rt1_reads_no_boxes(compose_policy, env_info, text_encoder,
                                        make_batch) -> None:
    policy = make_policy(compose_policy("rt1_tiny"), DEFAULT_ACTION_SPEC, env_info, STATS)
    assert not policy.reads_object_boxes and not policy.config.object_tokens
    assert OBJECT_BOXES not in policy.observation_shapes()
    batch = make_batch(b=2, t=policy.config.history, size=96)
    boxed = with_boxes(batch)
    with torch.no_grad():  # a store with boxes trains the default RT-1 as before
        policy.eval()
        a = policy.logits_and_targets(batch)[0]
        b = policy.logits_and_targets(boxed)[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="keep_learner=True needs objects"):
        RT1ImageTokenizer(d_model=32, text_dim=8, channels=(8, 16), strides=(2,), blocks=1,
                          expand=2, num_tokens=4, keep_learner=True)


def test_it_trains_on_boxes_and_needs_them(build, make_batch) -> None:
    policy = build().train()
    batch = with_boxes(make_batch(b=3, t=policy.config.history, size=96))
    loss, _ = policy(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert policy.image_tokenizer.box_embed.proj.weight.grad.abs().sum() > 0
    assert policy.image_tokenizer.token_learner is not None
    with pytest.raises(KeyError, match="collect.object_boxes=true"):
        policy({k: v for k, v in batch.items() if k != OBJECT_BOXES})
    policy.eval()
    moved = batch[OBJECT_BOXES].clone()
    moved[0, :, 0] = torch.tensor([0.70, 0.70, 0.95, 0.95])
    with torch.no_grad():
        a = policy.logits_and_targets(batch)[0]
        b = policy.logits_and_targets({**batch, OBJECT_BOXES: moved})[0]
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.equal(a[1:], b[1:])


def test_it_acts_after_a_round_trip_and_refuses_missing_boxes(build, make_obs,
                                                              tmp_path) -> None:
    policy = build().eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.reads_object_boxes and loaded.config.object_tokens
    for p in (policy, loaded):
        p.reset()
    rng = np.random.default_rng(0)
    for seed in range(3):
        obs = make_obs(seed)
        lo = rng.uniform(0, 0.6, (3, 2))
        obs[OBJECT_BOXES] = np.full((K, 4), np.nan, np.float32)
        obs[OBJECT_BOXES][:3] = np.concatenate([lo, lo + 0.2], axis=1)
        assert (policy.select_action(obs) == loaded.select_action(obs)).all()
    with pytest.raises(KeyError, match="object_boxes=True"):
        policy.select_action(make_obs(9))


def test_evaluation_makes_its_envs_with_boxes_and_it_acts_in_them(build) -> None:
    import envs
    from policy.benchmark import reads_boxes
    from policy.evaluation.runner import EnvSettings

    policy = build().eval()
    assert reads_boxes(policy.config)
    kw = EnvSettings().make_kwargs(None, policy.reads_object_boxes)
    assert kw["object_boxes"] is True
    env = envs.make_env("pick", "seen", image_size=96, **kw)
    try:
        obs, _ = env.reset(seed=3)
        assert 1 <= int(np.isfinite(obs[OBJECT_BOXES]).all(-1).sum()) < K
        policy.reset(str(obs["instruction"]))
        for _ in range(3):
            action = policy.select_action(obs)
            assert action.shape == (len(DEFAULT_ACTION_SPEC),) and np.isfinite(action).all()
            obs, *_ = env.step(action)
    finally:
        env.close()
