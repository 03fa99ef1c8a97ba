"""Robustness sweeps (policy/evaluation/robustness.py): each axis value reaches the scene,
bad axes and values are refused up front, and a sweep writes its JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import envs
from policy.evaluation.config import EvalConfig
from policy.evaluation.robustness import RobustnessConfig, axis_overrides


@pytest.mark.parametrize("n", [0, 6])
def test_distractor_axis_puts_exactly_n_distractors_in_the_scene(n: int) -> None:
    env = envs.make_env("pick", "seen", image_size=16, skip_render=True,
                        split_overrides=axis_overrides("distractors", n))
    env.reset(seed=3)
    assert len(env.task.objects) == 1 + n
    env.close()


def test_object_scale_axis_scales_the_target() -> None:
    sizes = []
    for s in (0.7, 1.4):
        env = envs.make_env("pick", "seen", image_size=16, skip_render=True,
                            split_overrides=axis_overrides("object_scale", s))
        env.reset(seed=3)
        assert all(o.scale == s for o in env.task.objects)
        sizes.append(env.task.target.half_height)
        env.close()
    assert sizes[1] > 1.6 * sizes[0]  # the same object, twice the scale


def test_camera_jitter_axis_moves_the_camera() -> None:
    frames = {}
    for j in (0.0, 0.03):
        env = envs.make_env("pick", "seen", image_size=32,
                            split_overrides=axis_overrides("camera_jitter", j))
        frames[j] = [env.reset(seed=s)[0]["image"].astype(int) for s in (1, 2)]
        env.close()
    # Same scenes; with no jitter the two seeds share the camera, so the table edge and
    # robot base sit on the same pixels far more than under 3 cm of jitter.
    still = np.abs(frames[0.0][0][:8] - frames[0.0][1][:8]).mean()
    moved = np.abs(frames[0.03][0][:8] - frames[0.03][1][:8]).mean()
    assert moved > still


@pytest.mark.parametrize(("axis", "value", "match"), [
    ("gravity", 1.0, "gravity"), ("distractors", 2.5, "2.5"), ("distractors", -1, "-1"),
    ("camera_jitter", 0.5, "0.5"), ("object_scale", 5.0, "5.0"),
])
def test_bad_axis_or_value_is_refused_before_any_episode(axis: str, value: float,
                                                         match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RobustnessConfig(eval=EvalConfig(), axes={axis: [value]})


def test_a_sweep_writes_points_json_and_plot(tmp_path: Path) -> None:
    cfg = RobustnessConfig(
        eval=EvalConfig(tasks=["pick"], episodes=1, workers=0, baselines=["oracle", "noop"],
                        progress=False),
        axes={"distractors": [0, 3], "object_scale": [1.2]})
    points = cfg.run(None, tmp_path)
    assert [(p.axis, p.value, p.policy) for p in points] == [
        ("distractors", 0.0, "oracle"), ("distractors", 0.0, "noop"),
        ("distractors", 3.0, "oracle"), ("distractors", 3.0, "noop"),
        ("object_scale", 1.2, "oracle"), ("object_scale", 1.2, "noop")]
    assert all(p.success_rate == 0.0 for p in points if p.policy == "noop")
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert len(saved) == 6 and (tmp_path / "robustness.png").stat().st_size > 0
    report = json.loads((tmp_path / "distractors" / "3" / "eval_info.json").read_text())
    assert report["meta"]["env"]["split_overrides"] == {"distractors": [3, 3]}
