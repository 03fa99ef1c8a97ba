"""Refusing a checkpoint that does not fit the env it is asked to run in.

A policy trained on 64 px images from the front camera scores near zero on 96 px images or
another camera, and that zero would be reported as a zero-shot failure. Evaluation therefore
compares the checkpoint's training env (its `env.json`, written by `save_pretrained`) with the
env's `describe()` before any episode runs, and stops with a message naming the difference.
The policy's own `check_env` is the authority when it has one; `env_mismatches` is the same
comparison for checkpoints and objects that lack it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.spec import ActionSpec

ENV_JSON = "env.json"
ACTION_SPEC_JSON = "action_spec.json"


def env_mismatches(trained: dict, current: dict) -> list[str]:
    """Sentences naming each difference in action spec, image shape, camera, physics or
    renderer between the env a policy was trained in (`trained`) and the one it would run in."""
    problems: list[str] = []
    if "action_spec" in trained and "action_spec" in current:
        diff = ActionSpec.from_dict(trained["action_spec"]).mismatch(
            ActionSpec.from_dict(current["action_spec"])
        )
        if diff:
            problems.append(f"action spec: checkpoint vs env: {diff}")
    cam_t, cam_c = trained.get("camera", {}), current.get("camera", {})
    shape_t, shape_c = cam_t.get("image_shape"), cam_c.get("image_shape")
    if shape_t is not None and shape_c is not None and list(shape_t) != list(shape_c):
        problems.append(
            f"image shape: checkpoint was trained on {list(shape_t)}, env renders {list(shape_c)}"
        )
    for key in sorted(set(cam_t) | set(cam_c)):
        if key != "image_shape" and cam_t.get(key) != cam_c.get(key):
            problems.append(
                f"camera {key!r}: checkpoint has {cam_t.get(key)!r}, env has {cam_c.get(key)!r}"
            )
    # physics: another physics rate or solver gives other episodes from the same actions
    # (envs/physics.py); compared where both sides record it (older checkpoints lack `physics`)
    for key in ("physics_hz", "substeps", "physics"):
        if key in trained and key in current and trained[key] != current[key]:
            problems.append(
                f"physics {key!r}: checkpoint was trained with {trained[key]!r}, "
                f"env has {current[key]!r}"
            )
    if trained.get("renderer") != current.get("renderer"):
        problems.append(
            f"renderer: checkpoint has {trained.get('renderer')!r}, "
            f"env has {current.get('renderer')!r}"
        )
    return problems


def read_checkpoint_env(checkpoint: str | Path) -> dict:
    """The training env description stored in a checkpoint directory (`env.json`), with the
    checkpoint's `action_spec.json` as its action spec when present."""
    path = Path(checkpoint)
    env_file = path / ENV_JSON
    if not env_file.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} has no {ENV_JSON}; expected a directory written by "
            "Policy.save_pretrained"
        )
    info = json.loads(env_file.read_text())
    spec_file = path / ACTION_SPEC_JSON
    if spec_file.is_file():
        info["action_spec"] = json.loads(spec_file.read_text())
    return info


def check_compatible(policy: Any, env_info: dict, where: str = "") -> None:
    """Raise ValueError naming every mismatch between `policy` and the env `env_info`."""
    check = getattr(policy, "check_env", None)
    try:
        if callable(check):
            check(env_info)
            return
        trained = getattr(policy, "env_info", None)
        if not isinstance(trained, dict):
            raise ValueError(
                f"cannot check {type(policy).__name__} against the env: it has neither "
                "check_env(env_info) nor an env_info dict"
            )
        problems = env_mismatches(trained, env_info)
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as err:
        cell = f" ({where})" if where else ""
        raise ValueError(
            f"refusing to evaluate: the checkpoint does not fit the env{cell}: {err}"
        ) from err
