"""Measure collection throughput, image compression and loader speed (docs/RESULTS.md).

    python scripts/benchmark_data.py [benchmark.episodes=200] [benchmark.workers=[1,2]]

1. Collection: the default task mix (conf/collect.yaml) with 1 and 2 workers into fresh
   stores; episodes/s and the speed-up.
2. Compression: the collected frames re-encoded with a few zarr codecs; size and speed.
3. Loader vs training: EpisodeDataset windows/s through a DataLoader, and the samples/s of
   a training step (forward, backward, AdamW) of the default RT-1 policy; the ratio.
Writes <benchmark.out>/results.json and prints a table. Timings on a shared machine are
noisy: compare numbers from one run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from envs.collect import CollectConfig, collect, register_configs  # noqa: E402
from envs.spec import IMAGE  # noqa: E402
from envs.store import EpisodeStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bench_collection(base: CollectConfig, out: Path, episodes: int,
                     workers: list[int]) -> dict[str, Any]:
    rows = {}
    for w in workers:
        store = out / f"collect_w{w}"
        shutil.rmtree(store, ignore_errors=True)
        cfg = dataclasses.replace(base, output=str(store), episodes=episodes, workers=w,
                                  shard_index=0, num_shards=1, progress=False)
        rep = collect(cfg)
        rollout_s = sum(r.rollout_s for r in rep.workers)
        write_s = sum(r.write_s for r in rep.workers)
        rows[w] = {"seconds": rep.seconds, "kept": rep.kept, "attempts": rep.attempts,
                   "steps": rep.steps, "episodes_per_s": rep.kept / rep.seconds,
                   "steps_per_s": rep.steps / rep.seconds,
                   "success_rate": rep.success_rate,
                   "store_write_share": write_s / max(rollout_s + write_s, 1e-9),
                   "worker_cpu_s_per_episode": sum(r.cpu_s for r in rep.workers) / rep.kept}
        print(f"collect workers={w}: {rep.kept} episodes ({rep.steps} steps) in "
              f"{rep.seconds:.1f} s = {rep.kept / rep.seconds:.2f} episodes/s; store writes "
              f"{rows[w]['store_write_share']:.1%} of worker time; worker CPU "
              f"{rows[w]['worker_cpu_s_per_episode']:.3f} s per episode", flush=True)
    if 1 in rows:
        for w in rows:
            rows[w]["speedup"] = rows[w]["episodes_per_s"] / rows[1]["episodes_per_s"]
            # What an otherwise idle machine with >= w cores would show: w workers in
            # parallel, each paying its measured CPU per episode.
            rows[w]["speedup_from_cpu"] = w * (rows[1]["worker_cpu_s_per_episode"]
                                               / rows[w]["worker_cpu_s_per_episode"])
    return {str(k): v for k, v in rows.items()}


def bench_codecs(store_path: Path, out: Path, chunk_frames: int = 16) -> dict[str, Any]:
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    frames = EpisodeStore(store_path).load(keys=[IMAGE]).arrays[IMAGE]
    raw = frames.nbytes
    choices: dict[str, list[Any]] = {
        "none": [],
        "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "blosc-zstd1-shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
        "blosc-zstd3-shuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
        "blosc-zstd3-bitshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
        "blosc-zstd5-shuffle": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")],
        "zstd3": [ZstdCodec(level=3)],
    }
    rows = {}
    for name, codecs in choices.items():
        path = out / "codecs" / name
        shutil.rmtree(path, ignore_errors=True)
        arr = zarr.create_array(str(path), shape=frames.shape, dtype="uint8",
                                chunks=(chunk_frames, *frames.shape[1:]),
                                compressors=[*codecs, Crc32cCodec()])
        # CPU time (all threads): wall time on a shared machine mostly measured the others.
        t0 = time.process_time()
        arr[:] = frames
        write_s = time.process_time() - t0
        t0 = time.process_time()
        back = arr[:]
        read_s = time.process_time() - t0
        assert np.array_equal(back, frames)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        rows[name] = {"ratio": raw / size, "mb": size / 1e6,
                      "write_mb_per_cpu_s": raw / 1e6 / write_s,
                      "read_mb_per_cpu_s": raw / 1e6 / read_s}
        print(f"codec {name:<24} ratio {raw / size:5.2f}  write {raw / 1e6 / write_s:7.1f} MB "
              f"per CPU-s  read {raw / 1e6 / read_s:7.1f} MB per CPU-s", flush=True)
    return {"frames": int(len(frames)), "raw_mb": raw / 1e6, "codecs": rows}


def bench_loader(store_path: Path, history: int, batch_size: int, batches: int
                 ) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from policy.data import EpisodeDataset

    t0 = time.perf_counter()
    ds = EpisodeDataset(store_path, history=history)
    load_s = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0,
                        drop_last=True)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < batches:
        for _ in loader:
            n += 1
            if n >= batches:
                break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rate, cpu_rate = n * batch_size / wall, n * batch_size / cpu
    print(f"loader history={history}: {rate:,.0f} windows/s wall, {cpu_rate:,.0f} per CPU-s "
          f"(batch {batch_size}); store read into RAM in {load_s:.2f} s", flush=True)
    return {"windows_per_s": rate, "windows_per_cpu_s": cpu_rate, "load_s": load_s,
            "windows": len(ds)}


def bench_train_step(store_path: Path, history: int, batch_size: int, steps: int
                     ) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    from policy import make_policy
    from policy.base import load_policy_yaml
    from policy.data import EpisodeDataset

    # The default policy of conf/train.yaml, with the history under test.
    config = load_policy_yaml(ROOT / "conf" / "policy" / "rt1.yaml", {"history": history})
    ds = EpisodeDataset(store_path, history=history)
    policy = make_policy(config, action_spec=ds.action_spec, env_info=ds.info, stats=ds.stats)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-4)
    batches = iter(DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True))
    fixed = [next(batches) for _ in range(3)]
    times, cpu = [], []
    for i in range(steps + 2):  # two warm-up steps (text-embedding cache, allocator)
        batch = fixed[i % len(fixed)]
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _ = policy.forward(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    step_s, step_cpu = float(np.median(times[2:])), float(np.median(cpu[2:]))
    print(f"train step history={history}: {step_s * 1e3:.0f} ms wall, {step_cpu * 1e3:.0f} ms "
          f"CPU per batch of {batch_size} = {batch_size / step_s:,.0f} samples/s", flush=True)
    return {"step_s": step_s, "step_cpu_s": step_cpu, "samples_per_s": batch_size / step_s,
            "samples_per_cpu_s": batch_size / step_cpu}


register_configs()  # conf/collect.yaml builds on CollectConfig's defaults


@hydra.main(config_path="../conf", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import torch

    b = cfg.benchmark
    torch.set_num_threads(int(b.torch_threads))
    out = Path(b.out)
    out.mkdir(parents=True, exist_ok=True)
    base: CollectConfig = instantiate(cfg.collect)
    results: dict[str, Any] = {"config": {"tasks": list(base.tasks), "image_size":
                                          base.image_size, "noise_std": base.noise_std}}
    workers = list(b.workers)
    results["collection"] = bench_collection(base, out, int(b.episodes), workers)
    store = out / f"collect_w{max(workers)}"
    if b.codecs:
        results["compression"] = bench_codecs(store, out)
    results["loader"], results["train_step"] = {}, {}
    for h in b.history:
        results["loader"][str(h)] = bench_loader(store, int(h), int(b.batch_size),
                                                 int(b.batches))
        if b.train_step:
            step = bench_train_step(store, int(h), int(b.batch_size), steps=10)
            load = results["loader"][str(h)]
            step["loader_ratio"] = load["windows_per_s"] / step["samples_per_s"]
            # CPU time is less disturbed by other processes on a shared machine than wall time.
            step["loader_ratio_cpu"] = load["windows_per_cpu_s"] / step["samples_per_cpu_s"]
            results["train_step"][str(h)] = step
            print(f"history={h}: loader / training step = {step['loader_ratio']:.1f}x wall, "
                  f"{step['loader_ratio_cpu']:.1f}x CPU", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
