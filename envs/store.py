"""The on-disk episode store: flat per-step zarr arrays plus `episode_ends`, one shard per writer.

Layout (docs/CONTRACTS.md, "Episode store"), in the style of diffusion_policy's replay buffer:

    <store>/shard-00000/           a zarr v3 group, written by exactly one process
        zarr.json                  group attributes: format, info, commit, tables, stats
        data/image                 uint8   (N, H, W, 3), chunked by a few frames
        data/wrist_image           uint8   (N, H, W, 3), only when a wrist camera was used
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

Crash safety: an episode's arrays are written first and the group attribute `commit`
({episodes, steps, rejected}) is rewritten last, together with the string tables, in one
atomic file replace (zarr's local store writes a temporary file and renames it).
Everything past the committed counts is an unfinished tail: readers ignore it and a writer
reopening the shard truncates it. So a SIGKILL at any moment loses at most the episode in
flight. A new shard is built under a temporary name and renamed into place, and a lock
file beside it (`shard-XXXXX.lock`, flock) keeps a second process from writing it.
`stats` in the attributes are written when a writer closes (`stats_steps` says how many
steps they cover); readers recompute them from the data.

Integrity: every chunk carries a CRC32C checksum (zarr's crc32c codec), so a truncated or
bit-flipped chunk fails to decode instead of yielding garbage; the reader then names the
chunk file. A missing chunk inside the committed range is detected up front (zarr would
silently return the fill value). A bad shard raises `StoreError`; `EpisodeStore(...,
skip_bad_shards=True)` warns and reads the others.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync as zarr_sync

from envs.spec import COLLECT_SEED_START, EVAL_SEED_START, IMAGE, WRIST_IMAGE

FORMAT_NAME = "robotok-episodes"
FORMAT_VERSION = 1
SHARD_PREFIX = "shard-"

IMAGE_KEYS: tuple[str, ...] = (IMAGE, WRIST_IMAGE)
# Per-step float32 arrays besides images, each (N, D).
VECTOR_KEYS: tuple[str, ...] = ("state", "action", "executed_action")
ID_KEYS: dict[str, str] = {"instruction_id": "int32", "task_id": "int16", "split_id": "int16"}
META_KEYS: dict[str, str] = {"episode_ends": "int64", "seed": "int64", "success": "bool"}
REJECTED_KEY = "rejected_seed"

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

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def images(self) -> dict[str, np.ndarray]:
        out = {IMAGE: self.image}
        if self.wrist_image is not None:
            out[WRIST_IMAGE] = self.wrist_image
        return out


# ----------------------------------------------------------------------------- statistics


def compute_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension min/max/mean/std/p01/p99 of an (N, D) array (float64 accumulation)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"stats need a non-empty (N, D) array; got shape {v.shape}")
    p01, p99 = np.percentile(v, [1.0, 99.0], axis=0)
    return {
        "min": v.min(axis=0).tolist(),
        "max": v.max(axis=0).tolist(),
        "mean": v.mean(axis=0).tolist(),
        "std": v.std(axis=0).tolist(),
        "p01": p01.tolist(),
        "p99": p99.tolist(),
    }


def stats_for(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """The store's `stats` block: compute_stats for each of STATS_KEYS present in `arrays`."""
    return {k: compute_stats(arrays[k]) for k in STATS_KEYS if k in arrays and len(arrays[k])}


# ----------------------------------------------------------------------------- helpers


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


def _chunk_path(shard: Path, array: zarr.Array, name: str, chunk_index: int) -> Path:
    coords = (chunk_index,) + (0,) * (array.ndim - 1)
    key = array.metadata.chunk_key_encoding.encode_chunk_key(coords)
    return shard / name / key


def _chunk_exists(shard: Path, array: zarr.Array, name: str, chunk_index: int) -> bool:
    return _chunk_path(shard, array, name, chunk_index).is_file()


