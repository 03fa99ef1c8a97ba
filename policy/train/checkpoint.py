"""Checkpoint directories of a run: atomic writes, `last`/`best` pointers, pruning, look-up.

Layout (docs/CONTRACTS.md, "Training"):

    <run_dir>/checkpoints/
        step_00000500/          what Policy.save_pretrained writes (model.safetensors,
                                config.json, action_spec.json, stats.json, env.json)
                                + train_config.yaml (resolved) + training_state/
                                + eval/ (report, videos) after an in-training evaluation
        last.json               {"checkpoint": "step_00000500", "step": 500}
        best.json               {"checkpoint": ..., "step": ..., "success": ...}
        last, best              relative symlinks to the same directories (where supported)

A checkpoint is assembled in a hidden `.tmp-*` directory and published by one rename, and
pointers are replaced by rename too, so a process killed at any moment (SIGKILL, OOM,
preemption) leaves every published checkpoint and pointer intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from policy.train.state import TrainingState, save_training_state

CHECKPOINTS = "checkpoints"
LAST = "last.json"
BEST = "best.json"
TRAIN_CONFIG = "train_config.yaml"
TRAINING_STATE = "training_state"
_TMP_PREFIX = ".tmp-"
# Test hook: "STEP:SECONDS" makes the write of checkpoint STEP sleep SECONDS once it is fully
# in its temp dir, before the rename publishes it, with a `.paused` marker inside, so a
# test can SIGKILL the writer mid-checkpoint deterministically.
PAUSE_ENV = "ROBOTOK_CHECKPOINT_PAUSE"
PAUSED_MARKER = ".paused"


class Pretrained(Protocol):
    def save_pretrained(self, directory: str | Path) -> None: ...


@dataclass(frozen=True)
class Pointer:
    """The contents of last.json / best.json."""

    checkpoint: str
    step: int
    success: float | None = None


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _point(checkpoints_dir: Path, which: str, data: dict[str, Any]) -> None:
    """Write pointer `which` (LAST or BEST) and its symlink twin (`last` -> step_..., so that
    `<run>/checkpoints/last` can be passed wherever a checkpoint directory is expected)."""
    _write_json_atomic(checkpoints_dir / which, data)
    link = checkpoints_dir / Path(which).stem
    tmp = checkpoints_dir / f"{_TMP_PREFIX}{link.name}.{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(data["checkpoint"], tmp, target_is_directory=True)  # relative target
        os.replace(tmp, link)
    except OSError:
        pass  # no symlinks here (e.g. Windows without the privilege): the json suffices


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_pointer(checkpoints_dir: Path, which: str = LAST) -> Pointer | None:
    """The pointer `which` (LAST or BEST) of a checkpoints dir, or None if never written."""
    path = checkpoints_dir / which
    if not path.is_file():
        return None
    return Pointer(**json.loads(path.read_text()))


def _pause_setting() -> tuple[int | None, float]:
    value = os.environ.get(PAUSE_ENV, "")
    if not value:
        return None, 0.0
    try:
        step, seconds = value.split(":")
        return int(step), float(seconds)
    except ValueError:
        raise ValueError(f"{PAUSE_ENV}={value!r}; expected 'STEP:SECONDS'") from None


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: Pretrained,
    train_config: dict[str, Any],
    state: TrainingState,
) -> Path:
    """Write checkpoint `step` atomically, point `last` at it, and return its directory."""
    ckpts = run_dir / CHECKPOINTS
    ckpts.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = ckpts / f"{_TMP_PREFIX}{name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    policy.save_pretrained(tmp)
    (tmp / TRAIN_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(train_config)))
    save_training_state(tmp / TRAINING_STATE, state)
    pause_step, pause_s = _pause_setting()
    if pause_step == step:
        (tmp / PAUSED_MARKER).touch()
        time.sleep(pause_s)
        (tmp / PAUSED_MARKER).unlink()
    final = ckpts / name
    if final.exists():
        # re-saving a step (a resumed run stopping where it started): retire the old copy
        # first; a kill in between still leaves `tmp` complete for the next attempt
        trash = ckpts / f"{_TMP_PREFIX}old-{name}.{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _point(ckpts, LAST, {"checkpoint": name, "step": step})
    return final


def mark_best(checkpoint_dir: Path, step: int, success: float) -> None:
    """Point `best` at `checkpoint_dir` (a published checkpoint) with its success rate."""
    _point(
        checkpoint_dir.parent, BEST,
        {"checkpoint": checkpoint_dir.name, "step": step, "success": success},
    )


def prune(checkpoints_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints, sparing `best` and `last`."""
    if keep_last == 0:
        return []
    found = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    keep = {p.name for p in found[-keep_last:]}
    for which in (LAST, BEST):
        pointer = read_pointer(checkpoints_dir, which)
        if pointer is not None:
            keep.add(pointer.checkpoint)
    removed = [p for p in found if p.name not in keep]
    for p in removed:
        shutil.rmtree(p)
    return removed


def remove_stale_temps(checkpoints_dir: Path) -> list[Path]:
    """Delete leftovers of writes that were killed before their rename."""
    stale = list(checkpoints_dir.glob(f"{_TMP_PREFIX}*")) if checkpoints_dir.is_dir() else []
    for p in stale:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return stale


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir from a checkpoint, a run's `checkpoints/` dir, or a run dir."""
    path = Path(path)
    if (path / TRAINING_STATE).is_dir():
        return path
    for ckpts in (path / CHECKPOINTS, path):
        pointer = read_pointer(ckpts)
        if pointer is not None:
            target = ckpts / pointer.checkpoint
            if not (target / TRAINING_STATE).is_dir():
                raise FileNotFoundError(
                    f"{ckpts / LAST} points at {target}, which has no {TRAINING_STATE}/"
                )
            return target
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a checkpoint dir (with {TRAINING_STATE}/), or a "
        f"run dir / checkpoints dir with {CHECKPOINTS}/{LAST}"
    )


def find_latest_run(outputs_root: Path, name: str, exclude: Path | None = None) -> Path | None:
    """The newest run dir `outputs_root/<date>/<time>_<name>` that has a `last` checkpoint.

    Newest by the directory names, which are the run's start date and time; `exclude` is
    the run asking (its own fresh dir has no checkpoint anyway, but a resumed run may).
    """
    runs = [
        p.parent.parent
        for p in outputs_root.glob(f"*/*_{name}/{CHECKPOINTS}/{LAST}")
        if exclude is None or p.parent.parent.resolve() != exclude.resolve()
    ]
    if not runs:
        return None
    return max(runs, key=lambda run: (run.parent.name, run.name))
