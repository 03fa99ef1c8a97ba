"""Env throughput in one run: robotok step + render, bare renderer, panda-gym, evaluation
episodes per second, and (optionally) other physics settings and a per-part profile.

    python scripts/benchmark_env.py [image_size=96] [steps=300] [panda_gym=false]
    python scripts/benchmark_env.py 'physics={substeps: 12}'   # B side: other physics
    python scripts/benchmark_env.py profile=true               # CPU ms per part of a step
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.benchmark import (
    BenchResult,
    bench_bare_render,
    bench_env,
    bench_episodes,
    bench_panda_gym,
    benchmark_markdown,
    profile_markdown,
    profile_step,
)


@hydra.main(config_path="../conf", config_name="benchmark_env", version_base="1.3")
def main(cfg: DictConfig) -> None:
    physics = OmegaConf.to_container(cfg.physics) if cfg.physics is not None else None
    label = f"(physics {json.dumps(physics, separators=(',', ':'))})" if physics else ""
    tasks = list(cfg.episode_tasks)
    best: dict[str, BenchResult] = {}

    def keep(r: BenchResult | None) -> None:
        if r is not None and (r.name not in best or r.per_cpu_second
                              > best[r.name].per_cpu_second):
            best[r.name] = r

    # Alternating repeats: a shared machine's load hits every measurement alike.
    for _ in range(int(cfg.repeats)):
        keep(bench_env(cfg.task, cfg.image_size, cfg.steps, cfg.seed))
        keep(bench_bare_render(cfg.task, cfg.image_size, cfg.steps, cfg.seed))
        keep(bench_env(cfg.task, cfg.image_size, cfg.steps, cfg.seed, skip_render=True))
        if physics:
            keep(bench_env(cfg.task, cfg.image_size, cfg.steps, cfg.seed, physics=physics,
                           label=label))
        if cfg.episodes > 0:
            keep(bench_episodes(tasks, cfg.image_size, cfg.episodes, cfg.seed))
            if physics:
                keep(bench_episodes(tasks, cfg.image_size, cfg.episodes, cfg.seed,
                                    physics=physics, label=label))
        if cfg.panda_gym:
            keep(bench_panda_gym(cfg.image_size, cfg.steps, cfg.seed))
    results = list(best.values())
    print(benchmark_markdown(results))
    env_r, bare = results[0], results[1]
    summary: dict[str, float] = {}

    def ratio(name: str, r: BenchResult) -> None:
        wall, cpu = r.per_second / bare.per_second, r.per_cpu_second / bare.per_cpu_second
        summary[name] = round(cpu, 4)
        print(f"{r.name} / bare renderer: {wall:.0%} (wall), {cpu:.0%} (CPU)")

    print()
    ratio("env_vs_bare_cpu", env_r)
    if physics:
        ratio("env_physics_vs_bare_cpu", best[f"{env_r.name} {label}"])
    for r in results:
        if r.name.startswith("oracle episodes"):
            key = "physics_" if label and r.name.endswith(label) else ""
            summary[f"{key}episodes_per_s"] = round(r.per_second, 3)
            summary[f"{key}episodes_per_cpu_s"] = round(r.per_cpu_second, 3)
            print(f"{r.name}: {r.per_second:.2f} episodes/s (wall), "
                  f"{r.per_cpu_second:.2f} per CPU s")
    pg = [r for r in results if r.name.startswith("panda-gym")]
    if pg:
        print(f"robotok step+render / panda-gym step+render: "
              f"{env_r.per_second / pg[0].per_second:.1f}x (wall), "
              f"{env_r.per_cpu_second / pg[0].per_cpu_second:.1f}x (CPU)")
    elif cfg.panda_gym:
        print("panda-gym not installed: pip install panda-gym to compare")
    if cfg.profile:
        profiles = {"default physics": profile_step(cfg.task, cfg.image_size, cfg.steps,
                                                    cfg.seed)}
        if physics:
            profiles[f"physics {label[9:-1]}"] = profile_step(cfg.task, cfg.image_size,
                                                              cfg.steps, cfg.seed, physics)
        print(f"\nCPU ms per step, {cfg.image_size} px ({cfg.task}, random actions):")
        print(profile_markdown(profiles))
    print(json.dumps({"image_size": cfg.image_size, "physics": physics, **summary}))


if __name__ == "__main__":
    main()
