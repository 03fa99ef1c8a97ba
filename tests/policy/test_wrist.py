"""RT-1 reading the wrist camera (RT1Config.wrist_camera): tokens, acting, checkpoints, the
mirror augmentation's geometry, and the bridge's handshake."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pybullet as p
import pytest
import torch

from envs.camera import Lighting, WristCamera, WristCameraConfig
from envs.spec import DEFAULT_ACTION_SPEC, WRIST_IMAGE
from policy import Policy, make_policy
from policy.augment import check_mirror_wrist, mirror_batch

STATS = {
    "action": {"min": [-1.0] * 8, "max": [1.0] * 8, "mean": [0.0] * 8, "std": [0.5] * 8},
    "state": {"min": [-1.0] * 8, "max": [1.0] * 8, "mean": [0.0] * 8, "std": [1.0] * 8},
}


@pytest.fixture
def wrist_env_info() -> dict:
    """describe() of a pick env with the wrist camera (96 px, rendering skipped)."""
    import envs

    env = envs.make_env("pick", "seen", image_size=96, wrist_camera=True, skip_render=True)
    try:
        return env.unwrapped.describe()
    finally:
        env.close()


@pytest.fixture
def build_wrist(compose_policy, wrist_env_info, text_encoder):
    def build() -> Policy:
        torch.manual_seed(0)
        config = replace(compose_policy("rt1_tiny"), wrist_camera=True)
        return make_policy(config, DEFAULT_ACTION_SPEC, wrist_env_info, STATS)

    return build


def _obs(seed: int, instruction: str = "pick up the red block") -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
            WRIST_IMAGE: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
            "state": rng.standard_normal(8).astype(np.float32), "instruction": instruction}


def test_wrist_tokens_are_read_and_change_the_action(build_wrist, make_batch) -> None:
    policy = build_wrist()
    assert policy.tokens_per_frame == 4 + 8 + 1  # front, wrist, state
    batch = make_batch(b=2, t=2)
    with pytest.raises(KeyError, match="wrist_camera=true"):
        policy(batch)  # a store without the wrist camera is refused by name
    batch[WRIST_IMAGE] = torch.randint(0, 256, (2, 2, 96, 96, 3), dtype=torch.uint8)
    loss, _ = policy(batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in policy.wrist_tokenizer.parameters())
    policy.eval()
    with torch.no_grad():
        logits = policy.logits_and_targets(batch)[0]
        other = dict(batch, **{WRIST_IMAGE: torch.zeros_like(batch[WRIST_IMAGE])})
        assert not torch.allclose(policy.logits_and_targets(other)[0], logits)


def test_a_lower_wrist_resolution_shrinks_the_wrist_stems_work(
        compose_policy, wrist_env_info, text_encoder, make_batch) -> None:
    seen: dict[str, tuple[int, ...]] = {}

    def build(size: int | None) -> Policy:
        torch.manual_seed(0)
        config = replace(compose_policy("rt1_tiny"), wrist_camera=True, wrist_resize_to=size)
        policy = make_policy(config, DEFAULT_ACTION_SPEC, wrist_env_info, STATS)
        for name in ("image_tokenizer", "wrist_tokenizer"):
            getattr(policy, name).register_forward_pre_hook(
                lambda _m, args, name=name: seen.__setitem__(name, tuple(args[0].shape)))
        return policy

    batch = make_batch(b=2, t=2)
    batch[WRIST_IMAGE] = torch.randint(0, 256, (2, 2, 96, 96, 3), dtype=torch.uint8)
    front = build(None).config.resize_to
    build(None)(batch)
    assert seen["wrist_tokenizer"][-2:] == seen["image_tokenizer"][-2:] == (front, front)
    policy = build(32)
    loss, _ = policy(batch)
    assert torch.isfinite(loss) and seen["wrist_tokenizer"][-2:] == (32, 32)
    assert seen["image_tokenizer"][-2:] == (front, front)
    policy.select_action(_obs(0))  # acting resizes the same way
    assert seen["wrist_tokenizer"][-2:] == (32, 32)
    with pytest.raises(ValueError, match="wrist_resize_to=8; expected None or >= 16 px"):
        replace(compose_policy("rt1_tiny"), wrist_camera=True, wrist_resize_to=8)


def test_acting_needs_the_wrist_image_and_matches_forward(build_wrist) -> None:
    policy = build_wrist()
    obs = [_obs(i) for i in range(3)]
    with pytest.raises(KeyError, match="wrist_image"):
        policy.select_action({k: v for k, v in obs[0].items() if k != WRIST_IMAGE})
    with pytest.raises(ValueError, match=r"wrist image .*\(96, 96, 3\)"):
        policy.select_action({**obs[0], WRIST_IMAGE: np.zeros((64, 64, 3), np.uint8)})
    policy.reset(obs[0]["instruction"])
    actions = [policy.select_action(o) for o in obs]
    t = policy.config.history
    batch = {"image": torch.stack([torch.from_numpy(o["image"]) for o in obs[-t:]])[None],
             WRIST_IMAGE: torch.stack([torch.from_numpy(o[WRIST_IMAGE]) for o in obs[-t:]])[None],
             "state": torch.stack([torch.from_numpy(o["state"]) for o in obs[-t:]])[None],
             "action": torch.zeros(1, t, 8), "pad": torch.zeros(1, t, dtype=torch.bool),
             "instruction": [obs[0]["instruction"]]}
    policy.eval()  # no augmentation
    with torch.no_grad():
        logits = policy.logits_and_targets(batch)[0][0, -1]
    assert np.array_equal(policy.action_tokenizer.decode(logits.argmax(-1)).numpy(), actions[-1])


def test_wrist_checkpoint_round_trip_and_env_checks(build_wrist, env_info, tmp_path) -> None:
    policy = build_wrist()
    assert policy.observation_shapes() == {"image": ((96, 96, 3), "uint8"),
                                           WRIST_IMAGE: ((96, 96, 3), "uint8"),
                                           "state": ((8,), "float32")}
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.wrist_camera and loaded.wrist_shape == (96, 96, 3)
    loaded.reset("pick up the red block")
    policy.reset("pick up the red block")
    assert np.array_equal(loaded.select_action(_obs(1)), policy.select_action(_obs(1)))
    with pytest.raises(ValueError, match="wrist camera mismatch"):
        loaded.check_env(env_info)  # an env without the wrist camera
    with pytest.raises(ValueError, match="env_info describes none"):
        make_policy(loaded.config, DEFAULT_ACTION_SPEC, env_info, STATS)


def test_bridge_announces_the_wrist_image(build_wrist, tmp_path) -> None:
    from policy.bridge.loading import load_served_policy

    build_wrist().save_pretrained(tmp_path / "ckpt")
    served = load_served_policy(tmp_path / "ckpt", warmup_steps=1)
    assert {k: (v.shape, v.dtype) for k, v in served.observation.items()} == {
        "image": ((96, 96, 3), "uint8"), WRIST_IMAGE: ((96, 96, 3), "uint8"),
        "state": ((8,), "float32")}


def test_simulated_robot_sends_the_wrist_image_over_the_bridge(build_wrist, tmp_path) -> None:
    """End to end: a wrist-reading checkpoint served by the bridge, and the simulated robot
    (scripts/robot.py's loop) building its env with the wrist camera because the handshake
    asks for `wrist_image` (without it the robot's observation check refuses to start)."""
    from policy.bridge.loading import load_served_policy
    from policy.bridge.robot import run_sim_robot
    from policy.bridge.server import ServerConfig
    from policy.bridge.thread import ServerThread

    build_wrist().save_pretrained(tmp_path / "ckpt")
    with ServerThread(load_served_policy(tmp_path / "ckpt", warmup_steps=1),
                      ServerConfig(port=0)) as st:
        report = run_sim_robot(st.url, episodes=1, max_steps=3, timeout_s=30.0,
                               control_hz=1000.0)
    assert len(report.episodes) == 1 and report.episodes[0].steps == 3
    assert report.episodes[0].timeouts == 0


def test_mirror_flips_the_wrist_image_only_when_read() -> None:
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (4, 1, 8, 8, 3), generator=g, dtype=torch.uint8),
             WRIST_IMAGE: torch.randint(0, 256, (4, 1, 8, 8, 3), generator=g, dtype=torch.uint8),
             "state": torch.zeros(4, 1, 8), "action": torch.zeros(4, 1, 8),
             "instruction": ["pick up the red block"] * 4}
    out = mirror_batch(batch, DEFAULT_ACTION_SPEC.names, 1.0, wrist=True)
    assert torch.equal(out[WRIST_IMAGE], batch[WRIST_IMAGE].flip(3))
    assert torch.equal(out["image"], batch["image"].flip(3))
    assert WRIST_IMAGE not in mirror_batch(batch, DEFAULT_ACTION_SPEC.names, 1.0)
    check_mirror_wrist(WristCameraConfig().to_dict())
    with pytest.raises(ValueError, match="offset y=0.01"):
        check_mirror_wrist({**WristCameraConfig().to_dict(), "offset": [0.06, 0.01, 0.02]})


