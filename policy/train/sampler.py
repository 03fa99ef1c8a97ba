"""A deterministic, resumable data order for one rank: DistributedSampler plus a start offset.

Each epoch is a permutation drawn from (seed, epoch), split over ranks as torch's
DistributedSampler does. A resumed run skips the batches of the current epoch that the
checkpointed run already consumed, so it sees exactly the batches the uninterrupted run
would have seen next (N steps, stop, resume to 2N equals 2N uninterrupted).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from policy.train.state import Progress


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) that can start part-way into an epoch."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.start = 0  # samples of this epoch to skip

    def set_position(self, epoch: int, batches_done: int) -> None:
        self.set_epoch(epoch)
        self.start = batches_done * self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def _one_thread(worker_id: int) -> None:
    # processes sharing cores must not each spawn a full torch thread pool (two processes with
    # two threads each on two cores ran 17x slower: docs/experiments/2026-11-28-prototype.md)
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset, sampler: ResumableSampler, num_workers: int, seed: int
) -> DataLoader:
    """A DataLoader over `sampler` with whole batches only and its own generator.

    The private generator keeps the DataLoader from drawing its worker base seed from the
    global torch RNG, which would make the training RNG stream depend on where epochs (and
    resumes) begin.
    """
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        worker_init_fn=_one_thread if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def batches(loader: DataLoader, sampler: ResumableSampler, progress: Progress) -> Iterator[Any]:
    """Endless batches from `progress.epoch` / `progress.batch_in_epoch` on, updating both."""
    if sampler.batches_per_epoch < 1:
        raise ValueError(
            f"{len(sampler.dataset)} samples over {sampler.num_replicas} rank(s) give "  # type: ignore[arg-type]
            f"{sampler.num_samples} per rank, fewer than one batch of {sampler.batch_size}; "
            "collect more episodes or lower train.batch_size"
        )
    while True:
        sampler.set_position(progress.epoch, progress.batch_in_epoch)
        for batch in loader:
            progress.batch_in_epoch += 1
            yield batch
        progress.epoch += 1
        progress.batch_in_epoch = 0
