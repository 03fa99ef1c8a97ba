"""Evaluation in the real PyBullet env.

- the report of a tiny (untrained) RT-1 checkpoint on 2 episodes per split has every field;
- the scripted oracle succeeds on >= 95% of seen episodes;
- the same checkpoint on the same seeds gives the same eval_info.json, whatever the worker
  count (the checkpoint's results and the baselines');
- a checkpoint that does not fit the env is refused, naming the mismatch;
- shards run through the hydra config merge into the unsharded report;
- in-training use: a live policy object, results logged to TensorBoard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import envs
from envs.spec import DEFAULT_ACTION_SPEC, EVAL_SEED_START
from policy import Policy, make_policy
from policy.base import load_policy_yaml
from policy.checkpoint_hash import checkpoint_sha256
from policy.evaluation import EvalConfig, EvalReport, log_report
from policy.evaluation.cli import merge_dirs

CONF = Path(__file__).resolve().parents[2] / "conf"
# Rendering cost is mostly fixed per frame (docs/experiments/2026-11-28-prototype.md): 64 px
# is plenty here.
IMAGE_SIZE = 64


def tiny_policy() -> Policy:
    cfg = load_policy_yaml(CONF / "policy" / "rt1_tiny.yaml")
    env = envs.make_env("pick", "seen", image_size=IMAGE_SIZE, skip_render=True)
    try:
        return make_policy(cfg, DEFAULT_ACTION_SPEC, env.unwrapped.describe())
    finally:
        env.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return tiny_policy().save_pretrained(tmp_path_factory.mktemp("ckpt") / "rt1_tiny")


# One task keeps this fast; every split, the oracle and a baseline, videos included.
SMALL = dict(tasks=["pick"], episodes=2, workers=0, videos_per_split=1,
             baselines=["oracle", "random"], progress=False, plot=False)


# Wilson score intervals (z = 1.96) of 0, 1 and 2 successes in 2 episodes, worked by hand.
WILSON_OF_2 = {0: (0.0, 0.6576), 1: (0.0945, 0.9055), 2: (0.3424, 1.0)}


@pytest.fixture(scope="module")
def report_dir(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    EvalConfig(**SMALL).run(str(checkpoint), out)
    return out


def test_report_of_a_tiny_checkpoint_has_every_field(report_dir: Path, checkpoint: Path):
    """Every field, and each cell's count, rate and Wilson interval from its own rows (fails
    when the interval is computed for one episode too many)."""
    info = json.loads((report_dir / "eval_info.json").read_text())
    meta = info["meta"]
    assert meta["policies"] == ["rt1", "oracle", "random"]
    assert meta["splits"] == list(envs.SPLITS) and meta["tasks"] == ["pick"]
    assert meta["checkpoint"] == str(checkpoint)
    # the hash the bridge announces and checks: one copied from a report is accepted there
    assert meta["checkpoint_sha256"] == checkpoint_sha256(checkpoint)
    assert meta["seed_start"] == EVAL_SEED_START and meta["episodes_per_cell"] == 2
    assert meta["env"]["image_shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]  # as trained

    rows = info["episodes"]
    assert len(rows) == 3 * len(envs.SPLITS) * 2
    for row in rows:
        assert set(row) == {"policy", "task", "split", "index", "seed", "instruction",
                            "success", "steps", "return", "ended_by", "error", "furthest",
                            "prompt_words"}
        assert row["seed"] >= EVAL_SEED_START and row["instruction"] and row["steps"] >= 1
        assert row["ended_by"] in ("terminate", "step_limit")
    # the oracle and the baselines ran on the checkpoint's very seeds and scenes
    by_policy = {p: [(r["split"], r["seed"], r["instruction"]) for r in rows if r["policy"] == p]
                 for p in meta["policies"]}
    assert by_policy["rt1"] == by_policy["oracle"] == by_policy["random"]

    groups = {(a["policy"], a["task"], a["split"]): a for a in info["aggregates"]}
    for pol in meta["policies"]:
        for split in envs.SPLITS:
            cell = groups[(pol, "pick", split)]
            wins = sum(r["success"] for r in rows if (r["policy"], r["split"]) == (pol, split))
            assert cell["episodes"] == 2 and cell["successes"] == wins
            assert cell["success_rate"] == wins / 2
            # the Wilson interval (z = 1.96) of this cell's own count out of 2
            assert (cell["ci_low"], cell["ci_high"]) == pytest.approx(WILSON_OF_2[wins], abs=1e-4)
            assert groups[(pol, None, split)]["episodes"] == 2
        assert groups[(pol, None, None)]["episodes"] == 2 * len(envs.SPLITS)
        assert groups[(pol, "pick", None)]["episodes"] == 2 * len(envs.SPLITS)

    md = (report_dir / "report.md").read_text()
    for split in envs.SPLITS:
        for pol in meta["policies"]:
            assert f"| {split} | {pol} |" in md
    timing = json.loads((report_dir / "timing.json").read_text())
    assert timing["episodes"] == len(rows) and timing["wall_s"] > 0

    videos = info["videos"]
    assert sorted(v["split"] for v in videos) == sorted(envs.SPLITS)  # one per split
    for v in videos:
        assert v["policy"] == "rt1"
        assert (report_dir / v["path"]).stat().st_size > 0
        assert ("success" if v["success"] else "failure") in v["path"]


def test_oracle_succeeds_on_the_seen_split(tmp_path: Path):
    # 3 episodes x every task, render-free (the oracle never looks at pixels).
    report = EvalConfig(splits=["seen"], episodes=3, workers=0, baselines=["oracle"],
                        progress=False, image_size=IMAGE_SIZE).run(None, None)
    oracle = report.aggregate("oracle", split="seen")
    assert oracle.episodes == 3 * len(envs.TASKS)
    assert oracle.success_rate >= 0.95, [r for r in report.rows if not r.success]


@pytest.mark.slow  # two spawned workers import torch and the sentence encoder (~9 s each)
def test_same_checkpoint_and_seeds_give_the_same_eval_info_with_any_worker_count(
    report_dir: Path, checkpoint: Path, tmp_path: Path
):
    """A second run of the checkpoint and both baselines, every split, videos included, in two
    spawned workers (each loading the checkpoint and running its own share of episodes)
    writes the same eval_info.json as the in-process run. Fails when a worker evaluates
    other weights than the parent's (checked with spawned workers perturbing the weights
    they load)."""
    EvalConfig(**{**SMALL, "workers": 2}).run(str(checkpoint), tmp_path)
    assert (tmp_path / "eval_info.json").read_bytes() == (
        report_dir / "eval_info.json").read_bytes()


def test_tasks_trained_evaluates_only_the_checkpoints_training_tasks(checkpoint: Path):
    # the tiny checkpoint's env.json is the describe() of a "pick" env
    report = EvalConfig(tasks="trained", splits=["seen"], episodes=1, workers=0,
                        baselines=["noop"], progress=False).run(str(checkpoint), None)
    assert {r.task for r in report.rows} == {"pick"} and report.meta["tasks"] == ["pick"]


def test_a_checkpoint_that_does_not_fit_the_env_is_refused(checkpoint: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"refusing to evaluate.*image shape.*64.*96"):
        EvalConfig(tasks=["pick"], splits=["seen"], episodes=1, workers=0, videos_per_split=0,
                   image_size=96, progress=False).run(str(checkpoint), tmp_path)
    assert not (tmp_path / "eval_info.json").exists()


@pytest.mark.parametrize(("key", "value", "named"), [
    ("fov_deg", 60.0, "camera mismatch"),
    ("renderer", "egl", "renderer"),
    ("physics_hz", 120, "physics mismatch"),
])
def test_a_checkpoint_from_another_camera_or_renderer_is_refused(
    checkpoint: Path, tmp_path: Path, key: str, value: object, named: str
):
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    env_info = json.loads((other / "env.json").read_text())
    if key in ("renderer", "physics_hz"):
        env_info[key] = value
    else:
        env_info["camera"][key] = value
    (other / "env.json").write_text(json.dumps(env_info))
    with pytest.raises(ValueError, match=f"refusing to evaluate.*{named}.*{value}"):
        EvalConfig(tasks=["pick"], splits=["seen"], episodes=1, workers=0,
                   progress=False).run(str(other), None)


def test_hydra_shards_merge_into_the_unsharded_report(tmp_path: Path):
    def run(shard: int, shards: int) -> EvalReport:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="evaluate", overrides=[
                "eval.tasks=[pick]", "eval.splits=[seen,unseen_object]", "eval.episodes=2",
                "eval.workers=0", "eval.videos_per_split=0", "eval.baselines=[oracle,random]",
                f"eval.image_size={IMAGE_SIZE}", "eval.progress=false", "eval.plot=false",
                f"shard_index={shard}", f"num_shards={shards}"])
        return instantiate(cfg.eval).run(cfg.checkpoint, tmp_path / f"s{shard}of{shards}")

    whole = run(0, 1)
    for i in range(3):
        part = run(i, 3)
        assert 0 < len(part.rows) < len(whole.rows)
    merged = merge_dirs([str(tmp_path / f"s{i}of3") for i in range(3)], tmp_path / "merged")
    assert merged.to_json() == whole.to_json()


def test_in_training_evaluation_of_a_live_policy_logs_to_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    policy = tiny_policy().train()
    rng_before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as a training process might; evaluation runs on 1, then restores
    try:
        report = EvalConfig(tasks=["pick"], splits=["seen"], episodes=1, workers=0,
                            baselines=[], videos_per_split=1, progress=False,
                            plot=False).run(policy, tmp_path / "eval")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert policy.training  # handed back in the mode it came in
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # training's RNG untouched
    assert [r.policy for r in report.rows] == ["rt1"]

    with SummaryWriter(tmp_path / "tb") as writer:
        log_report(report, writer, step=7, out_dir=tmp_path / "eval")
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert "eval/rt1/success" in acc.Tags()["scalars"]
    assert acc.Scalars("eval/rt1/split/seen")[0].step == 7
    gifs = acc.Tags()["images"]
    assert len(gifs) == 1 and acc.Images(gifs[0])[0].encoded_image_string[:3] == b"GIF"


def test_visual_prompt_levels_run_a_prompt_reading_checkpoint_and_refuse_a_text_only_one(
        checkpoint: Path, tmp_path: Path):
    cfg = load_policy_yaml(CONF / "policy" / "rt1_tiny.yaml", {"prompt_images": True})
    env = envs.make_env("pick", "visual_prompt", image_size=IMAGE_SIZE, skip_render=True)
    try:
        torch.manual_seed(0)
        policy = make_policy(cfg, DEFAULT_ACTION_SPEC, env.unwrapped.describe())
    finally:
        env.close()
    ckpt = policy.save_pretrained(tmp_path / "rt1_prompts")
    splits = list(envs.VISUAL_SPLITS)
    report = EvalConfig(**{**SMALL, "splits": splits, "videos_per_split": 0}).run(
        str(ckpt), tmp_path / "eval")
    rows = report.rows
    assert {r.split for r in rows} == set(splits)
    assert all("{image}" in r.instruction for r in rows if r.policy != "random")
    # each row names what its crops showed: a held-out object on the unseen level
    held_out = ("hexagon", "prism", "octagon", "duck", "mug")
    assert all(len(r.prompt_words) == r.instruction.count("{image}") >= 1
               for r in rows if r.policy != "random")
    assert all(any(n in " ".join(r.prompt_words) for n in held_out)
               for r in rows if r.split == "visual_prompt_unseen_object")
    oracle = [r.success for r in rows if r.policy == "oracle"]
    assert len(oracle) == 2 * len(splits) and all(oracle)
    report_md = (tmp_path / "eval" / "report.md").read_text()
    assert "| visual_prompt_unseen_object | rt1 |" in report_md
    with pytest.raises(ValueError, match=r"split\(s\) \['visual_prompt'\] show the target by "
                                         "image only, and this policy reads text prompts only"):
        EvalConfig(**{**SMALL, "splits": ["seen", "visual_prompt"]}).run(str(checkpoint), None)
