"""`evaluate`: run a policy, the oracle and baselines over tasks x splits, in parallel.

The plan (policies x tasks x splits x episodes, seeds from `episodes.py`) is cut to this
shard, then run either in this process (`workers=0`, what training uses between steps) or in
`workers` spawned processes (pool.py). Results are sorted back into the plan's order, so
neither the worker count nor the finishing order can change eval_info.json.

Videos are made after the main pass: per split, half successes and half failures are
chosen from the rows, and those episodes are replayed with frames kept (same seed, same
actions); replaying costs a few episodes but means no frames are held for the others.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.spec import EVAL_SEED_START
from policy.checkpoint_hash import checkpoint_sha256
from policy.evaluation.actors import BASELINES
from policy.evaluation.compat import read_checkpoint_env
from policy.evaluation.episodes import plan_episodes, shard
from policy.evaluation.pool import EpisodePool, EpisodeRunner, WorkerSetup, load_policy
from policy.evaluation.report import write_report
from policy.evaluation.results import EpisodeResult, EvalReport, VideoRecord

if TYPE_CHECKING:
    from policy.evaluation.config import EvalConfig


@dataclass(frozen=True)
class EnvSettings:
    """How evaluation envs are built (`envs.make_env` keywords besides task and split).

    None means: as the checkpoint was trained (its env.json), else the env's default. Set a
    value to evaluate in another env; a checkpoint that does not fit it is refused.
    """

    image_size: int | None = None
    wrist_camera: bool | None = None
    max_steps: int | None = None
    split_overrides: dict | None = None

    def make_kwargs(self, trained: dict | None, object_boxes: bool = False) -> dict[str, Any]:
        """`trained`: the checkpoint's env.json; `object_boxes`: the policy reads
        obs["object_boxes"], so the env must provide them."""
        kw: dict[str, Any] = {}
        if object_boxes:
            kw["object_boxes"] = True
        image_size, wrist = self.image_size, self.wrist_camera
        if trained is not None:
            camera = _trained_camera(trained)
            if image_size is None and camera.get("image_shape"):
                image_size = int(camera["image_shape"][0])
            if wrist is None and "wrist_camera" in trained:
                wrist = trained["wrist_camera"] is not None
            prompt_size = _trained_prompt_size(trained)
            if prompt_size is not None:
                kw["prompt_image_size"] = prompt_size
        if image_size is not None:
            kw["image_size"] = int(image_size)
        if wrist is not None:
            kw["wrist_camera"] = bool(wrist)
        if self.max_steps is not None:
            kw["max_steps"] = int(self.max_steps)
        if self.split_overrides:
            kw["split_overrides"] = dict(self.split_overrides)
        return kw




def _trained_prompt_size(trained: dict) -> int | None:
    """The side (px) of the visual prompts' crops a checkpoint was trained with: an env's
    describe()["prompt_images"] or a store's info["prompt_image_shape"] (K, S, S, 3)."""
    described = trained.get("prompt_images")
    if isinstance(described, dict) and described.get("image_size"):
        return int(described["image_size"])
    shape = trained.get("prompt_image_shape")
    return int(shape[1]) if shape else None


def check_reads_prompts(policy: Any, splits: Sequence[str]) -> None:
    """Refuse to run a policy that cannot see image prompts on the visual-prompt splits: its
    zero would read as a failure to recognise the object."""
    import envs

    visual = [s for s in splits if s in envs.VISUAL_SPLITS]
    if visual and policy is not None and not getattr(policy, "reads_prompt_images", False):
        raise ValueError(
            f"split(s) {visual} show the target by image only, and this policy reads text "
            "prompts only; train one with policy.prompt_images=true on a store collected "
            "with collect.visual_prompts > 0, or leave these splits out")


def _default_policy_name(policy: Any) -> str:
    """The row name of a policy: its registered family (`kind`, e.g. "rt1")."""
    kind = getattr(policy, "kind", None)
    if isinstance(kind, str) and kind:
        return kind
    return type(policy).__name__.lower().removesuffix("policy") or "policy"


