"""The on-disk episode store: flat per-step zarr arrays plus `episode_ends`, one shard per writer.

The package follows the life of a dataset, as LeRobot splits its datasets:

    format.py   the layout on disk, key names, chunking, `Episode`, `StoreError`, shard names
    stats.py    per-dimension statistics of actions and states
    reader.py   `ShardReader` (one shard) and `EpisodeStore` (all shards of a store)
    writer.py   `ShardWriter`: crash-safe appends to one shard, one process per shard
    merge.py    `merge`: several stores into one single-shard store

Everything public is re-exported here, so `from envs.store import EpisodeStore` is the import
to use. A store's summary and contact sheet (scripts/inspect_dataset.py) live in
envs/inspection.py; they stay importable from here, loaded on first use (they pull in
matplotlib, which reading and writing a store do not need).
"""

from typing import Any

from envs.store.format import (
    COMPAT_KEYS,
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
    SHARD_PREFIX,
    STATS_KEYS,
    VECTOR_CHUNK_ROWS,
    VECTOR_KEYS,
    Episode,
    ShardTables,
    StoreError,
    compat_mismatch,
    default_seed_ranges,
    list_shards,
    shard_name,
)
from envs.store.merge import merge
from envs.store.reader import EpisodeStore, ShardReader, StepData
from envs.store.stats import compute_stats, stats_for
from envs.store.writer import ShardWriter

__all__ = [
    "COMPAT_KEYS", "DEFAULT_CHUNK_FRAMES", "DEFAULT_IMAGE_CODEC", "FORMAT_NAME", "FORMAT_VERSION",
    "ID_KEYS", "IMAGE_KEYS", "MASK_CODEC", "MASK_KEYS", "META_CHUNK_ROWS", "META_KEYS",
    "OBSERVATION_KEYS", "PRIVILEGED_KEYS", "PROMPT_CHUNK_EPISODES", "PROMPT_IMAGES_KEY",
    "PROMPT_SHAPE_KEY", "PROMPT_WORD_ID_KEY", "REJECTED_KEY", "SHARD_PREFIX",
    "STATS_KEYS", "VECTOR_CHUNK_ROWS", "VECTOR_KEYS", "Episode", "EpisodeStore", "ShardReader",
    "ShardTables", "ShardWriter", "StepData", "StoreError", "compat_mismatch", "compute_stats",
    "default_seed_ranges", "list_shards", "merge", "shard_name", "stats_for",
]

_INSPECTION = ("StoreSummary", "contact_sheet", "summarize")


def __getattr__(name: str) -> Any:
    if name in _INSPECTION:
        import envs.inspection

        return getattr(envs.inspection, name)
    raise AttributeError(f"module 'envs.store' has no attribute {name!r}")
