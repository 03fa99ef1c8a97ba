"""The object catalogue: named colours, procedural primitives, meshes and containers.

Every object a task can put on the table is described here by an `ObjectDef` (its geometry
and the noun instructions use for it) and coloured by a name from `COLOURS`. Procedural
primitives are built with `createCollisionShape`/`createVisualShape` (no files), meshes come
from `pybullet_data` or from a user's object set.

User object sets (added through config alone, no code change) are a YAML file next
to a folder of URDF/OBJ files::

    # my_objects.yaml
    root: meshes/            # folder of the files, relative to this YAML (or absolute);
                             # the token "pybullet_data" means pybullet_data's folder
    objects:
      - name: my_duck        # unique geometry name, used by splits
        noun: duck           # what instructions call it ("pick up the yellow duck")
        file: duck_vhacd.urdf  # .urdf or .obj (an .obj is its own collision mesh)
        scale: 0.05          # uniform mesh scale
        colours: [yellow]    # colours it may be drawn with (names from COLOURS)
        grasp_width: 0.04    # optional: width across the fingers, m (default: AABB)
    colours:                 # optional extra named colours, RGBA in [0, 1]
      teal: [0.0, 0.5, 0.5, 1.0]

`load_object_set(path)` validates it (unknown colour, missing file -> ValueError naming the
value) and returns the `ObjectDef`s; `make_env(..., split_overrides={"object_set": path})`
uses them as the split's objects. conf/env/object_sets/example.yaml is a working example.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet as p
import pybullet_data
import yaml

PYBULLET_DATA = pybullet_data.getDataPath()

# Named colours (RGBA). Instructions use these names, so they must be visually distinct at
# 96 px under the lighting range of every split.
COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.15, 0.65, 0.20, 1.0),
    "blue": (0.12, 0.25, 0.85, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.20, 0.70, 1.0),
    "orange": (0.98, 0.50, 0.05, 1.0),
    "pink": (0.98, 0.55, 0.75, 1.0),
    "cyan": (0.10, 0.80, 0.85, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
    "black": (0.08, 0.08, 0.08, 1.0),
}

# Table appearances. Kept apart from object colours: a split holds some of them out.
TABLE_COLOURS: dict[str, tuple[float, float, float, float]] = {
    "wood": (0.62, 0.47, 0.32, 1.0),
    "grey": (0.55, 0.55, 0.55, 1.0),
    "beige": (0.80, 0.74, 0.62, 1.0),
    "slate": (0.35, 0.40, 0.45, 1.0),
    "dark_wood": (0.38, 0.26, 0.17, 1.0),
    "mint": (0.60, 0.78, 0.66, 1.0),
    "lilac": (0.70, 0.64, 0.80, 1.0),
}

# Table textures (files in pybullet_data); none of them is used by the seen split.
TABLE_TEXTURES: dict[str, str] = {
    "checker": "checker_blue.png",
    "grid": "checker_grid.jpg",
    "noise": "tex256.png",
}


@dataclass(frozen=True)
class ObjectDef:
    """One object geometry.

    kind: "box", "cylinder", "prism" (regular n-gon extruded along z), "mesh",
    "container" (an open box-like vessel built from boxes: tray or bowl), "loft" (a convex
    solid swept through horizontal sections: `profile`) or "compound" (a union of boxes:
    `boxes`); the procedural training shapes of envs/shapes.py use the last two.
    size: half extents for boxes, (radius, radius, half height) for cylinders and prisms,
    (inner half width, inner half width, wall height) for containers, the half extents of
    the bounding box for lofts and compounds; unused for meshes.
    profile (lofts): (t, s) pairs, t the height fraction from the bottom (0 first, 1 last,
    increasing) and s in [0, 1] the section's size there as a fraction of size[0], size[1];
    the section is an ellipse (sides=0) or a rectangle (sides=4).
    boxes (compounds): (hx, hy, hz, cx, cy, cz) per box, half extents and centre in the
    frame of the bounding box's centre.
    """

    name: str
    noun: str
    kind: str
    size: tuple[float, float, float] = (0.025, 0.025, 0.025)
    sides: int = 0  # prisms: number of sides
    file: str = ""  # meshes: absolute path of a .urdf or .obj
    scale: float = 1.0  # meshes: uniform scale
    colours: tuple[str, ...] = ()  # empty = any colour in COLOURS
    flat_top: bool = True  # something can be stacked on it
    stackable: bool = True  # rests stably on a small flat top (irregular blobs do not)
    symmetry: float = math.pi / 2  # grasp yaw symmetry (rad); 0 = round, yaw does not matter
    grasp_width: float = 0.0  # m across the fingers; 0 = from the AABB
    profile: tuple[tuple[float, float], ...] = ()  # lofts: (height fraction, section size)
    boxes: tuple[tuple[float, float, float, float, float, float], ...] = ()  # compounds

    def __post_init__(self) -> None:
        kinds = ("box", "cylinder", "prism", "mesh", "container", "loft", "compound")
        if self.kind not in kinds:
            raise ValueError(f"object {self.name!r}: unknown kind {self.kind!r}; expected {kinds}")
        for c in self.colours:
            if c not in COLOURS:
                raise ValueError(
                    f"object {self.name!r}: unknown colour {c!r}; expected one of {sorted(COLOURS)}"
                )
        if self.kind == "mesh" and not os.path.isfile(self.file):
            raise ValueError(f"object {self.name!r}: mesh file {self.file!r} does not exist")
        if self.kind == "prism" and self.sides < 3:
            raise ValueError(f"object {self.name!r}: a prism needs sides >= 3, got {self.sides}")
        if self.kind == "loft":
            ts = [t for t, _ in self.profile]
            if (len(ts) < 2 or ts[0] != 0.0 or ts[-1] != 1.0
                    or any(b <= a for a, b in zip(ts, ts[1:], strict=False))
                    or any(not 0.0 <= s <= 1.0 for _, s in self.profile)):
                raise ValueError(
                    f"object {self.name!r}: profile {self.profile}; expected (t, s) pairs with t "
                    "increasing from 0 to 1 and s in [0, 1]")
            if self.sides not in (0, 4):
                raise ValueError(f"object {self.name!r}: a loft's section has sides 0 (ellipse) "
                                 f"or 4 (rectangle), got {self.sides}")
        if self.kind == "compound" and (not self.boxes
                                        or any(len(b) != 6 for b in self.boxes)):
            raise ValueError(f"object {self.name!r}: boxes {self.boxes}; expected one or more "
                             "(hx, hy, hz, cx, cy, cz) tuples")

    @property
    def footprint_radius(self) -> float:
        """Radius of a circle around the object's footprint, for collision-free placement."""
        if self.kind == "mesh":
            return 0.045  # meshes are scaled to roughly 5-8 cm across
        return math.hypot(self.size[0], self.size[1]) + (0.02 if self.kind == "container" else 0)


