"""The learning path end to end: a tiny model memorises a real episode store in seconds.

Two scripted-oracle pick episodes are collected into a store (32 px, under a second) and read
back through policy/data.py, the store's statistics included, exactly as training reads them.
The model must then reproduce the demonstrated action tokens, and acting through
select_action must replay the first recorded episode's actions. Fails on a dataset whose
windows carry the next step's action as the label (checked with a broken build).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from envs.collect import CollectConfig, collect
from envs.store import ShardReader, list_shards
from policy import make_policy
from policy.data import EpisodeDataset


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("overfit") / "demos"
    collect(CollectConfig(output=str(out), episodes=2, workers=1, image_size=32,
                          progress=False))
    return out


@pytest.mark.parametrize(("name", "steps"), [("rt1_tiny", 200), ("gato_tiny", 200)])
def test_tiny_policy_memorises_a_few_episodes(compose_policy, store, text_encoder, name,
                                              steps) -> None:
    torch.manual_seed(0)
    # memorising needs the samples as they are: no shifts, no mirrored copies
    config = dataclasses.replace(compose_policy(name, ("augment_shift=0",)), augment_mirror=0.0)
    data = EpisodeDataset(store, history=config.history)
    batch = default_collate(data.__getitems__(list(range(len(data)))))  # every window
    policy = make_policy(config, data.action_spec, data.info, data.stats)
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
    # and acting replays the first recorded episode, read straight from the store (not
    # through the dataset's windows), action for action
    episode = ShardReader(list_shards(store)[0]).episode(0)
    policy.reset(episode.instruction)
    for t in range(len(episode)):
        obs = {"image": episode.image[t], "state": episode.state[t],
               "instruction": episode.instruction}
        # within a few bins (tokens are 95% exact); a wrong action is off by ~0.8
        assert np.abs(policy.select_action(obs) - episode.action[t]).max() < 0.1, t
