"""Report writers, shard merging, video selection and the hydra configs.

These use hand-made episode rows, so they run without the simulator; test_eval_rollout.py
runs the real env.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from envs.spec import EVAL_SEED_START
from policy.evaluation import (
    EpisodeResult,
    EvalConfig,
    EvalReport,
    merge_reports,
    plan_episodes,
    select_videos,
    shard,
    write_report,
)
from policy.evaluation.cli import merge_dirs
from policy.evaluation.video import caption_frames, write_video

CONF = Path(__file__).resolve().parents[2] / "conf"
POLICIES, TASKS, SPLITS = ["rt1", "oracle", "random"], ["pick", "place"], ["seen", "unseen_object"]


def fake_rows(n: int = 4) -> tuple[list[EpisodeResult], dict]:
    plan = plan_episodes(POLICIES, TASKS, SPLITS, n)
    rows = [
        EpisodeResult(e.policy, e.task, e.split, e.index, e.seed, f"pick up the {e.index} block",
                      success=(e.policy == "oracle") or (e.policy == "rt1" and e.index % 2 == 0),
                      steps=10 + e.index, episode_return=1.0, ended_by="terminate")
        for e in plan
    ]
    meta = {"policies": POLICIES, "tasks": TASKS, "splits": SPLITS, "episodes_per_cell": n,
            "seed_start": EVAL_SEED_START, "shard_index": 0, "num_shards": 1}
    return rows, meta


def test_eval_info_has_rows_and_aggregates_with_intervals(tmp_path: Path):
    rows, meta = fake_rows()
    report = EvalReport(rows=list(reversed(rows)), meta=meta)  # any finishing order
    write_report(report, tmp_path)
    info = json.loads((tmp_path / "eval_info.json").read_text())
    first = info["episodes"][0]
    assert set(first) == {"policy", "task", "split", "index", "seed", "instruction", "success",
                          "steps", "return", "ended_by", "error", "furthest", "prompt_words"}
    assert (first["policy"], first["task"], first["split"], first["index"]) == (
        "rt1", "pick", "seen", 0)  # back in plan order
    aggs = {(a["policy"], a["task"], a["split"]): a for a in info["aggregates"]}
    overall = aggs[("rt1", None, None)]
    assert (overall["successes"], overall["episodes"]) == (8, 16)
    assert overall["ci_low"] < 0.5 < overall["ci_high"]
    assert aggs[("oracle", "place", None)]["success_rate"] == 1.0
    assert aggs[("random", None, "unseen_object")]["successes"] == 0
    assert ("rt1", "pick", "seen") in aggs
    md = (tmp_path / "report.md").read_text()
    assert "| split | policy | pick | place | all tasks |" in md
    assert "| unseen_object | oracle | 100% [51, 100] (n=4)" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "wall_s" not in (tmp_path / "eval_info.json").read_text()
    assert EvalReport.load(tmp_path).to_json() == report.to_json()


def test_merging_shards_gives_the_unsharded_report(tmp_path: Path):
    rows, meta = fake_rows()
    whole = EvalReport(rows=rows, meta=meta)
    by_key = {r.key: r for r in rows}
    plan = plan_episodes(POLICIES, TASKS, SPLITS, 4)
    for i in range(3):
        part = EvalReport(rows=[by_key[e] for e in shard(plan, i, 3)],
                          meta={**meta, "shard_index": i, "num_shards": 3})
        write_report(part, tmp_path / f"shard{i}", plot=False)
    merged = merge_dirs(str(tmp_path), tmp_path / "merged")
    assert merged.to_json() == whole.to_json()
    assert (tmp_path / "merged" / "report.md").is_file()

    missing = EvalReport(rows=[by_key[e] for e in shard(plan, 0, 3)],
                         meta={**meta, "shard_index": 0, "num_shards": 3})
    with pytest.raises(ValueError, match="missing from the shards"):
        merge_reports([missing])
    other = EvalReport(rows=[], meta={**meta, "seed_start": EVAL_SEED_START + 7})
    with pytest.raises(ValueError, match="seed_start"):
        merge_reports([missing, other])


def test_videos_are_chosen_half_successes_half_failures():
    rows, _ = fake_rows(6)
    picks = select_videos(rows, "rt1", 4, SPLITS)
    for split in SPLITS:
        mine = [r for r in picks if r.split == split]
        assert len(mine) == 4
        assert sum(r.success for r in mine) == 2
    # the oracle never fails: its videos are all successes rather than fewer videos
    assert len(select_videos(rows, "oracle", 3, ["seen"])) == 3


def test_video_has_the_instruction_band_and_decodes(tmp_path: Path):
    import imageio.v2 as imageio

    frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(5)]
    video = caption_frames(frames, "pick up the red block", "success", scale=4)
    assert video.shape[0] == 5 and video.shape[1] % 16 == 0 and video.shape[2] % 16 == 0
    assert video[:, :12].max() > 200  # white text in the caption band above the frame
    path = write_video(frames, tmp_path / "v.mp4", "pick up the red block", "failure")
    decoded = imageio.mimread(path)
    assert len(decoded) == 5 and decoded[0].shape == video.shape[1:]


@pytest.mark.parametrize("name", ["default", "quick"])
def test_eval_configs_compose_and_instantiate(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"eval={name}", "shard_index=1",
                                                         "num_shards=2"])
    ec = instantiate(cfg.eval)
    assert isinstance(ec, EvalConfig)
    assert (ec.shard_index, ec.num_shards) == (1, 2)
    assert ec.seed_start is None and ec.episodes >= 1
    if name == "quick":
        assert ec.workers == 0 and ec.baselines == [] and ec.tasks == "trained"
    with pytest.raises(ValueError, match="eval.baselines has"):
        EvalConfig(baselines=["oracle", "human"])
    with pytest.raises(ValueError, match="eval.tasks='all'"):
        EvalConfig(tasks="all")


def test_a_scene_the_env_cannot_build_is_listed_and_left_out_of_aggregates(tmp_path: Path):
    """The real env's refusal of an impossible scene becomes a listed error row. Fails when
    the env refuses with another exception than the one evaluation catches (a scratch env
    raising RuntimeError), which a stand-in env would hide."""
    import envs
    from envs.spec import DEFAULT_ACTION_SPEC
    from policy.evaluation.actors import NoopActor
    from policy.evaluation.episodes import EpisodeSpec
    from policy.evaluation.rollout import run_episode

    # the real env, asked for more distractors than its table region holds
    crowded = envs.make_env("place", "distractors", skip_render=True,
                            split_overrides={"distractors": [20, 20]})
    spec = EpisodeSpec("oracle", "place", "distractors", 3, EVAL_SEED_START + 3)
    try:
        broken = run_episode(crowded, NoopActor(DEFAULT_ACTION_SPEC), spec).result
    finally:
        crowded.close()
    assert broken.error is not None and "cannot place 22 objects" in broken.error
    assert (broken.steps, broken.ended_by, broken.success) == (0, "error", False)

    rows, meta = fake_rows()
    rows = [r for r in rows if not (r.policy == "oracle" and r.index == 3 and
                                    (r.task, r.split) == ("place", "distractors"))]
    report = EvalReport(rows=[*rows, broken], meta={**meta, "splits": [*SPLITS, "distractors"]})
    with pytest.raises(KeyError, match="no episodes"):
        report.aggregate("oracle", "place", "distractors")  # its only episode never ran
    assert report.aggregate("oracle").episodes == len(TASKS) * len(SPLITS) * 4
    write_report(report, tmp_path, plot=False)
    md = (tmp_path / "report.md").read_text()
    assert "could not build" in md
    assert "- place / distractors / seed 1000000003: env.reset(seed=1000000003) failed: " \
        "impossible scene" in md