def _pd(rel: str) -> str:
    return os.path.join(PYBULLET_DATA, rel)


# The built-in catalogue. Sizes are chosen so every primitive fits the Panda's 8 cm grasp.
BUILTIN_OBJECTS: dict[str, ObjectDef] = {
    o.name: o
    for o in [
        ObjectDef("cube", "cube", "box", (0.022, 0.022, 0.022)),
        ObjectDef("brick", "brick", "box", (0.035, 0.018, 0.02), symmetry=math.pi),
        ObjectDef("cylinder", "cylinder", "cylinder", (0.02, 0.02, 0.025), symmetry=0.0),
        ObjectDef("hexagon", "hexagon", "prism", (0.024, 0.024, 0.022), sides=6,
                  symmetry=math.pi / 3),
        ObjectDef("prism", "prism", "prism", (0.027, 0.027, 0.022), sides=3,
                  symmetry=2 * math.pi / 3),
        ObjectDef("octagon", "octagon", "prism", (0.023, 0.023, 0.022), sides=8,
                  symmetry=math.pi / 4),
        ObjectDef("slab", "slab", "box", (0.03, 0.03, 0.013)),
        ObjectDef("lego", "lego", "mesh", file=_pd("lego/lego.urdf"), scale=1.2, flat_top=False),
        ObjectDef("duck", "duck", "mesh", file=_pd("duck_vhacd.urdf"), scale=0.55,
                  flat_top=False, symmetry=math.pi),
        ObjectDef("mug", "mug", "mesh", file=_pd("objects/mug.urdf"), scale=0.5,
                  flat_top=False, symmetry=math.pi),
        # Two of pybullet_data's random_urdfs (procedurally generated blobs), ~2x5 cm.
        ObjectDef("rock_a", "rock", "mesh", file=_pd("random_urdfs/003/003.urdf"), scale=0.45,
                  flat_top=False, stackable=False, symmetry=math.pi),
        ObjectDef("rock_b", "rock", "mesh", file=_pd("random_urdfs/009/009.urdf"), scale=0.6,
                  flat_top=False, stackable=False, symmetry=math.pi),
        ObjectDef("tray", "tray", "container", (0.07, 0.07, 0.025)),
        ObjectDef("bowl", "bowl", "container", (0.055, 0.055, 0.035), sides=8),
    ]
}


