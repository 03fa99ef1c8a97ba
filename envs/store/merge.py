"""Merging episode stores into one single-shard store (`scripts/collect.py merge_from=...`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.spec import OBJECT_BOXES, OBJECT_PIXELS
from envs.store.format import (
    DEFAULT_CHUNK_FRAMES,
    PRIVILEGED_KEYS,
    StoreError,
    compat_mismatch,
    shard_name,
)
from envs.store.reader import EpisodeStore
from envs.store.writer import ShardWriter


def merge(sources: Sequence[Path | str], dest: Path | str, skip_bad_shards: bool = False,
          chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> EpisodeStore:
    """Copy every committed episode of `sources` (stores) into one new store with one shard.

    Seeds must be unique across the sources (collection guarantees this within one store);
    a duplicate raises ValueError naming the seed. Episodes are copied one at a time, so
    memory stays at one episode. When any source has visual prompt images, the merged store
    has them too (episodes of sources without them become text-only ones: zero crops, no
    words); sources whose crops differ in size are refused. Likewise object pixels: when
    any source has them, the merged store has them, NaN for every step of the episodes of
    sources without them (NaN already means "no value": the loss that reads them skips
    non-finite entries); background masks and float observations (object boxes) only when
    every source has them (an episode without them is no episode "with no object visible").
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"merge destination {dest} exists and is not empty")
    stores = [EpisodeStore(s, skip_bad_shards=skip_bad_shards) for s in sources]
    if not stores:
        raise ValueError("merge needs at least one source store")
    first = stores[0]
    for k, st in enumerate(stores[1:], start=1):
        # Against every earlier source: keys a source lacks (prompt_image_shape in a store
        # without prompts) must still agree between the sources that have them.
        for other in stores[:k]:
            problem = compat_mismatch(other.info, st.info)
            if problem:
                raise StoreError(st.path, f"cannot merge with {other.path}: {problem}")
    info = {k: v for k, v in first.shards[0].info.items() if k not in ("counts",)}
    info["merged_from"] = [str(Path(s).resolve()) for s in sources]
    seen: set[int] = set()
    rejected: set[int] = set()
    dest.mkdir(parents=True, exist_ok=True)
    # Masks only when every source has them (an episode without one cannot be appended).
    masks = [k for k in first.mask_keys if all(k in st.mask_keys for st in stores)]
    # Prompt images when any source has them (compat_mismatch above refused differing sizes).
    prompt = next((st.prompt_image_shape for st in stores if st.prompt_image_shape), None)
    # Object pixels when any source has them (NaN rows for the episodes of the others).
    privileged = [k for k in PRIVILEGED_KEYS if any(k in st.privileged_keys for st in stores)]
    # Object boxes, as masks, only when every source has them.
    observations = [k for k in first.observation_keys
                    if all(k in st.observation_keys for st in stores)]
    writer = ShardWriter(dest / shard_name(0), info=info, image_shape=first.image_shape,
                         image_keys=first.image_keys, chunk_frames=chunk_frames,
                         mask_keys=masks, privileged_keys=privileged,
                         observation_keys=observations,
                         prompt_image_size=None if prompt is None else prompt[1])
    for st in stores:
        for sh in st.shards:
            for i in range(sh.num_episodes):
                ep = sh.episode(i)
                if ep.seed in seen:
                    shutil.rmtree(dest)
                    raise ValueError(f"seed {ep.seed} appears twice (again in {sh.path}); "
                                     "merge expects disjoint seeds")
                seen.add(ep.seed)
                if not masks:
                    ep.background_mask = None
                if OBJECT_BOXES not in observations:
                    ep.object_boxes = None
                if OBJECT_PIXELS in privileged and ep.object_pixels is None:
                    ep.object_pixels = np.full((len(ep), *PRIVILEGED_KEYS[OBJECT_PIXELS]),
                                               np.nan, dtype=np.float32)
                writer.append(ep)
            for s in sh.rejected_seeds.tolist():
                if s not in rejected:
                    rejected.add(s)
                    writer.reject(s)
    writer.close()
    return EpisodeStore(dest)
