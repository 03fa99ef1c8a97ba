"""A deterministic, resumable data order for one rank: DistributedSampler plus a start offset.

Each epoch is a permutation drawn from (seed, epoch), split over ranks as torch's
DistributedSampler does. A resumed run skips the batches of the current epoch that the
checkpointed run already consumed, so it sees exactly the batches the uninterrupted run
would have seen next (N steps, stop, resume to 2N equals 2N uninterrupted). With per-sample
weights (data.task_weights) an epoch is instead as many draws with replacement, from the
same (seed, epoch), and resumes the same way.
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
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.start = 0  # samples of this epoch to skip
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (len(dataset),) or not bool((weights >= 0).all()) \
                    or not float(weights.sum()) > 0:  # type: ignore[arg-type]
                raise ValueError(
                    f"sample weights of shape {tuple(weights.shape)}, sum "
                    f"{float(weights.sum())}; expected {len(dataset)} weights >= 0 "  # type: ignore[arg-type]
                    "with a positive sum"
                )
        self.weights = weights

    def set_position(self, epoch: int, batches_done: int) -> None:
        self.set_epoch(epoch)
        self.start = batches_done * self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[int]:
        if self.weights is None:
            indices = list(super().__iter__())
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            drawn = torch.multinomial(self.weights, self.total_size, replacement=True,
                                      generator=g)
            indices = drawn[self.rank : self.total_size : self.num_replicas].tolist()
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def task_sample_weights(
    dataset: Dataset, task_weights: dict[str, float] | None
) -> torch.Tensor | None:
    """Per-window sampling weights from {task: weight} (tasks left out weigh 1), or None.

    The dataset must name its tasks (`tasks`) and each window's (`task_of_window`), as
    policy.data.EpisodeDataset does.
    """
    if not task_weights:
        return None
    tasks = getattr(dataset, "tasks", None)
    task_of = getattr(dataset, "task_of_window", None)
    if tasks is None or task_of is None:
        raise ValueError(f"data.task_weights={dict(task_weights)} needs a dataset that knows "
                         f"each sample's task; {type(dataset).__name__} does not")
    present = sorted({tasks[int(t)] for t in set(task_of.tolist())})
    unknown = sorted(set(task_weights) - set(present))
    if unknown:
        raise ValueError(f"data.task_weights names tasks {unknown} that this training data "
                         f"does not hold; it holds {present}")
    per_task = torch.tensor([float(task_weights.get(t, 1.0)) for t in tasks],
                            dtype=torch.float64)
    weights = per_task[torch.as_tensor(task_of)]
    if not float(weights.sum()) > 0:
        raise ValueError(f"data.task_weights={dict(task_weights)} gives every sample weight 0")
    return weights


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