def _mirror_quat(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], q[1], -q[2], q[3]])  # as MIRROR_STATE_SIGNS: (qx, qz) negate


def test_mirrored_hand_pose_sees_the_wrist_image_flipped_left_right() -> None:
    """The geometry behind flipping the wrist image in the mirror augmentation: render a scene
    of coloured boxes from a tilted, turned hand pose; reflect the boxes and the hand pose
    about the x-z plane (y -> -y); the camera then sees the first image flipped along W."""
    client = p.connect(p.DIRECT)
    try:
        boxes = [((0.52, 0.06, 0.02), (1.0, 0.1, 0.1)), ((0.47, -0.05, 0.03), (0.1, 0.8, 0.2)),
                 ((0.58, -0.02, 0.015), (0.2, 0.3, 1.0)), ((0.44, 0.1, 0.025), (0.9, 0.9, 0.1))]
        ground = p.createVisualShape(p.GEOM_BOX, halfExtents=[0.5, 0.5, 0.001],
                                     rgbaColor=[0.6, 0.55, 0.5, 1], physicsClientId=client)
        p.createMultiBody(baseVisualShapeIndex=ground, basePosition=[0.5, 0, -0.001],
                          physicsClientId=client)
        ids = []
        for pos, rgb in boxes:
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[0.02, 0.012, pos[2]],
                                      rgbaColor=[*rgb, 1], physicsClientId=client)
            ids.append(p.createMultiBody(baseVisualShapeIndex=vis, basePosition=pos,
                                         baseOrientation=p.getQuaternionFromEuler([0, 0, 0.4]),
                                         physicsClientId=client))
        camera = WristCamera(WristCameraConfig(width=64, height=64))
        light = Lighting(direction=(1.0, 0.0, 1.0))  # in the mirror plane
        hand_pos = np.array([0.5, 0.03, 0.2])
        hand_quat = np.array(p.getQuaternionFromEuler([3.0, 0.15, 0.5]))
        before = camera.render(client, hand_pos, hand_quat, light)
        for body, (pos, _) in zip(ids, boxes, strict=True):
            p.resetBasePositionAndOrientation(
                body, [pos[0], -pos[1], pos[2]],
                _mirror_quat(np.array(p.getQuaternionFromEuler([0, 0, 0.4]))).tolist(),
                physicsClientId=client)
        after = camera.render(client, hand_pos * np.array([1, -1, 1]), _mirror_quat(hand_quat),
                              light)
    finally:
        p.disconnect(client)
    diff = np.abs(after.astype(int) - before[:, ::-1].astype(int)).mean()
    unflipped = np.abs(after.astype(int) - before.astype(int)).mean()
    assert diff < 3.0, diff  # rasterisation differs by a pixel at edges
    assert unflipped > 4 * diff, (unflipped, diff)
