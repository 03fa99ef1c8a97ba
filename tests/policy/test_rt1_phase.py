"""The gripper-phase input of RT-1 (RT1Config.phase_state, policy/tokenizers/phase.py): the
features follow the commands sent before each step, the dataset derives them per episode from
the action labels, the policy computes the same ones from its own commands while acting, the
phase reaches the actions, and a policy without the option is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC
from envs.store import Episode, ShardWriter, shard_name
from policy import Policy, make_policy
from policy.data import EpisodeDataset
from policy.tokenizers.phase import PHASE, SINCE_SCALE, episode_phases, phase_features

from .test_policies import STATS

GRIPPER = list(DEFAULT_ACTION_SPEC.names).index("gripper")


def test_features_read_only_the_commands_before_each_step() -> None:
    c = np.array([0, 0, 1, 1, 1, 0, 0, 1], dtype=bool)
    f = phase_features(c)
    assert f[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # closes so far
    assert f[:, 1].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]  # last command was close
    assert (f[:, 2] * SINCE_SCALE).round().tolist() == [0, 1, 2, 1, 2, 3, 1, 2]
    for t in range(len(c)):  # row t ignores c_t and later
        other = c.copy()
        other[t:] = ~other[t:]
        assert np.array_equal(phase_features(other)[t], f[t])
    many = phase_features(np.tile([True, False], 10))
    assert many[:, 0].max() == 3  # capped
    assert phase_features(np.zeros(200, bool))[-1, 2] == 1.0  # since: capped at 1
    with pytest.raises(ValueError, match=r"expected \(T,\)"):
        phase_features(np.zeros((2, 3), bool))


def test_episodes_start_from_an_open_gripper() -> None:
    g = np.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0])  # episodes [0, 3) and [3, 6)
    f = episode_phases(g, np.array([3, 6]))
    assert np.array_equal(f[:3], phase_features(g[:3] > 0))
    assert np.array_equal(f[3:], phase_features(g[3:] > 0))  # not carried over
    assert f[3, 0] == 0 and f[3, 1] == 0
    with pytest.raises(ValueError, match="expected"):
        episode_phases(g, np.array([3, 5]))


def _episode(seed: int, gripper: list[float]) -> Episode:
    n = len(gripper)
    action = np.zeros((n, 8), np.float32)
    action[:, GRIPPER] = gripper
    return Episode(image=np.zeros((n, 4, 4, 3), np.uint8), state=np.zeros((n, 8), np.float32),
                   action=action, executed_action=action.copy(), instruction=f"pick {seed}",
                   task="pick", split="seen", seed=seed, success=seed != 99)


def test_the_dataset_derives_the_phase_per_episode(tmp_path: Path) -> None:
    info = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict()}
    first, second = [-1, -1, 1, 1, 1], [1, 1, -1, 1]
    with ShardWriter(tmp_path / shard_name(0), info, image_shape=(4, 4, 3)) as w:
        w.append(_episode(0, first))
        w.append(_episode(99, [1, -1, 1]))  # a failure: dropped, must not shift the phases
        w.append(_episode(1, second))
    plain = EpisodeDataset(tmp_path, history=2)
    assert PHASE not in plain[0]
    ds = EpisodeDataset(tmp_path, history=2, phase_state=True)
    expect = np.concatenate([phase_features(np.array(first) > 0),
                             phase_features(np.array(second) > 0)])
    for i in range(len(ds)):
        item = ds[i]
        assert item[PHASE].shape == (2, 3)
        assert np.array_equal(item[PHASE][-1].numpy(), expect[i])
    assert np.array_equal(ds[5][PHASE][0].numpy(), ds[5][PHASE][1].numpy())  # padded: first step


@pytest.fixture
def build(compose_policy, env_info, text_encoder):
    def build_one(*overrides: str) -> Policy:
        torch.manual_seed(0)
        config = compose_policy("rt1_tiny", ("phase_state=true", *overrides))
        return make_policy(config, DEFAULT_ACTION_SPEC, env_info, STATS)

    return build_one


def _with_phase(batch: dict, closes: float) -> dict:
    b, t = batch["image"].shape[:2]
    return {**batch, PHASE: torch.tensor([closes, 1.0, 0.1]).expand(b, t, -1).clone()}


def test_it_trains_on_the_phase_and_needs_it(build, make_batch) -> None:
    policy = build().train()
    batch = make_batch(b=3, t=policy.config.history, size=96)
    loss, _ = policy(_with_phase(batch, 1.0))
    loss.backward()
    assert torch.isfinite(loss) and policy.phase_embedding.table.weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="data.phase_state"):
        policy(batch)
    policy.eval()
    with torch.no_grad():  # the phase reaches the logits
        a = policy.logits_and_targets(_with_phase(batch, 1.0))[0]
        b = policy.logits_and_targets(_with_phase(batch, 2.0))[0]
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(Exception, match="use_state=True"):  # hydra wraps the ValueError
        build("use_state=false")


def test_acting_feeds_the_phase_of_its_own_commands(build, make_obs, tmp_path) -> None:
    policy = build().eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.phase_state
    seen: list[np.ndarray] = []
    loaded.phase_embedding.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].reshape(-1, 3)[-1].numpy().copy()))
    sent = []
    for p in (policy, loaded):
        p.reset()
    for seed in range(6):
        obs = make_obs(seed)
        a = loaded.select_action(obs)
        assert np.array_equal(a, policy.select_action(obs))
        sent.append(a[GRIPPER] > 0)
    assert np.array_equal(np.stack(seen), phase_features(np.array(sent)))
    loaded.reset(loaded.instruction)  # a new episode starts from an open gripper
    seen.clear()
    loaded.select_action(make_obs(0))
    assert np.array_equal(seen[0], np.zeros(3, np.float32))


def test_the_default_rt1_reads_no_phase(compose_policy, env_info, text_encoder,
                                        make_batch) -> None:
    policy = make_policy(compose_policy("rt1_tiny"), DEFAULT_ACTION_SPEC, env_info, STATS)
    assert policy.phase_embedding is None and not policy.config.phase_state
    batch = make_batch(b=2, t=policy.config.history, size=96)
    with torch.no_grad():
        policy.eval()
        assert torch.equal(policy.logits_and_targets(batch)[0],
                           policy.logits_and_targets(_with_phase(batch, 2.0))[0])
