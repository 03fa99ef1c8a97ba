"""The zero-shot splits (docs/CONTRACTS.md, "The map"): what content each split may draw.

This module is the one source of truth for split content, so envs work without hydra: a
config names a split (`collect.split`, `eval.splits`) and may change its fields with
`split_overrides` (the keys of `SplitConfig`, e.g. {distractors: [1, 3]} or
{object_set: path/to/objects.yaml}).

Training uses only `seen`. Each held-out split changes one thing and draws that thing from
content `seen` never uses (tests/envs/test_splits.py proves the sets are disjoint). A
collection may widen `seen` with the procedural shapes of envs/shapes.py
(`extra_objects`), kept apart from the held-out objects by tests/envs/test_shapes.py:

| split              | held-out content                                      |
|--------------------|-------------------------------------------------------|
| unseen_combo       | target colour x object pairs (both parts seen apart)  |
| unseen_object      | target geometries (procedural prisms, duck, mug)      |
| unseen_instruction | instruction paraphrases and verbs (task templates)    |
| distractors        | more distractor objects than seen ever has            |
| backgrounds        | table colours, table textures, light directions/tints |

Two more evaluation levels show objects by image instead of naming them (multimodal
prompts, envs/prompts.py); they are not in SPLITS, the six zero-shot splits evaluation runs
by default, but in VISUAL_SPLITS:

| split                       | content                                             |
|-----------------------------|-----------------------------------------------------|
| visual_prompt               | seen's, every target shown by an image crop          |
| visual_prompt_unseen_object | unseen_object's, every target shown by an image crop |
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envs.catalog import BUILTIN_OBJECTS, COLOURS, TABLE_COLOURS, TABLE_TEXTURES
from envs.shapes import PROCEDURAL_OBJECTS, expand_extra_objects

Combo = tuple[str, str]  # (colour, object name)

OBJECT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan")
SEEN_OBJECTS = ("cube", "brick", "cylinder", "slab", "lego", "rock_a", "rock_b")
HELD_OUT_OBJECTS = ("hexagon", "prism", "octagon", "duck", "mug")
CONTAINERS = ("tray", "bowl")
CONTAINER_COLOURS = ("white", "black", "blue", "green")
# One held-out colour per seen object, so every colour and object is still seen elsewhere.
HELD_OUT_COMBOS: tuple[Combo, ...] = (
    ("red", "cylinder"), ("blue", "cube"), ("green", "brick"), ("yellow", "slab"),
    ("purple", "lego"), ("orange", "cube"), ("pink", "cylinder"), ("cyan", "brick"),
    ("green", "rock_a"), ("red", "rock_b"),
)
SEEN_COMBOS: tuple[Combo, ...] = tuple(
    c for c in itertools.product(OBJECT_COLOURS, SEEN_OBJECTS) if c not in HELD_OUT_COMBOS
)
SEEN_TABLES = ("wood", "grey", "beige")
HELD_OUT_TABLES = ("slate", "dark_wood", "mint", "lilac", "checker", "grid", "noise")


@dataclass(frozen=True)
class SplitConfig:
    """Everything a split lets a scene draw from. Ranges are inclusive (low, high)."""

    name: str
    target_combos: tuple[Combo, ...]  # (colour, object) for the objects a task acts on
    distractor_combos: tuple[Combo, ...]
    containers: tuple[Combo, ...]  # (colour, container) for place
    instructions: str = "train"  # "train" or "held_out" task templates
    distractors: tuple[int, int] = (0, 2)
    tables: tuple[str, ...] = SEEN_TABLES  # names in TABLE_COLOURS or TABLE_TEXTURES
    light_azimuth: tuple[float, float] = (-1.2, 1.2)  # rad; 0 = light from the camera side
    light_elevation: tuple[float, float] = (0.7, 1.2)  # rad above the table
    light_tint: tuple[float, float] = (0.0, 0.0)  # max colour deviation of the light
    ambient: tuple[float, float] = (0.55, 0.7)
    camera_jitter: float = 0.01  # m, eye and target jitter (uniform, per axis)
    object_scale: tuple[float, float] = (0.9, 1.1)
    templates: tuple[str, ...] = ()  # non-empty: replaces the task's instruction templates
    object_set: str = ""  # path of a user object set YAML (envs/catalog.py); its objects
    #                       become the targets, in the colours the set allows
    scene_set: str = ""  # path of a scene set YAML (envs/scenes.py); its tables replace
    #                      `tables`, its light ranges (if any) the ones above
    visual_prompts: float = 0.0  # share of episodes whose target is shown by an image crop
    #                              instead of named ("pick up the {image}"; envs/prompts.py)
    visual_prompt_refs: float = 0.5  # of those, the share that show the second object
    #                                  (place's container, stack's base, move_near's
    #                                  reference) by image as well
    extra_objects: tuple[str, ...] = ()  # procedural training shapes (envs/shapes.py) added
    #                                      to target_combos and distractor_combos in every
    #                                      colour of OBJECT_COLOURS: names, or "procedural"
    #                                      for all twelve. Empty: the split as it was.

    def __post_init__(self) -> None:
        if isinstance(self.extra_objects, str):  # a bare name from a config: one entry
            object.__setattr__(self, "extra_objects", (self.extra_objects,))
        if not isinstance(self.extra_objects, tuple | list):
            raise ValueError(f"split {self.name!r}: extra_objects={self.extra_objects!r}; "
                             "expected a list of procedural shape names or 'procedural'")
        object.__setattr__(self, "extra_objects", tuple(self.extra_objects))
        try:
            extra = expand_extra_objects(self.extra_objects)
        except ValueError as e:
            raise ValueError(f"split {self.name!r}: {e}") from None
        if extra:
            # Idempotent (dataclasses.replace passes the widened combos back in).
            added = tuple((c, o) for o in extra for c in OBJECT_COLOURS)
            for field_name in ("target_combos", "distractor_combos"):
                have = tuple(getattr(self, field_name))
                present = set(have)
                object.__setattr__(self, field_name,
                                   have + tuple(c for c in added if c not in present))
        known = set(BUILTIN_OBJECTS) | set(PROCEDURAL_OBJECTS)
        for field_name in ("target_combos", "distractor_combos", "containers"):
            for colour, obj in getattr(self, field_name):
                if colour not in COLOURS:
                    raise ValueError(
                        f"split {self.name!r}: unknown colour {colour!r} in {field_name}; "
                        f"expected one of {sorted(COLOURS)}")
                if obj not in known and not self.object_set:
                    raise ValueError(
                        f"split {self.name!r}: unknown object {obj!r} in {field_name}; "
                        f"expected one of {sorted(known)}")
        for t in self.tables:
            if t not in TABLE_COLOURS and t not in TABLE_TEXTURES:
                raise ValueError(
                    f"split {self.name!r}: unknown table {t!r}; expected one of "
                    f"{sorted(TABLE_COLOURS) + sorted(TABLE_TEXTURES)}")
        if self.instructions not in ("train", "held_out"):
            raise ValueError(
                f"split {self.name!r}: instructions={self.instructions!r}; "
                "expected 'train' or 'held_out'")
        lo, hi = self.distractors
        if not 0 <= lo <= hi:
            raise ValueError(f"split {self.name!r}: distractors={self.distractors} must be "
                             "(low, high) with 0 <= low <= high")
        if not self.target_combos:
            raise ValueError(f"split {self.name!r}: target_combos is empty")
        for field_name in ("visual_prompts", "visual_prompt_refs"):
            share = getattr(self, field_name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"split {self.name!r}: {field_name}={share}; expected a "
                                 "share in [0, 1]")


_CONTAINERS = tuple(itertools.product(CONTAINER_COLOURS, CONTAINERS))
_SEEN = SplitConfig(name="seen", target_combos=SEEN_COMBOS, distractor_combos=SEEN_COMBOS,
                    containers=_CONTAINERS)

SPLIT_CONFIGS: dict[str, SplitConfig] = {
    "seen": _SEEN,
    "unseen_combo": dataclasses.replace(_SEEN, name="unseen_combo",
                                        target_combos=HELD_OUT_COMBOS),
    "unseen_object": dataclasses.replace(
        _SEEN, name="unseen_object",
        target_combos=tuple(itertools.product(OBJECT_COLOURS, HELD_OUT_OBJECTS))),
    "unseen_instruction": dataclasses.replace(_SEEN, name="unseen_instruction",
                                              instructions="held_out"),
    "distractors": dataclasses.replace(_SEEN, name="distractors", distractors=(4, 5)),
    "backgrounds": dataclasses.replace(
        _SEEN, name="backgrounds", tables=HELD_OUT_TABLES, light_azimuth=(1.8, 4.4),
        light_tint=(0.1, 0.25), ambient=(0.35, 0.5)),
}
# The six zero-shot splits: what evaluation runs when no split is named.
SPLITS: tuple[str, ...] = tuple(SPLIT_CONFIGS)
SPLIT_CONFIGS["visual_prompt"] = dataclasses.replace(_SEEN, name="visual_prompt",
                                                     visual_prompts=1.0)
SPLIT_CONFIGS["visual_prompt_unseen_object"] = dataclasses.replace(
    SPLIT_CONFIGS["unseen_object"], name="visual_prompt_unseen_object", visual_prompts=1.0)
# Targets shown by image only (multimodal prompts): asked for by name in `eval.splits`.
VISUAL_SPLITS: tuple[str, ...] = ("visual_prompt", "visual_prompt_unseen_object")
ALL_SPLITS: tuple[str, ...] = SPLITS + VISUAL_SPLITS


def resolve_split(name: str, overrides: Mapping[str, Any] | None = None) -> SplitConfig:
    """The split `name` with `overrides` (field name -> value) applied and validated."""
    if name not in SPLIT_CONFIGS:
        raise ValueError(f"unknown split {name!r}; expected one of {list(ALL_SPLITS)}")
    cfg = SPLIT_CONFIGS[name]
    if not overrides:
        return cfg
    fields = {f.name for f in dataclasses.fields(SplitConfig)} - {"name"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown split override(s) {sorted(unknown)}; expected {sorted(fields)}")
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        # YAML gives lists; the dataclass keeps tuples (hashable, immutable).
        if key in ("target_combos", "distractor_combos", "containers"):
            value = tuple(tuple(v) for v in value)
        elif isinstance(value, list | tuple):
            value = tuple(value)
        values[key] = value
    return dataclasses.replace(cfg, **values)
