"""Read a LeRobot v3 dataset with LeRobot's own `LeRobotDataset` and print a JSON summary.

    .venv-lerobot/bin/python scripts/check_lerobot_dataset.py data/lerobot [--dump frames.npz]

Runs in the separate venv that `make lerobot-venv` builds (the `lerobot-dataset` package,
LeRobot's dataset code with relaxed pins, and torchcodec for video), never in robotok's own:
it imports nothing from robotok, so what it reads is what a LeRobot user gets. It loads the
metadata (info, tasks, episodes, stats), then every frame through `dataset[i]`: parquet
columns cast to the features of meta/info.json, video frames decoded at their timestamps
within LeRobot's tolerance, the task string looked up from meta/tasks.parquet. Any mismatch
raises inside LeRobot's code and the script exits non-zero. `--dump` writes what it read
(frames as uint8, vectors, task strings) so a caller can compare them with the source store.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

# Offline and with a throw-away arrow cache: the dataset is local, nothing is downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="lerobot-check-"))

import numpy as np  # noqa: E402
from ledataset.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--dump", type=Path, default=None)
    args = parser.parse_args()

    dataset = LeRobotDataset(repo_id=f"local/{args.root.name}", root=args.root,
                             video_backend="torchcodec")
    meta = dataset.meta
    cameras = meta.video_keys + meta.image_keys
    vectors = [k for k, ft in meta.features.items()
               if ft["dtype"] in ("float32", "float64") and k != "timestamp"]
    read: dict[str, list] = {k: [] for k in [*cameras, *vectors, "task", "episode_index"]}
    for i in range(len(dataset)):
        item = dataset[i]
        for k in cameras:  # (3, H, W) float in [0, 1] -> (H, W, 3) uint8
            read[k].append(np.round(item[k].numpy().transpose(1, 2, 0) * 255).astype(np.uint8))
        for k in vectors:
            read[k].append(item[k].numpy())
        read["task"].append(item["task"])
        read["episode_index"].append(int(item["episode_index"]))
    episodes = meta.episodes
    # Every frame's task string is the one its episode row lists.
    tasks_match = all(
        task in episodes[ep]["tasks"] for task, ep in zip(read["task"], read["episode_index"],
                                                          strict=True))
    if args.dump is not None:
        np.savez(args.dump, **{k.replace("/", "_"): np.asarray(v) for k, v in read.items()})
    print(json.dumps({
        "codebase_version": meta.info["codebase_version"], "fps": meta.fps,
        "episodes": meta.total_episodes, "frames": len(dataset), "cameras": cameras,
        "vectors": vectors, "tasks": len(meta.tasks), "tasks_match": tasks_match,
        "stats": sorted(meta.stats or {}),
    }))


if __name__ == "__main__":
    main()