def _trained_camera(trained: dict) -> dict:
    """The camera block of a checkpoint's env.json: at the top level (an env's describe())
    or under "env" (an episode store's info)."""
    nested = trained.get("env") if isinstance(trained.get("env"), dict) else {}
    camera = trained.get("camera", nested.get("camera"))
    camera = dict(camera) if isinstance(camera, dict) else {}
    shape = trained.get("image_shape", nested.get("image_shape"))
    if shape is not None and "image_shape" not in camera:
        camera["image_shape"] = shape
    return camera



TRAINED = "trained"  # tasks="trained": the tasks the checkpoint's training data held


def _trained_tasks(trained: dict | None) -> list[str]:
    """The tasks a checkpoint was trained on, from its env.json: an episode store's info
    lists them under "tasks"; an env's describe() names one "task"."""
    if isinstance(trained, dict):
        if isinstance(trained.get("tasks"), list) and trained["tasks"]:
            return [str(t) for t in trained["tasks"]]
        if isinstance(trained.get("task"), str):
            return [trained["task"]]
    raise ValueError(
        f"tasks={TRAINED!r} needs a checkpoint whose env.json names its training tasks "
        f"('tasks' or 'task'); got keys {sorted(trained) if isinstance(trained, dict) else None}"
    )


def select_videos(rows: Sequence[EpisodeResult], policy: str, per_split: int,
                  splits: Sequence[str]) -> list[EpisodeResult]:
    """Per split, up to `per_split` episodes of `policy`: half successes, half failures
    (topped up from the other kind when one is short), spread over tasks."""
    chosen: list[EpisodeResult] = []
    for split in splits:
        # Order by episode index first, so consecutive picks come from different tasks.
        cell = sorted((r for r in rows
                       if r.policy == policy and r.split == split and r.error is None),
                      key=lambda r: r.index)
        wins = [r for r in cell if r.success]
        losses = [r for r in cell if not r.success]
        n_win = min(len(wins), math.ceil(per_split / 2))
        n_loss = min(len(losses), per_split - n_win)
        n_win = min(len(wins), per_split - n_loss)
        chosen += wins[:n_win] + losses[:n_loss]
    return chosen


