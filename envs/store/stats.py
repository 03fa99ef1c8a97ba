"""Per-dimension statistics of the stored actions and states (normalization and bounds)."""

from __future__ import annotations

import numpy as np

from envs.store.format import STATS_KEYS


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