@dataclass
class SpawnedObject:
    """An object instance in one simulation: its body id, definition, colour and scale."""

    body: int
    definition: ObjectDef
    colour: str
    scale: float
    half_height: float  # m, from the AABB after spawning
    grasp_width: float  # m, across the fingers at the grasp yaw
    # rad: direction the fingers must close along, relative to the body's x axis
    grasp_yaw_offset: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.definition.noun}"


def _prism_mesh(radius: float, half_h: float, sides: int) -> tuple[list, list]:
    """Vertices and triangle indices of a regular n-gon prism centred at the origin."""
    angles = [2 * math.pi * k / sides for k in range(sides)]
    ring = [(radius * math.cos(a), radius * math.sin(a)) for a in angles]
    verts = [[x, y, -half_h] for x, y in ring] + [[x, y, half_h] for x, y in ring]
    verts += [[0.0, 0.0, -half_h], [0.0, 0.0, half_h]]
    bottom_c, top_c = 2 * sides, 2 * sides + 1
    idx: list[int] = []
    for k in range(sides):
        k2 = (k + 1) % sides
        idx += [k, k2, sides + k2, k, sides + k2, sides + k]  # side quad, outward winding
        idx += [bottom_c, k2, k]  # bottom cap (facing down)
        idx += [top_c, sides + k, sides + k2]  # top cap (facing up)
    return verts, idx


LOFT_SEGMENTS = 32  # vertices per elliptic section of a loft's mesh


def loft_section(definition: ObjectDef, s: float) -> list[tuple[float, float]]:
    """The (x, y) vertices of a loft's section at size fraction `s` (unscaled), counter-
    clockwise: an ellipse of LOFT_SEGMENTS vertices or a rectangle."""
    ax, ay = definition.size[0] * s, definition.size[1] * s
    if definition.sides == 4:
        return [(ax, ay), (-ax, ay), (-ax, -ay), (ax, -ay)]
    return [(ax * math.cos(2 * math.pi * k / LOFT_SEGMENTS),
             ay * math.sin(2 * math.pi * k / LOFT_SEGMENTS)) for k in range(LOFT_SEGMENTS)]


def _loft_mesh(definition: ObjectDef, scale: float) -> tuple[list, list]:
    """Vertices and triangle indices of a loft, its bounding box centred at the origin."""
    half_h = definition.size[2]
    rings = [[(x * scale, y * scale, (-half_h + 2 * half_h * t) * scale)
              for x, y in loft_section(definition, s)] for t, s in definition.profile]
    n = len(rings[0])
    verts = [list(v) for ring in rings for v in ring]
    bottom_c, top_c = len(verts), len(verts) + 1
    verts += [[0.0, 0.0, -half_h * scale], [0.0, 0.0, half_h * scale]]
    idx: list[int] = []
    for r in range(len(rings) - 1):
        a, b = r * n, (r + 1) * n
        for k in range(n):
            k2 = (k + 1) % n
            idx += [a + k, a + k2, b + k2, a + k, b + k2, b + k]  # outward winding
    top = (len(rings) - 1) * n
    for k in range(n):
        k2 = (k + 1) % n
        idx += [bottom_c, k2, k, top_c, top + k, top + k2]
    return verts, idx


