"""Process-group helpers so one training script runs alone or under `torchrun` unchanged.

torchrun starts N copies of `scripts/train.py`, each of which runs hydra. Two things must
then agree across ranks before hydra names the run directory: the timestamp in its name and
who writes there. `prepare_launch` initialises the process group first, lets rank 0 pick the
timestamp and broadcasts it through the `ROBOTOK_RUN_STAMP` environment variable that
conf/train.yaml reads, and sends the hydra logs of ranks > 0 to stdout only, so all ranks
share one run directory and only rank 0 writes files into it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

RUN_STAMP_ENV = "ROBOTOK_RUN_STAMP"
STAMP_FORMAT = "%Y-%m-%d/%H-%M-%S"  # conf/train.yaml: outputs/<date>/<time>_<name>


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes (torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE as torchrun sets them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


def init_process_group(info: DistInfo) -> None:
    """Join the process group once: gloo for CPU tensors, plus nccl for CUDA tensors."""
    if not info.distributed or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        backend = "cpu:gloo,cuda:nccl"  # objects/RNG states travel on CPU, gradients on GPU
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def prepare_launch() -> list[str]:
    """Call before hydra under torchrun; returns extra hydra overrides for this rank.

    Shares rank 0's start time as `ROBOTOK_RUN_STAMP` so that every rank resolves the same
    `hydra.run.dir`; ranks > 0 get `hydra.output_subdir=null` and stdout-only job logging so
    that rank 0 alone writes into that directory. A no-op (returns []) without torchrun.
    """
    info = dist_info()
    if not info.distributed:
        return []
    init_process_group(info)
    stamp = [os.environ.get(RUN_STAMP_ENV) or time.strftime(STAMP_FORMAT)]
    dist.broadcast_object_list(stamp, src=0, device=torch.device("cpu"))
    os.environ[RUN_STAMP_ENV] = stamp[0]
    if info.is_main:
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def default_num_threads(info: DistInfo) -> int:
    """CPU cores available to this process divided by the processes on this machine.

    Two processes with two torch threads each on two cores ran 17x slower
    (docs/experiments/2026-11-28-prototype.md).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, info.local_world_size))


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank (identity when not distributed)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise mean of a CPU float tensor over ranks (identity when not distributed)."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
