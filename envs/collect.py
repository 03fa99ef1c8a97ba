"""Demonstration collection: oracle rollouts with DART noise, written by parallel workers.

Each worker process owns one shard of the episode store (envs/store/), so workers share
nothing and a crash loses at most the episode in flight. Seeds are a pure function of the
run's settings, which makes a second run with the same output resume without duplicates:

    episode k of the run  -> seed = seed_start + k, task = tasks[k % len(tasks)]
    blocks of len(tasks) consecutive k -> global worker (k // len(tasks)) % total_workers

so every worker cycles through all tasks (a balanced mix per worker), and seeds already in
the store, kept or rejected, are skipped. `shard_index / num_shards` partitions the workers
over separate processes or machines (hydra multirun with the joblib or submitit launcher):
global worker g = shard_index * workers + w writes `shard-<g>`.

`episodes` is what the store should hold when the run ends: each process counts the kept
episodes already there and splits the remainder evenly over all global workers. Processes
of one multirun should therefore start from the same store state (they do when launched
together); a process that starts after others have finished only adds its own share.

Labels are the oracle's clean intended action; what the env executes is the label plus
Gaussian noise on the translation dims (DART, Laskey et al. 2017), clipped to the action
bounds. In the prototype, labelling the noisy executed action blurred the 256-bin targets,
while noise on execution only shows the policy how to recover from small errors
(docs/experiments/2026-11-28-prototype.md).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.faults import GraspFault
from envs.spec import (
    BACKGROUND_MASK,
    COLLECT_SEED_START,
    DEFAULT_ACTION_SPEC,
    EVAL_SEED_START,
    IMAGE,
    INSTRUCTION,
    OBJECT_BOXES,
    OBJECT_PIXELS,
    PROMPT_IMAGES,
    STATE,
    WRIST_IMAGE,
    config_defaults,
)
from envs.store import Episode, EpisodeStore, ShardWriter, list_shards, shard_name

# Only training content may be collected: the other splits are the zero-shot test levels.
TRAINING_SPLITS: tuple[str, ...] = ("seen",)
# Describe() keys that must agree between the tasks of one store (one camera, one action
# spec); task, split and max_steps may differ per task.
SHARED_DESCRIBE_KEYS: tuple[str, ...] = (
    "env_version", "renderer", "camera", "wrist_camera", "image_shape", "control_hz",
    "physics_hz", "substeps", "physics", "action_spec", "state_names",
)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class CollectConfig:
    """What to collect and where. conf/collect.yaml instantiates this."""

    output: str  # store directory; shards go to <output>/shard-XXXXX
    tasks: tuple[str, ...] = ("pick",)
    split: str = "seen"
    split_overrides: dict | None = None  # SplitConfig fields to change (envs/splits.py)
    # Visual prompts: this share of the episodes names its target by an image crop instead
    # of words ("pick up the {image}"; envs/prompts.py). It becomes the split override
    # `visual_prompts` of the envs collected from (beside split_overrides), and the store
    # then records every episode's crops and the words they replaced (meta/prompt_images,
    # text-only episodes with zero crops). 0: text only, the store exactly as before.
    visual_prompts: float = 0.0
    episodes: int = 200  # episodes the store should hold when done (kept ones)
    workers: int = 1  # processes on this machine
    shard_index: int = 0  # this process's part of a multirun fan-out ...
    num_shards: int = 1  # ... out of this many parts
    seed_start: int = COLLECT_SEED_START
    image_size: int = 64
    wrist_camera: bool = False
    # Store the front camera's background mask per frame (data/background_mask, 0/1: the
    # table and empty space vs the robot and objects), for policy augment_background. Same
    # pixels and episodes as without it; rendering with pybullet's segmentation buffer costs
    # a little more per frame (docs/experiments/2026-11-30-competence.md, section 8).
    background_mask: bool = False
    # Store per frame where the front image shows the centres of the task's named objects
    # (data/object_pixels float32 (N, 2, 2): [target, second object] x (u, v) pixels, NaN
    # without a second object; TabletopEnv.object_pixels), labels for grounding losses.
    # Privileged: read from the simulator, never part of an observation. Same pixels and
    # episodes as without it.
    object_pixels: bool = False
    # Store per frame the boxes of the task objects the front image shows (data/object_boxes
    # float32 (N, 8, 4): per visible object [u0, v0, u1, v1] as fractions of the image's
    # width and height, rows sorted by box centre u then v, NaN rows past the last; the env's
    # obs["object_boxes"], read from the segmentation buffer of the frame's own render;
    # info["observation_keys"]). An observation a policy may act on (object tokens), unlike
    # object_pixels. Same pixels and episodes as without it.
    object_boxes: bool = False
    max_steps: int | None = None  # None: the task's own limit
    noise_std: float = 0.15  # DART noise std, normalized action units
    noise_dims: tuple[str, ...] = ("x", "y", "z")
    # Grasp faults (envs/faults.py): in this share of the episodes of grasping tasks the
    # executed gripper is overridden for grasp_fault_steps steps (close_early: shut during
    # the descent; drop: open while lifting), so the labels show the oracle's recovery.
    grasp_faults: float = 0.0
    grasp_fault_kinds: tuple[str, ...] = ("close_early", "drop")
    grasp_fault_steps: int = 3
    keep_failures: bool = False  # keep failed episodes too, marked success=False
    max_attempts_factor: float = 4.0  # a worker gives up after factor * quota + 10 tries
    chunk_frames: int = 16
    progress: bool = True
    # envs/physics.py PhysicsConfig fields; None: the defaults every checkpoint so far was
    # trained with. Other physics gives other episodes from the same seeds.
    physics: dict | None = None

    def __post_init__(self) -> None:
        if self.physics:
            from envs.physics import PhysicsConfig

            self.physics = dict(self.physics)
            PhysicsConfig.from_value(self.physics)  # names a bad field or value now
        else:
            self.physics = None
        self.tasks = tuple(self.tasks)
        self.noise_dims = tuple(self.noise_dims)
        self.grasp_fault_kinds = tuple(self.grasp_fault_kinds)
        if not 0.0 <= self.grasp_faults <= 1.0:
            raise ValueError(f"grasp_faults={self.grasp_faults}; expected a share in [0, 1]")
        for kind in self.grasp_fault_kinds:
            GraspFault(kind, self.grasp_fault_steps)  # names a bad kind or step count
        if not 0.0 <= self.visual_prompts <= 1.0:
            raise ValueError(f"visual_prompts={self.visual_prompts}; expected a share in [0, 1]")
        self.split_overrides = dict(self.split_overrides) if self.split_overrides else None
        given = (self.split_overrides or {}).get("visual_prompts")
        if self.visual_prompts > 0 and given is not None and given != self.visual_prompts:
            raise ValueError(
                f"visual_prompts={self.visual_prompts} but split_overrides sets visual_prompts="
                f"{given}; set it in one place")
        if self.env_split_overrides:
            from envs.splits import resolve_split

            resolve_split(self.split, self.env_split_overrides)  # names a bad field or value
        if not self.tasks:
            raise ValueError("tasks is empty; expected at least one task name")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} has duplicates")
        if self.split not in TRAINING_SPLITS:
            raise ValueError(
                f"split {self.split!r} is held-out evaluation content; collection only "
                f"records training splits {list(TRAINING_SPLITS)}"
            )
        for name, value, low in (("episodes", self.episodes, 0), ("workers", self.workers, 1),
                                 ("num_shards", self.num_shards, 1),
                                 ("image_size", self.image_size, 8),
                                 ("chunk_frames", self.chunk_frames, 1)):
            if value < low:
                raise ValueError(f"{name}={value}; expected >= {low}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"shard_index={self.shard_index}; expected 0 <= shard_index < "
                f"num_shards={self.num_shards}"
            )
        if not COLLECT_SEED_START <= self.seed_start < EVAL_SEED_START:
            raise ValueError(
                f"seed_start={self.seed_start}; collection seeds must lie in "
                f"[{COLLECT_SEED_START}, {EVAL_SEED_START}) so they never meet evaluation seeds"
            )
        if self.noise_std < 0:
            raise ValueError(f"noise_std={self.noise_std}; expected >= 0")
        for d in self.noise_dims:
            DEFAULT_ACTION_SPEC.index(d)  # raises KeyError naming the valid dims
        if "terminate" in self.noise_dims:
            raise ValueError("noise on 'terminate' would end episodes at random; drop it "
                             "from noise_dims")

    @property
    def env_split_overrides(self) -> dict | None:
        """split_overrides with `visual_prompts` merged in: what the envs are built with."""
        if self.visual_prompts <= 0:
            return self.split_overrides
        return {**(self.split_overrides or {}), "visual_prompts": self.visual_prompts}

    @property
    def total_workers(self) -> int:
        return self.workers * self.num_shards

    def global_worker(self, local: int) -> int:
        return self.shard_index * self.workers + local


def register_configs() -> None:
    """Store CollectConfig's defaults as the hydra node `collect_base` (under the key
    `collect`), so that conf/collect.yaml holds `_target_` and only what differs: the
    dataclass is the one source of each default. The entry points composing
    conf/collect.yaml (scripts/collect.py, inspect_dataset.py, benchmark_data.py) call it
    before hydra starts."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="collect_base",
                                 node={"collect": config_defaults(CollectConfig)})


