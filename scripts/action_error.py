"""Offline action error of one or more checkpoints on an episode store, per action dimension.

Minutes on a CPU, no simulator: each checkpoint predicts the last action of the same random
windows of STORE (teacher forcing, greedy bins, eval mode), and the mean absolute error per
dimension is printed as a markdown table beside the best constant guess (the labels' median)
and the ratio of the two. Ratio ~1 on x/y: the policy does not find the object it is told
about. Collect STORE with another seed_start than the training data for held-out figures:

    python scripts/collect.py output=/tmp/heldout collect.tasks=[pick] collect.episodes=100 \
        collect.seed_start=500000000 env.image_size=64
    python scripts/action_error.py /tmp/heldout CKPT [CKPT ...] [--samples 512] [--tasks pick]
        [--swap-instructions] [--aux-head]

--swap-instructions adds a second column per checkpoint: the same windows, each under
another window's instruction. x/y error that does not grow there: the policy ignores the
words (it may still find objects); error that grows: it grounds them.

Method: policy/evaluation/offline.py. Results: docs/experiments/2026-11-28-gato.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from policy import Policy
from policy.data import EpisodeDataset
from policy.evaluation.offline import action_error, markdown_table


def checkpoint_label(path: Path) -> str:
    """RUN/last for RUN/train/checkpoints/last (a training run's layout), else the name."""
    path = path.resolve()
    if path.parent.name != "checkpoints":
        return path.name
    run = path.parent.parent
    if run.name == "train":
        run = run.parent
    return f"{run.name}/{path.name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="episode store directory")
    ap.add_argument("checkpoints", nargs="+", help="checkpoint directories (save_pretrained)")
    ap.add_argument("--samples", type=int, default=512,
                    help="windows scored per checkpoint (held in memory)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="which windows are drawn")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--swap-instructions", action="store_true",
                    help="also score each checkpoint with every window given another window's "
                         "instruction (does the policy use its instruction?)")
    ap.add_argument("--aux-head", action="store_true",
                    help="also score the auxiliary frame-mean head of every checkpoint that "
                         "has one (Gato with aux_frame_mean > 0)")
    args = ap.parse_args()
    if args.samples < 1 or args.batch_size < 1:
        ap.error(f"--samples {args.samples} and --batch-size {args.batch_size} must be >= 1")
    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",") if args.tasks else None

    # by history (windows differ, indices agree): the scored windows, read and collated once
    # and reused by every checkpoint and the swapped pass (eval mode leaves batches unchanged)
    batches: dict[int, list[dict]] = {}
    idx: np.ndarray | None = None
    results = {}
    for number, ckpt in enumerate(args.checkpoints, start=1):
        policy = Policy.from_pretrained(Path(ckpt))
        history = int(policy.config.history)
        if history not in batches:
            data = EpisodeDataset(args.store, history=history, tasks=tasks)
            if idx is None:
                n = min(args.samples, len(data))
                idx = np.random.default_rng(args.seed).choice(len(data), n, replace=False)
            chunks = [idx[i:i + args.batch_size] for i in range(0, len(idx), args.batch_size)]
            batches[history] = [default_collate(data.__getitems__([int(j) for j in c]))
                                for c in chunks]
        label = checkpoint_label(Path(ckpt))
        if label in results:
            label = f"{label} ({number})"
        for swap in (False, True) if args.swap_instructions else (False,):
            results[f"{label}, swapped" if swap else label] = action_error(
                policy, batches[history], swap)
        if args.aux_head and getattr(policy, "aux_head", None) is not None:
            results[f"{label}, aux head"] = action_error(policy, batches[history],
                                                         aux_head=True)
        print(f"{label}: {policy.kind}, history {history}", flush=True)
    print(f"\nmean absolute action error, {len(idx)} windows of {args.store}"
          f"{' (tasks ' + args.tasks + ')' if tasks else ''}\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