def shape_centroid(definition: ObjectDef) -> tuple[float, float, float]:
    """The solid's centre of mass (uniform density, unscaled) in its bounding-box frame:
    where lofts and compounds put their inertial frame, so an L block tips like one."""
    if definition.kind == "compound":
        vols = [8 * hx * hy * hz for hx, hy, hz, *_ in definition.boxes]
        return tuple(sum(v * b[3 + i] for v, b in zip(vols, definition.boxes, strict=True))
                     / sum(vols) for i in range(3))  # type: ignore[return-value]
    if definition.kind == "loft":
        # Section area grows with s^2: integrate z * s(t)^2 over the height numerically.
        ts = np.linspace(0.0, 1.0, 401)
        prof = np.asarray(definition.profile)
        area = np.interp(ts, prof[:, 0], prof[:, 1]) ** 2
        z = -definition.size[2] + 2 * definition.size[2] * ts
        return (0.0, 0.0, float((z * area).sum() / area.sum()))
    return (0.0, 0.0, 0.0)


def spawn_object(
    client: int,
    definition: ObjectDef,
    colour: str,
    position: tuple[float, float],
    yaw: float,
    table_z: float,
    scale: float = 1.0,
) -> SpawnedObject:
    """Create `definition` in colour `colour` standing on the table at `position`."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(COLOURS)}")
    rgba = list(COLOURS[colour])
    quat = p.getQuaternionFromEuler([0.0, 0.0, yaw])
    sx, sy, sz = (s * scale for s in definition.size)
    grasp_yaw_offset = 0.0
    if definition.kind == "box":
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[sx, sy, sz], physicsClientId=client)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[sx, sy, sz], rgbaColor=rgba,
                                  physicsClientId=client)
        # Fingers close along the hand's y axis: close across the box's shorter side.
        grasp_width = 2 * min(sx, sy)
        grasp_yaw_offset = math.pi / 2 if sy <= sx else 0.0
        body = _multibody(client, col, vis, 0.1, [*position, table_z + sz], quat)
    elif definition.kind == "cylinder":
        col = p.createCollisionShape(p.GEOM_CYLINDER, radius=sx, height=2 * sz,
                                     physicsClientId=client)
        vis = p.createVisualShape(p.GEOM_CYLINDER, radius=sx, length=2 * sz, rgbaColor=rgba,
                                  physicsClientId=client)
        grasp_width = 2 * sx
        body = _multibody(client, col, vis, 0.1, [*position, table_z + sz], quat)
    elif definition.kind == "prism":
        verts, idx = _prism_mesh(sx, sz, definition.sides)
        col = p.createCollisionShape(p.GEOM_MESH, vertices=verts, physicsClientId=client)
        vis = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, rgbaColor=rgba,
                                  physicsClientId=client)
        # Grasp across two flat faces (even n) or a face and the opposite vertex (odd n).
        apothem = sx * math.cos(math.pi / definition.sides)
        grasp_width = 2 * apothem if definition.sides % 2 == 0 else apothem + sx
        grasp_yaw_offset = math.pi / definition.sides
        body = _multibody(client, col, vis, 0.1, [*position, table_z + sz], quat)
    elif definition.kind in ("loft", "compound"):
        if definition.kind == "loft":
            verts, idx = _loft_mesh(definition, scale)
            col = p.createCollisionShape(p.GEOM_MESH, vertices=verts, physicsClientId=client)
            vis = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, rgbaColor=rgba,
                                      physicsClientId=client)
        else:
            half = [[b[0] * scale, b[1] * scale, b[2] * scale] for b in definition.boxes]
            pos = [[b[3] * scale, b[4] * scale, b[5] * scale] for b in definition.boxes]
            col = p.createCollisionShapeArray([p.GEOM_BOX] * len(half), halfExtents=half,
                                              collisionFramePositions=pos,
                                              physicsClientId=client)
            vis = p.createVisualShapeArray([p.GEOM_BOX] * len(half), halfExtents=half,
                                           visualFramePositions=pos, physicsClientId=client)
        # Close across the bounding box's narrower side, as for boxes and meshes.
        grasp_width = definition.grasp_width * scale or 2 * min(sx, sy)
        grasp_yaw_offset = math.pi / 2 if sy <= sx else 0.0
        centroid = [c * scale for c in shape_centroid(definition)]
        body = p.createMultiBody(baseMass=0.1, baseCollisionShapeIndex=col,
                                 baseVisualShapeIndex=vis, basePosition=[*position, table_z + sz],
                                 baseOrientation=quat, baseInertialFramePosition=centroid,
                                 physicsClientId=client)
        if definition.kind == "compound":
            p.changeVisualShape(body, -1, rgbaColor=rgba, physicsClientId=client)
    elif definition.kind == "container":
        body = _container(client, definition, rgba, position, yaw, table_z, scale)
        grasp_width = 0.0  # containers are never grasped
    else:  # mesh
        body = _load_mesh(client, definition, position, quat, table_z, scale)
        p.changeVisualShape(body, -1, rgbaColor=rgba, physicsClientId=client)
        lo, hi = p.getAABB(body, physicsClientId=client)
        grasp_yaw_offset, grasp_width = _mesh_grasp(client, body)
        grasp_width = definition.grasp_width or grasp_width
    lo, hi = p.getAABB(body, physicsClientId=client)
    half_height = (hi[2] - lo[2]) / 2
    # Resting objects may sleep (bullet skips them until something touches them): most of
    # the scene is still most of the time.
    p.changeDynamics(body, -1, lateralFriction=1.0, spinningFriction=0.02,
                     rollingFriction=0.0001,
                     activationState=p.ACTIVATION_STATE_ENABLE_SLEEPING, physicsClientId=client)
    return SpawnedObject(body=body, definition=definition, colour=colour, scale=scale,
                         half_height=half_height, grasp_width=grasp_width,
                         grasp_yaw_offset=grasp_yaw_offset)


def _multibody(client: int, col: int, vis: int, mass: float, pos: list, quat) -> int:
    return p.createMultiBody(baseMass=mass, baseCollisionShapeIndex=col,
                             baseVisualShapeIndex=vis, basePosition=pos,
                             baseOrientation=quat, physicsClientId=client)


def _container(client: int, d: ObjectDef, rgba: list, position: tuple[float, float],
               yaw: float, table_z: float, scale: float) -> int:
    """An open vessel: a floor plus walls (4 for a tray, `sides` for a bowl), one body."""
    half_w, _, wall_h = (s * scale for s in d.size)
    t = 0.006  # wall and floor half thickness
    sides = d.sides or 4
    shapes: list[tuple[list[float], list[float], tuple]] = [
        ([half_w + t, half_w + t, t / 2], [0.0, 0.0, t / 2], (0, 0, 0, 1))
    ]
    # Walls of a regular polygon whose inner apothem is half_w.
    side_len = 2 * half_w * math.tan(math.pi / sides) + 2 * t
    for k in range(sides):
        a = 2 * math.pi * k / sides
        cx, cy = (half_w + t) * math.cos(a), (half_w + t) * math.sin(a)
        shapes.append(([t, side_len / 2, wall_h / 2], [cx, cy, wall_h / 2],
                       p.getQuaternionFromEuler([0, 0, a])))
    cols = p.createCollisionShapeArray(
        [p.GEOM_BOX] * len(shapes), halfExtents=[s[0] for s in shapes],
        collisionFramePositions=[s[1] for s in shapes],
        collisionFrameOrientations=[s[2] for s in shapes], physicsClientId=client)
    vis = p.createVisualShapeArray(
        [p.GEOM_BOX] * len(shapes), halfExtents=[s[0] for s in shapes],
        visualFramePositions=[s[1] for s in shapes],
        visualFrameOrientations=[s[2] for s in shapes], physicsClientId=client)
    body = p.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=cols,
                             baseVisualShapeIndex=vis, basePosition=[*position, table_z],
                             baseOrientation=p.getQuaternionFromEuler([0, 0, yaw]),
                             physicsClientId=client)
    p.changeVisualShape(body, -1, rgbaColor=rgba, physicsClientId=client)
    return body


def _load_mesh(client: int, d: ObjectDef, pos: tuple[float, float], quat, table_z: float,
               scale: float) -> int:
    s = d.scale * scale
    if d.file.endswith(".urdf"):
        body = p.loadURDF(d.file, [*pos, table_z + 0.2], quat, globalScaling=s,
                          physicsClientId=client)
    else:
        col = p.createCollisionShape(p.GEOM_MESH, fileName=d.file, meshScale=[s] * 3,
                                     physicsClientId=client)
        vis = p.createVisualShape(p.GEOM_MESH, fileName=d.file, meshScale=[s] * 3,
                                  physicsClientId=client)
        body = _multibody(client, col, vis, 0.1, [*pos, table_z + 0.2], quat)
    # Drop it onto the table exactly: shift so the AABB bottom touches the table top.
    lo, _ = p.getAABB(body, physicsClientId=client)
    bpos, bquat = p.getBasePositionAndOrientation(body, physicsClientId=client)
    p.resetBasePositionAndOrientation(body, [bpos[0], bpos[1], bpos[2] - (lo[2] - table_z)],
                                      bquat, physicsClientId=client)
    return body


def _mesh_grasp(client: int, body: int) -> tuple[float, float]:
    """(finger-axis yaw relative to the body yaw, width) across the narrower footprint side.

    Measured on the unrotated body, because the AABB of a rotated body overstates both sides.
    """
    bpos, bquat = p.getBasePositionAndOrientation(body, physicsClientId=client)
    p.resetBasePositionAndOrientation(body, bpos, p.getQuaternionFromEuler([0, 0, 0]),
                                      physicsClientId=client)
    lo, hi = p.getAABB(body, physicsClientId=client)
    p.resetBasePositionAndOrientation(body, bpos, bquat, physicsClientId=client)
    ext_x, ext_y = hi[0] - lo[0], hi[1] - lo[1]
    return (math.pi / 2, ext_y) if ext_y <= ext_x else (0.0, ext_x)


def object_position(client: int, obj: SpawnedObject) -> np.ndarray:
    """Centre of the object's AABB (m, world frame): the point the oracle grasps around."""
    lo, hi = p.getAABB(obj.body, physicsClientId=client)
    return (np.asarray(lo) + np.asarray(hi)) / 2


