"""Writing the episode store: `ShardWriter` appends whole episodes to one shard.

Crash safety: an episode's arrays are written first and the group attribute `commit`
({episodes, steps, rejected}) is rewritten last, together with the string tables, in one
atomic file replace (zarr's local store writes a temporary file and renames it).
Everything past the committed counts is an unfinished tail: readers ignore it and a writer
reopening the shard truncates it. So a SIGKILL at any moment loses at most the episode in
flight. A new shard is built under a temporary name and renamed into place, and a lock
file beside it (`shard-XXXXX.lock`, flock) keeps a second process from writing it.
`stats` in the attributes are written when a writer closes (`stats_steps` says how many
steps they cover); readers recompute them from the data.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync as zarr_sync

from envs.spec import IMAGE, MAX_PROMPT_IMAGES
from envs.store.format import (
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_IMAGE_CODEC,
    FORMAT_NAME,
    FORMAT_VERSION,
    ID_KEYS,
    IMAGE_KEYS,
    MASK_CODEC,
    MASK_KEYS,
    META_CHUNK_ROWS,
    META_KEYS,
    OBSERVATION_KEYS,
    PRIVILEGED_KEYS,
    PROMPT_CHUNK_EPISODES,
    PROMPT_IMAGES_KEY,
    PROMPT_SHAPE_KEY,
    PROMPT_WORD_ID_KEY,
    REJECTED_KEY,
    STATS_KEYS,
    VECTOR_CHUNK_ROWS,
    VECTOR_KEYS,
    Episode,
    ShardTables,
    StoreError,
    compat_mismatch,
    default_seed_ranges,
)
from envs.store.reader import ShardReader
from envs.store.stats import stats_for


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
    committed episode. `mask_keys`: per-frame masks to store besides the images (MASK_KEYS;
    every appended episode must carry them). `privileged_keys`: per-step privileged labels
    to store (PRIVILEGED_KEYS, e.g. object_pixels; info["privileged_keys"]; every appended
    episode must carry them, and one that carries others is refused). `observation_keys`:
    per-step float observations to store (OBSERVATION_KEYS, e.g. object_boxes;
    info["observation_keys"]; every appended episode must carry them, and one that carries
    others is refused). `prompt_image_size`:
    S of the square visual prompt crops to store per episode (meta/prompt_images,
    info["prompt_image_shape"]); an
    appended episode without prompt_images is stored as a text-only one (zero crops, no
    words). None: no prompts; an episode that has them is refused (a text-only one's zero
    crops are dropped). `lock_wait_s`: how long to wait for another writer's lock (a killed
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
        mask_keys: Sequence[str] = (),
        prompt_image_size: int | None = None,
        privileged_keys: Sequence[str] = (),
        observation_keys: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or image_shape[-1] != 3:
            raise ValueError(f"image_shape {image_shape}; expected (H, W, 3)")
        for k in image_keys:
            if k not in IMAGE_KEYS:
                raise ValueError(f"image key {k!r}; expected one of {IMAGE_KEYS}")
        for k in mask_keys:
            if k not in MASK_KEYS:
                raise ValueError(f"mask key {k!r}; expected one of {MASK_KEYS}")
        # A JSON round trip, so that tuples compare equal to the lists a reopened shard holds.
        self.info = json.loads(json.dumps(info))
        self.info.update(
            format_version=FORMAT_VERSION,
            image_keys=list(image_keys),
            image_shape=list(image_shape),
        )
        self.info.pop("mask_keys", None)
        if mask_keys:  # absent, not empty, without masks: such shards stay as they were
            self.info["mask_keys"] = list(mask_keys)
        for k in privileged_keys:
            if k not in PRIVILEGED_KEYS:
                raise ValueError(f"privileged key {k!r}; expected one of {list(PRIVILEGED_KEYS)}")
        self.info.pop("privileged_keys", None)
        if privileged_keys:  # absent, not empty, without them, as mask_keys
            self.info["privileged_keys"] = list(privileged_keys)
        for k in observation_keys:
            if k not in OBSERVATION_KEYS:
                raise ValueError(f"observation key {k!r}; expected one of "
                                 f"{list(OBSERVATION_KEYS)}")
        self.info.pop("observation_keys", None)
        if observation_keys:  # absent, not empty, without them, as mask_keys
            self.info["observation_keys"] = list(observation_keys)
        self.info.pop(PROMPT_SHAPE_KEY, None)
        self.prompt_shape: tuple[int, ...] | None = None
        if prompt_image_size is not None:  # absent without prompts, as mask_keys
            if int(prompt_image_size) < 1:
                raise ValueError(f"prompt_image_size={prompt_image_size}; expected >= 1 px")
            s = int(prompt_image_size)
            self.prompt_shape = (MAX_PROMPT_IMAGES, s, s, 3)
            self.info[PROMPT_SHAPE_KEY] = list(self.prompt_shape)
        self.info.setdefault("seed_ranges", default_seed_ranges())
        self.image_keys = list(image_keys)
        self.mask_keys = list(mask_keys)
        self.privileged_keys = list(privileged_keys)
        self.observation_keys = list(observation_keys)
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
        for k in self.mask_keys:
            group.create_array(
                f"data/{k}", shape=(0, *image_shape[:2]), chunks=(chunk_frames, *image_shape[:2]),
                dtype="uint8", compressors=[BloscCodec(**MASK_CODEC), crc],
            )
        small = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), crc]
        floats = {**{k: PRIVILEGED_KEYS[k] for k in self.privileged_keys},
                  **{k: OBSERVATION_KEYS[k] for k in self.observation_keys}}
        for k, shape in floats.items():
            group.create_array(f"data/{k}", shape=(0, *shape), chunks=(VECTOR_CHUNK_ROWS, *shape),
                               dtype="float32", fill_value=float("nan"), compressors=small)
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
        if self.prompt_shape is not None:
            k = self.prompt_shape[0]
            group.create_array(
                f"meta/{PROMPT_IMAGES_KEY}", shape=(0, *self.prompt_shape),
                chunks=(PROMPT_CHUNK_EPISODES, *self.prompt_shape), dtype="uint8",
                compressors=[BloscCodec(**image_codec), crc])
            group.create_array(f"meta/{PROMPT_WORD_ID_KEY}", shape=(0, k),
                               chunks=(META_CHUNK_ROWS, k), dtype="int32", fill_value=-1,
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
        problem = compat_mismatch(reader.info, self.info)
        if problem:
            raise StoreError(self.path / "zarr.json",
                             f"cannot append: existing shard {problem}")
        # optional contents a shard has or lacks for good: what it has, what this writer has
        for what, theirs, ours, setting in (
                ("masks", reader.mask_keys, self.mask_keys, "collect.background_mask"),
                ("privileged labels", reader.privileged_keys, self.privileged_keys,
                 "collect.object_pixels"),
                ("observations", reader.observation_keys, self.observation_keys,
                 "collect.object_boxes"),
                ("prompt images of shape", reader.prompt_image_shape, self.prompt_shape,
                 "collect.visual_prompts and the crop size")):
            if theirs != ours:
                raise StoreError(self.path / "zarr.json",
                                 f"cannot append: existing shard has {what} {theirs}, this "
                                 f"writer {ours} ({setting} must match the run that started "
                                 "the store)")
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
        names = [f"data/{k}" for k in (*self.image_keys, *self.mask_keys,
                                        *self.privileged_keys, *self.observation_keys,
                                        *VECTOR_KEYS, *ID_KEYS)]
        names += [f"meta/{k}" for k in (*META_KEYS, REJECTED_KEY)]
        if self.prompt_shape is not None:
            names += [f"meta/{PROMPT_IMAGES_KEY}", f"meta/{PROMPT_WORD_ID_KEY}"]
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
        masks = episode.masks()
        if sorted(masks) != sorted(self.mask_keys):
            raise ValueError(f"episode has masks {sorted(masks)}; shard stores "
                             f"{sorted(self.mask_keys)}")
        privileged = episode.privileged()
        if sorted(privileged) != sorted(self.privileged_keys):
            raise ValueError(f"episode (seed {episode.seed}) has privileged labels "
                             f"{sorted(privileged)}; shard stores {sorted(self.privileged_keys)}"
                             " (collect.object_pixels)")
        observations = episode.observations()
        if sorted(observations) != sorted(self.observation_keys):
            raise ValueError(f"episode (seed {episode.seed}) has observations "
                             f"{sorted(observations)}; shard stores "
                             f"{sorted(self.observation_keys)} (collect.object_boxes)")
        for k in VECTOR_KEYS:
            want = self._arrays[f"data/{k}"].shape[1]
            if getattr(episode, k).shape[1] != want:
                raise ValueError(f"episode {k} has {getattr(episode, k).shape[1]} dims; shard "
                                 f"stores {want}")
        prompt = self._prompt_rows(episode)
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
            **{f"data/{k}": (v, start) for k, v in masks.items()},
            **{f"data/{k}": (v, start) for k, v in privileged.items()},
            **{f"data/{k}": (v, start) for k, v in observations.items()},
            **{f"data/{k}": (getattr(episode, k), start) for k in VECTOR_KEYS},
            **{f"data/{k}": (np.full(n, i, dtype=ID_KEYS[k]), start) for k, i in ids.items()},
            "meta/episode_ends": (np.array([start + n], dtype=np.int64), e),
            "meta/seed": (np.array([episode.seed], dtype=np.int64), e),
            "meta/success": (np.array([episode.success], dtype=bool), e),
        }
        if prompt is not None:
            images, words = prompt
            writes[f"meta/{PROMPT_IMAGES_KEY}"] = (images[None], e)
            word_ids = np.full((1, self.prompt_shape[0]), -1, dtype=np.int32)
            for slot, word in enumerate(words):
                word_ids[0, slot] = self._id(self.tables.prompt_words, word)
            writes[f"meta/{PROMPT_WORD_ID_KEY}"] = (word_ids, e)
        self._write_rows(writes)
        self.num_episodes += 1
        self.num_steps += n
        self.seeds.add(int(episode.seed))
        self._commit()
        return e

    def _prompt_rows(self, episode: Episode) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """The episode's prompt crops and words as this shard stores them (None: no prompts).

        Checked before anything is written, so a refused episode leaves the shard unchanged.
        """
        if self.prompt_shape is None:
            # A text-only episode's zero crops lose nothing when dropped; real ones would.
            if episode.prompt_images is not None and (episode.prompt_words
                                                      or episode.prompt_images.any()):
                raise ValueError(
                    f"episode (seed {episode.seed}) has prompt_images of shape "
                    f"{episode.prompt_images.shape}; this shard stores no prompt images "
                    "(open the writer with prompt_image_size, collect.visual_prompts > 0)")
            return None
        if episode.prompt_images is None:  # text-only: zero crops, no words
            return np.zeros(self.prompt_shape, dtype=np.uint8), ()
        if tuple(episode.prompt_images.shape) != self.prompt_shape:
            raise ValueError(
                f"episode (seed {episode.seed}) prompt_images have shape "
                f"{episode.prompt_images.shape}; shard stores {self.prompt_shape}")
        return episode.prompt_images, episode.prompt_words

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
            **({"prompt_words": self.tables.prompt_words} if self.prompt_shape else {}),
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
