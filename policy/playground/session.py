"""One playground tab: a scene, who acts in it, and the episode so far.

A tab picks a task, split and seed, may type any instruction, and steps one of the actors:
the checkpoint, a second checkpoint, or the task's scripted oracle, each on the very same
scene for a seed (the env's reset is a pure function of it). Policies are sessions of the
loaded checkpoints (policy/bridge/loading.py: own history, shared weights), the oracle is
policy/evaluation/actors.py's, and an episode ends as in policy/evaluation/rollout.py.
Nothing here imports the page library: tests and scripts drive a PlaySession directly.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from envs.camera import CameraConfig, FrontCamera
from envs.prompts import FLOOR_RGBA
from envs.spec import (
    IMAGE,
    INSTRUCTION,
    MAX_PROMPT_IMAGES,
    OBJECT_BOXES,
    PROMPT_IMAGES,
    prompt_slots,
)
from policy.bridge.loading import load_served_policy
from policy.bridge.server import ServedPolicy
from policy.evaluation.actors import OracleActor
from policy.evaluation.compat import check_compatible, read_checkpoint_env
from policy.evaluation.rollout import end_reason, milestone_name
from policy.evaluation.runner import EnvSettings
from policy.evaluation.video import write_video
from policy.playground.introspect import Introspector, StepInsight
from policy.playground.views import side_by_side, with_prompt

POLICY, SECOND, ORACLE = "policy", "second", "oracle"
# The bridge's limit (conf/serve.yaml): longer text only costs the text encoder time.
MAX_INSTRUCTION_CHARS = 256
# The larger render: the same scene and light from the front-right, wider than the policy's
# camera, so the gripper's height over the table (the front camera's weak cue) is visible.
# what a transparent pixel of a user's prompt picture becomes: the studio's floor
STUDIO_GREY = np.asarray(FLOOR_RGBA[:3], dtype=np.float32)
VIEW_CAMERA = CameraConfig(width=320, height=240, eye=(0.95, -0.5, 0.55),
                           target=(0.47, 0.0, 0.06), fov_deg=45.0)


@dataclass
class Checkpoint:
    """A loaded checkpoint: its served policy (sessions share one copy of the weights) and
    the env keywords it was trained with (image size, wrist camera)."""

    path: str
    served: ServedPolicy
    env_kwargs: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.served.kind} {Path(self.path).name} ({self.served.checkpoint_sha256[:8]})"


def load_checkpoint(path: str | Path, torch_threads: int | None = 1,
                    warmup_steps: int = 1) -> Checkpoint:
    """Load a checkpoint directory as the bridge does, with the env it needs."""
    served = load_served_policy(path, warmup_steps=warmup_steps, torch_threads=torch_threads)
    return Checkpoint(str(path), served,
                      EnvSettings().make_kwargs(read_checkpoint_env(path),
                                                object_boxes=OBJECT_BOXES in served.observation))


@dataclass
class StepView:
    """What the page shows after a reset or a step.

    `camera` is the policy's camera now; `seen` the frame the last action was chosen from
    (the attention map lies over it); `action`/`insight` are None right after a reset and for
    actors without distributions (the oracle). `label` is a stored episode's action (dataset).
    """

    step: int
    max_steps: int
    instruction: str
    actor: str
    camera: np.ndarray
    render: np.ndarray
    seen: np.ndarray | None = None
    action: np.ndarray | None = None
    insight: StepInsight | None = None
    label: np.ndarray | None = None
    label_bins: np.ndarray | None = None
    success: bool = False
    ended_by: str = ""  # "" while the episode goes on
    milestone: str = ""
    act_ms: float = 0.0
    seed: int | None = None

    @property
    def done(self) -> bool:
        return bool(self.ended_by)


def prepare_crop(image: Any, size: int) -> np.ndarray:
    """A user's picture of an object -> uint8 (size, size, 3), as the policy reads a prompt
    crop: grey (H, W), RGB or RGBA (alpha over the studio's grey floor), uint8 or floats in
    [0, 1]; the centred square is cut out and scaled to `size` by area averaging. The studio
    shows each object filling ~70% of its crop (envs/prompts.py): crop your picture tightly
    around the object, with a little margin."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"prompt image of shape {arr.shape}; expected a picture (H, W), "
                         "(H, W, 3) or (H, W, 4)")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (
            arr.min() >= 0.0 and arr.max() <= 1.0):
        x = arr.astype(np.float32)
    else:
        raise ValueError(f"prompt image of dtype {arr.dtype} (range {arr.min()}..{arr.max()}); "
                         "expected uint8 or floats in [0, 1]")
    if x.shape[-1] == 4:  # composite over the grey floor the studio renders its crops on
        alpha = x[..., 3:]
        x = x[..., :3] * alpha + STUDIO_GREY * (1.0 - alpha)
    h, w = x.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(x[top:top + side, left:left + side]))
    out = F.interpolate(square.permute(2, 0, 1)[None], size=(size, size), mode="area")[0]
    return (out.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def check_instruction(text: str, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """The instruction stripped; ValueError when empty or longer than `max_chars`."""
    if not isinstance(text, str):
        raise TypeError(f"instruction must be a str; got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise ValueError("instruction is empty; type what the robot should do, e.g. "
                         "'pick up the red block'")
    if len(text) > max_chars:
        raise ValueError(f"instruction has {len(text)} characters; expected at most {max_chars}")
    return text


class PlaySession:
    """One tab's episode. Not thread-safe by itself: callers hold `lock` around each call
    (a page may deliver a timer tick and a button click at once)."""

    def __init__(self, checkpoints: Mapping[str, Checkpoint],
                 view: CameraConfig | None = VIEW_CAMERA) -> None:
        if POLICY not in checkpoints:
            raise ValueError(f"checkpoints must include {POLICY!r}; got {sorted(checkpoints)}")
        unknown = set(checkpoints) - {POLICY, SECOND}
        if unknown:
            raise ValueError(f"checkpoint names {sorted(unknown)}; expected {POLICY!r} and "
                             f"optionally {SECOND!r}")
        self.checkpoints = dict(checkpoints)
        self.actors: tuple[str, ...] = (*self.checkpoints, ORACLE)
        self.view_camera = FrontCamera(view) if view is not None else None
        self.lock = threading.Lock()
        self._policies: dict[str, Any] = {}
        self._introspectors: dict[str, Introspector] = {}
        self._envs: dict[tuple, Any] = {}
        self._checked: set[tuple[str, tuple]] = set()  # (actor, env key) pairs found to fit
        self._oracle: OracleActor | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="robotok-play-"))
        self.actor = POLICY
        self.task = self.split = ""
        self.seed = 0
        self.instruction = ""
        self.scene_instruction = ""  # the one the env sampled for this seed
        self.env: Any = None
        self.obs: dict[str, Any] | None = None
        self.view: StepView | None = None
        self.frames: list[np.ndarray] = []  # camera | render, one per step, for the video
        self.running = False  # Start/Pause: the page's timer steps only while this is True
        # pictures the user showed for the instruction's "{image}" slots (slot -> the picture
        # as given); they replace the env's crops, scaled to each checkpoint's crop size, and
        # stay across resets until cleared (set_prompt_image(slot, None))
        self.user_prompts: dict[int, np.ndarray] = {}

    # -- actors and envs -----------------------------------------------------------------

    def label(self, actor: str) -> str:
        if actor == ORACLE:
            return "scripted oracle"
        prefix = "second: " if actor == SECOND else ""
        return prefix + self.checkpoints[actor].label

    def _policy(self, actor: str) -> Any:
        if actor not in self._policies:
            policy = self.checkpoints[actor].served.new_session()
            self._policies[actor] = policy
            self._introspectors[actor] = Introspector(policy)
        return self._policies[actor]

    def _env(self, task: str, split: str, actor: str) -> Any:
        """The env `actor` acts in for task/split. Envs of another task or split are closed
        (a tab holds at most one per camera setting), and each checkpoint is checked against
        its env once."""
        import envs

        # The oracle acts from privileged state; it runs in the first checkpoint's env.
        ckpt = self.checkpoints[POLICY if actor == ORACLE else actor]
        key = (task, split, tuple(sorted(ckpt.env_kwargs.items())))
        for other in [k for k in self._envs if k[:2] != (task, split)]:
            self._envs.pop(other).close()
        self._checked = {c for c in self._checked if c[1] in self._envs}
        if key not in self._envs:
            self._envs[key] = envs.make_env(task=task, split=split, **ckpt.env_kwargs)
        if actor != ORACLE and (actor, key) not in self._checked:
            check_compatible(self._policy(actor), self._envs[key].describe(),
                             where=f"task={task!r}, split={split!r}")
            self._checked.add((actor, key))
        return self._envs[key]

    def _render(self) -> np.ndarray:
        """The larger scene view, with the crops a multimodal instruction shows in its corner."""
        if self.view_camera is None:
            picture = np.asarray(self.obs[IMAGE]).copy()
        else:
            picture = self.view_camera.render(self.env.client, self.env.lighting)
        crops = self._prompt(32)
        if crops is not None:
            picture = with_prompt(picture, crops, prompt_slots(self.instruction or ""))
        return picture

    def _prompt(self, size: int) -> np.ndarray | None:
        """The crops the policy is shown, uint8 (MAX_PROMPT_IMAGES, size, size, 3): the
        env's (when its split shows objects by image), with the user's pictures in their
        slots; None when there are neither."""
        env_crops = self.obs.get(PROMPT_IMAGES) if self.obs is not None else None
        if env_crops is None and not self.user_prompts:
            return None
        if env_crops is not None and np.asarray(env_crops).shape[1] == size:
            out = np.array(env_crops, dtype=np.uint8)
        else:
            out = np.zeros((MAX_PROMPT_IMAGES, size, size, 3), dtype=np.uint8)
            if env_crops is not None:  # another crop size: scale the env's crops too
                for i, crop in enumerate(np.asarray(env_crops)):
                    out[i] = prepare_crop(crop, size)
        for slot, picture in self.user_prompts.items():
            out[slot] = prepare_crop(picture, size)
        return out

    def _policy_prompt(self, policy: Any) -> np.ndarray | None:
        """The crops for a prompt-reading `policy` at its crop size; None otherwise."""
        if not policy.reads_prompt_images:
            return None
        return self._prompt(int(policy.prompt_shape[1]))

    def set_prompt_image(self, slot: int, picture: Any) -> None:
        """Show the object of the instruction's `slot`-th "{image}" (0-based) by `picture`
        (any size; see prepare_crop) from the next step on; the policy's history starts over,
        as for a new instruction. None clears the slot."""
        if not isinstance(slot, int) or not 0 <= slot < MAX_PROMPT_IMAGES:
            raise ValueError(f"prompt slot {slot!r}; expected 0..{MAX_PROMPT_IMAGES - 1}")
        if picture is None:
            self.user_prompts.pop(slot, None)
        else:
            prepare_crop(picture, 8)  # refuse a bad picture now, not at the next step
            self.user_prompts[slot] = np.array(picture)
        if self.obs is not None:
            self._reset_actor()
            if self.view is not None:  # the scene view's corner shows the new crop now
                self.view = replace(self.view, render=self._render())

    # -- the episode ---------------------------------------------------------------------

    def reset(self, task: str, split: str, seed: int, actor: str | None = None,
              instruction: str | None = None) -> StepView:
        """A fresh episode of `task`/`split` from `seed`, acted by `actor` (default: the
        current one) on `instruction` (default: the one the scene was sampled with)."""
        import envs

        actor = self.actor if actor is None else actor
        if actor not in self.actors:
            raise ValueError(f"actor {actor!r}; expected one of {list(self.actors)}")
        if task not in envs.TASKS:
            raise ValueError(f"task {task!r}; expected one of {list(envs.TASKS)}")
        if split not in envs.ALL_SPLITS:
            raise ValueError(f"split {split!r}; expected one of {list(envs.ALL_SPLITS)}")
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed {seed}; expected >= 0")
        self.running = False
        try:
            env = self._env(task, split, actor)
        except Exception:
            # the last episode's env may be closed by now: nothing is left to step
            self.env = self.obs = self.view = None
            raise
        obs, info = env.reset(seed=seed)
        self.env, self.obs = env, obs
        self.actor, self.task, self.split, self.seed = actor, task, split, seed
        self.scene_instruction = str(obs[INSTRUCTION])
        self.instruction = check_instruction(instruction or self.scene_instruction)
        self._reset_actor()  # a text-only checkpoint refuses an "{image}" instruction here
        render = self._render()
        self.frames = [side_by_side(obs[IMAGE], render)]
        self.view = StepView(step=0, max_steps=env.max_steps, instruction=self.instruction,
                             actor=actor, camera=np.asarray(obs[IMAGE]).copy(), render=render,
                             success=bool(info.get("is_success", False)), milestone="none",
                             seed=seed)
        return self.view

    def _reset_actor(self) -> None:
        if self.actor == ORACLE:
            self._oracle = OracleActor(self.env)
        else:
            policy = self._policy(self.actor)
            policy.reset(self.instruction, self._policy_prompt(policy))
            self._introspectors[self.actor].clear()

    def set_instruction(self, text: str) -> None:
        """Act on `text` from the next step on (the policy's history starts over, as when a
        robot is given a new command mid-episode)."""
        text = check_instruction(text)
        if text != self.instruction:
            self.instruction = text
            if self.obs is not None:
                self._reset_actor()

    def step(self) -> StepView:
        """One control step of the current actor; a finished episode stays as it is."""
        if self.view is None or self.obs is None:
            raise RuntimeError("reset the scene before stepping")
        if self.view.done:
            return self.view
        seen = np.asarray(self.obs[IMAGE]).copy()
        observation = {**self.obs, INSTRUCTION: self.instruction}
        started = time.perf_counter()
        if self.actor == ORACLE:
            assert self._oracle is not None  # made by reset
            action, insight = self._oracle.select_action(observation), None
        else:
            policy = self._policy(self.actor)
            prompt = self._policy_prompt(policy)
            if prompt is not None:  # the crops it was reset with (the user's included)
                observation[PROMPT_IMAGES] = prompt
            action = policy.select_action(observation)
            insight = self._introspectors[self.actor].read()
        act_ms = (time.perf_counter() - started) * 1e3
        obs, _, terminated, truncated, info = self.env.step(action)
        self.obs = obs
        render = self._render()
        self.frames.append(side_by_side(obs[IMAGE], render))
        self.view = StepView(
            step=self.view.step + 1, max_steps=self.env.max_steps,
            instruction=self.instruction, actor=self.actor,
            camera=np.asarray(obs[IMAGE]).copy(), render=render, seen=seen,
            action=np.asarray(action, dtype=np.float32), insight=insight,
            success=bool(info["is_success"]), ended_by=end_reason(terminated, truncated),
            milestone=milestone_name(self.env, int(info.get("milestone", 0))),
            act_ms=act_ms, seed=self.seed)
        return self.view

    def save_video(self, fps: int = 10) -> Path:
        """The episode so far as an mp4 (camera beside the larger render, the instruction
        above, the outcome below); returns its path in this session's folder."""
        if not self.frames or self.view is None:
            raise RuntimeError("nothing to record: reset the scene first")
        v = self.view
        outcome = ("success" if v.success else "failure") if v.done else "running"
        footer = f"{outcome} after {v.step} steps ({self.label(self.actor)}, seed {self.seed})"
        name = f"{self.task}-{self.split}-seed{self.seed}-{self.actor}-{v.step}steps.mp4"
        return write_video(self.frames, self._workdir / name, caption=self.instruction,
                           footer=footer, fps=fps, scale=1)

    def close(self) -> None:
        """Free the envs, hooks and recorded frames (the tab went away)."""
        for env in self._envs.values():
            env.close()
        for introspector in self._introspectors.values():
            introspector.close()
        self._envs.clear()
        self._checked.clear()
        self._oracle = None
        self._policies.clear()
        self._introspectors.clear()
        self.frames = []
        self.env = self.obs = self.view = None
        shutil.rmtree(self._workdir, ignore_errors=True)
