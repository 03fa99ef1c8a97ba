"""Summarize an episode store and write a contact sheet of random frames (hydra entry point).

    python scripts/inspect_dataset.py output=data/demos [inspect.verify=true]

Uses conf/collect.yaml (its `inspect` section) so that inspecting what was just collected
needs no arguments; the logic is envs.inspection.summarize / contact_sheet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from envs.collect import register_configs  # noqa: E402
from envs.inspection import contact_sheet, summarize  # noqa: E402
from envs.store import EpisodeStore  # noqa: E402

register_configs()  # conf/collect.yaml builds on CollectConfig's defaults


@hydra.main(config_path="../conf", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    opts = cfg.inspect
    store = EpisodeStore(opts.path, skip_bad_shards=opts.skip_bad_shards)
    if opts.verify:
        for problem in store.verify():
            print(f"BAD SHARD {problem}")
    print(summarize(store).format())
    if opts.sheet and store.num_steps:
        out = contact_sheet(store, opts.sheet, frames=opts.frames, seed=opts.seed)
        print(f"contact sheet {out}")


if __name__ == "__main__":
    main()
