"""Reading the episode store: one shard (`ShardReader`) or a whole store (`EpisodeStore`).

Integrity: every chunk carries a CRC32C checksum (zarr's crc32c codec), so a truncated or
bit-flipped chunk fails to decode instead of yielding garbage; the reader then names the
chunk file. A missing chunk inside the committed range is detected up front (zarr would
silently return the fill value). A bad shard raises `StoreError`; `EpisodeStore(...,
skip_bad_shards=True)` warns and reads the others.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from envs.spec import (
    BACKGROUND_MASK,
    IMAGE,
    MAX_PROMPT_IMAGES,
    OBJECT_BOXES,
    OBJECT_PIXELS,
    WRIST_IMAGE,
)
from envs.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ID_KEYS,
    MASK_KEYS,
    META_KEYS,
    OBSERVATION_KEYS,
    PRIVILEGED_KEYS,
    PROMPT_IMAGES_KEY,
    PROMPT_SHAPE_KEY,
    PROMPT_WORD_ID_KEY,
    REJECTED_KEY,
    SHARD_PREFIX,
    STATS_KEYS,
    VECTOR_KEYS,
    Episode,
    ShardTables,
    StoreError,
    compat_mismatch,
    list_shards,
)
from envs.store.stats import stats_for


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
                list(attrs["instructions"]), list(attrs["tasks"]), list(attrs["splits"]),
                list(attrs.get("prompt_words", [])),
            )
            self.stored_stats: dict[str, Any] = dict(attrs.get("stats", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(meta, f"malformed attributes ({err!r})") from err
        self.image_keys: list[str] = list(self.info.get("image_keys", [IMAGE]))
        # Masks (format.MASK_KEYS): only in shards collected with them; none otherwise.
        self.mask_keys: list[str] = list(self.info.get("mask_keys", []))
        unknown = [k for k in self.mask_keys if k not in MASK_KEYS]
        if unknown:
            raise StoreError(meta, f"unknown mask keys {unknown}; this reader knows {MASK_KEYS}")
        # Privileged labels (format.PRIVILEGED_KEYS): only in shards collected with them.
        self.privileged_keys: list[str] = list(self.info.get("privileged_keys", []))
        unknown = [k for k in self.privileged_keys if k not in PRIVILEGED_KEYS]
        if unknown:
            raise StoreError(meta, f"unknown privileged keys {unknown}; this reader knows "
                                   f"{list(PRIVILEGED_KEYS)}")
        # Float observations (format.OBSERVATION_KEYS): only in shards collected with them.
        self.observation_keys: list[str] = list(self.info.get("observation_keys", []))
        unknown = [k for k in self.observation_keys if k not in OBSERVATION_KEYS]
        if unknown:
            raise StoreError(meta, f"unknown observation keys {unknown}; this reader knows "
                                   f"{list(OBSERVATION_KEYS)}")
        # Visual prompts: only in shards collected with them (info[PROMPT_SHAPE_KEY]).
        shape = self.info.get(PROMPT_SHAPE_KEY)
        self.prompt_image_shape: tuple[int, ...] | None = (
            tuple(int(d) for d in shape) if shape is not None else None)
        ps = self.prompt_image_shape
        if ps is not None and (len(ps) != 4 or ps[0] != MAX_PROMPT_IMAGES or ps[1] != ps[2]
                               or ps[3] != 3):
            raise StoreError(meta, f"info[{PROMPT_SHAPE_KEY!r}]={list(ps)}; this reader reads "
                                   f"[{MAX_PROMPT_IMAGES}, S, S, 3]")
        self._group = group
        self.arrays: dict[str, zarr.Array] = {}
        for key in (self.image_keys + self.mask_keys + self.privileged_keys
                    + self.observation_keys + list(VECTOR_KEYS) + list(ID_KEYS)):
            self.arrays[key] = _open_array(group, self.path, f"data/{key}")
        self.meta: dict[str, zarr.Array] = {
            k: _open_array(group, self.path, f"meta/{k}") for k in [*META_KEYS, REJECTED_KEY]
        }
        if ps is not None:
            for k in (PROMPT_IMAGES_KEY, PROMPT_WORD_ID_KEY):
                self.meta[k] = _open_array(group, self.path, f"meta/{k}")
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
        # Word ids of every episode's slots (small: E x K int32); the crops are read on demand.
        self.prompt_word_ids: np.ndarray | None = None
        if ps is not None:
            ids = _read_rows(self.path, self.meta[PROMPT_WORD_ID_KEY],
                             f"meta/{PROMPT_WORD_ID_KEY}", 0, self.num_episodes)
            if ids.size and (ids.min() < -1 or ids.max() >= len(self.tables.prompt_words)):
                raise StoreError(self.path / f"meta/{PROMPT_WORD_ID_KEY}",
                                 f"word ids {sorted(set(ids.ravel().tolist()))[:20]} outside "
                                 f"-1..{len(self.tables.prompt_words) - 1} (the prompt_words "
                                 "table)")
            self.prompt_word_ids = ids.astype(np.int32)
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
        if self.prompt_image_shape is not None:
            for key, want, dtype in (
                    (PROMPT_IMAGES_KEY, self.prompt_image_shape, np.uint8),
                    (PROMPT_WORD_ID_KEY, self.prompt_image_shape[:1], np.int32)):
                arr = self.meta[key]
                if tuple(arr.shape[1:]) != want or arr.dtype != dtype:
                    raise StoreError(
                        self.path / f"meta/{key}",
                        f"array has row shape {tuple(arr.shape[1:])} dtype {arr.dtype}; "
                        f"expected {np.dtype(dtype)} {want} (info[{PROMPT_SHAPE_KEY!r}])")
        floats = {**{k: PRIVILEGED_KEYS[k] for k in self.privileged_keys},
                  **{k: OBSERVATION_KEYS[k] for k in self.observation_keys}}
        for key, want in floats.items():
            arr = self.arrays[key]
            if tuple(arr.shape[1:]) != want or arr.dtype != np.float32:
                raise StoreError(
                    self.path / f"data/{key}",
                    f"array has row shape {tuple(arr.shape[1:])} dtype {arr.dtype}; expected "
                    f"float32 {want}")
        for key in self.mask_keys:
            shape = tuple(self.arrays[key].shape[1:])
            if (image_shape is not None and shape != image_shape[:2]) or \
                    self.arrays[key].dtype != np.uint8:
                raise StoreError(
                    self.path / f"data/{key}",
                    f"mask array has frame shape {shape} dtype {self.arrays[key].dtype}; "
                    f"expected uint8 {image_shape[:2] if image_shape else '(H, W)'}",
                )

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
        if self.prompt_image_shape is not None:  # per-episode crops (the rest of meta/ is
            self.prompt_images()                 # decoded when the shard is opened)

    def episode_task(self, i: int) -> str:
        return self.tables.tasks[int(self._first_ids["task_id"][i])]

    def episode_split(self, i: int) -> str:
        return self.tables.splits[int(self._first_ids["split_id"][i])]

    def episode_instruction(self, i: int) -> str:
        return self.tables.instructions[int(self._first_ids["instruction_id"][i])]

    def prompt_images(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """Prompt crops of episodes [start, stop), uint8 (n, K, S, S, 3); None when this shard
        has no prompt images (zeros mark a text-only episode's unused slots)."""
        if self.prompt_image_shape is None:
            return None
        stop = self.num_episodes if stop is None else stop
        if not 0 <= start <= stop <= self.num_episodes:
            raise IndexError(f"episodes {start}:{stop} outside 0:{self.num_episodes} of "
                             f"{self.path}")
        return _read_rows(self.path, self.meta[PROMPT_IMAGES_KEY], f"meta/{PROMPT_IMAGES_KEY}",
                          start, stop)

    def episode_prompt_words(self, i: int) -> tuple[str, ...]:
        """The words episode `i`'s image slots replaced, in slot order; () if text-only."""
        if self.prompt_word_ids is None:
            return ()
        return tuple(self.tables.prompt_words[int(j)] for j in self.prompt_word_ids[i]
                     if j >= 0)

    def episode(self, i: int) -> Episode:
        """Episode `i` of this shard, read from disk."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} outside 0..{self.num_episodes - 1} of {self.path}")
        a, b = int(self.episode_starts[i]), int(self.episode_ends[i])
        prompts = self.prompt_images(i, i + 1)
        return Episode(
            image=self.read(IMAGE, a, b),
            wrist_image=self.read(WRIST_IMAGE, a, b) if WRIST_IMAGE in self.arrays else None,
            background_mask=(self.read(BACKGROUND_MASK, a, b)
                             if BACKGROUND_MASK in self.mask_keys else None),
            object_pixels=(self.read(OBJECT_PIXELS, a, b)
                           if OBJECT_PIXELS in self.privileged_keys else None),
            object_boxes=(self.read(OBJECT_BOXES, a, b)
                          if OBJECT_BOXES in self.observation_keys else None),
            state=self.read("state", a, b),
            action=self.read("action", a, b),
            executed_action=self.read("executed_action", a, b),
            instruction=self.episode_instruction(i),
            task=self.episode_task(i),
            split=self.episode_split(i),
            seed=int(self.seeds[i]),
            success=bool(self.success[i]),
            prompt_images=None if prompts is None else prompts[0],
            prompt_words=self.episode_prompt_words(i),
        )


@dataclass
class StepData:
    """Per-step arrays of a whole store, concatenated across shards, ids in global tables."""

    arrays: dict[str, np.ndarray]  # image, (wrist_image, masks), state, action, ..., ids
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
        # Prompt crops are optional per shard: those that have them compare with the first
        # that does, whether or not the first shard has any.
        prompted = next((sh for sh in self.shards if sh.prompt_image_shape is not None), first)
        for sh in self.shards[1:]:
            for ref in dict.fromkeys((first, prompted)):
                problem = compat_mismatch(ref.info, sh.info)
                if problem:
                    raise StoreError(sh.path / "zarr.json", f"incompatible with {ref.path}: "
                                     f"{problem}")
        self.instructions = _union(sh.tables.instructions for sh in self.shards)
        self.tasks = _union(sh.tables.tasks for sh in self.shards)
        self.splits = _union(sh.tables.splits for sh in self.shards)
        self.prompt_words = _union(sh.tables.prompt_words for sh in self.shards)
        self._maps = [
            {
                "instruction_id": _remap(sh.tables.instructions, self.instructions),
                "task_id": _remap(sh.tables.tasks, self.tasks),
                "split_id": _remap(sh.tables.splits, self.splits),
            }
            for sh in self.shards
        ]
        held = {k for sh in self.shards for k in sh.privileged_keys}
        self._privileged_keys = [k for k in PRIVILEGED_KEYS if k in held]
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

    @property
    def prompt_image_shape(self) -> tuple[int, ...] | None:
        """(K, S, S, 3) when any shard has prompt images (shards must agree on it, checked
        when opened); None for a store without visual prompts."""
        for sh in self.shards:
            if sh.prompt_image_shape is not None:
                return sh.prompt_image_shape
        return None

    def prompt_images(self) -> np.ndarray | None:
        """Every episode's prompt crops in store order, uint8 (E, K, S, S, 3), zeros for the
        episodes of shards without prompts; None when no shard has any. ~6 KB an episode at
        S = 32, read once (e.g. by the training loader)."""
        shape = self.prompt_image_shape
        if shape is None:
            return None
        parts = [sh.prompt_images() if sh.prompt_image_shape is not None
                 else np.zeros((sh.num_episodes, *shape), dtype=np.uint8) for sh in self.shards]
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=np.uint8)

    def episode_prompt(self, i: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
        """Store-wide episode `i`'s prompt crops (K, S, S, 3) and words, without its frames:
        (None, ()) in a store without prompts, zero crops for a text-only episode."""
        shape = self.prompt_image_shape
        sh, j = self._locate(i)
        if shape is None:
            return None, ()
        if sh.prompt_image_shape is None:
            return np.zeros(shape, dtype=np.uint8), ()
        return sh.prompt_images(j, j + 1)[0], sh.episode_prompt_words(j)

    @property
    def privileged_keys(self) -> list[str]:
        """Privileged labels any shard held when the store was opened (format.
        PRIVILEGED_KEYS; fixed then, so a shard dropped later by skip_bad_shards changes no
        key). Unlike masks, a shard without one reads as NaN rows (NaN already means "no
        value" there), so stores with and without object pixels read and merge together."""
        return list(self._privileged_keys)

    @property
    def mask_keys(self) -> list[str]:
        """Masks that every shard holds (a mask missing from one shard is not loadable)."""
        return [k for k in self.shards[0].mask_keys
                if all(k in sh.mask_keys for sh in self.shards[1:])]

    @property
    def observation_keys(self) -> list[str]:
        """Float observations (format.OBSERVATION_KEYS, e.g. object_boxes) that every shard
        holds, as masks: NaN rows for a shard without them would read as "no object
        visible", so a store mixing shards with and without them has none."""
        return [k for k in OBSERVATION_KEYS
                if all(k in sh.observation_keys for sh in self.shards)]

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
        """Store-wide episode `i` (shards in name order), read from disk.

        In a store where some shards have prompt images, an episode of a shard without them
        comes back with zero crops, as a text-only episode of a prompt shard does; in a
        store where some shards have object pixels, one of a shard without them comes back
        with NaN ones."""
        sh, j = self._locate(i)
        ep = sh.episode(j)
        if OBJECT_PIXELS in self.privileged_keys and ep.object_pixels is None:
            ep.object_pixels = np.full((len(ep), *PRIVILEGED_KEYS[OBJECT_PIXELS]), np.nan,
                                       dtype=np.float32)
        shape = self.prompt_image_shape
        if shape is not None and ep.prompt_images is None:
            ep.prompt_images = np.zeros(shape, dtype=np.uint8)
        return ep

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
        privileged = self.privileged_keys
        all_keys = (self.image_keys + self.mask_keys + privileged + self.observation_keys
                    + list(VECTOR_KEYS) + list(ID_KEYS))
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
                if k in privileged and k not in sh.privileged_keys:  # NaN: no value
                    parts[k].append(np.full((sh.num_steps, *PRIVILEGED_KEYS[k]), np.nan,
                                            dtype=np.float32))
                    continue
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
        if self.prompt_image_shape is not None:  # the first shard may be a text-only one
            info[PROMPT_SHAPE_KEY] = list(self.prompt_image_shape)
        if self.privileged_keys:  # likewise for object pixels
            info["privileged_keys"] = self.privileged_keys
        info.pop("observation_keys", None)  # the first shard's may be more than all hold
        if self.observation_keys:
            info["observation_keys"] = self.observation_keys
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
