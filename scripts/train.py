"""Train a policy: `python scripts/train.py [policy=rt1_tiny] [train.steps=...] ...`.

Composes conf/train.yaml (typed by policy.train.config), builds the policy config and the
in-training evaluation from their `_target_`s, and hands over to policy.train.train, which
writes checkpoints, metrics.jsonl and TensorBoard logs into hydra's run directory
outputs/<date>/<time>_<name>/. Also:
  resume:      python scripts/train.py train.resume=true        (or train.resume=PATH)
  sweep:       python scripts/train.py -m policy=rt1,gato train.seed=0,1
  processes:   torchrun --nproc_per_node=2 scripts/train.py ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from policy.train import TrainRunConfig, prepare_launch, register_configs, train
from policy.train.distributed import cleanup, dist_info

register_configs()


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_cfg: TrainRunConfig = OmegaConf.to_object(cfg)  # runs the dataclasses' checks
    policy_config = instantiate(cfg.policy)
    use_eval = cfg.eval is not None and cfg.train.eval_every > 0
    evaluator = instantiate(cfg.eval) if use_eval else None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = train(
        run_cfg, policy_config, run_dir, OmegaConf.to_container(cfg, resolve=True),
        evaluator=evaluator,
    )
    if dist_info().is_main:
        speed = (
            f"{result.samples_per_s:.0f} samples/s, data {100 * result.data_share:.1f}% of step "
            "time" if result.samples_per_s > 0 else "too few steps to time"
        )
        print(f"step {result.progress.step}: {speed}; last checkpoint {result.last_checkpoint}")
    cleanup(dist_info())


if __name__ == "__main__":
    sys.argv.extend(prepare_launch())  # torchrun: one shared run dir, rank 0 writes
    main()
