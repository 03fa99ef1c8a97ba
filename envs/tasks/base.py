"""The Task base class and the oracle's motion primitives shared by every task.

A task (Ravens/CLIPort style) samples its scene from the split, owns its instruction
templates, judges success from simulator state, and ships a closed-loop scripted oracle:
`oracle(env)` recomputes the intended action from the current privileged state on every
call, so a collector may execute label + noise (DART) and still record a clean label.

Oracle design rules (docs/experiments/2026-11-28-prototype.md): no phase in which the
observation stays the same while the label changes (the gripper closes while its width,
which is in the state, shrinks); slow down near the object, because grasp-height errors
were the main failure; smooth labels (a "funnel": the allowed height above the grasp point
grows with the horizontal error, instead of a hard hover/descend switch).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from envs.catalog import (
    BUILTIN_OBJECTS,
    ObjectDef,
    SpawnedObject,
    object_position,
    object_yaw,
    spawn_object,
)
from envs.spec import DEFAULT_ACTION_SPEC, PROMPT_SLOT

if TYPE_CHECKING:
    from envs.tabletop import TabletopEnv

METRES_PER_UNIT = DEFAULT_ACTION_SPEC.dims[DEFAULT_ACTION_SPEC.index("x")].scale
RADIANS_PER_UNIT = DEFAULT_ACTION_SPEC.dims[DEFAULT_ACTION_SPEC.index("yaw")].scale
I_TERM, I_X, I_YAW, I_GRIP = (DEFAULT_ACTION_SPEC.index(n) for n in ("terminate", "x", "yaw",
                                                                     "gripper"))

HOVER_ABOVE = 0.06  # m above an object's top while approaching it
CARRY_Z = 0.14  # m above the table while carrying
OPEN_WIDTH = 0.07  # m: a gripper wider than this counts as open


def wrap(angle: float, period: float) -> float:
    """`angle` wrapped into [-period/2, period/2); period 0 means "any angle" -> 0."""
    if period <= 0:
        return 0.0
    return (angle + period / 2) % period - period / 2


@dataclass
class Placement:
    """An object to place: definition, colour, and clearance radius around it (m)."""

    definition: ObjectDef
    colour: str
    radius: float


class Task:
    """Base class: subclasses set the class attributes and implement the four hooks."""

    name: ClassVar[str] = ""
    max_steps: ClassVar[int] = 60
    templates: ClassVar[tuple[str, ...]] = ()  # seen paraphrases
    held_out_templates: ClassVar[tuple[str, ...]] = ()  # unseen_instruction only
    # The phases an episode passes through before success, in order; `milestone` says how
    # many hold now. Evaluation keeps each episode's furthest one, so a failure is
    # reported by the phase it stalled in (reach, grasp, carry, release). Privileged: read
    # from the simulator, never part of an observation.
    milestones: ClassVar[tuple[str, ...]] = ("reached", "grasped")

    def __init__(self, object_defs: dict[str, ObjectDef] | None = None) -> None:
        self.defs = dict(BUILTIN_OBJECTS) if object_defs is None else object_defs
        self.objects: list[SpawnedObject] = []
        self.instruction = ""
        # Visual prompts (envs/prompts.py): the crops shown in the instruction's PROMPT_SLOTs,
        # in order, and the words each one replaced; empty for a text-only instruction.
        self.prompt_images: tuple[np.ndarray, ...] = ()
        self.prompt_words: tuple[str, ...] = ()

    def reset(self, env: TabletopEnv) -> str:
        """Start an episode: spawn the scene (`sample`), then choose one of this split's
        templates with the env's generator and fill it in. Returns the instruction, which
        the task keeps in `self.instruction` (CLIPort formats its goal in the task too).

        In the split's `visual_prompts` share of episodes the env shows the target (and, in
        `visual_prompt_refs` of those, the second object) by an image crop: its field becomes
        PROMPT_SLOT and the crop goes to `prompt_images`, in the order the slots appear."""
        fields = self.sample(env)
        templates = self.templates_for(env)
        template = templates[int(env.np_random.integers(len(templates)))]
        order = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        missing = [name for name in order if name not in fields]
        if missing:
            raise ValueError(f"instruction template {template!r} uses field {missing[0]!r} but"
                             f" task {self.name!r} offers {sorted(fields)}")
        shown = env.draw_visual_prompt(
            {k: v for k, v in self.prompt_objects().items() if k in order})
        self.prompt_images = tuple(shown[name] for name in order if name in shown)
        self.prompt_words = tuple(fields[name] for name in order if name in shown)
        self.instruction = template.format(
            **{k: PROMPT_SLOT if k in shown else v for k, v in fields.items()})
        return self.instruction

    def prompt_objects(self) -> dict[str, SpawnedObject]:
        """The template fields that name an object, with the object: what a visual prompt
        may show instead. "obj" (the target) first; tasks with a second object add "ref"."""
        return {"obj": self.target}

    def templates_for(self, env: TabletopEnv) -> tuple[str, ...]:
        """The templates this episode draws from: the split's own, if it sets any, else the
        held-out paraphrases (unseen_instruction) or the seen ones."""
        if env.split.templates:
            return env.split.templates
        return self.held_out_templates if env.split.instructions == "held_out" else self.templates

    # ---- hooks ----------------------------------------------------------------------
    def sample(self, env: TabletopEnv) -> dict[str, str]:
        """Spawn the scene and return the template fields (e.g. {"obj": "red cube"})."""
        raise NotImplementedError

    def success(self, env: TabletopEnv) -> bool:
        raise NotImplementedError

    def oracle(self, env: TabletopEnv) -> np.ndarray:
        raise NotImplementedError

    def milestone(self, env: TabletopEnv) -> int:
        """How many of `milestones` hold in the current state (0..len(milestones))."""
        if self.holding(env, self.target):
            return 2
        return 1 if self.reached(env, self.target) else 0

    def reached(self, env: TabletopEnv, obj: SpawnedObject) -> bool:
        """The hand is at `obj`: fingertips within 3 cm of its centre horizontally and no
        higher than 3 cm above its top."""
        ee = env.robot.ee_position()
        centre = object_position(env.client, obj)
        return (float(np.linalg.norm(ee[:2] - centre[:2])) < 0.03
                and ee[2] < centre[2] + obj.half_height + 0.03)

    # ---- scene helpers --------------------------------------------------------------
    def draw_combo(self, env: TabletopEnv, combos: tuple[tuple[str, str], ...],
                   avoid: frozenset[str] | set[str] = frozenset(), need_flat_top: bool = False,
                   need_stackable: bool = False, min_footprint: float = 0.0
                   ) -> tuple[ObjectDef, str]:
        """A (definition, colour) from `combos` whose "colour noun" is not in `avoid`."""
        ok = [(c, o) for c, o in combos
              if f"{c} {self.defs[o].noun}" not in avoid
              and (self.defs[o].flat_top or not need_flat_top)
              and (self.defs[o].stackable or not need_stackable)
              and self.defs[o].footprint_radius >= min_footprint]
        if not ok:
            raise ValueError(f"task {self.name!r}: no object in {combos} fits (avoiding "
                             f"{sorted(avoid)}, flat top needed: {need_flat_top}, stackable "
                             f"needed: {need_stackable}, footprint >= {min_footprint} m)")
        colour, obj = ok[int(env.np_random.integers(len(ok)))]
        return self.defs[obj], colour

    def spawn_all(self, env: TabletopEnv, placements: list[Placement],
                  region: tuple[tuple[float, float], tuple[float, float]] | None = None
                  ) -> list[SpawnedObject]:
        """Spawn objects at non-overlapping random positions (rejection sampling)."""
        (x0, x1), (y0, y1) = region or env.table_region
        positions: list[tuple[float, float, float]] = []
        for pl in placements:
            for _ in range(200):
                x, y = env.np_random.uniform(x0, x1), env.np_random.uniform(y0, y1)
                if all(math.hypot(x - px, y - py) > pl.radius + pr + 0.01
                       for px, py, pr in positions):
                    positions.append((x, y, pl.radius))
                    break
            else:
                names = [f"{q.colour} {q.definition.name}" for q in placements]
                raise ValueError(
                    f"impossible scene: cannot place {len(placements)} objects {names} on the "
                    f"table region x={x0:.2f}..{x1:.2f}, y={y0:.2f}..{y1:.2f} without overlap")
        spawned = []
        for pl, (x, y, _) in zip(placements, positions, strict=True):
            scale = float(env.np_random.uniform(*env.split.object_scale))
            if pl.definition.kind == "container":
                scale = 1.0  # containers keep their size so targets always fit inside
            yaw = float(env.np_random.uniform(-math.pi, math.pi))
            spawned.append(spawn_object(env.client, pl.definition, pl.colour, (x, y), yaw,
                                        env.table_z, scale))
        return spawned

    def add_distractors(self, env: TabletopEnv, named: list[Placement]) -> list[Placement]:
        """Append the split's number of distractors, never sharing a named object's name."""
        lo, hi = env.split.distractors
        n = int(env.np_random.integers(lo, hi + 1))
        avoid = {f"{q.colour} {q.definition.noun}" for q in named}
        out = list(named)
        for _ in range(n):
            d, c = self.draw_combo(env, env.split.distractor_combos, avoid)
            out.append(Placement(d, c, d.footprint_radius))
        return out

    # ---- oracle primitives ----------------------------------------------------------
    @staticmethod
    def action(move: np.ndarray | None = None, yaw: float = 0.0, close: bool = False,
               terminate: bool = False) -> np.ndarray:
        a = np.zeros(len(DEFAULT_ACTION_SPEC), dtype=np.float32)
        if move is not None:
            a[I_X:I_X + 3] = move
        a[I_YAW] = yaw
        a[I_GRIP] = 1.0 if close else -1.0
        a[I_TERM] = 1.0 if terminate else -1.0
        return np.clip(a, -1.0, 1.0)

    @staticmethod
    def move_units(ee: np.ndarray, goal: np.ndarray, vmax: float = 1.0) -> np.ndarray:
        """Straight-line step toward `goal` in normalized units, at most `vmax` long."""
        d = (goal - ee) / METRES_PER_UNIT
        n = float(np.linalg.norm(d))
        return d * (vmax / n) if n > vmax else d

    @staticmethod
    def yaw_units(current: float, goal: float, symmetry: float) -> tuple[float, float]:
        """(normalized yaw action, remaining error in rad) toward `goal` modulo symmetry.

        The error is taken modulo the object's symmetry, capped at a half turn (the parallel
        gripper's own symmetry); round objects (symmetry 0) need no rotation.
        """
        period = math.pi if symmetry <= 0 else min(symmetry, math.pi)
        err = 0.0 if symmetry <= 0 else wrap(goal - current, period)
        return float(np.clip(err / RADIANS_PER_UNIT, -1, 1)), err

    def grasp_height(self, env: TabletopEnv, obj: SpawnedObject) -> float:
        """Grasp-point height for `obj`: its centre, but keep the fingertips off the table."""
        centre = object_position(env.client, obj)
        return max(centre[2], env.table_z + 0.015)

    def holding(self, env: TabletopEnv, obj: SpawnedObject) -> bool:
        """Both fingers touch `obj` while the gripper is commanded closed.

        Deliberately not conditioned on the expected grasp width: an object knocked onto
        another face is still held, just wider, and waiting for a width that never comes
        would stall the oracle.
        """
        return env.robot.holds(obj.body) and env.robot.gripper_closed

    def grasp_step(self, env: TabletopEnv, obj: SpawnedObject) -> np.ndarray:
        """One oracle step toward grasping `obj` (call while it is not held)."""
        robot = env.robot
        ee = robot.ee_position()
        centre = object_position(env.client, obj)
        grasp_z = self.grasp_height(env, obj)
        top = centre[2] + obj.half_height
        yaw_goal = object_yaw(env.client, obj) + obj.grasp_yaw_offset
        yaw_a, yaw_err = self.yaw_units(robot.finger_axis_yaw(), yaw_goal,
                                        obj.definition.symmetry)
        xy_err = float(np.linalg.norm(ee[:2] - centre[:2]))
        width = robot.gripper_width()
        at_grasp = xy_err < 0.012 and abs(ee[2] - grasp_z) < 0.01 and abs(yaw_err) < 0.12
        if at_grasp and (robot.gripper_closed or width > OPEN_WIDTH):
            return self.action(close=True)  # closing: the width in the state shrinks
        if robot.gripper_closed and width < OPEN_WIDTH:
            # A missed or slipped grasp: open while backing up to the hover height.
            goal = np.array([ee[0], ee[1], max(ee[2], top + HOVER_ABOVE)])
            return self.action(self.move_units(ee, goal, 0.5), yaw_a, close=False)
        # Funnel: the lower bound on height grows with the horizontal (and yaw) error.
        err = xy_err + 0.03 * abs(yaw_err)
        frac = float(np.clip((err - 0.006) / 0.03, 0.0, 1.0))
        z_goal = grasp_z + frac * (top + HOVER_ABOVE - grasp_z)
        if ee[2] < top + 0.01 and xy_err > 0.02:
            z_goal = max(z_goal, top + HOVER_ABOVE)  # never sweep sideways through the object
            goal = np.array([ee[0], ee[1], z_goal]) if ee[2] < top else np.array(
                [centre[0], centre[1], z_goal])
        else:
            goal = np.array([centre[0], centre[1], z_goal])
        # Slow near the grasp point: grasp-height errors were the prototype's main failure.
        near = float(np.linalg.norm(goal - ee))
        vmax = 0.35 + 0.65 * float(np.clip(near / 0.08, 0.0, 1.0))
        return self.action(self.move_units(ee, goal, vmax), yaw_a, close=False)

    def carry_and_release_step(self, env: TabletopEnv, obj: SpawnedObject,
                               goal_xy: np.ndarray, release_z: float) -> np.ndarray:
        """One step carrying held `obj` to `goal_xy` and lowering it until its centre is at
        `release_z`; opens the gripper once there.

        Steers the end effector, not the object: `grasp_step` grasps at the object's centre,
        so the grasp point stands in for it, and a held object that swings slightly in the
        fingers does not feed its swing back into the labels.
        """
        ee = env.robot.ee_position()
        xy_err = float(np.linalg.norm(ee[:2] - goal_xy))
        carry_z = max(CARRY_Z, release_z + 0.05)
        if xy_err < 0.01 and -0.012 < ee[2] - release_z < 0.006:
            return self.action(close=False)  # release
        frac = float(np.clip((xy_err - 0.006) / 0.04, 0.0, 1.0))
        z_goal = release_z + frac * (carry_z - release_z)
        if ee[2] < release_z + 0.02 and xy_err > 0.04:
            goal = np.array([ee[0], ee[1], carry_z])  # low and off target: rise first
        else:
            goal = np.array([goal_xy[0], goal_xy[1], z_goal])
        near = float(np.linalg.norm(goal - ee))
        vmax = 0.4 + 0.6 * float(np.clip(near / 0.08, 0.0, 1.0))
        return self.action(self.move_units(ee, goal, vmax), close=True)

    def retreat_step(self, env: TabletopEnv) -> np.ndarray:
        """After a release: open fully and move up."""
        ee = env.robot.ee_position()
        goal = np.array([ee[0], ee[1], ee[2] + 0.05])
        return self.action(self.move_units(ee, goal, 0.5), close=False)
