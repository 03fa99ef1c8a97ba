"""The episode store's on-disk format: layout, keys, chunking, and the episode record.

Layout (docs/CONTRACTS.md, "Episode store"), in the style of diffusion_policy's replay buffer:

    <store>/shard-00000/           a zarr v3 group, written by exactly one process
        zarr.json                  group attributes: format, info, commit, tables, stats
        data/image                 uint8   (N, H, W, 3), chunked by a few frames
        data/wrist_image           uint8   (N, H, W, 3), only when a wrist camera was used
        data/background_mask       uint8   (N, H, W) 0/1, only when collected with
                                   collect.background_mask (info["mask_keys"] lists it)
        data/object_pixels         float32 (N, 2, 2) only when collected with
                                   collect.object_pixels (info["privileged_keys"] lists it):
                                   where the front image shows the centres of the task's
                                   [target, second object], (u, v) = (column, row) pixels;
                                   NaN for no second object (pick, push) and for steps
                                   merged in from a store without them. Privileged labels
                                   (TabletopEnv.object_pixels), never an observation
        data/object_boxes          float32 (N, 8, 4) only when collected with
                                   collect.object_boxes (info["observation_keys"] lists
                                   it): per frame the obs["object_boxes"] the env gave, one
                                   row [u0, v0, u1, v1] (fractions of the front image's
                                   width and height) per visible task object, sorted by
                                   box centre u then v, NaN rows past the last. An
                                   observation a policy may act on
        data/state                 float32 (N, 8)
        data/action                float32 (N, 8)   the oracle's clean label
        data/executed_action       float32 (N, 8)   what was sent to the env (label + noise)
        data/instruction_id        int32   (N,)     index into attrs["instructions"]
        data/task_id               int16   (N,)     index into attrs["tasks"]
        data/split_id              int16   (N,)     index into attrs["splits"]
        meta/episode_ends          int64   (E,)     exclusive end step of every episode
        meta/seed                  int64   (E,)     the env seed that reproduces the episode
        meta/success               bool    (E,)
        meta/rejected_seed         int64   (R,)     seeds tried and not kept (failures)
        meta/prompt_images         uint8   (E, K, S, S, 3)  only in shards collected with
                                   visual prompts (info["prompt_image_shape"] = [K, S, S, 3],
                                   K = envs.spec.MAX_PROMPT_IMAGES): each episode's prompt
                                   crops in the order of its instruction's "{image}" slots,
                                   zeros past its slot count (all zeros: a text-only episode)
        meta/prompt_word_id        int32   (E, K)   index into attrs["prompt_words"] of the
                                   words each slot replaced ("red cube"); -1 for unused slots

Shards without info["prompt_image_shape"] have neither prompt array nor the prompt_words
table, shards without info["privileged_keys"] no object_pixels, and shards without
info["observation_keys"] no object_boxes, so every store written before visual prompts,
object pixels or object boxes reads as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.spec import (
    BACKGROUND_MASK,
    COLLECT_SEED_START,
    EVAL_SEED_START,
    IMAGE,
    MAX_OBJECT_BOXES,
    MAX_PROMPT_IMAGES,
    OBJECT_BOXES,
    OBJECT_PIXELS,
    PROMPT_IMAGES,
    PROMPT_SLOT,
    WRIST_IMAGE,
    prompt_slots,
)

FORMAT_NAME = "robotok-episodes"
FORMAT_VERSION = 1
SHARD_PREFIX = "shard-"

IMAGE_KEYS: tuple[str, ...] = (IMAGE, WRIST_IMAGE)
# Optional per-frame masks of the front camera, uint8 (N, H, W) holding 0/1. A shard lists
# the ones it has in info["mask_keys"]; a shard without that entry has none, so every
# store written before masks existed reads as before.
MASK_KEYS: tuple[str, ...] = (BACKGROUND_MASK,)
# 0/1 bytes: bit-shuffling leaves one busy bit plane, which zstd packs to ~1/70 of the raw
# bytes (64 px pick episodes: 4.3 MB of masks beside 48 MB of images).
MASK_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"}
# Optional per-step float32 arrays of privileged simulator facts, never observations (labels
# for auxiliary losses), with their row shape. A shard lists the ones it has in
# info["privileged_keys"]; a shard without that entry has none and reads as before. NaN
# marks a missing value (no second object; a step merged from a store without them).
PRIVILEGED_KEYS: dict[str, tuple[int, ...]] = {OBJECT_PIXELS: (2, 2)}
# Optional per-step float32 observations besides the images and the state (a policy may act
# on them), with their row shape, stored like PRIVILEGED_KEYS. A shard lists the ones it has
# in info["observation_keys"]; a shard without that entry has none and reads as before.
# Like masks (and unlike privileged labels), a store has one only when every shard does:
# NaN rows would read as "no object visible", a false observation.
OBSERVATION_KEYS: dict[str, tuple[int, ...]] = {OBJECT_BOXES: (MAX_OBJECT_BOXES, 4)}
# Per-step float32 arrays besides images, each (N, D).
VECTOR_KEYS: tuple[str, ...] = ("state", "action", "executed_action")
ID_KEYS: dict[str, str] = {"instruction_id": "int32", "task_id": "int16", "split_id": "int16"}
META_KEYS: dict[str, str] = {"episode_ends": "int64", "seed": "int64", "success": "bool"}
REJECTED_KEY = "rejected_seed"
# Per-episode visual prompts (envs.spec.PROMPT_IMAGES), only in shards whose info has
# PROMPT_SHAPE_KEY. Crops are small (2 x 32 x 32 x 3 = 6 KB an episode); 16 episodes a chunk
# keeps the chunk a commit rewrites under 100 KB.
PROMPT_IMAGES_KEY = PROMPT_IMAGES
PROMPT_WORD_ID_KEY = "prompt_word_id"
PROMPT_SHAPE_KEY = "prompt_image_shape"
PROMPT_CHUNK_EPISODES = 16

# Images: 16 frames per chunk is about one pick episode, so a commit rewrites one or two
# chunks and a random window touches one; zstd level 3 compressed rendered 96 px frames
# 22.6x, close to level 5 and cheaper to write; bitshuffle halved the ratio
# (docs/experiments/2026-11-28-collection-and-store.md, "Image compression").
DEFAULT_CHUNK_FRAMES = 16
DEFAULT_IMAGE_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}
# Small arrays: a commit rewrites their last chunk, so chunks stay modest (1024-8192 rows
# cost 27-31 ms of CPU per episode in all; the smaller, the cheaper) without making a
# large store thousands of files.
VECTOR_CHUNK_ROWS = 2048
META_CHUNK_ROWS = 1024

STATS_KEYS: tuple[str, ...] = ("action", "state")

# Info keys that must agree between shards of one store (and between a writer and the shard
# it reopens): a policy trained on the store is checked against these.
# A shard with prompt images and one without are compatible (the text-only one reads as
# zero crops); two with prompt crops of different sizes are not.
COMPAT_KEYS: tuple[str, ...] = (
    "image_keys", "image_shape", "action_spec", "state_names", "renderer", "camera",
    "control_hz", "physics_hz", PROMPT_SHAPE_KEY,
)
_COMPAT_HINTS = {
    PROMPT_SHAPE_KEY: " (prompt crops of different sizes S cannot share one store; collect "
                      "them at one crop size)",
}


def compat_mismatch(a: dict, b: dict) -> str | None:
    """What differs between two shards' info in COMPAT_KEYS, or None when they agree."""
    for key in COMPAT_KEYS:
        if key in a and key in b and a[key] != b[key]:
            return f"info[{key!r}] differs: {a[key]!r} != {b[key]!r}{_COMPAT_HINTS.get(key, '')}"
    return None