def seed_task(cfg: CollectConfig, k: int) -> tuple[int, str]:
    """Seed and task of episode k of the run."""
    seed = cfg.seed_start + k
    if seed >= EVAL_SEED_START:
        raise ValueError(f"seed {seed} would enter the evaluation range [{EVAL_SEED_START}, ...)")
    return seed, cfg.tasks[k % len(cfg.tasks)]


def worker_schedule(cfg: CollectConfig, global_worker: int) -> Iterator[tuple[int, str]]:
    """(seed, task) pairs worker `global_worker` tries, in order, without end."""
    n, total = len(cfg.tasks), cfg.total_workers
    block = global_worker
    while True:
        for t in range(n):
            yield seed_task(cfg, block * n + t)
        block += total


def quotas(remaining: int, total_workers: int) -> list[int]:
    """Split `remaining` episodes over the workers as evenly as possible."""
    base, extra = divmod(max(remaining, 0), total_workers)
    return [base + (1 if g < extra else 0) for g in range(total_workers)]


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One oracle episode as collected (before the keep/reject decision)."""

    episode: Episode
    success: bool
    steps: int
    seconds: float


def dart_rng(seed: int) -> np.random.Generator:
    """The noise generator of one episode: a function of its seed, so reruns reproduce it."""
    return np.random.default_rng([seed, 0xDA27])


def draw_fault(cfg: CollectConfig, seed: int, task: str) -> GraspFault | None:
    """The grasp fault of episode `seed`, for tasks that grasp (push does not)."""
    from envs.tasks import TASK_CLASSES

    if cfg.grasp_faults <= 0 or "grasped" not in TASK_CLASSES[task].milestones:
        return None
    return GraspFault.draw(seed, cfg.grasp_faults, cfg.grasp_fault_kinds,
                           cfg.grasp_fault_steps)


def rollout(env: Any, seed: int, task: str, split: str, noise_std: float,
            noise_dims: Sequence[str], fault: GraspFault | None = None,
            object_pixels: bool = False) -> Rollout:
    """Run the env's oracle from reset(seed) until it terminates or the step limit; with a
    `fault`, its override of the executed gripper applies after the DART noise. With
    `object_pixels`, each frame's `env.unwrapped.object_pixels()` goes into the episode
    (read in the state that frame shows)."""
    t0 = time.perf_counter()
    spec = DEFAULT_ACTION_SPEC
    dims = np.array([spec.index(d) for d in noise_dims], dtype=np.int64)
    rng = dart_rng(seed)
    obs, info = env.reset(seed=seed)
    instruction = obs[INSTRUCTION]
    prompt = prompt_fields(env, obs)
    frames: dict[str, list[np.ndarray]] = {IMAGE: [], WRIST_IMAGE: [], BACKGROUND_MASK: [],
                                           OBJECT_BOXES: []}
    states, labels, executed, pixels = [], [], [], []
    success = False
    while True:
        label = np.asarray(env.unwrapped.oracle_action(), dtype=np.float32)
        act = label.copy()
        if noise_std > 0 and len(dims):
            act[dims] += rng.normal(0.0, noise_std, size=len(dims)).astype(np.float32)
        act = spec.clip(act)
        if fault is not None:
            act = fault.apply(label, act, np.asarray(obs[STATE], dtype=np.float32))
        frames[IMAGE].append(obs[IMAGE])
        if WRIST_IMAGE in obs:
            frames[WRIST_IMAGE].append(obs[WRIST_IMAGE])
        if BACKGROUND_MASK in obs:
            frames[BACKGROUND_MASK].append(obs[BACKGROUND_MASK])
        if OBJECT_BOXES in obs:
            frames[OBJECT_BOXES].append(obs[OBJECT_BOXES])
        if object_pixels:
            pixels.append(env.unwrapped.object_pixels())
        states.append(np.asarray(obs[STATE], dtype=np.float32))
        labels.append(label)
        executed.append(act)
        obs, _, terminated, truncated, info = env.step(act)
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    episode = Episode(
        image=np.stack(frames[IMAGE]),
        wrist_image=np.stack(frames[WRIST_IMAGE]) if frames[WRIST_IMAGE] else None,
        background_mask=(np.stack(frames[BACKGROUND_MASK]) if frames[BACKGROUND_MASK]
                         else None),
        object_pixels=np.stack(pixels) if object_pixels else None,
        object_boxes=np.stack(frames[OBJECT_BOXES]) if frames[OBJECT_BOXES] else None,
        state=np.stack(states),
        action=np.stack(labels),
        executed_action=np.stack(executed),
        instruction=instruction,
        task=task,
        split=split,
        seed=seed,
        success=success,
        **prompt,
    )
    return Rollout(episode, success, len(labels), time.perf_counter() - t0)


def replay(env: Any, episode: Episode, object_pixels: bool | None = None) -> Episode:
    """Re-run a stored episode: reset with its seed, step its executed actions.

    Returns the episode as re-observed (labels from the oracle at each replayed state); a
    deterministic env reproduces the stored frames and states exactly. `object_pixels`:
    record each frame's object pixels (TabletopEnv.object_pixels); None: when the stored
    episode has them (True adds them to an episode collected without them). Masks and object
    boxes come from the env's observations: an env made with background_mask / object_boxes
    re-observes them (and adds them to an episode collected without them).
    """
    if object_pixels is None:
        object_pixels = episode.object_pixels is not None
    obs, _ = env.reset(seed=episode.seed)
    prompt = prompt_fields(env, obs)
    frames, wrist, masks, boxes, states, labels, pixels = [], [], [], [], [], [], []
    for t, act in enumerate(episode.executed_action):
        frames.append(obs[IMAGE])
        if WRIST_IMAGE in obs:
            wrist.append(obs[WRIST_IMAGE])
        if BACKGROUND_MASK in obs:
            masks.append(obs[BACKGROUND_MASK])
        if OBJECT_BOXES in obs:
            boxes.append(obs[OBJECT_BOXES])
        if object_pixels:
            pixels.append(env.unwrapped.object_pixels())
        states.append(np.asarray(obs[STATE], dtype=np.float32))
        labels.append(np.asarray(env.unwrapped.oracle_action(), dtype=np.float32))
        obs, _, terminated, truncated, info = env.step(act)
        if (terminated or truncated) and t != len(episode) - 1:
            raise ValueError(f"replay of seed {episode.seed} ended at step {t + 1}; the "
                             f"stored episode has {len(episode)} steps")
    return Episode(
        image=np.stack(frames), wrist_image=np.stack(wrist) if wrist else None,
        background_mask=np.stack(masks) if masks else None,
        object_pixels=np.stack(pixels) if object_pixels else None,
        object_boxes=np.stack(boxes) if boxes else None,
        state=np.stack(states), action=np.stack(labels),
        executed_action=episode.executed_action, instruction=obs[INSTRUCTION],
        task=episode.task, split=episode.split, seed=episode.seed,
        success=bool(info["is_success"]), **prompt,
    )


def prompt_fields(env: Any, obs: dict[str, Any]) -> dict[str, Any]:
    """The Episode's prompt_images and prompt_words from an observation of the episode (the
    crops are constant over it) and the env; none when the env shows no visual prompts."""
    if PROMPT_IMAGES not in obs:
        return {}
    return {"prompt_images": np.asarray(obs[PROMPT_IMAGES], dtype=np.uint8),
            "prompt_words": tuple(env.unwrapped.prompt_words)}


# ----------------------------------------------------------------------------- workers


def env_factory(cfg: CollectConfig) -> Callable[[str], Any]:
    """Build one env per task (lazily imported: the store never needs pybullet)."""
    import envs

    def make(task: str) -> Any:
        return envs.make_env(task=task, split=cfg.split, image_size=cfg.image_size,
                             wrist_camera=cfg.wrist_camera,
                             background_mask=cfg.background_mask,
                             object_boxes=cfg.object_boxes, render_mode="rgb_array",
                             max_steps=cfg.max_steps,
                             split_overrides=cfg.env_split_overrides,
                             physics=cfg.physics)

    return make


def store_info(cfg: CollectConfig, describes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Shard info: the env's shared describe() fields, per-task describe(), collection."""
    first = next(iter(describes.values()))
    for task, d in describes.items():
        for key in SHARED_DESCRIBE_KEYS:
            if d.get(key) != first.get(key):
                raise ValueError(
                    f"task {task!r} has describe()[{key!r}]={d.get(key)!r} but "
                    f"{next(iter(describes))!r} has {first.get(key)!r}; one store needs one "
                    "camera, renderer and action spec"
                )
    info = {k: first[k] for k in SHARED_DESCRIBE_KEYS if k in first}
    info["env_by_task"] = describes
    info["seed_ranges"] = {"collect": [COLLECT_SEED_START, EVAL_SEED_START],
                           "eval": [EVAL_SEED_START, None]}
    info["collection"] = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("output", "progress")},
        "label": "oracle_action (clean)",
        "executed": "label + N(0, noise_std) on noise_dims, clipped to the action bounds"
                    + ("; in a grasp_faults share of grasping episodes the gripper is "
                       "overridden for grasp_fault_steps steps (envs/faults.py)"
                       if cfg.grasp_faults > 0 else ""),
    }
    return info


