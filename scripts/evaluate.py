"""Zero-shot evaluation of a checkpoint: `python scripts/evaluate.py checkpoint=PATH`.

Runs the checkpoint, the scripted oracle and the baselines on every task x split (conf/eval/
default.yaml) and writes eval_info.json, report.md, report.png and videos/ into hydra's run
directory. Shards: `-m num_shards=4 shard_index=0,1,2,3` (any hydra launcher), then
`merge=<sweep dir>` joins them into one report. See policy/evaluation/ for the logic.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from policy.evaluation.cli import merge_dirs, save_config


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    save_config(out_dir, OmegaConf.to_container(cfg, resolve=True))
    if cfg.merge is not None:
        paths = [cfg.merge] if isinstance(cfg.merge, str) else list(cfg.merge)
        report = merge_dirs([to_absolute_path(p) for p in paths], out_dir)
    else:
        checkpoint = to_absolute_path(cfg.checkpoint) if cfg.checkpoint else None
        report = instantiate(cfg.eval).run(checkpoint, out_dir)
    for agg in report.aggregates:
        if agg.task is None and agg.split is None:
            print(f"{agg.policy:>12}: {agg.label}")
    print(f"report: {out_dir}/report.md")


if __name__ == "__main__":
    main()
