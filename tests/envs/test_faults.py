"""Grasp faults (envs/faults.py): they change only the executed gripper, fire once, depend
on the seed alone, and the oracle recovers from them."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.faults import FAULT_KINDS, GraspFault
from envs.spec import DEFAULT_ACTION_SPEC

GRIP = DEFAULT_ACTION_SPEC.index("gripper")


def _oracle_episode(task: str, seed: int, fault: GraspFault | None):
    env = envs.make_env(task, "seen", image_size=16, skip_render=True)
    try:
        obs, _ = env.reset(seed=seed)
        labels, executed = [], []
        while True:
            label = np.asarray(env.unwrapped.oracle_action(), dtype=np.float32)
            act = label if fault is None else fault.apply(label, label, np.asarray(obs["state"]))
            labels.append(label)
            executed.append(act)
            obs, _, terminated, truncated, info = env.step(act)
            if terminated or truncated:
                return np.stack(labels), np.stack(executed), bool(info["is_success"])
    finally:
        env.close()


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_fault_overrides_the_gripper_once_and_the_oracle_recovers(kind) -> None:
    clean_labels, _, clean_ok = _oracle_episode("pick", 3, None)
    fault = GraspFault(kind, steps=3)
    labels, executed, ok = _oracle_episode("pick", 3, fault)
    assert clean_ok and ok and fault.fired
    differs = np.flatnonzero(np.any(labels != executed, axis=1))
    # only the gripper, on consecutive steps, at most `steps` of them
    assert np.array_equal(np.flatnonzero(np.any(labels != executed, axis=0)), [GRIP])
    assert 1 <= len(differs) <= 3 and np.all(np.diff(differs) == 1)
    forced = executed[differs, GRIP]
    assert np.all(forced == (1.0 if kind == "close_early" else -1.0))
    if kind == "drop":
        # the recovery is in the labels: after the drop the oracle opens again, grasps
        # again, and the episode is longer than the clean one
        closes = labels[:, GRIP] > 0
        assert np.any(~closes[differs[-1] + 1:]) and closes[-1]
        assert len(labels) > len(clean_labels)


def test_an_early_close_that_misses_is_recovered() -> None:
    """close_early sometimes catches the object anyway; where it misses, the oracle's labels
    re-open and the episode still succeeds."""
    recovered = 0
    for seed in range(6):
        fault = GraspFault("close_early", steps=3)
        labels, executed, ok = _oracle_episode("pick", seed, fault)
        assert ok and fault.fired
        last = np.flatnonzero(labels[:, GRIP] != executed[:, GRIP])[-1]
        recovered += bool(np.any(labels[last + 1:, GRIP] < 0))
    assert recovered >= 2


def test_fault_draw_depends_on_the_seed_only_and_validates() -> None:
    draws = [GraspFault.draw(s, 0.5) for s in range(200)]
    assert [d and d.kind for d in draws] == [d and d.kind for d in
                                             (GraspFault.draw(s, 0.5) for s in range(200))]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.35 < share < 0.65
    assert {d.kind for d in draws if d} == set(FAULT_KINDS)
    assert all(GraspFault.draw(s, 0.0) is None for s in range(50))
    assert all(GraspFault.draw(s, 1.0, ("drop",)).kind == "drop" for s in range(50))
    with pytest.raises(ValueError, match="probability 1.5"):
        GraspFault.draw(0, 1.5)
    with pytest.raises(ValueError, match="'slip'"):
        GraspFault("slip")
    with pytest.raises(ValueError, match="steps=0"):
        GraspFault("drop", steps=0)


def test_collection_applies_faults_to_grasping_tasks_only(tmp_path) -> None:
    from envs.collect import CollectConfig, draw_fault, rollout

    cfg = CollectConfig(output=str(tmp_path / "store"), tasks=("pick", "push"),
                        grasp_faults=1.0, grasp_fault_kinds=("drop",))
    assert draw_fault(cfg, 5, "push") is None
    fault = draw_fault(cfg, 5, "pick")
    assert fault is not None and fault.kind == "drop"
    env = envs.make_env("pick", "seen", image_size=16, skip_render=True)
    try:
        ro = rollout(env, 5, "pick", "seen", cfg.noise_std, cfg.noise_dims, fault)
    finally:
        env.close()
    ep = ro.episode
    assert ro.success and fault.fired
    changed = np.flatnonzero(ep.action[:, GRIP] != ep.executed_action[:, GRIP])
    assert 1 <= len(changed) <= 3 and np.all(ep.executed_action[changed, GRIP] == -1.0)
    with pytest.raises(ValueError, match="grasp_faults=2"):
        CollectConfig(output=str(tmp_path / "x"), grasp_faults=2)
    with pytest.raises(ValueError, match="'slip'"):
        CollectConfig(output=str(tmp_path / "x"), grasp_faults=0.5, grasp_fault_kinds=["slip"])
