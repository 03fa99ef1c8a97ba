"""Physics settings (envs/physics.py): validation, what an env built with them does and
reports, and the benchmark's per-part profile."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

import envs
from envs.benchmark import PROFILE_PARTS, bench_episodes, profile_step
from envs.collect import CollectConfig
from envs.physics import PhysicsConfig
from envs.spec import STATE


@pytest.mark.parametrize(("field", "value"), [("substeps", 0), ("solver_iterations", -3),
                                              ("ik_iterations", 2.5), ("substeps", True)])
def test_bad_integer_settings_are_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        PhysicsConfig(**{field: value})


def test_bad_residual_unknown_field_and_wrong_rate_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="ik_residual=0.0"):
        PhysicsConfig(ik_residual=0.0)
    with pytest.raises(ValueError, match="'gravity'"):
        envs.make_env("pick", physics={"gravity": 3})
    with pytest.raises(ValueError, match="physics_hz=240 .*substeps=12"):
        PhysicsConfig.from_value({"substeps": 12, "physics_hz": 240})
    with pytest.raises(ValueError, match="substeps=-1"):
        CollectConfig(output=str(tmp_path), physics={"substeps": -1})


def test_defaults_are_the_settings_checkpoints_were_made_with() -> None:
    env = envs.make_env("pick", skip_render=True)
    d = env.describe()
    assert d["physics_hz"] == 240 and d["substeps"] == 24
    assert d["physics"] == {"substeps": 24, "solver_iterations": 20, "ik_iterations": 50,
                            "ik_residual": 1e-4, "physics_hz": 240}
    assert PhysicsConfig.from_value(d["physics"]) == PhysicsConfig()
    env.close()


def _rollout(physics: dict | None, steps: int = 6) -> np.ndarray:
    env = envs.make_env("pick", skip_render=True, physics=physics)
    env.reset(seed=5)
    for _ in range(steps):
        obs, *_ = env.step(env.oracle_action())
    env.close()
    return obs[STATE]


def test_other_physics_is_what_the_env_runs_and_reports(monkeypatch) -> None:
    env = envs.make_env("pick", skip_render=True,
                        physics={"substeps": 12, "solver_iterations": 7, "ik_iterations": 3})
    env.reset(seed=0)
    params = p.getPhysicsEngineParameters(physicsClientId=env.client)
    assert params["fixedTimeStep"] == pytest.approx(1 / 120)
    assert params["numSolverIterations"] == 7
    assert env.describe()["physics_hz"] == 120 and env.describe()["substeps"] == 12
    calls = {"step": 0, "ik": []}
    step, ik = p.stepSimulation, p.calculateInverseKinematics

    def counted_step(*a, **k):
        calls["step"] += 1
        return step(*a, **k)

    def recorded_ik(*a, **k):
        calls["ik"].append(k["maxNumIterations"])
        return ik(*a, **k)

    monkeypatch.setattr(p, "stepSimulation", counted_step)
    monkeypatch.setattr(p, "calculateInverseKinematics", recorded_ik)
    env.step(env.oracle_action())
    assert calls["step"] == 12 and calls["ik"] == [3]
    env.close()
    # The same seed and labels give another episode under other physics, the same one
    # under explicitly default physics.
    assert not np.array_equal(_rollout({"substeps": 12}), _rollout(None))
    assert np.array_equal(_rollout({"substeps": 24, "ik_iterations": 50}), _rollout(None))


def test_profile_parts_add_up_to_the_step() -> None:
    prof = profile_step("pick", image_size=32, steps=15)
    parts = [k for k in prof if k != "total"]
    assert set(PROFILE_PARTS) < set(parts)
    assert sum(prof[k] for k in parts) == pytest.approx(prof["total"])
    assert prof["physics (stepSimulation)"] > 0 and prof["render (getCameraImage)"] > 0
    assert p.stepSimulation.__name__ == "stepSimulation"  # the timers were taken off again


def test_episode_benchmark_counts_whole_oracle_episodes() -> None:
    r = bench_episodes(["pick", "push"], image_size=32, episodes=2, physics={"substeps": 24},
                       label="(x)")
    assert r.count == 2 and r.name.endswith("(x)") and "pick, push" in r.name
    assert r.per_second > 0 and r.cpu_seconds > 0