def _read_rows(shard: Path, array: zarr.Array, name: str, start: int, stop: int) -> np.ndarray:
    """array[start:stop], turning a decode failure into a StoreError naming the chunk file."""
    try:
        return np.asarray(array[start:stop])
    except Exception as err:  # any codec or IO failure means a bad chunk
        rows = array.chunks[0]
        for c in range(start // rows, math.ceil(stop / rows)):
            try:
                array[c * rows : min((c + 1) * rows, array.shape[0])]
            except Exception as chunk_err:
                raise StoreError(
                    _chunk_path(shard, array, name, c),
                    f"corrupted chunk {c} of array {name!r} (rows {c * rows}..): "
                    f"{type(chunk_err).__name__}: {chunk_err}",
                ) from chunk_err
        raise StoreError(shard / name, f"cannot read rows {start}:{stop}: {err}") from err


def _open_group(shard: Path, mode: str) -> zarr.Group:
    meta = shard / "zarr.json"
    if not meta.is_file():
        raise StoreError(meta, "missing group metadata; not an episode shard")
    try:
        json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(meta, f"unreadable (truncated or corrupted) metadata: {err}") from err
    try:
        return zarr.open_group(str(shard), mode=mode)
    except Exception as err:
        raise StoreError(meta, f"cannot open zarr group: {err}") from err


def _open_array(group: zarr.Group, shard: Path, name: str) -> zarr.Array:
    meta = shard / name / "zarr.json"
    if not meta.is_file():
        raise StoreError(meta, f"array {name!r} is missing")
    try:
        json.loads(meta.read_text())
        arr = group[name]
    except Exception as err:
        raise StoreError(meta, f"unreadable metadata of array {name!r}: {err}") from err
    if not isinstance(arr, zarr.Array):
        raise StoreError(meta, f"{name!r} is a group; expected an array")
    return arr


# ----------------------------------------------------------------------------- reading


@dataclass
class ShardTables:
    """A shard's string tables: ids in the per-step arrays index into these lists."""

    instructions: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)


