"""The learning path end to end: a tiny model memorises a handful of episodes in seconds.

The episodes are synthetic but structured like the recorded ones (the env and store are
built by other issues in parallel and tested there): a coloured block at a random place on a
grey table, the instruction naming one of two colours, an end effector (state) that the
scripted "oracle" moves towards the named block, closes the gripper on arrival and then
terminates. Samples are cut in the contract layout of policy/data.py: T-frame windows, padded
before the episode start.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC
from policy import make_policy

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def _episode(rng: np.random.Generator, colour: str, max_steps: int = 12
             ) -> dict[str, np.ndarray]:
    """Move to the block (at most 0.4 per step), close the gripper there, then terminate.

    Every phase is observable (docs/experiments/2026-11-28-prototype.md): arrival from
    the state and the image, the closed gripper from the gripper width in the state.
    """
    target = rng.uniform(-0.8, 0.8, size=2)
    distractor = -target
    ee, width = np.zeros(2), 0.04
    images, states, actions = [], [], []
    for _ in range(max_steps):
        image = np.full((96, 96, 3), 128, np.uint8)
        for pos, name in ((target, colour), (distractor, "blue" if colour == "red" else "red")):
            px = ((pos + 1) / 2 * 80).astype(int)
            image[px[1]:px[1] + 16, px[0]:px[0] + 16] = COLOURS[name]
        action = np.zeros(8, np.float32)
        action[0] = -1.0
        action[7] = -1.0
        if width == 0.0:
            action[0] = 1.0  # closed on the block: done
        elif np.abs(target - ee).max() < 0.05:
            action[7] = 1.0  # arrived: close
        else:
            action[1:3] = np.clip((target - ee) / 0.4, -1, 1)
        images.append(image)
        states.append(np.array([*ee, 0.3, 0.0, 0.0, 0.0, 1.0, width], np.float32))
        actions.append(action)
        if action[0] > 0:
            break
        ee = ee + action[1:3] * 0.4
        width = 0.0 if action[7] > 0 else width
    return {"image": np.stack(images), "state": np.stack(states), "action": np.stack(actions)}


def _samples(history: int, episodes: int = 4) -> dict:
    rng = np.random.default_rng(0)
    items: dict[str, list] = {"image": [], "state": [], "action": [], "pad": [], "instruction": []}
    for e in range(episodes):
        colour = ("red", "blue")[e % 2]
        ep = _episode(rng, colour)
        for i in range(len(ep["action"])):
            idx = np.arange(i - history + 1, i + 1)
            pad = idx < 0
            idx = np.maximum(idx, 0)  # padding repeats the first frame
            for key in ("image", "state", "action"):
                items[key].append(ep[key][idx])
            items["pad"].append(pad)
            items["instruction"].append(f"pick up the {colour} block")
    batch = {k: torch.from_numpy(np.stack(v)) for k, v in items.items() if k != "instruction"}
    batch["instruction"] = items["instruction"]
    return batch


@pytest.mark.parametrize(("name", "steps"), [("rt1_tiny", 200), ("gato_tiny", 120)])
def test_tiny_policy_memorises_a_few_episodes(compose_policy, env_info, text_encoder, name,
                                              steps) -> None:
    torch.manual_seed(0)
    # memorising needs the samples as they are: no shifts, no mirrored copies (the real
    # env_info turns the mirror on)
    config = dataclasses.replace(compose_policy(name, ("augment_shift=0",)), augment_mirror=0.0)
    batch = _samples(config.history)
    states = batch["state"][:, -1]
    # the store's statistics would normalise the state the same way
    stats = {"state": {"mean": states.mean(0).numpy(), "std": states.std(0).numpy()}}
    policy = make_policy(config, DEFAULT_ACTION_SPEC, env_info, stats)
    opt = torch.optim.AdamW(policy.parameters(), lr=5e-3, weight_decay=0.0)
    policy.train()
    for _ in range(steps):
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    with torch.no_grad():
        loss, metrics = policy(batch)
    assert metrics["acc"] >= 0.95, metrics
    # and acting reproduces the demonstrations: replay the first episode through select_action
    policy.reset(batch["instruction"][0])
    for i in range(len(batch["action"])):
        obs = {"image": batch["image"][i, -1].numpy(), "state": batch["state"][i, -1].numpy(),
               "instruction": batch["instruction"][i]}
        demo = batch["action"][i, -1].numpy()
        assert np.abs(policy.select_action(obs) - demo).max() < 0.05, i
        if demo[0] > 0:  # the episode's terminate step
            break