def evaluate(policy_factory: Any, config: EvalConfig, out_dir: str | Path | None = None
             ) -> EvalReport:
    """Evaluate a policy and baselines on every task x split; write the report to `out_dir`.

    `policy_factory`: a checkpoint directory (str or Path), a policy object (e.g. the model
    being trained), or None for baselines only. `config` says which episodes and how (its
    dataclass holds every default; `EvalConfig(...).run(policy, out_dir)` is the short
    form). `out_dir=None` writes nothing (videos are then skipped).
    """
    import envs

    t0 = time.perf_counter()
    tasks, episodes, workers = config.tasks, config.episodes, config.workers
    baselines, policy_name, progress = config.baselines, config.policy_name, config.progress
    shard_index, num_shards = config.shard_index, config.num_shards
    splits = list(config.splits) if config.splits else list(envs.SPLITS)  # the six
    seed_start = EVAL_SEED_START if config.seed_start is None else config.seed_start
    settings = config.env

    checkpoint: str | None = None
    policy_obj: Any = None
    trained_env: dict | None = None
    meta: dict[str, Any] = {}
    if isinstance(policy_factory, str | Path):
        checkpoint = str(policy_factory)
        trained_env = read_checkpoint_env(checkpoint)
        meta["checkpoint"] = checkpoint
        meta["checkpoint_sha256"] = checkpoint_sha256(checkpoint)
        # Load once here too: a broken checkpoint should fail before workers spawn, and the
        # name of the policy row comes from it.
        policy_obj = load_policy(checkpoint)
    elif policy_factory is not None:
        policy_obj = policy_factory
        trained_env = getattr(policy_obj, "env_info", None)
        meta["checkpoint"] = None
    if isinstance(tasks, str):
        if tasks != TRAINED:
            raise ValueError(f"tasks={tasks!r}; expected a list of tasks, None or {TRAINED!r}")
        tasks = _trained_tasks(trained_env)
    tasks = list(tasks) if tasks else list(envs.TASKS)
    for name, values, known in (("task", tasks, envs.TASKS),
                                ("split", splits, envs.ALL_SPLITS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown}; expected some of {list(known)}")
    check_reads_prompts(policy_obj, splits)
    name = policy_name or (_default_policy_name(policy_obj) if policy_obj is not None else None)
    if name is not None and name in BASELINES:
        raise ValueError(f"policy_name {name!r} clashes with a baseline; choose another name")
    policies = ([name] if name else []) + [b for b in baselines if b != name]
    if not policies:
        raise ValueError("nothing to evaluate: no policy and no baselines")

    env_kwargs = settings.make_kwargs(trained_env if isinstance(trained_env, dict) else None,
                                      bool(getattr(policy_obj, "reads_object_boxes", False)))
    out = Path(out_dir) if out_dir is not None else None
    plan = shard(plan_episodes(policies, tasks, splits, episodes, seed_start),
                 shard_index, num_shards)

    with ExitStack() as stack:
        tmp_ckpt = checkpoint
        if policy_obj is not None and checkpoint is None and workers > 0:
            # Workers load the policy themselves: save the live object once for them.
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="robotok-eval-")))
            policy_obj.save_pretrained(tmp / "policy")
            tmp_ckpt = str(tmp / "policy")
        setup = WorkerSetup(checkpoint=tmp_ckpt if policy_obj is not None else None,
                            policy_name=name or "", env_kwargs=env_kwargs,
                            out_dir=str(out) if out else ".", fps=config.fps)
        local = EpisodeRunner(setup, policy=policy_obj)
        stack.callback(local.close)
        # Fail fast, before any worker spawns, on a checkpoint that does not fit the env;
        # workers check every (task, split) env they build as well.
        first_env = local.env(plan[0].task, plan[0].split, render=True) if plan else None
        if first_env is not None:
            desc = dict(first_env.unwrapped.describe())
            # What varies per cell or per run mode is in the rows, not in the env summary.
            for k in ("task", "split", "max_steps", "skip_render"):
                desc.pop(k, None)
            meta["env"] = desc
            meta["env_version"] = desc.get("env_version")
        meta.update(policies=policies, tasks=tasks, splits=splits, episodes_per_cell=episodes,
                    seed_start=seed_start, baselines=list(baselines), env_kwargs=env_kwargs,
                    shard_index=shard_index, num_shards=num_shards)
        meta = json.loads(json.dumps(meta))  # JSON-able now, not when writing fails later

        run = EpisodePool(local, setup, workers, stack)
        t1 = time.perf_counter()
        rows = run.map([(s, False) for s in plan], progress, "evaluate")
        t2 = time.perf_counter()
        report = EvalReport(rows=[r for r, _ in rows], meta=meta)
        if report.errors:
            first = report.errors[0]
            warnings.warn(
                f"{len(report.errors)} of {len(report.rows)} episodes could not be built by the "
                f"env and are left out of the aggregates (listed in report.md); first: "
                f"{first.task}/{first.split} seed {first.seed}: {first.error}", stacklevel=2)
        if out is not None and config.videos_per_split > 0 and report.rows:
            picks = select_videos(report.rows, policies[0], config.videos_per_split, splits)
            replays = run.map([(r.key, True) for r in picks], progress, "videos")
            for want, (got, path) in zip(picks, replays, strict=True):
                if got != want:
                    warnings.warn(
                        f"replaying {want.key} for its video gave success={got.success}, "
                        f"steps={got.steps} instead of success={want.success}, "
                        f"steps={want.steps}: the policy or env is not deterministic",
                        stacklevel=2,
                    )
                report.videos.append(VideoRecord(
                    path=str(path), policy=got.policy, task=got.task, split=got.split,
                    seed=got.seed, instruction=got.instruction, success=got.success))
        t3 = time.perf_counter()
    steps = sum(r.steps for r in report.rows)
    report.timing = {
        "wall_s": round(t3 - t0, 3),
        "setup_s": round(t1 - t0, 3),
        "episodes_s": round(t2 - t1, 3),
        "videos_s": round(t3 - t2, 3),
        "workers": workers,
        "episodes": len(report.rows),
        "env_steps": steps,
        "env_steps_per_s": round(steps / max(t2 - t1, 1e-9), 2),
    }
    if out is not None:
        write_report(report, out, plot=config.plot)
    return report


