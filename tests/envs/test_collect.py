"""Collection: seed schedule, held-out splits refused, SIGKILL + resume, replay round trip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from envs.collect import (
    CollectConfig,
    collect,
    env_factory,
    quotas,
    replay,
    worker_schedule,
)
from envs.store import EpisodeStore, list_shards

ROOT = Path(__file__).resolve().parents[2]


def first_seeds(cfg: CollectConfig, worker: int, n: int) -> list[tuple[int, str]]:
    sched = worker_schedule(cfg, worker)
    return [next(sched) for _ in range(n)]


def test_schedule_is_disjoint_balanced_and_shard_aware(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path), tasks=("pick", "push"), workers=2,
                        num_shards=2, shard_index=1, seed_start=100)
    # 4 global workers; each cycles through both tasks; together they cover every seed once.
    per_worker = [first_seeds(cfg, g, 6) for g in range(cfg.total_workers)]
    assert per_worker[0][:4] == [(100, "pick"), (101, "push"), (108, "pick"), (109, "push")]
    seeds = [s for w in per_worker for s, _ in w]
    assert sorted(seeds) == list(range(100, 124))
    assert cfg.global_worker(0) == 2 and cfg.global_worker(1) == 3
    assert quotas(10, 4) == [3, 3, 2, 2] and quotas(-3, 2) == [0, 0]


def test_config_refuses_heldout_split_and_eval_seeds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'unseen_object' is held-out"):
        CollectConfig(output=str(tmp_path), split="unseen_object")
    with pytest.raises(ValueError, match="never meet evaluation seeds"):
        CollectConfig(output=str(tmp_path), seed_start=1_000_000_000)
    with pytest.raises(ValueError, match="shard_index=2"):
        CollectConfig(output=str(tmp_path), shard_index=2, num_shards=2)
    with pytest.raises(KeyError, match="no action dimension 'w'"):
        CollectConfig(output=str(tmp_path), noise_dims=("x", "w"))
    with pytest.raises(ValueError, match=r"unknown split override\(s\) \['distractor'\]"):
        CollectConfig(output=str(tmp_path), split_overrides={"distractor": [0, 0]})
    with pytest.raises(ValueError, match=r"distractors=\(2, 1\)"):
        CollectConfig(output=str(tmp_path), split_overrides={"distractors": [2, 1]})


def test_split_overrides_reach_the_scenes_and_the_store(tmp_path: Path) -> None:
    cfg = CollectConfig(output=str(tmp_path / "d"), tasks=("pick",), episodes=2, workers=1,
                        image_size=32, progress=False, split_overrides={"distractors": [2, 2]})
    assert collect(cfg).kept == 2
    env_info = EpisodeStore(cfg.output).info["env_by_task"]["pick"]
    assert env_info["split_overrides"] == {"distractors": [2, 2]}
    env = env_factory(cfg)("pick")
    try:
        env.reset(seed=0)
        assert len(env.unwrapped.task.objects) == 3  # the target and exactly two others
    finally:
        env.close()


def test_collect_labels_clean_and_replay_reproduces_frames(tmp_path: Path) -> None:
    import envs

    cfg = CollectConfig(output=str(tmp_path / "demos"), tasks=("pick",), episodes=3,
                        workers=1, image_size=32, progress=False, noise_std=0.2)
    report = collect(cfg)
    assert report.kept == 3
    store = EpisodeStore(cfg.output)
    assert store.num_episodes == 3
    info = store.info
    assert info["seed_ranges"] == {"collect": [0, 1_000_000_000], "eval": [1_000_000_000, None]}
    assert info["image_shape"] == [32, 32, 3] and "pick" in info["env_by_task"]
    assert info["collection"]["noise_std"] == 0.2

    env = envs.make_env(task="pick", split="seen", image_size=32)
    try:
        for i in range(store.num_episodes):
            ep = store.episode(i)
            assert ep.success and ep.executed_action[-1, 0] > 0  # ends with terminate
            noise = ep.executed_action[:, 1:4] - ep.action[:, 1:4]
            assert np.abs(noise).max() > 0  # DART noise on x/y/z only ...
            np.testing.assert_array_equal(ep.executed_action[:, [0, 4, 5, 6, 7]],
                                          ep.action[:, [0, 4, 5, 6, 7]])
            again = replay(env, ep)
            np.testing.assert_array_equal(again.image, ep.image)  # ... and frames match
            np.testing.assert_array_equal(again.state, ep.state)
            np.testing.assert_array_equal(again.action, ep.action)  # labels are closed loop
            assert again.instruction == ep.instruction and again.success
    finally:
        env.close()


def _committed(store: Path) -> int:
    if not store.exists() or not list_shards(store):
        return 0
    try:
        return EpisodeStore(store).num_episodes
    except Exception:  # a shard's first commit may be in progress
        return 0


def _run(store: Path, episodes: int) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "collect.py"), f"output={store}",
            f"collect.episodes={episodes}", "collect.workers=2", "collect.tasks=[pick]",
            "collect.image_size=32", "collect.progress=false",
            f"hydra.run.dir={store.parent / 'hydra'}"]


def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    store, total = tmp_path / "demos", 16
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_run(store, total), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _committed(store) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "collection made no progress in 120 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    time.sleep(0.5)  # the workers die with their parent (PR_SET_PDEATHSIG)

    before = EpisodeStore(store)
    killed_at = before.num_episodes
    assert 4 <= killed_at < total, f"the run was not killed mid-way ({killed_at} episodes)"
    kept = {int(s): before.episode(i) for i, s in enumerate(before.seeds())}
    before.load()  # every committed episode decodes (checksums included)

    done = subprocess.run(_run(store, total), cwd=ROOT, env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = EpisodeStore(store)
    seeds = after.seeds().tolist()
    assert after.num_episodes == total
    assert len(set(seeds)) == len(seeds), "a seed was collected twice"
    assert after.verify() == []
    for i, seed in enumerate(seeds):
        if seed in kept:
            np.testing.assert_array_equal(after.episode(i).image, kept[seed].image)
    assert set(kept) <= set(seeds)


def test_hydra_config_composes_to_a_collect_config(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import envs
    from envs.collect import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="collect", overrides=[
            f"output={tmp_path}", "num_shards=3", "shard_index=2", "collect.workers=1"])
    config = instantiate(cfg.collect)
    assert isinstance(config, CollectConfig)
    assert config.output == str(tmp_path) and config.global_worker(0) == 2
    assert set(config.tasks) <= set(envs.TASKS) and config.split == "seen"
    assert isinstance(config.tasks, tuple) and config.noise_dims == ("x", "y", "z")
    assert cfg.inspect.path == str(tmp_path)


def test_failures_rejected_or_kept_marked(tmp_path: Path) -> None:
    # Three steps are too few for any pick: every episode fails.
    out = tmp_path / "demos"
    common = dict(output=str(out), tasks=("pick",), workers=1, image_size=32, max_steps=3,
                  progress=False)
    report = collect(CollectConfig(episodes=1, max_attempts_factor=0.0, **common))
    assert report.kept == 0 and report.workers[0].gave_up
    assert report.attempts == 10  # factor 0 * quota 1 + 10
    rejected = EpisodeStore(out).attempted_seeds()
    assert rejected == set(range(10))

    report = collect(CollectConfig(episodes=2, keep_failures=True, **common))
    store = EpisodeStore(out)
    assert report.kept == 2 and store.num_episodes == 2
    assert not store.load(keys=()).success.any()  # kept, marked as failures
    assert set(store.seeds().tolist()) == {10, 11}  # the rejected seeds were not retried


def test_collection_stops_at_the_evaluation_seed_range(tmp_path: Path) -> None:
    """A run started just below EVAL_SEED_START collects the seeds below it, then refuses
    to go on rather than record evaluation scenes as training data (the runtime guard in
    envs/collect.py `seed_task`, beside the config check of seed_start). Shown to fail on a
    build without that guard: the run then completes with seeds >= EVAL_SEED_START."""
    from envs.spec import EVAL_SEED_START

    cfg = CollectConfig(output=str(tmp_path / "demos"), episodes=4, workers=1, image_size=8,
                        tasks=("pick",), seed_start=EVAL_SEED_START - 2, progress=False)
    assert first_seeds(cfg, 0, 2) == [(EVAL_SEED_START - 2, "pick"),
                                      (EVAL_SEED_START - 1, "pick")]
    with pytest.raises(ValueError, match=f"seed {EVAL_SEED_START} would enter the evaluation"):
        collect(cfg)
