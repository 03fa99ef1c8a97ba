"""Object-centric tokens for Gato (GatoConfig.image_tokenizer="film_objects", VIMA-style): RT-1's
FiLM stem over the frame, its feature map pooled over each object's box, plus an embedding of
the box; the boxes follow the image augmentations and cross the bridge with their NaN rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC, MAX_OBJECT_BOXES, OBJECT_BOXES
from policy import Policy, make_policy
from policy.augment import mirror_batch
from policy.bridge import protocol as P
from policy.tokenizers.images import random_shift_offsets
from policy.tokenizers.objects import (
    box_present,
    cell_weights,
    check_boxes,
    mirror_boxes,
    shift_boxes,
    sort_boxes,
)

from .test_policies import STATS

K = MAX_OBJECT_BOXES


def boxes_of(*rows: list[float]) -> torch.Tensor:
    """(K, 4) with `rows` first and NaN rows after."""
    out = torch.full((K, 4), float("nan"))
    if rows:
        out[: len(rows)] = torch.tensor(rows)
    return out


@pytest.fixture
def build(compose_policy, env_info, text_encoder):
    def build_one(*overrides: str) -> Policy:
        torch.manual_seed(0)
        config = compose_policy("gato_tiny", ("image_tokenizer=film_objects", *overrides))
        return make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)

    return build_one


def with_boxes(batch: dict, seed: int = 0) -> dict:
    """Two or three random boxes per frame, sorted, NaN rows after."""
    g = torch.Generator().manual_seed(seed)
    b, t = batch["image"].shape[:2]
    boxes = torch.full((b, t, K, 4), float("nan"))
    for i in range(b):
        n = 2 + i % 2
        lo = torch.rand(n, 2, generator=g) * 0.7
        size = 0.1 + torch.rand(n, 2, generator=g) * 0.2
        boxes[i, :, :n] = torch.cat([lo, lo + size], dim=-1)
    return {**batch, OBJECT_BOXES: sort_boxes(boxes)}


# -- the box arithmetic -------------------------------------------------------------------


def test_cell_weights_cover_each_box_and_sum_to_one() -> None:
    # one box exactly on cell (row 1, column 2) of a 4x4 map, one across four cells, one empty
    boxes = boxes_of([0.5, 0.25, 0.75, 0.5], [0.125, 0.125, 0.375, 0.375])[None]
    w = cell_weights(boxes, 4, 4)[0]
    assert w.shape == (K, 4, 4)
    assert w[0, 1, 2] == pytest.approx(1.0) and w[0].sum() == pytest.approx(1.0)
    assert torch.allclose(w[1, :2, :2], torch.full((2, 2), 0.25))
    assert w[2:].abs().sum() == 0  # empty slots pool nothing


def test_sorting_mirroring_and_shifting_move_boxes_with_the_pixels() -> None:
    right, left = [0.6, 0.1, 0.8, 0.3], [0.1, 0.5, 0.3, 0.9]
    sorted_ = sort_boxes(boxes_of(right, left))
    assert sorted_[0].tolist() == pytest.approx(left)
    assert sorted_[1].tolist() == pytest.approx(right)
    assert box_present(sorted_).tolist() == [True, True] + [False] * (K - 2)
    mirrored = mirror_boxes(sorted_)
    assert mirrored[0].tolist() == pytest.approx([0.2, 0.1, 0.4, 0.3])  # the right box, flipped
    assert torch.allclose(mirror_boxes(mirrored), sorted_, equal_nan=True)

    # a white square in a black frame: its box after random_shift is where shift_boxes says
    size, pad = 32, 4
    image = torch.zeros(3, 1, 3, size, size)
    image[..., 8:14, 20:26] = 1.0  # rows 8..13, columns 20..25
    box = torch.tensor([20 / size, 8 / size, 26 / size, 14 / size])
    boxes = box.expand(3, 1, 1, 4).clone()
    shifted, offsets = random_shift_offsets(image, pad, torch.Generator().manual_seed(3))
    moved = shift_boxes(boxes, offsets, pad, size)
    for i in range(3):
        ys, xs = torch.nonzero(shifted[i, 0, 0] > 0.5, as_tuple=True)
        seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / size
        assert torch.allclose(moved[i, 0, 0], seen), (offsets[i], moved[i, 0, 0], seen)


def test_malformed_boxes_are_refused_with_what_was_expected() -> None:
    check_boxes(boxes_of([0.1, 0.1, 0.2, 0.2]), K, "x")
    with pytest.raises(ValueError, match=r"shape \(3, 4\); expected \(\.\.\., 8, 4\)"):
        check_boxes(torch.zeros(3, 4), K, "observation")
    with pytest.raises(ValueError, match=r"box \[0.5, 0.1, 0.2, 0.2\].*u0 < u1"):
        check_boxes(boxes_of([0.5, 0.1, 0.2, 0.2]), K, "observation")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        check_boxes(boxes_of([0.1, 0.1, 1.5, 0.2]), K, "observation")
    partial = boxes_of([0.1, 0.1, 0.2, 0.2])
    partial[0, 3] = float("nan")
    with pytest.raises(ValueError, match="only partly NaN"):
        check_boxes(partial, K, "observation")


# -- the policy ---------------------------------------------------------------------------


def test_one_token_per_object_slot_from_its_box(build) -> None:
    policy = build().eval()
    assert policy.n_image == K and policy.reads_object_boxes
    assert policy.observation_shapes()[OBJECT_BOXES] == ((K, 4), "float32")
    tok = policy.image_tokenizer
    x = torch.rand(1, 3, 32, 32)
    text = torch.randn(1, policy.config.text_dim)
    a_box = boxes_of([0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 1.0, 1.0])[None]  # opposite corners
    with torch.no_grad():
        a = tok(x, text, a_box)
        y = x.clone()
        y[..., 16:, 16:] = 0.0  # darken the second box's quarter only
        b = tok(y, text, a_box)
    assert a.shape == (1, K, policy.config.d_model)
    change = (a - b).norm(dim=-1)[0]
    assert change[1] > 2 * change[0], change  # the stem's norms couple all cells a little
    # empty slots hold the learned "no object" token, whatever the frame
    assert torch.equal(a[0, 2:], tok.empty_object.expand(K - 2, -1))
    assert torch.equal(a[0, 2:], b[0, 2:])
    with pytest.raises(ValueError, match="object boxes are needed exactly"):
        tok(x, text)


def test_it_trains_on_boxes_and_needs_them(build, make_batch) -> None:
    policy = build("aux_frame_mean=1.0").train()
    batch = with_boxes(make_batch(b=3, t=2, size=96))
    loss, metrics = policy(batch)
    loss.backward()
    assert torch.isfinite(loss) and "aux_loss" in metrics
    assert policy.image_tokenizer.box_embed.proj.weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="collect.object_boxes=true"):
        policy({k: v for k, v in batch.items() if k != OBJECT_BOXES})
    bad = {**batch, OBJECT_BOXES: batch[OBJECT_BOXES][:, :, :3]}
    with pytest.raises(ValueError, match=r"expected \(3, 2, 8, 4\)"):
        policy(bad)


def test_moving_a_box_changes_the_action_logits(build, make_batch) -> None:
    policy = build().eval()
    batch = with_boxes(make_batch(b=1, t=1, size=96))
    moved = batch[OBJECT_BOXES].clone()
    moved[0, 0, 0] = torch.tensor([0.70, 0.70, 0.95, 0.95])
    with torch.no_grad():
        a = policy.logits_and_targets(batch)[0]
        b = policy.logits_and_targets({**batch, OBJECT_BOXES: moved})[0]
    assert (a - b).abs().max() > 1e-4


def test_mirror_augmentation_flips_the_boxes_with_the_image(make_batch) -> None:
    batch = with_boxes(make_batch(b=4, t=2, size=32))
    out = mirror_batch(batch, DEFAULT_ACTION_SPEC.names, prob=1.0)
    assert torch.equal(out["image"], batch["image"].flip(3))
    assert torch.allclose(out[OBJECT_BOXES], mirror_boxes(batch[OBJECT_BOXES]), equal_nan=True)


def test_it_acts_cached_as_uncached_and_round_trips(build, make_obs, tmp_path) -> None:
    policy = build("history=2").eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    reference = Policy.from_pretrained(tmp_path / "ckpt").eval()
    reference.use_kv_cache = False
    assert loaded.reads_object_boxes
    for p in (policy, loaded, reference):
        p.reset()
    rng = np.random.default_rng(0)
    for seed in range(3):
        obs = make_obs(seed)
        lo = rng.uniform(0, 0.6, (3, 2))
        obs[OBJECT_BOXES] = np.full((K, 4), np.nan, np.float32)
        obs[OBJECT_BOXES][:3] = np.concatenate([lo, lo + 0.2], axis=1)
        acts = [p.select_action(obs) for p in (policy, loaded, reference)]
        assert (acts[0] == acts[1]).all()
        np.testing.assert_allclose(acts[0], acts[2], atol=1e-5)
    obs = make_obs(9)
    with pytest.raises(KeyError, match="object_boxes=True"):
        policy.select_action(obs)
    obs[OBJECT_BOXES] = np.zeros((K, 4), np.float32)
    with pytest.raises(ValueError, match="u0 < u1"):
        policy.select_action(obs)


def test_the_bridge_accepts_nan_rows_for_boxes_only() -> None:
    spec = P.ArraySpec((K, 4), "float32")
    boxes = boxes_of([0.1, 0.1, 0.2, 0.2]).numpy()
    assert spec.check(P.OBJECT_BOXES, boxes) is boxes
    partial = boxes.copy()
    partial[0, 0] = np.nan
    with pytest.raises(P.ProtocolError, match="only whole NaN rows"):
        spec.check(P.OBJECT_BOXES, partial)
    with pytest.raises(P.ProtocolError, match="non-finite"):
        spec.check("state", boxes)
    assert P.OBJECT_BOXES == OBJECT_BOXES


def test_served_over_the_bridge_with_the_sim_robots_boxes(compose_policy, text_encoder,
                                                           tmp_path) -> None:
    """A film_objects checkpoint announces object_boxes; the simulated robot builds its env
    with them and sends them (NaN rows included); the bridge's actions equal in-process."""
    import envs
    from policy.bridge.client import BridgeClient
    from policy.bridge.loading import load_served_policy
    from policy.bridge.robot import run_sim_robot
    from policy.bridge.server import ServerConfig
    from policy.bridge.thread import ServerThread

    env = envs.make_env("pick", "seen", image_size=64, object_boxes=True)
    try:
        torch.manual_seed(0)
        policy = make_policy(compose_policy("gato_tiny", ("image_tokenizer=film_objects",)),
                             DEFAULT_ACTION_SPEC, env.unwrapped.describe(), STATS)
        ckpt = policy.save_pretrained(tmp_path / "gato_objects")
        obs, _ = env.reset(seed=1)
        observations = [obs]
        for _ in range(2):
            obs, *_ = env.step(env.action_space.sample())
            observations.append(obs)
    finally:
        env.close()
    assert 1 <= int(np.isfinite(observations[0][OBJECT_BOXES]).all(-1).sum()) < K  # NaN rows
    served = load_served_policy(ckpt, warmup_steps=1)
    assert served.observation[OBJECT_BOXES] == P.ArraySpec((K, 4), "float32")
    local = Policy.from_pretrained(ckpt).eval()
    instruction = str(observations[0]["instruction"])
    local.reset(instruction)
    with ServerThread(served, ServerConfig(port=0)) as st:
        with BridgeClient(st.url) as client:
            client.reset(instruction)
            for o in observations:
                np.testing.assert_array_equal(client.select_action(o), local.select_action(o))
        report = run_sim_robot(st.url, episodes=1, max_steps=3, control_hz=1000.0,
                               timeout_s=10.0)
    (episode,) = report.episodes  # an untrained policy may end it by its terminate flag
    assert episode.steps >= 1 and episode.timeouts == 0


def test_the_benchmarks_batches_carry_boxes_for_it(build) -> None:
    from policy.benchmark import reads_boxes, synthetic_batch, synthetic_boxes

    policy = build().train()
    assert reads_boxes(policy.config)
    batch = synthetic_batch(2, 1, 96, boxes=True)
    assert batch[OBJECT_BOXES].shape == (2, 1, K, 4)
    check_boxes(torch.from_numpy(synthetic_boxes()), K, "synthetic")
    loss, _ = policy(batch)
    assert torch.isfinite(loss)
    assert OBJECT_BOXES not in synthetic_batch(2, 1, 96)