@dataclass
class WorkerResult:
    global_worker: int
    kept: int = 0
    attempts: int = 0
    successes: int = 0
    steps: int = 0
    rollout_s: float = 0.0  # time in env reset/step/oracle (rendering included)
    write_s: float = 0.0  # time in the store (compression, checksums, commits)
    cpu_s: float = 0.0  # CPU time of the worker's loop (robust to a shared machine)
    gave_up: bool = False


@dataclass
class WorkerFailed:
    """A worker's exception, sent to the parent so the error says what went wrong."""

    global_worker: int
    traceback: str


@dataclass
class Progress:
    """One message per finished attempt, worker -> parent (for the progress bar)."""

    global_worker: int
    success: bool
    kept: bool
    steps: int


def prompt_image_size(env: Any) -> int | None:
    """S of the env's visual prompt crops (its observation space), None without them."""
    spaces = getattr(env.observation_space, "spaces", {})
    return int(spaces[PROMPT_IMAGES].shape[1]) if PROMPT_IMAGES in spaces else None


def run_worker(cfg: CollectConfig, global_worker: int, quota: int, skip: set[int],
               report: Callable[[Progress], None] | None = None) -> WorkerResult:
    """Collect until `quota` episodes are kept in shard `global_worker` (or give up)."""
    result = WorkerResult(global_worker)
    if quota <= 0:
        return result
    cpu0 = time.process_time()
    make = env_factory(cfg)
    envs_by_task = {t: make(t) for t in cfg.tasks}
    try:
        describes = {t: e.unwrapped.describe() for t, e in envs_by_task.items()}
        info = store_info(cfg, describes)
        first = next(iter(describes.values()))
        image_keys = [IMAGE] + ([WRIST_IMAGE] if first.get("wrist_camera") else [])
        writer = ShardWriter(
            Path(cfg.output) / shard_name(global_worker), info=info,
            image_shape=first["image_shape"], image_keys=image_keys,
            chunk_frames=cfg.chunk_frames,
            mask_keys=[BACKGROUND_MASK] if cfg.background_mask else [],
            privileged_keys=[OBJECT_PIXELS] if cfg.object_pixels else [],
            observation_keys=[OBJECT_BOXES] if cfg.object_boxes else [],
            prompt_image_size=prompt_image_size(next(iter(envs_by_task.values()))),
        )
        limit = int(cfg.max_attempts_factor * quota) + 10
        for seed, task in worker_schedule(cfg, global_worker):
            if result.kept >= quota:
                break
            if result.attempts >= limit:
                result.gave_up = True
                break
            if seed in skip:
                continue
            ro = rollout(envs_by_task[task], seed, task, cfg.split, cfg.noise_std,
                         cfg.noise_dims, draw_fault(cfg, seed, task), cfg.object_pixels)
            keep = ro.success or cfg.keep_failures
            t0 = time.perf_counter()
            if keep:
                writer.append(ro.episode)
                result.kept += 1
            else:
                writer.reject(seed)
            result.write_s += time.perf_counter() - t0
            result.rollout_s += ro.seconds
            result.attempts += 1
            result.successes += int(ro.success)
            result.steps += ro.steps
            if report is not None:
                report(Progress(global_worker, ro.success, keep, ro.steps))
        writer.close()
    finally:
        for e in envs_by_task.values():
            e.close()
    result.cpu_s = time.process_time() - cpu0
    return result


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux prctl).

    Without it, killing the collection run (SIGKILL cannot be caught) would leave workers
    writing on as orphans while a restarted run opens the same shards.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the shard lock still refuses a second writer
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(cfg: CollectConfig, global_worker: int, quota: int, skip: set[int],
                 queue: Any, parent_pid: int) -> None:
    """Process entry: one torch/BLAS thread (2-core machines: oversubscribed threads ran 17x
    slower, docs/experiments/2026-11-28-prototype.md)."""
    import sys

    _die_with_parent(parent_pid)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    try:
        result = run_worker(cfg, global_worker, quota, skip, report=queue.put)
    except BaseException:
        queue.put(WorkerFailed(global_worker, traceback.format_exc()))
        raise
    queue.put(result)


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned children read thread-pool sizes from the environment at import time."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------- driver


