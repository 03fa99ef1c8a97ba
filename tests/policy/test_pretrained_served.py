"""Every reference checkpoint under policy/pretrained/ is served by the bridge like the others:
its handshake names its policy family, its camera and the checkpoint hash its model card
gives, and its actions on a rendered frame of the env it was trained in equal in-process
`select_action`, step after step of one episode (the served session keeps the history).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from policy import Policy
from policy.bridge.client import BridgeClient
from policy.bridge.loading import load_served_policy
from policy.bridge.server import ServerConfig
from policy.bridge.thread import ServerThread
from policy.checkpoint_hash import checkpoint_sha256

PRETRAINED = Path(__file__).resolve().parents[2] / "policy" / "pretrained"
REFERENCES = sorted(p for p in PRETRAINED.iterdir() if (p / "model.safetensors").is_file())


def test_the_reference_checkpoints_are_found() -> None:
    assert {p.name for p in REFERENCES} >= {"rt1_full", "gato_objects_full", "gato_full"}


@pytest.mark.parametrize("checkpoint", REFERENCES, ids=lambda p: p.name)
def test_a_reference_checkpoint_is_served_like_in_process(checkpoint: Path) -> None:
    torch.set_num_threads(1)
    config = json.loads((checkpoint / "config.json").read_text())
    env_info = json.loads((checkpoint / "env.json").read_text())
    card = (checkpoint / "README.md").read_text()
    sha = checkpoint_sha256(checkpoint)
    assert sha in card, f"{checkpoint.name}/README.md does not give its checkpoint hash {sha}"
    # a policy of object tokens reads the boxes the env gives beside the frame
    boxes = config["config"].get("image_tokenizer") == "film_objects"
    env = envs.make_env(task="pick", split="seen", image_size=env_info["image_shape"][0],
                        object_boxes=boxes)
    try:
        current = env.describe()
        obs, _ = env.reset(seed=1_000_000_000)
        frames = [obs]
        for _ in range(2):
            obs, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
            frames.append(obs)
    finally:
        env.close()
    # it loads against today's env: the camera, renderer and image it was trained with
    local = Policy.from_pretrained(checkpoint, env_info=current)
    local.reset(frames[0]["instruction"])
    with ServerThread(load_served_policy(checkpoint, warmup_steps=1),
                      ServerConfig(port=0)) as st, \
            BridgeClient(st.url, expected_checkpoint_sha256=sha) as client:
        assert client.metadata.policy_kind == config["kind"]
        assert client.metadata.observation["image"].shape == tuple(env_info["image_shape"])
        client.reset(frames[0]["instruction"])
        for frame in frames:
            sent = {k: frame[k] for k in ("image", "state", "object_boxes") if k in frame}
            np.testing.assert_array_equal(client.select_action(sent),
                                          local.select_action(frame))
