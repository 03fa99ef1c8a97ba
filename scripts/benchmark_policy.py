"""Benchmark the policies on the CPU: `python scripts/benchmark_policy.py [key=value ...]`.

Batch-1 acting latency (median, p99) and training samples/s of the default RT-1 and Gato,
beside lucidrains' robotic-transformer-pytorch RT1 in the same run; see
conf/benchmark_policy.yaml for the settings and policy/benchmark.py for what is timed.
With `overfit.store=PATH` it instead memorises a store's first episodes with each model
(the learning path end to end on recorded data).

The training-speed work (docs/experiments/2026-11-30-speed.md):
- `preset=demo`: the demo's training settings (conf `demo:` block), one JSON line with each
  model's training samples/s and batch-1 acting median ms;
- `ab.lever=bf16` (or foreach, fused, compile, channels_last): that lever off and on in one
  process, alternating, one JSON line per model; with `ab.store=PATH` also the loss after
  `ab.loss_steps` steps of each (docs/experiments/2026-11-30-speed.md).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from policy.base import register_policy_configs
from policy.benchmark import (
    TrainOptions,
    ab_lever,
    demo_preset,
    overfit_store,
    profile_train_step,
    run_benchmark,
)

register_policy_configs()  # conf/policy/*.yaml build on the policy/<kind>_base nodes


@hydra.main(config_path="../conf", config_name="benchmark_policy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    models = {name: instantiate(c) for name, c in cfg.models.items()}
    if cfg.preset is not None or cfg.ab.lever is not None:
        demo = cfg.demo
        if cfg.preset not in (None, "demo"):
            raise ValueError(f"preset={cfg.preset!r}; expected null or 'demo'")
        models = {name: dataclasses.replace(c, history=demo.history)
                  for name, c in models.items()}
        options = TrainOptions(**demo.options)
        if cfg.ab.lever is None and demo.profile_rows > 0:
            for name, config in models.items():  # tables on stderr: stdout stays JSON
                print(f"{name}, {demo.threads} threads, options {options}:\n"
                      + profile_train_step(config, options, demo.image_size, demo.threads,
                                           demo.train_batch, rows=demo.profile_rows),
                      file=sys.stderr, flush=True)
            return
        if cfg.ab.lever is None:
            print(json.dumps(demo_preset(models, options, demo.image_size, demo.threads,
                                         demo.act_threads, demo.train_batch, demo.train_steps,
                                         demo.act_calls)), flush=True)
            return
        policy_b = (None if cfg.ab.policy_b is None
                    else OmegaConf.to_container(cfg.ab.policy_b))
        for name, config in models.items():
            result = ab_lever(name, config, cfg.ab.lever, options, demo.image_size,
                              demo.threads, demo.train_batch, cfg.ab.rounds,
                              cfg.ab.steps_per_round, cfg.ab.store, cfg.ab.loss_steps,
                              cfg.ab.loss_window, policy_b)
            print(json.dumps(dataclasses.asdict(result)), flush=True)
        return
    if cfg.overfit.store:
        torch.set_num_threads(cfg.threads)
        for name, config in models.items():
            config = dataclasses.replace(config, augment_shift=0)
            overfit_store(cfg.overfit.store, name, config, cfg.overfit.episodes,
                          cfg.overfit.steps, cfg.overfit.lr)
        return
    peer = instantiate(cfg.peer.model) if cfg.peer.enabled else None
    result = run_benchmark(models, peer, image_size=cfg.image_size, threads=cfg.threads,
                           act_calls=cfg.act_calls, peer_act_calls=cfg.peer.act_calls,
                           warmup=cfg.warmup, train_batch=cfg.train_batch,
                           train_steps=cfg.train_steps)
    print(result.markdown())
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
