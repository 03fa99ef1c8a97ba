"""TabletopEnv: the gymnasium environment shared by every task (Panda, table, cameras).

One env owns one PyBullet client (`p.connect(p.DIRECT)`) and passes its id to every call,
so several envs live in one process. `reset` restores a snapshot of the empty scene (table
and robot) and samples the task's scene from `self.np_random`, so an episode is a pure
function of its seed: same seed + same actions -> the same observations, pixels included.

Action -> robot (envs/spec.py): x, y, z are world-frame end-effector deltas of 0.03 m per
unit; roll, pitch, yaw world-frame rotations of 0.25 rad per unit; gripper > 0 closes;
terminate > 0 ends the episode without moving (success is still judged by the simulator).
Each action is held for 24 physics substeps (240 Hz physics, 10 Hz control) by default;
`physics` (envs/physics.py) sets substeps, solver iterations and IK effort.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import string
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet as p
from gymnasium import spaces

from envs.camera import (
    RENDERER,
    CameraConfig,
    FrontCamera,
    Lighting,
    WristCamera,
    WristCameraConfig,
    background_mask,
    object_boxes,
)
from envs.catalog import (
    BUILTIN_OBJECTS,
    COLOURS,
    PYBULLET_DATA,
    TABLE_COLOURS,
    TABLE_TEXTURES,
    load_object_set,
    object_position,
)
from envs.physics import PhysicsConfig
from envs.prompts import PromptStudio, StudioConfig
from envs.robot import Panda, Workspace
from envs.scenes import SceneSet, TableLook, TextureFiles, load_scene_set
from envs.shapes import PROCEDURAL_OBJECTS
from envs.spec import (
    BACKGROUND_MASK,
    CONTROL_HZ,
    DEFAULT_ACTION_SPEC,
    IMAGE,
    INSTRUCTION,
    MAX_OBJECT_BOXES,
    MAX_PROMPT_IMAGES,
    OBJECT_BOXES,
    PROMPT_IMAGES,
    STATE,
    STATE_NAMES,
    WRIST_IMAGE,
)
from envs.splits import SplitConfig, resolve_split
from envs.tasks import TASK_CLASSES

ENV_VERSION = "0"
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.'?!-_{}"  # {}: PROMPT_SLOT
START_EE = np.array([0.42, 0.0, 0.22])  # m; jittered by up to 3 cm per episode
# The action spec's bounds and units as arrays, built once (ActionSpec builds them per call).
_ACTION_LOW, _ACTION_HIGH = DEFAULT_ACTION_SPEC.low, DEFAULT_ACTION_SPEC.high
_ACTION_SCALE = np.array([d.scale for d in DEFAULT_ACTION_SPEC.dims], dtype=np.float64)


class TabletopEnv(gym.Env):
    """A language-conditioned tabletop task for a Panda (see module docstring).

    task: a name in envs.TASKS; split: a name in envs.SPLITS, with `split_overrides`
    (SplitConfig field -> value) applied; image_size: front and wrist camera resolution;
    wrist_camera: add obs["wrist_image"]; background_mask: add obs["background_mask"], uint8
    (H, W) 1 on the table and the empty background, 0 on the robot and the objects (the
    front camera's segmentation buffer, same render); object_boxes: add obs["object_boxes"],
    float32 (MAX_OBJECT_BOXES, 4): per task object the front image shows (every body but the
    robot and the table), its box [u0, v0, u1, v1] as fractions of the image's width and
    height, rows sorted by centre u then v, NaN past the last visible object (envs/camera.py
    `object_boxes`: the same render's segmentation buffer; the 8 largest when more are
    visible; all NaN with skip_render). Its space is a Box in [0, 1] that NaN rows fall
    outside of by design, so `obs in observation_space` is False with fewer than
    MAX_OBJECT_BOXES visible objects; prompt_image_size: the side of the
    visual prompts' crops, obs["prompt_images"], present when the split's `visual_prompts`
    share is above 0 (envs/prompts.py); max_steps: None = the task's own limit;
    skip_render: black images (oracle-only checks; physics is unchanged); physics:
    substeps, solver and IK settings (envs/physics.py; None = the defaults every store and
    checkpoint so far was made with).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str = "pick",
        split: str = "seen",
        image_size: int = 96,
        wrist_camera: bool = False,
        background_mask: bool = False,
        render_mode: str | None = "rgb_array",
        max_steps: int | None = None,
        split_overrides: dict[str, Any] | None = None,
        skip_render: bool = False,
        physics: PhysicsConfig | dict[str, Any] | None = None,
        prompt_image_size: int = 32,
        object_boxes: bool = False,
    ) -> None:
        self.physics = PhysicsConfig.from_value(physics)
        if task not in TASK_CLASSES:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_CLASSES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}; expected one of "
                             f"{self.metadata['render_modes']} or None")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be >= 1")
        self.split: SplitConfig = resolve_split(split, split_overrides)
        self.split_overrides = dict(split_overrides) if split_overrides else None
        defs = {**BUILTIN_OBJECTS, **PROCEDURAL_OBJECTS}  # drawn only when the split names them
        if self.split.object_set:
            user = load_object_set(self.split.object_set)
            defs.update({d.name: d for d in user})
            combos = tuple((c, d.name) for d in user
                           for c in (d.colours or tuple(k for k in COLOURS if k != "black")))
            self.split = resolve_split(split, {**(split_overrides or {}),
                                               "target_combos": combos})
        self.scene_set: SceneSet | None = None
        if self.split.scene_set:
            self.scene_set = load_scene_set(self.split.scene_set)
            light = self.scene_set.light or {}
            self.split = dataclasses.replace(
                self.split, **{f"light_{k}" if k != "ambient" else k: v
                               for k, v in light.items()})
        self.tables = self._table_looks()
        self.task_name = task
        self.task = TASK_CLASSES[task](defs)
        self.max_steps = int(max_steps or self.task.max_steps)
        self.render_mode = render_mode
        self.skip_render = skip_render
        self.camera_config = CameraConfig(width=image_size, height=image_size,
                                          jitter_m=self.split.camera_jitter)
        self.camera = FrontCamera(self.camera_config)
        self.wrist_config = WristCameraConfig(width=image_size, height=image_size)
        self.wrist = WristCamera(self.wrist_config) if wrist_camera else None
        self.background_mask = bool(background_mask)
        self.object_boxes = bool(object_boxes)
        self.studio_config = StudioConfig(image_size=prompt_image_size)
        self.visual_prompts = self.split.visual_prompts > 0
        self._studio: PromptStudio | None = None  # its own PyBullet client, made on first use
        self._prompt: np.ndarray | None = None  # this episode's crops (_prompt_array)
        self.table_z = 0.0
        self.table_region = ((0.36, 0.62), (-0.2, 0.2))
        self.workspace = Workspace()

        obs_spaces: dict[str, spaces.Space] = {
            IMAGE: spaces.Box(0, 255, self.camera_config.image_shape, dtype=np.uint8),
            # ee xyz (m, within reach), quaternion, gripper width (m)
            STATE: spaces.Box(np.array([-2, -2, -2, -1, -1, -1, -1, 0], dtype=np.float32),
                              np.array([2, 2, 2, 1, 1, 1, 1, 0.1], dtype=np.float32)),
            INSTRUCTION: spaces.Text(max_length=256, min_length=1,
                                     charset=INSTRUCTION_CHARSET),
        }
        if self.wrist is not None:
            obs_spaces[WRIST_IMAGE] = spaces.Box(0, 255, self.wrist_config.image_shape,
                                                 dtype=np.uint8)
        if self.background_mask:
            obs_spaces[BACKGROUND_MASK] = spaces.Box(0, 1, self.camera_config.image_shape[:2],
                                                     dtype=np.uint8)
        if self.object_boxes:  # NaN rows (no object) lie outside [0, 1] by design
            obs_spaces[OBJECT_BOXES] = spaces.Box(0.0, 1.0, (MAX_OBJECT_BOXES, 4),
                                                  dtype=np.float32)
        if self.visual_prompts:
            size = self.studio_config.image_size
            obs_spaces[PROMPT_IMAGES] = spaces.Box(0, 255, (MAX_PROMPT_IMAGES, size, size, 3),
                                                   dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(DEFAULT_ACTION_SPEC.low, DEFAULT_ACTION_SPEC.high,
                                       dtype=np.float32)
        self.client = p.connect(p.DIRECT)
        self.robot: Panda | None = None
        self._empty_state: int | None = None
        self.lighting = Lighting()
        self.steps = 0
        self._obs: dict[str, Any] | None = None

    # ---- gymnasium API --------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        self._restore_empty_scene()
        assert self.robot is not None
        start = START_EE + rng.uniform(-0.03, 0.03, size=3)
        self.robot.reset(start, yaw=float(rng.uniform(-0.3, 0.3)))
        self._draw_appearance()
        self.task.reset(self)  # the scene and the instruction
        self._prompt = self._prompt_array() if self.visual_prompts else None
        # Let objects settle (meshes rest on AABB corners) before the first frame.
        for _ in range(self.physics.substeps):
            p.stepSimulation(physicsClientId=self.client)
        self.steps = 0
        self._obs = self._observe()
        return self._obs, {"is_success": bool(self.task.success(self))}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool,
                                                dict[str, Any]]:
        if self.robot is None or self._obs is None:
            raise RuntimeError("call reset() before step()")
        a = np.clip(DEFAULT_ACTION_SPEC.validate(action), _ACTION_LOW, _ACTION_HIGH)
        terminated = bool(a[0] > 0)
        if not terminated:
            phys = a.astype(np.float64) * _ACTION_SCALE
            self.robot.apply(phys[1:4], phys[4:7], close=bool(a[7] > 0))
            for _ in range(self.physics.substeps):
                p.stepSimulation(physicsClientId=self.client)
            self._obs = self._observe()
        self.steps += 1
        success = bool(self.task.success(self))
        truncated = self.steps >= self.max_steps and not terminated
        # milestone: how far the episode has got (Task.milestones), for failure analysis.
        info = {"is_success": success, "steps": self.steps,
                "milestone": int(self.task.milestone(self))}
        # Fresh arrays every call: callers keep observations (gymnasium's contract).
        obs = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self._obs.items()}
        return obs, float(success), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._obs is None:
            return None
        return self._obs[IMAGE].copy()

    def close(self) -> None:
        if self.client >= 0:
            p.disconnect(physicsClientId=self.client)
            self.client = -1
        if self._studio is not None:
            self._studio.close()
            self._studio = None

    # ---- robotok API ----------------------------------------------------------------
    @property
    def instruction(self) -> str:
        """This episode's instruction: the task formats it in `Task.reset` ("" before)."""
        return self.task.instruction

    @property
    def prompt_words(self) -> tuple[str, ...]:
        """The words this episode's visual prompts replaced, one per PROMPT_SLOT, in order
        (e.g. ("red cube",)); empty for a text-only instruction."""
        return self.task.prompt_words

    def draw_visual_prompt(self, objects: dict[str, Any]) -> dict[str, np.ndarray]:
        """For `Task.reset`: which of `objects` (template field -> SpawnedObject) this episode
        shows by an image crop, with the crops. None in a text-only episode; else "obj" (the
        target) and, in `visual_prompt_refs` of the episodes, the other fields too.

        Draws from a generator jumped off the env's own (PCG64's jump, 2^127 steps ahead),
        which leaves `self.np_random` where it was: a seed gives the same scene, physics and
        instruction template with or without visual prompts."""
        s = self.split
        if s.visual_prompts <= 0 or not objects:
            return {}
        rng = np.random.Generator(self.np_random.bit_generator.jumped())
        if rng.uniform() >= s.visual_prompts:
            return {}
        shown = {k: obj for k, obj in objects.items()
                 if k == "obj" or rng.uniform() < s.visual_prompt_refs}
        if len(shown) > MAX_PROMPT_IMAGES:
            raise ValueError(f"task {self.task_name!r} shows {len(shown)} objects by image; "
                             f"expected at most MAX_PROMPT_IMAGES={MAX_PROMPT_IMAGES}")
        if self.skip_render:
            size = self.studio_config.image_size
            return {k: np.zeros((size, size, 3), dtype=np.uint8) for k in shown}
        if self._studio is None:
            self._studio = PromptStudio(self.studio_config)
        return {k: self._studio.render(obj.definition, obj.colour, obj.scale, rng)
                for k, obj in shown.items()}

    def oracle_action(self) -> np.ndarray:
        """The oracle's clean intended action for the current state, float32 (8,)."""
        if self.robot is None:
            raise RuntimeError("call reset() before oracle_action()")
        return np.clip(self.task.oracle(self), -1.0, 1.0).astype(np.float32)

    def object_pixels(self) -> np.ndarray:
        """Where the front camera sees the task's named objects now: float32 (2, 2), rows
        [target, second object] (`Task.prompt_objects()`'s "obj" and "ref": place's
        container, stack's base, move_near's reference), columns (u, v) = (column, row) in
        pixels of obs["image"] (0..W, 0..H, continuous; `FrontCamera.project`, with this
        episode's camera jitter). The point is the object's AABB centre (the point the oracle
        grasps around), projected whether or not something hides it; a point outside the
        frame keeps its projected value. NaN row for a task without a second object (pick,
        push).

        Privileged simulator state, for labels (collect.object_pixels): never part of an
        observation. Called right after reset() or step() it matches that observation's
        frame (a terminate step leaves the scene as it was)."""
        if self.robot is None or self._obs is None:
            raise RuntimeError("call reset() before object_pixels()")
        named = self.task.prompt_objects()
        points = np.full((2, 3), np.nan)
        for row, key in enumerate(("obj", "ref")):
            if key in named:
                points[row] = object_position(self.client, named[key])
        return self.camera.project(points).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """JSON-able facts a checkpoint or evaluation must match (CONTRACTS.md)."""
        return {
            "env_version": ENV_VERSION,
            "renderer": RENDERER,
            "camera": self.camera_config.to_dict(),
            "wrist_camera": self.wrist_config.to_dict() if self.wrist is not None else None,
            "image_shape": list(self.camera_config.image_shape),
            "control_hz": CONTROL_HZ,
            "physics_hz": self.physics.physics_hz,
            "substeps": self.physics.substeps,
            "physics": self.physics.to_dict(),
            "action_spec": DEFAULT_ACTION_SPEC.to_dict(),
            "state_names": list(STATE_NAMES),
            "task": self.task_name,
            "split": self.split.name,
            "split_overrides": self.split_overrides,
            "max_steps": self.max_steps,
            "skip_render": self.skip_render,
            "prompt_images": self.studio_config.to_dict() if self.visual_prompts else None,
            # obs["object_boxes"] (an observation); compatibility checks never compare it,
            # so checkpoints whose env.json predates the entry load as before
            "object_boxes": self.object_boxes,
        }

    # ---- internals ------------------------------------------------------------------
    def _restore_empty_scene(self) -> None:
        """Table and robot only, in the exact state they had when first built.

        Loading the Panda costs ~15 ms, so the empty scene is built once and saved; each
        reset removes the last episode's objects and restores that snapshot (positions,
        velocities, contact caches), which keeps an episode a pure function of its seed
        (tests/envs/test_determinism.py compares a used env with a fresh one).
        """
        c = self.client
        if self._empty_state is None:
            p.resetSimulation(physicsClientId=c)
            p.setGravity(0, 0, -9.81, physicsClientId=c)
            p.setTimeStep(self.physics.time_step, physicsClientId=c)
            # 20 solver iterations (the default) instead of bullet's 50: the Panda's joint
            # motors dominate a substep's cost, and 20 track them as well for these tasks.
            p.setPhysicsEngineParameter(numSolverIterations=self.physics.solver_iterations,
                                        physicsClientId=c)
            self._build_table()
            self.robot = Panda(c, (0.0, 0.0, self.table_z), self.workspace,
                               ik_iterations=self.physics.ik_iterations,
                               ik_residual=self.physics.ik_residual)
            self._textures: dict[str, int] = {}
            self._texture_files = TextureFiles()
            self._generated: dict[int, TableLook] = {}
            self._empty_state = p.saveState(physicsClientId=c)
            return
        keep = {self.table, self.robot.body} if self.robot is not None else set()
        for i in reversed(range(p.getNumBodies(physicsClientId=c))):
            body = p.getBodyUniqueId(i, physicsClientId=c)
            if body not in keep:
                p.removeBody(body, physicsClientId=c)
        p.restoreState(stateId=self._empty_state, physicsClientId=c)

    def _build_table(self) -> None:
        c = self.client
        half = [0.6, 0.75, 0.02]
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
        self.table = p.createMultiBody(0, col, vis, [0.35, 0.0, self.table_z - half[2]],
                                       physicsClientId=c)
        p.changeDynamics(self.table, -1, lateralFriction=0.8, physicsClientId=c)

    def _table_looks(self) -> tuple[TableLook, ...]:
        """The named table looks this split draws from: the scene set's, or the catalogue's."""
        if self.scene_set is not None:
            return self.scene_set.tables
        return tuple(
            TableLook(t, texture=f"{PYBULLET_DATA}/{TABLE_TEXTURES[t]}") if t in TABLE_TEXTURES
            else TableLook(t, colour=tuple(TABLE_COLOURS[t][:3]))  # type: ignore[arg-type]
            for t in self.split.tables)

    def _draw_table(self) -> None:
        """This episode's table look (from self.np_random): a generated table in
        `procedural.share` of episodes when the scene set has them, else a named look."""
        rng = self.np_random
        proc = self.scene_set.procedural if self.scene_set is not None else None
        if proc is not None and (not self.tables or rng.uniform() < proc.share):
            index = int(rng.integers(proc.bank))
            if index not in self._generated:  # ~10 ms to make, so once per env
                self._generated[index] = self._texture_files.look(*proc.table(index), index)
            look = self._generated[index]
        else:
            look = self.tables[int(rng.integers(len(self.tables)))]
        self.table_look = look.name
        c = self.client
        if look.texture is None:
            # Clearing the texture matters: a colour alone would tint the last one.
            p.changeVisualShape(self.table, -1, textureUniqueId=-1,
                                rgbaColor=[*look.colour, 1.0], physicsClientId=c)
            return
        if look.texture not in self._textures:  # PyBullet never frees one: load each once
            self._textures[look.texture] = p.loadTexture(look.texture, physicsClientId=c)
        p.changeVisualShape(self.table, -1, textureUniqueId=self._textures[look.texture],
                            rgbaColor=[1, 1, 1, 1], physicsClientId=c)

    def _draw_appearance(self) -> None:
        """Table look, lighting and camera jitter for this episode (from self.np_random)."""
        rng, s = self.np_random, self.split
        self._draw_table()
        az = rng.uniform(*s.light_azimuth)
        el = rng.uniform(*s.light_elevation)
        direction = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        tint = rng.uniform(*s.light_tint)
        colour = np.clip(1.0 - tint * rng.uniform(0, 1, size=3), 0.0, 1.0)
        self.lighting = Lighting(direction=tuple(float(v) for v in direction),
                                 colour=tuple(float(v) for v in colour),
                                 ambient=float(rng.uniform(*s.ambient)))
        self.camera.set_jitter(rng.uniform(-s.camera_jitter, s.camera_jitter, size=6))

    def _observe(self) -> dict[str, Any]:
        assert self.robot is not None
        shape = self.camera_config.image_shape
        mask = boxes = None
        if self.skip_render:
            image = np.zeros(shape, dtype=np.uint8)
            mask = np.ones(shape[:2], dtype=np.uint8)
            boxes = np.full((MAX_OBJECT_BOXES, 4), np.nan, dtype=np.float32)
        elif self.background_mask or self.object_boxes:
            # One render gives the image and the segmentation buffer both are read from.
            image, seg = self.camera.render_segmented(self.client, self.lighting)
            bodies = [p.getBodyUniqueId(i, physicsClientId=self.client)
                      for i in range(p.getNumBodies(physicsClientId=self.client))]
            if self.background_mask:
                # Foreground: every body but the table (the robot and this episode's objects).
                mask = background_mask(seg, [b for b in bodies if b != self.table])
            if self.object_boxes:
                # Task objects: every body but the table and the robot.
                boxes = object_boxes(seg, [b for b in bodies
                                           if b not in (self.table, self.robot.body)])
        else:
            image = self.camera.render(self.client, self.lighting)
        obs: dict[str, Any] = {IMAGE: image, STATE: self.robot.state(),
                               INSTRUCTION: self.instruction}
        if self._prompt is not None:
            obs[PROMPT_IMAGES] = self._prompt  # the episode's crops (step copies the arrays)
        if self.background_mask:
            obs[BACKGROUND_MASK] = mask
        if self.object_boxes:
            obs[OBJECT_BOXES] = boxes
        if self.wrist is not None:
            if self.skip_render:
                obs[WRIST_IMAGE] = np.zeros(self.wrist_config.image_shape, dtype=np.uint8)
            else:
                st = p.getLinkState(self.robot.body, 8, computeForwardKinematics=1,
                                    physicsClientId=self.client)
                obs[WRIST_IMAGE] = self.wrist.render(self.client, np.asarray(st[4]),
                                                     np.asarray(st[5]), self.lighting)
        return obs

    def _prompt_array(self) -> np.ndarray:
        """This episode's crops as uint8 (MAX_PROMPT_IMAGES, S, S, 3), zeros past the last."""
        size = self.studio_config.image_size
        out = np.zeros((MAX_PROMPT_IMAGES, size, size, 3), dtype=np.uint8)
        for i, crop in enumerate(self.task.prompt_images):
            out[i] = crop
        return out

    def __del__(self) -> None:
        # At interpreter shutdown pybullet may already be gone.
        with contextlib.suppress(Exception):
            self.close()