@dataclass
class CollectReport:
    """What one collection run did (this shard_index's workers only)."""

    output: str
    existing: int  # kept episodes in the store before the run
    kept: int
    attempts: int
    successes: int
    steps: int
    seconds: float
    workers: list[WorkerResult] = field(default_factory=list)

    @property
    def episodes_per_s(self) -> float:
        return self.attempts / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


def existing_state(output: Path) -> tuple[int, set[int]]:
    """Kept episodes already in the store and every seed it has tried (kept or rejected)."""
    if not output.exists() or not list_shards(output):
        return 0, set()
    store = EpisodeStore(output)
    return store.num_episodes, store.attempted_seeds()


def collect(cfg: CollectConfig) -> CollectReport:
    """Collect until the store at cfg.output holds cfg.episodes kept episodes."""
    from tqdm import tqdm

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    existing, skip = existing_state(out)
    share = quotas(cfg.episodes - existing, cfg.total_workers)
    local = [(cfg.global_worker(w), share[cfg.global_worker(w)]) for w in range(cfg.workers)]
    todo = sum(q for _, q in local)
    report = CollectReport(str(out), existing, 0, 0, 0, 0, 0.0)
    t0 = time.perf_counter()
    bar = tqdm(total=todo, desc=f"collect {out.name}", unit="ep", disable=not cfg.progress,
               dynamic_ncols=True)

    def on_progress(msg: Progress) -> None:
        report.attempts += 1
        report.successes += int(msg.success)
        report.steps += msg.steps
        report.kept += int(msg.kept)
        bar.update(int(msg.kept))
        elapsed = time.perf_counter() - t0
        bar.set_postfix(ep_s=f"{report.attempts / elapsed:.2f}",
                        success=f"{report.success_rate:.0%}", tried=report.attempts)

    try:
        if todo == 0:  # the store already holds cfg.episodes
            report.workers = []
        elif cfg.workers == 1:
            g, q = local[0]
            report.workers.append(run_worker(cfg, g, q, skip, report=on_progress))
        else:
            report.workers = _run_processes(cfg, local, skip, on_progress)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _run_processes(cfg: CollectConfig, local: list[tuple[int, int]], skip: set[int],
                   on_progress: Callable[[Progress], None]) -> list[WorkerResult]:
    # 'spawn': a fresh interpreter per worker, no forked pybullet or thread state.
    if mp.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
        # Inside a joblib (loky) job of a hydra multirun the default method is 'loky', which
        # a spawned child cannot resolve when it re-imports its parent's settings.
        mp.set_start_method("spawn", force=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    with _single_threaded_children():
        for g, q in local:
            proc = ctx.Process(target=_worker_main, args=(cfg, g, q, skip, queue, os.getpid()),
                               name=f"collect-{shard_name(g)}", daemon=True)
            proc.start()
            procs.append(proc)
    results: list[WorkerResult] = []
    try:
        while len(results) < len(procs):
            try:
                msg = queue.get(timeout=1.0)
            except Exception:  # queue.Empty: check that no worker died silently
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"collection worker {dead[0].name} exited with code "
                        f"{dead[0].exitcode}; its shard keeps every episode committed so far"
                    ) from None
                continue
            if isinstance(msg, Progress):
                on_progress(msg)
            elif isinstance(msg, WorkerFailed):
                raise RuntimeError(
                    f"collection worker {shard_name(msg.global_worker)} failed; its shard "
                    f"keeps every episode committed so far:\n{msg.traceback}"
                )
            else:
                results.append(msg)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return sorted(results, key=lambda r: r.global_worker)