class StoreError(RuntimeError):
    """A shard cannot be read or written; names the offending file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Episode:
    """One recorded episode: T steps of observation, clean label and executed action."""

    image: np.ndarray  # uint8 (T, H, W, 3)
    state: np.ndarray  # float32 (T, S)
    action: np.ndarray  # float32 (T, A), the oracle's clean label
    executed_action: np.ndarray  # float32 (T, A), label + DART noise, what the env received
    instruction: str
    task: str
    split: str
    seed: int
    success: bool
    wrist_image: np.ndarray | None = None  # uint8 (T, H, W, 3) when a wrist camera is used
    background_mask: np.ndarray | None = None  # uint8 (T, H, W) 0/1 (envs.spec.BACKGROUND_MASK)
    # float32 (T, 2, 2): per step, (u, v) pixels of [target, second object] in the front
    # image, NaN where there is none (envs.spec.OBJECT_PIXELS, TabletopEnv.object_pixels)
    object_pixels: np.ndarray | None = None
    # float32 (T, MAX_OBJECT_BOXES, 4): per step the obs["object_boxes"] of the frame, boxes
    # [u0, v0, u1, v1] of the visible task objects, NaN rows past the last (envs.spec.OBJECT_BOXES)
    object_boxes: np.ndarray | None = None
    # Visual prompts (envs.spec.PROMPT_IMAGES): uint8 (MAX_PROMPT_IMAGES, S, S, 3), the crops
    # of the instruction's PROMPT_SLOT markers in order, zeros past the slot count; None for
    # an episode recorded without them. prompt_words: the words each slot replaced, one per
    # slot ("red cube",); () for a text-only instruction.
    prompt_images: np.ndarray | None = None
    prompt_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim != 4 or self.image.shape[-1] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"episode image has shape {self.image.shape} dtype {self.image.dtype}; "
                "expected uint8 (T, H, W, 3)"
            )
        steps = self.image.shape[0]
        if steps == 0:
            raise ValueError(f"episode with seed {self.seed} has no steps")
        for name in VECTOR_KEYS:
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if arr.ndim != 2 or arr.shape[0] != steps:
                raise ValueError(
                    f"episode {name} has shape {arr.shape}; expected ({steps}, D) to match "
                    f"{steps} image frames"
                )
            setattr(self, name, arr)
        if self.wrist_image is not None:
            self.wrist_image = np.asarray(self.wrist_image)
            if self.wrist_image.shape[0] != steps or self.wrist_image.dtype != np.uint8:
                raise ValueError(
                    f"episode wrist_image has shape {self.wrist_image.shape} dtype "
                    f"{self.wrist_image.dtype}; expected uint8 ({steps}, H, W, 3)"
                )

        if self.background_mask is not None:
            self.background_mask = np.asarray(self.background_mask)
            if (self.background_mask.shape != self.image.shape[:3]
                    or self.background_mask.dtype != np.uint8):
                raise ValueError(
                    f"episode background_mask has shape {self.background_mask.shape} dtype "
                    f"{self.background_mask.dtype}; expected uint8 {self.image.shape[:3]} "
                    "(one 0/1 mask per front-camera frame)"
                )
        if self.object_pixels is not None:
            px = np.asarray(self.object_pixels)
            want = (steps, *PRIVILEGED_KEYS[OBJECT_PIXELS])
            if px.shape != want or not np.issubdtype(px.dtype, np.floating):
                raise ValueError(
                    f"episode object_pixels has shape {px.shape} dtype {px.dtype}; expected "
                    f"float {want} (per frame: [target, second object] x (u, v) pixels)")
            self.object_pixels = px.astype(np.float32)
        if self.object_boxes is not None:
            boxes = np.asarray(self.object_boxes)
            want = (steps, *OBSERVATION_KEYS[OBJECT_BOXES])
            if boxes.shape != want or not np.issubdtype(boxes.dtype, np.floating):
                raise ValueError(
                    f"episode object_boxes has shape {boxes.shape} dtype {boxes.dtype}; "
                    f"expected float {want} (per frame: a [u0, v0, u1, v1] row per visible "
                    "object, NaN rows past the last)")
            self.object_boxes = boxes.astype(np.float32)
        self._check_prompt()

    def _check_prompt(self) -> None:
        """Prompt images and words agree with the instruction's slots (envs.spec contract)."""
        if isinstance(self.prompt_words, str) or not all(
                isinstance(w, str) and w for w in self.prompt_words):
            raise ValueError(f"episode prompt_words={self.prompt_words!r}; expected a tuple of "
                             "non-empty strings, one per image slot")
        self.prompt_words = tuple(self.prompt_words)
        slots = prompt_slots(self.instruction)
        if len(self.prompt_words) != slots:
            raise ValueError(
                f"episode prompt_words={self.prompt_words!r} has {len(self.prompt_words)} "
                f"words but instruction {self.instruction!r} has {slots} {PROMPT_SLOT} "
                "slots; expected one word per slot")
        if self.prompt_images is None:
            if slots:
                raise ValueError(
                    f"instruction {self.instruction!r} has {slots} {PROMPT_SLOT} slots but "
                    "the episode has no prompt_images; expected uint8 "
                    f"({MAX_PROMPT_IMAGES}, S, S, 3)")
            return
        img = np.asarray(self.prompt_images)
        if (img.ndim != 4 or img.shape[0] != MAX_PROMPT_IMAGES or img.shape[1] != img.shape[2]
                or img.shape[3] != 3 or img.dtype != np.uint8):
            raise ValueError(
                f"episode prompt_images has shape {img.shape} dtype {img.dtype}; expected "
                f"uint8 ({MAX_PROMPT_IMAGES}, S, S, 3) (envs.spec.MAX_PROMPT_IMAGES square "
                "crops)")
        if slots > MAX_PROMPT_IMAGES:
            raise ValueError(
                f"instruction {self.instruction!r} has {slots} {PROMPT_SLOT} slots; at most "
                f"{MAX_PROMPT_IMAGES} (envs.spec.MAX_PROMPT_IMAGES)")
        if img[slots:].any():
            raise ValueError(
                f"episode prompt_images has non-zero crops past the instruction's {slots} "
                f"{PROMPT_SLOT} slots ({self.instruction!r}); expected zeros there")
        self.prompt_images = img

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def masks(self) -> dict[str, np.ndarray]:
        return {} if self.background_mask is None else {BACKGROUND_MASK: self.background_mask}

    def privileged(self) -> dict[str, np.ndarray]:
        """The episode's PRIVILEGED_KEYS arrays that it carries."""
        return {} if self.object_pixels is None else {OBJECT_PIXELS: self.object_pixels}

    def observations(self) -> dict[str, np.ndarray]:
        """The episode's OBSERVATION_KEYS arrays that it carries."""
        return {} if self.object_boxes is None else {OBJECT_BOXES: self.object_boxes}

    def images(self) -> dict[str, np.ndarray]:
        out = {IMAGE: self.image}
        if self.wrist_image is not None:
            out[WRIST_IMAGE] = self.wrist_image
        return out


@dataclass
class ShardTables:
    """A shard's string tables: ids in the per-step arrays index into these lists."""

    instructions: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    prompt_words: list[str] = field(default_factory=list)  # only shards with prompt images


def shard_name(index: int) -> str:
    if index < 0:
        raise ValueError(f"shard index must be >= 0; got {index}")
    return f"{SHARD_PREFIX}{index:05d}"


def list_shards(path: Path | str) -> list[Path]:
    """The shard directories of a store (`shard-` and digits only), sorted by name."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"episode store {root} does not exist or is not a directory")
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(SHARD_PREFIX)
                  and p.name[len(SHARD_PREFIX):].isdigit())


def default_seed_ranges() -> dict[str, list[int | None]]:
    """Collection and evaluation seed ranges from envs.spec: [start, end), end None = open."""
    return {"collect": [COLLECT_SEED_START, EVAL_SEED_START], "eval": [EVAL_SEED_START, None]}
