"""Resumable training state on disk without pickle: JSON for structure, safetensors for tensors.

A checkpoint's `training_state/` holds what a resumed run needs beyond the weights:
optimizer and scheduler state, the step and data position, the best evaluation so far,
and every rank's python/numpy/torch RNG state. Nested state dicts are split into a JSON
tree in which each tensor is replaced by `{"__tensor__": key}` and a safetensors file that
holds the tensors under those keys, so loading never unpickles anything (docs/CONTRACTS.md,
"The map": a checkpoint loads without pickle).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "state.json"
TENSORS = "tensors.safetensors"
FORMAT_VERSION = 1
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint and restored on resume."""

    step: int = 0  # optimizer steps completed
    epoch: int = 0  # data epoch the next batch comes from
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (per rank)
    samples_seen: int = 0  # over all ranks
    train_time_s: float = 0.0  # wall time inside the training loop, summed over resumes
    world_size: int = 1
    best_success: float | None = None  # best in-training evaluation success rate so far
    best_checkpoint: str | None = None


@dataclass
class TrainingState:
    """Everything in `training_state/`: progress, optimizer, scheduler, per-rank RNG."""

    progress: Progress
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]] = field(default_factory=list)  # index = rank


def to_tree(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `obj`; tensors are moved into `tensors` under path-like keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not set(obj) & set(_MARKERS):
            return {k: to_tree(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        # non-string keys (optimizer state is keyed by parameter index): keep them typed
        return {
            "__dict__": [
                [to_tree(k, f"{prefix}/key{i}", tensors), to_tree(v, f"{prefix}/{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [to_tree(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_tree(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(
        f"cannot store {type(obj).__name__} at {prefix!r} in a training state; expected "
        "tensors, numpy arrays, dicts, lists, tuples or JSON scalars"
    )


def from_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `to_tree`."""
    if isinstance(tree, list):
        return [from_tree(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        key = tree["__tensor__"]
        if key not in tensors:
            raise ValueError(f"training state refers to tensor {key!r}, missing from {TENSORS}")
        return tensors[key]
    if "__ndarray__" in tree:
        return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
    if "__tuple__" in tree:
        return tuple(from_tree(v, tensors) for v in tree["__tuple__"])
    if "__dict__" in tree:
        return {from_tree(k, tensors): from_tree(v, tensors) for k, v in tree["__dict__"]}
    return {k: from_tree(v, tensors) for k, v in tree.items()}


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy (legacy global) and torch CPU/CUDA generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        # the legacy global generator: third-party code may draw from it during training
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators `capture_rng` read; CUDA states only when CUDA is in use here."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_training_state(directory: Path, state: TrainingState) -> None:
    """Write `state` into `directory` (created) as state.json + tensors.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = {
        "format_version": FORMAT_VERSION,
        "progress": asdict(state.progress),
        "optimizer": to_tree(state.optimizer, "optimizer", tensors),
        "scheduler": to_tree(state.scheduler, "scheduler", tensors),
        "rng": [to_tree(r, f"rng/{i}", tensors) for i, r in enumerate(state.rng)],
    }
    save_file(tensors, str(directory / TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(tree, indent=1))
    for name in (TENSORS, STATE_JSON):
        _fsync(directory / name)  # the rename that publishes the checkpoint comes after


def load_training_state(directory: Path) -> TrainingState:
    """Read what `save_training_state` wrote; raises naming the missing or foreign file."""
    for name in (STATE_JSON, TENSORS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing; not a training state dir")
    tree = json.loads((directory / STATE_JSON).read_text())
    if tree.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / STATE_JSON} has format_version={tree.get('format_version')!r}; "
            f"expected {FORMAT_VERSION}"
        )
    tensors = load_file(str(directory / TENSORS))
    return TrainingState(
        progress=Progress(**tree["progress"]),
        optimizer=from_tree(tree["optimizer"], tensors),
        scheduler=from_tree(tree["scheduler"], tensors),
        rng=[from_tree(r, tensors) for r in tree["rng"]],
    )