class ShardReader:
    """Read-only view of one shard's committed episodes; validates structure when opened."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        group = _open_group(self.path, mode="r")
        attrs = dict(group.attrs)
        meta = self.path / "zarr.json"
        if attrs.get("format") != FORMAT_NAME:
            raise StoreError(meta, f"format {attrs.get('format')!r}; expected {FORMAT_NAME!r}")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                meta,
                f"format_version {attrs.get('format_version')!r}; this reader reads "
                f"{FORMAT_VERSION}",
            )
        try:
            commit = attrs["commit"]
            self.num_episodes = int(commit["episodes"])
            self.num_steps = int(commit["steps"])
            self.num_rejected = int(commit.get("rejected", 0))
            self.info: dict[str, Any] = dict(attrs["info"])
            self.tables = ShardTables(
                list(attrs["instructions"]), list(attrs["tasks"]), list(attrs["splits"])
            )
            self.stored_stats: dict[str, Any] = dict(attrs.get("stats", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(meta, f"malformed attributes ({err!r})") from err
        self.image_keys: list[str] = list(self.info.get("image_keys", [IMAGE]))
        self._group = group
        self.arrays: dict[str, zarr.Array] = {}
        for key in self.image_keys + list(VECTOR_KEYS) + list(ID_KEYS):
            self.arrays[key] = _open_array(group, self.path, f"data/{key}")
        self.meta: dict[str, zarr.Array] = {
            k: _open_array(group, self.path, f"meta/{k}") for k in [*META_KEYS, REJECTED_KEY]
        }
        self._validate_structure()
        ends = _read_rows(self.path, self.meta["episode_ends"], "meta/episode_ends", 0,
                          self.num_episodes)
        self.episode_ends = ends.astype(np.int64)
        if self.num_episodes:
            if np.any(np.diff(self.episode_ends) <= 0) or self.episode_ends[0] <= 0:
                raise StoreError(
                    self.path / "meta/episode_ends",
                    f"episode_ends {self.episode_ends.tolist()[:20]} are not strictly increasing",
                )
            if self.episode_ends[-1] != self.num_steps:
                raise StoreError(
                    self.path / "meta/episode_ends",
                    f"last episode end {int(self.episode_ends[-1])} != committed steps "
                    f"{self.num_steps}",
                )
        self.seeds = _read_rows(self.path, self.meta["seed"], "meta/seed", 0,
                                self.num_episodes).astype(np.int64)
        self.success = _read_rows(self.path, self.meta["success"], "meta/success", 0,
                                  self.num_episodes).astype(bool)
        self.rejected_seeds = _read_rows(self.path, self.meta[REJECTED_KEY],
                                         f"meta/{REJECTED_KEY}", 0,
                                         self.num_rejected).astype(np.int64)
        starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        self.episode_starts = starts
        # Per-episode task/split/instruction: read from the episode's first step.
        self._first_ids = {
            k: self.read(k, 0, self.num_steps)[starts] if self.num_episodes else np.zeros(0)
            for k in ID_KEYS
        }

    def _validate_structure(self) -> None:
        counts = {"data": self.num_steps, "meta": self.num_episodes}
        for prefix, arrays in (("data", self.arrays), ("meta", self.meta)):
            for key, arr in arrays.items():
                need = self.num_rejected if key == REJECTED_KEY else counts[prefix]
                name = f"{prefix}/{key}"
                if arr.shape[0] < need:
                    raise StoreError(
                        self.path / name / "zarr.json",
                        f"truncated: array {name!r} has {arr.shape[0]} rows but {need} are "
                        "committed",
                    )
                rows = arr.chunks[0]
                for c in range(math.ceil(need / rows)):
                    if not _chunk_exists(self.path, arr, name, c):
                        raise StoreError(
                            _chunk_path(self.path, arr, name, c),
                            f"missing chunk {c} of array {name!r} inside the committed range "
                            f"(rows < {need})",
                        )
        image_shape = None
        for key in self.image_keys:
            shape = tuple(self.arrays[key].shape[1:])
            if len(shape) != 3 or shape[-1] != 3 or self.arrays[key].dtype != np.uint8:
                raise StoreError(
                    self.path / f"data/{key}",
                    f"image array has frame shape {shape} dtype {self.arrays[key].dtype}; "
                    "expected uint8 (H, W, 3)",
                )
            image_shape = image_shape or shape
        self.image_shape = image_shape

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows [start, stop) of per-step array `key`."""
        stop = self.num_steps if stop is None else stop
        if not 0 <= start <= stop <= self.num_steps:
            raise IndexError(f"rows {start}:{stop} outside committed steps 0:{self.num_steps}")
        if key not in self.arrays:
            raise KeyError(f"no per-step array {key!r} in {self.path}; have {list(self.arrays)}")
        return _read_rows(self.path, self.arrays[key], f"data/{key}", start, stop)

    def verify(self) -> None:
        """Decode every committed row of every array; raises StoreError at the first bad chunk."""
        for key in self.arrays:
            arr = self.arrays[key]
            step = arr.chunks[0] * max(1, 64 // arr.chunks[0])  # a few chunks per read
            for a in range(0, self.num_steps, step):
                self.read(key, a, min(a + step, self.num_steps))

    def episode_task(self, i: int) -> str:
        return self.tables.tasks[int(self._first_ids["task_id"][i])]

    def episode_split(self, i: int) -> str:
        return self.tables.splits[int(self._first_ids["split_id"][i])]

    def episode_instruction(self, i: int) -> str:
        return self.tables.instructions[int(self._first_ids["instruction_id"][i])]

    def episode(self, i: int) -> Episode:
        """Episode `i` of this shard, read from disk."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} outside 0..{self.num_episodes - 1} of {self.path}")
        a, b = int(self.episode_starts[i]), int(self.episode_ends[i])
        return Episode(
            image=self.read(IMAGE, a, b),
            wrist_image=self.read(WRIST_IMAGE, a, b) if WRIST_IMAGE in self.arrays else None,
            state=self.read("state", a, b),
            action=self.read("action", a, b),
            executed_action=self.read("executed_action", a, b),
            instruction=self.episode_instruction(i),
            task=self.episode_task(i),
            split=self.episode_split(i),
            seed=int(self.seeds[i]),
            success=bool(self.success[i]),
        )


# Info keys that must agree between shards of one store (and between a writer and the shard
# it reopens): a policy trained on the store is checked against these.
COMPAT_KEYS: tuple[str, ...] = (
    "image_keys", "image_shape", "action_spec", "state_names", "renderer", "camera",
    "control_hz", "physics_hz",
)


def _compat_mismatch(a: dict, b: dict) -> str | None:
    for key in COMPAT_KEYS:
        if key in a and key in b and a[key] != b[key]:
            return f"info[{key!r}] differs: {a[key]!r} != {b[key]!r}"
    return None


@dataclass
class StepData:
    """Per-step arrays of a whole store, concatenated across shards, ids in global tables."""

    arrays: dict[str, np.ndarray]  # image, (wrist_image), state, action, executed_action, ids
    episode_ends: np.ndarray  # int64 (E,) exclusive ends into the concatenated steps
    seed: np.ndarray  # int64 (E,)
    success: np.ndarray  # bool (E,)
    task_id: np.ndarray  # int16 (E,) into EpisodeStore.tasks
    split_id: np.ndarray  # int16 (E,) into EpisodeStore.splits

    @property
    def num_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)


class EpisodeStore:
    """Reader spanning all shards of a store; ids are remapped into store-wide tables.

    `skip_bad_shards=True` turns a broken shard into a warning (the shard's StoreError is
    kept in `bad_shards`) instead of an error, so one crashed or corrupted worker does not
    make a whole dataset unreadable.
    """

    def __init__(self, path: Path | str, skip_bad_shards: bool = False) -> None:
        self.path = Path(path)
        self.skip_bad_shards = skip_bad_shards
        shard_paths = list_shards(self.path)
        if not shard_paths:
            raise FileNotFoundError(
                f"episode store {self.path} has no {SHARD_PREFIX}XXXXX directories"
            )
        self.shards: list[ShardReader] = []
        self.bad_shards: list[StoreError] = []
        for sp in shard_paths:
            try:
                self.shards.append(ShardReader(sp))
            except StoreError as err:
                if not skip_bad_shards:
                    raise
                warnings.warn(f"skipping bad shard: {err}", stacklevel=2)
                self.bad_shards.append(err)
        if not self.shards:
            raise StoreError(self.path, "no readable shard")
        first = self.shards[0]
        for sh in self.shards[1:]:
            problem = _compat_mismatch(first.info, sh.info)
            if problem:
                raise StoreError(sh.path / "zarr.json", f"incompatible with {first.path}: "
                                 f"{problem}")
        self.instructions = _union(sh.tables.instructions for sh in self.shards)
        self.tasks = _union(sh.tables.tasks for sh in self.shards)
        self.splits = _union(sh.tables.splits for sh in self.shards)
        self._maps = [
            {
                "instruction_id": _remap(sh.tables.instructions, self.instructions),
                "task_id": _remap(sh.tables.tasks, self.tasks),
                "split_id": _remap(sh.tables.splits, self.splits),
            }
            for sh in self.shards
        ]
        self._stats: dict[str, Any] | None = None

    # -- sizes and tables
    @property
    def num_episodes(self) -> int:
        return sum(sh.num_episodes for sh in self.shards)

    @property
    def num_steps(self) -> int:
        return sum(sh.num_steps for sh in self.shards)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self.shards[0].image_shape

    @property
    def image_keys(self) -> list[str]:
        return self.shards[0].image_keys

    def seeds(self) -> np.ndarray:
        """Seeds of all committed episodes, in store order."""
        return np.concatenate([sh.seeds for sh in self.shards])

    def attempted_seeds(self) -> set[int]:
        """Seeds stored or tried and rejected: a resumed collection skips all of these."""
        out: set[int] = set()
        for sh in self.shards:
            out.update(sh.seeds.tolist())
            out.update(sh.rejected_seeds.tolist())
        return out

    def _locate(self, i: int) -> tuple[ShardReader, int]:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} outside 0..{self.num_episodes - 1} of {self.path}")
        for sh in self.shards:
            if i < sh.num_episodes:
                return sh, i
            i -= sh.num_episodes
        raise AssertionError("unreachable")

    def episode(self, i: int) -> Episode:
        """Store-wide episode `i` (shards in name order), read from disk."""
        sh, j = self._locate(i)
        return sh.episode(j)

    def episode_table(self) -> StepData:
        """Per-episode metadata only (arrays empty): cheap, for summaries and filtering."""
        return self.load(keys=())

    def load(self, keys: Sequence[str] | None = None) -> StepData:
        """Read committed steps of all shards into RAM; ids remapped into the store tables.

        keys: per-step arrays to load (default all). Id arrays are always loaded since the
        per-episode task/split come from them. A chunk that fails its checksum raises
        StoreError naming the file, or (skip_bad_shards) drops that shard with a warning.
        """
        while True:
            try:
                return self._load(keys)
            except StoreError as err:
                bad = [i for i, sh in enumerate(self.shards) if sh.path in err.path.parents]
                if not self.skip_bad_shards or not bad or len(self.shards) == 1:
                    raise
                self._drop_shard(bad[0], err)

    def _drop_shard(self, index: int, err: StoreError) -> None:
        warnings.warn(f"skipping bad shard: {err}", stacklevel=3)
        self.bad_shards.append(err)
        del self.shards[index]
        del self._maps[index]
        self._stats = None

    def verify(self) -> list[StoreError]:
        """Decode every committed chunk of every shard (checksums included).

        Returns the problems found, one per bad shard; with skip_bad_shards those shards are
        dropped, otherwise the first problem is raised.
        """
        problems = []
        for i in reversed(range(len(self.shards))):
            try:
                self.shards[i].verify()
            except StoreError as err:
                if not self.skip_bad_shards:
                    raise
                problems.append(err)
                self._drop_shard(i, err)
        return problems[::-1]

    def _load(self, keys: Sequence[str] | None) -> StepData:
        all_keys = self.image_keys + list(VECTOR_KEYS) + list(ID_KEYS)
        wanted = all_keys if keys is None else list(keys)
        for k in wanted:
            if k not in all_keys:
                raise KeyError(f"no per-step array {k!r}; expected one of {all_keys}")
        wanted = list(dict.fromkeys([*wanted, *ID_KEYS]))
        parts: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        ends, seeds, success, task_id, split_id = [], [], [], [], []
        offset = 0
        for sh, maps in zip(self.shards, self._maps, strict=True):
            for k in wanted:
                rows = sh.read(k)
                if k in maps:
                    rows = maps[k][rows.astype(np.int64)]
                parts[k].append(rows)
            ends.append(sh.episode_ends + offset)
            seeds.append(sh.seeds)
            success.append(sh.success)
            task_id.append(maps["task_id"][sh._first_ids["task_id"].astype(np.int64)])
            split_id.append(maps["split_id"][sh._first_ids["split_id"].astype(np.int64)])
            offset += sh.num_steps
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        for k, dt in ID_KEYS.items():
            arrays[k] = arrays[k].astype(dt)
        return StepData(
            arrays=arrays,
            episode_ends=np.concatenate(ends).astype(np.int64),
            seed=np.concatenate(seeds).astype(np.int64),
            success=np.concatenate(success).astype(bool),
            task_id=np.concatenate(task_id).astype(np.int16),
            split_id=np.concatenate(split_id).astype(np.int16),
        )

    @property
    def stats(self) -> dict[str, dict[str, list[float]]]:
        """Exact stats over every committed step of every readable shard."""
        if self._stats is None:
            data = self.load(keys=list(STATS_KEYS))
            self._stats = stats_for(data.arrays)
        return self._stats

    @property
    def info(self) -> dict[str, Any]:
        """The first shard's info (env describe(), action spec, ...) with store-wide counts."""
        info = dict(self.shards[0].info)
        success = np.concatenate([sh.success for sh in self.shards])
        info.update(
            tasks=self.tasks,
            splits=self.splits,
            counts={
                "episodes": self.num_episodes,
                "steps": self.num_steps,
                "successes": int(success.sum()),
                "shards": len(self.shards),
                "bad_shards": len(self.bad_shards),
            },
        )
        return info


def _union(tables: Iterable[list[str]]) -> list[str]:
    out: dict[str, None] = {}
    for t in tables:
        out.update(dict.fromkeys(t))
    return list(out)


def _remap(local: list[str], glob: list[str]) -> np.ndarray:
    index = {s: i for i, s in enumerate(glob)}
    return np.array([index[s] for s in local], dtype=np.int64)


# ----------------------------------------------------------------------------- writing


def _lock_shard(shard: Path, wait_s: float = 10.0) -> int | None:
    """Hold an exclusive lock on `<shard>.lock` while writing: one writer per shard.

    flock is released by the kernel when the process dies, even by SIGKILL, so a crashed
    run never leaves a stale lock; a second live writer (e.g. an orphaned worker) is
    refused instead of interleaving commits. None where fcntl is unavailable (Windows).
    """
    try:
        import fcntl
    except ImportError:
        return None
    shard.parent.mkdir(parents=True, exist_ok=True)
    lock = shard.with_name(shard.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # A just-killed run's workers may take a moment to die; after that, give up.
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StoreError(lock, f"another process is writing this shard (waited "
                                       f"{wait_s:g} s for its lock)") from None
            time.sleep(0.1)


class ShardWriter:
    """Appends whole episodes to one shard; the only process that writes it.

    Opening an existing shard validates it against `info` (COMPAT_KEYS) and truncates any
    uncommitted tail a crash left behind, so appending resumes exactly after the last
    committed episode. `lock_wait_s`: how long to wait for another writer's lock (a killed
    run's workers may still be exiting) before raising StoreError.
    """

    def __init__(
        self,
        path: Path | str,
        info: dict[str, Any],
        image_shape: Sequence[int],
        image_keys: Sequence[str] = (IMAGE,),
        state_dim: int = 8,
        action_dim: int = 8,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        image_codec: dict[str, Any] | None = None,
        lock_wait_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or image_shape[-1] != 3:
            raise ValueError(f"image_shape {image_shape}; expected (H, W, 3)")
        for k in image_keys:
            if k not in IMAGE_KEYS:
                raise ValueError(f"image key {k!r}; expected one of {IMAGE_KEYS}")
        # A JSON round trip, so that tuples compare equal to the lists a reopened shard holds.
        self.info = json.loads(json.dumps(info))
        self.info.update(
            format_version=FORMAT_VERSION,
            image_keys=list(image_keys),
            image_shape=list(image_shape),
        )
        self.info.setdefault("seed_ranges", default_seed_ranges())
        self.image_keys = list(image_keys)
        self._lock_fd = _lock_shard(self.path, lock_wait_s)
        if (self.path / "zarr.json").exists():
            self._reopen()
        else:
            self._create(image_shape, state_dim, action_dim, chunk_frames,
                         image_codec or DEFAULT_IMAGE_CODEC)

    # -- set-up
    def _create(self, image_shape: tuple[int, ...], state_dim: int, action_dim: int,
                chunk_frames: int, image_codec: dict[str, Any]) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1; got {chunk_frames}")
        # Build the empty shard under a temporary name and rename it into place, so readers
        # (a resumed run, another machine's process in a multirun) never see half a shard.
        tmp = self.path.with_name(f"{self.path.name}.creating")
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash during creation; we hold the lock
        group = zarr.open_group(str(tmp), mode="w")
        crc = Crc32cCodec()
        for k in self.image_keys:
            group.create_array(
                f"data/{k}", shape=(0, *image_shape), chunks=(chunk_frames, *image_shape),
                dtype="uint8", compressors=[BloscCodec(**image_codec), crc],
            )
        small = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), crc]
        dims = {"state": state_dim, "action": action_dim, "executed_action": action_dim}
        for k in VECTOR_KEYS:
            group.create_array(f"data/{k}", shape=(0, dims[k]), chunks=(VECTOR_CHUNK_ROWS,
                               dims[k]), dtype="float32", compressors=small)
        for k, dt in ID_KEYS.items():
            group.create_array(f"data/{k}", shape=(0,), chunks=(VECTOR_CHUNK_ROWS,), dtype=dt,
                               compressors=small)
        for k, dt in [*META_KEYS.items(), (REJECTED_KEY, "int64")]:
            group.create_array(f"meta/{k}", shape=(0,), chunks=(META_CHUNK_ROWS,), dtype=dt,
                               compressors=small)
        self._group = group
        self.tables = ShardTables()
        self.num_episodes = self.num_steps = self.num_rejected = 0
        self.seeds: set[int] = set()
        self.rejected_seeds: list[int] = []
        self._commit()
        os.replace(tmp, self.path)
        self._open_arrays()

    def _reopen(self) -> None:
        reader = ShardReader(self.path)
        problem = _compat_mismatch(reader.info, self.info)
        if problem:
            raise StoreError(self.path / "zarr.json",
                             f"cannot append: existing shard {problem}")
        # Keep what the shard recorded first (describe(), creation settings); a later run
        # may add tasks, whose describe() joins env_by_task.
        by_task = {**self.info.get("env_by_task", {}), **reader.info.get("env_by_task", {})}
        self.info = {**self.info, **reader.info}
        if by_task:
            self.info["env_by_task"] = by_task
        self._group = zarr.open_group(str(self.path), mode="r+")
        self.tables = reader.tables
        self.num_episodes, self.num_steps = reader.num_episodes, reader.num_steps
        self.num_rejected = reader.num_rejected
        self.seeds = set(reader.seeds.tolist())
        self.rejected_seeds = reader.rejected_seeds.tolist()
        self._open_arrays()
        # Truncate the uncommitted tail a crash may have left, so that no stale rows past
        # the committed counts survive (capacity grows again on the next append).
        for name, arr in self._arrays.items():
            n = self._committed_rows(name)
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))
        for leftover in self.path.rglob("*.partial"):  # temp files of an interrupted write
            leftover.unlink(missing_ok=True)

    def _open_arrays(self) -> None:
        """Cache the array handles (a lookup re-reads metadata from disk every time)."""
        self._group = zarr.open_group(str(self.path), mode="r+")
        names = [f"data/{k}" for k in (*self.image_keys, *VECTOR_KEYS, *ID_KEYS)]
        names += [f"meta/{k}" for k in (*META_KEYS, REJECTED_KEY)]
        # Write chunks even when they equal the fill value (all-zero ids, black frames): the
        # reader treats a missing chunk inside the committed range as damage.
        self._arrays: dict[str, zarr.Array] = {
            n: self._group[n].with_config({"write_empty_chunks": True}) for n in names
        }

    def _committed_rows(self, name: str) -> int:
        if name.startswith("data/"):
            return self.num_steps
        return self.num_rejected if name.endswith(REJECTED_KEY) else self.num_episodes

    # -- writing
    def _id(self, table: list[str], value: str) -> int:
        if value not in table:
            table.append(value)
        return table.index(value)

    def _append_rows(self, name: str, rows: np.ndarray, start: int) -> None:
        self._write_rows({name: (rows, start)})

    def _write_rows(self, writes: dict[str, tuple[np.ndarray, int]]) -> None:
        """Write rows into several arrays at once; returns when all are on disk."""
        for name, (rows, start) in writes.items():
            arr = self._arrays[name]
            stop = start + len(rows)
            if arr.shape[0] < stop:
                # Grow capacity geometrically: a resize rewrites the array's metadata, so
                # doing it per episode cost more than the data. Rows past the commit are
                # ignored by readers and truncated on reopen.
                arr.resize((max(stop, 2 * arr.shape[0], arr.chunks[0]), *arr.shape[1:]))

        async def write_all() -> None:
            # One trip to zarr's event loop for all arrays: per-array synchronous writes
            # spent most of their time handing work to that loop and back.
            await asyncio.gather(*(
                self._arrays[name].async_array.setitem(slice(start, start + len(rows)), rows)
                for name, (rows, start) in writes.items()
            ))

        zarr_sync(write_all())

    def append(self, episode: Episode) -> int:
        """Write `episode` and commit it; returns its index in this shard."""
        images = episode.images()
        if sorted(images) != sorted(self.image_keys):
            raise ValueError(f"episode has images {sorted(images)}; shard stores "
                             f"{sorted(self.image_keys)}")
        shape = tuple(self.info["image_shape"])
        for k, v in images.items():
            if tuple(v.shape[1:]) != shape:
                raise ValueError(f"episode {k} frames have shape {v.shape[1:]}; shard stores "
                                 f"{shape}")
        for k in VECTOR_KEYS:
            want = self._arrays[f"data/{k}"].shape[1]
            if getattr(episode, k).shape[1] != want:
                raise ValueError(f"episode {k} has {getattr(episode, k).shape[1]} dims; shard "
                                 f"stores {want}")
        if episode.seed in self.seeds:
            raise ValueError(f"seed {episode.seed} is already stored in {self.path}")
        n, start = len(episode), self.num_steps
        ids = {
            "instruction_id": self._id(self.tables.instructions, episode.instruction),
            "task_id": self._id(self.tables.tasks, episode.task),
            "split_id": self._id(self.tables.splits, episode.split),
        }
        # Step data and per-episode records first (all past the committed counts, so invisible
        # until the commit), the commit attribute last.
        e = self.num_episodes
        writes: dict[str, tuple[np.ndarray, int]] = {
            **{f"data/{k}": (v, start) for k, v in images.items()},
            **{f"data/{k}": (getattr(episode, k), start) for k in VECTOR_KEYS},
            **{f"data/{k}": (np.full(n, i, dtype=ID_KEYS[k]), start) for k, i in ids.items()},
            "meta/episode_ends": (np.array([start + n], dtype=np.int64), e),
            "meta/seed": (np.array([episode.seed], dtype=np.int64), e),
            "meta/success": (np.array([episode.success], dtype=bool), e),
        }
        self._write_rows(writes)
        self.num_episodes += 1
        self.num_steps += n
        self.seeds.add(int(episode.seed))
        self._commit()
        return e

    def reject(self, seed: int) -> None:
        """Record a seed that was tried and not kept, so a resumed run does not retry it."""
        self._append_rows(f"meta/{REJECTED_KEY}", np.array([seed], dtype=np.int64),
                          self.num_rejected)
        self.num_rejected += 1
        self.rejected_seeds.append(int(seed))
        self._commit()

    def _commit(self, stats: dict[str, Any] | None = None) -> None:
        """One atomic rewrite of the group's zarr.json: this is what makes data visible.

        The tables and the counts go in the same write, so a committed id always has its
        string. `stats` (written by close()) covers `stats_steps` steps; a shard whose
        writer was killed may hold stats of fewer steps, which is why readers recompute.
        """
        attrs: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "info": self.info,
            "instructions": self.tables.instructions,
            "tasks": self.tables.tasks,
            "splits": self.tables.splits,
            "commit": {"episodes": self.num_episodes, "steps": self.num_steps,
                       "rejected": self.num_rejected},
        }
        if stats is not None:
            attrs["stats"] = stats
            attrs["stats_steps"] = self.num_steps
        self._group.update_attributes(attrs)  # one write; attrs.update() writes per key

    def close(self) -> None:
        """Write the shard's stats and release its lock (every append is already committed)."""
        if self._lock_fd is None:
            return
        if self.num_steps:
            rows = {k: self._arrays[f"data/{k}"][: self.num_steps] for k in STATS_KEYS}
            self._commit(stats=stats_for(rows))
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __del__(self) -> None:
        # A writer dropped without close() must not keep its shard locked.
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._lock_fd = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- merge