def object_yaw(client: int, obj: SpawnedObject) -> float:
    _, quat = p.getBasePositionAndOrientation(obj.body, physicsClientId=client)
    return p.getEulerFromQuaternion(quat)[2]


def load_object_set(path: str | os.PathLike) -> tuple[ObjectDef, ...]:
    """Read a user object set YAML (format in this module's docstring) into ObjectDefs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"object set file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or "objects" not in data:
        raise ValueError(f"object set {str(path)!r}: expected a mapping with key 'objects'")
    for cname, rgba in (data.get("colours") or {}).items():
        if not (isinstance(rgba, list | tuple) and len(rgba) == 4):
            raise ValueError(f"object set {str(path)!r}: colour {cname!r} must be RGBA, got {rgba}")
        # Process-wide on purpose: instructions and later envs may name the new colour.
        COLOURS.setdefault(str(cname), tuple(float(v) for v in rgba))  # type: ignore[arg-type]
    root_s = str(data.get("root", "."))
    root = Path(PYBULLET_DATA) if root_s == "pybullet_data" else (path.parent / root_s)
    defs = []
    for entry in data["objects"]:
        missing = {"name", "noun", "file"} - set(entry)
        if missing:
            raise ValueError(
                f"object set {str(path)!r}: entry {entry} lacks keys {sorted(missing)}")
        file = str((root / entry["file"]).resolve())
        defs.append(ObjectDef(
            name=str(entry["name"]), noun=str(entry["noun"]), kind="mesh", file=file,
            scale=float(entry.get("scale", 1.0)), colours=tuple(entry.get("colours", ())),
            flat_top=bool(entry.get("flat_top", False)),
            stackable=bool(entry.get("stackable", True)),
            symmetry=float(entry.get("symmetry", math.pi)),
            grasp_width=float(entry.get("grasp_width", 0.0)),
        ))
    return tuple(defs)