def merge(sources: Sequence[Path | str], dest: Path | str, skip_bad_shards: bool = False,
          chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> EpisodeStore:
    """Copy every committed episode of `sources` (stores) into one new store with one shard.

    Seeds must be unique across the sources (collection guarantees this within one store);
    a duplicate raises ValueError naming the seed. Episodes are copied one at a time, so
    memory stays at one episode.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"merge destination {dest} exists and is not empty")
    stores = [EpisodeStore(s, skip_bad_shards=skip_bad_shards) for s in sources]
    if not stores:
        raise ValueError("merge needs at least one source store")
    first = stores[0]
    for st in stores[1:]:
        problem = _compat_mismatch(first.info, st.info)
        if problem:
            raise StoreError(st.path, f"cannot merge with {first.path}: {problem}")
    info = {k: v for k, v in first.shards[0].info.items() if k not in ("counts",)}
    info["merged_from"] = [str(Path(s).resolve()) for s in sources]
    seen: set[int] = set()
    rejected: set[int] = set()
    dest.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(dest / shard_name(0), info=info, image_shape=first.image_shape,
                         image_keys=first.image_keys, chunk_frames=chunk_frames)
    for st in stores:
        for sh in st.shards:
            for i in range(sh.num_episodes):
                ep = sh.episode(i)
                if ep.seed in seen:
                    shutil.rmtree(dest)
                    raise ValueError(f"seed {ep.seed} appears twice (again in {sh.path}); "
                                     "merge expects disjoint seeds")
                seen.add(ep.seed)
                writer.append(ep)
            for s in sh.rejected_seeds.tolist():
                if s not in rejected:
                    rejected.add(s)
                    writer.reject(s)
    writer.close()
    return EpisodeStore(dest)


# ----------------------------------------------------------------------------- inspection


@dataclass
class StoreSummary:
    """What `scripts/inspect_dataset.py` prints about a store."""

    path: str
    shards: int
    bad_shards: list[str]
    episodes: int
    steps: int
    successes: int
    seeds: tuple[int, int] | None  # min, max
    rejected: int
    per_task: dict[str, dict[str, float]]  # task -> episodes, steps, success rate
    splits: dict[str, int]  # split -> episodes
    instructions: list[str]
    image_shape: list[int]
    renderer: str
    stats: dict[str, dict[str, list[float]]]
    state_names: list[str]
    action_names: list[str]

    def format(self, max_instructions: int = 10) -> str:
        lines = [
            f"store        {self.path}",
            f"shards       {self.shards} readable"
            + (f", {len(self.bad_shards)} bad: {self.bad_shards}" if self.bad_shards else ""),
            f"episodes     {self.episodes} ({self.successes} successful, "
            f"{self.rejected} tried and not kept)",
            f"steps        {self.steps} (mean {self.steps / max(self.episodes, 1):.1f} per "
            "episode)",
            f"seeds        {self.seeds[0]}..{self.seeds[1]}" if self.seeds else "seeds        -",
            f"images       {self.image_shape} ({self.renderer})",
            f"splits       {self.splits}",
            "tasks        " + ", ".join(
                f"{t}: {int(v['episodes'])} ep, {int(v['steps'])} steps, "
                f"{v['success_rate']:.0%} success" for t, v in self.per_task.items()),
            f"instructions {len(self.instructions)} distinct, e.g.:",
        ]
        lines += [f"  - {s}" for s in self.instructions[:max_instructions]]
        for key, names in (("action", self.action_names), ("state", self.state_names)):
            if key not in self.stats:
                continue
            st = self.stats[key]
            lines.append(f"{key} stats (per dim):")
            lines.append("  " + f"{'dim':<14}" + "".join(
                f"{s:>9}" for s in ("min", "p01", "mean", "std", "p99", "max")))
            for d in range(len(st["min"])):
                name = names[d] if d < len(names) else str(d)
                lines.append("  " + f"{name:<14}" + "".join(
                    f"{st[s][d]:>9.3f}" for s in ("min", "p01", "mean", "std", "p99", "max")))
        return "\n".join(lines)


def summarize(store: EpisodeStore) -> StoreSummary:
    """Counts per task and split, success, seeds, instructions and stats of a store."""
    table = store.episode_table()
    lengths = table.episode_ends - table.episode_starts
    per_task = {}
    for t, name in enumerate(store.tasks):
        sel = table.task_id == t
        per_task[name] = {"episodes": float(sel.sum()), "steps": float(lengths[sel].sum()),
                          "success_rate": float(table.success[sel].mean()) if sel.any() else 0.0}
    splits = {name: int((table.split_id == s).sum()) for s, name in enumerate(store.splits)}
    info = store.info
    spec = info.get("action_spec", {}).get("dims", [])
    return StoreSummary(
        path=str(store.path),
        shards=len(store.shards),
        bad_shards=[str(e.path) for e in store.bad_shards],
        episodes=store.num_episodes,
        steps=store.num_steps,
        successes=int(table.success.sum()),
        seeds=(int(table.seed.min()), int(table.seed.max())) if len(table.seed) else None,
        rejected=sum(sh.num_rejected for sh in store.shards),
        per_task=per_task,
        splits=splits,
        instructions=list(store.instructions),
        image_shape=list(store.image_shape or []),
        renderer=str(info.get("renderer", "?")),
        stats=store.stats if store.num_steps else {},
        state_names=list(info.get("state_names", [])),
        action_names=[d["name"] for d in spec],
    )


def contact_sheet(store: EpisodeStore, out: Path | str, frames: int = 24, cols: int = 6,
                  seed: int = 0) -> Path:
    """A PNG grid of random frames, each titled with its instruction and episode/step."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a headless machine
    import matplotlib.pyplot as plt

    if store.num_steps == 0:
        raise ValueError(f"store {store.path} has no steps to show")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(store.num_steps, size=min(frames, store.num_steps),
                               replace=False))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows), squeeze=False)
    offsets = np.cumsum([0] + [sh.num_steps for sh in store.shards])
    for ax in axes.flat:
        ax.axis("off")
    for ax, step in zip(axes.flat, picks, strict=False):
        s = int(np.searchsorted(offsets, step, side="right") - 1)
        sh, row = store.shards[s], int(step - offsets[s])
        ep = int(np.searchsorted(sh.episode_ends, row, side="right"))
        ax.imshow(sh.read(IMAGE, row, row + 1)[0])
        title = sh.episode_instruction(ep)
        ax.set_title(f"{title}\n{sh.episode_task(ep)} seed {int(sh.seeds[ep])} "
                     f"t={row - int(sh.episode_starts[ep])}", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
