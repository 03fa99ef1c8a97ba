"""The worker pool of an evaluation: who runs episodes, in this process or in spawned ones.

Each worker sets one torch thread (two processes with two threads each on two cores ran 17x
slower: docs/experiments/2026-11-28-prototype.md), loads the checkpoint itself (nothing big
crosses a pipe), and keeps one env per (task, split, rendered or not). `EpisodePool.map`
returns results in job order, whatever order the workers finish in.
"""

from __future__ import annotations

import multiprocessing as mp
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.spec import DEFAULT_ACTION_SPEC, ActionSpec
from policy.evaluation.actors import make_baseline
from policy.evaluation.compat import check_compatible
from policy.evaluation.episodes import EpisodeSpec
from policy.evaluation.results import EpisodeResult
from policy.evaluation.rollout import Rollout, run_episode
from policy.evaluation.video import write_video


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to build its envs and load its policy: small and picklable."""

    checkpoint: str | None  # None: baselines only
    policy_name: str
    env_kwargs: dict = field(default_factory=dict)
    out_dir: str = "."
    fps: int = 10


def load_policy(checkpoint: str) -> Any:
    """A checkpoint directory as a policy (imported lazily: baseline workers skip torch)."""
    from policy import Policy

    return Policy.from_pretrained(checkpoint)


class EpisodeRunner:
    """Runs the episodes of one worker: envs cached, the policy loaded once."""

    def __init__(self, setup: WorkerSetup, policy: Any = None) -> None:
        self.setup = setup
        self.policy = policy
        if policy is None and setup.checkpoint is not None:
            self.policy = load_policy(setup.checkpoint)
        self._envs: dict[tuple[str, str, bool], Any] = {}

    def env(self, task: str, split: str, render: bool = True) -> Any:
        """The worker's env for (task, split); `render=False` gives a render-free one (black
        images) for baselines, which never look at pixels: rendering is most of a step's
        cost (docs/experiments/2026-11-28-prototype.md) and physics does not depend on it."""
        key = (task, split, render)
        if key not in self._envs:
            import envs

            env = envs.make_env(task=task, split=split, render_mode="rgb_array",
                                skip_render=not render, **self.setup.env_kwargs)
            if self.policy is not None and render:
                check_compatible(self.policy, env.unwrapped.describe(),
                                 where=f"task={task!r}, split={split!r}")
            self._envs[key] = env
        return self._envs[key]

    def _is_policy(self, spec: EpisodeSpec) -> bool:
        return spec.policy == self.setup.policy_name and self.policy is not None

    def _actor(self, spec: EpisodeSpec, env: Any) -> Any:
        if self._is_policy(spec):
            return self.policy
        desc = env.unwrapped.describe()
        action_spec = (ActionSpec.from_dict(desc["action_spec"]) if "action_spec" in desc
                       else DEFAULT_ACTION_SPEC)
        return make_baseline(spec.policy, env, action_spec, spec.seed)

    def run(self, spec: EpisodeSpec, video: bool = False) -> tuple[EpisodeResult, str | None]:
        env = self.env(spec.task, spec.split, render=video or self._is_policy(spec))
        actor = self._actor(spec, env)
        if self._is_policy(spec):
            rollout = self._run_policy(env, actor, spec, video)
        else:
            rollout = run_episode(env, actor, spec, record=video)
        path = None
        if video:
            r = rollout.result
            outcome = "success" if r.success else "failure"
            rel = Path("videos") / r.policy / r.split / f"{r.task}_seed{r.seed}_{outcome}.mp4"
            write_video(rollout.frames, Path(self.setup.out_dir) / rel, caption=r.instruction,
                        footer=f"{outcome} | {r.policy} | {r.task} / {r.split} | seed {r.seed}",
                        fps=self.setup.fps)
            path = rel.as_posix()
        return rollout.result, path

    @staticmethod
    def _run_policy(env: Any, policy: Any, spec: EpisodeSpec, video: bool) -> Rollout:
        import torch

        is_module = isinstance(policy, torch.nn.Module)
        was_training = is_module and policy.training
        threads = torch.get_num_threads()
        # fork_rng: a policy that samples is seeded by the episode, without disturbing the
        # caller's RNG (training calls this between its own steps).
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(spec.seed)
            # One thread, as in the workers: a different thread count can change the order
            # of float reductions, flip a near-tie argmax and so the whole trajectory.
            torch.set_num_threads(1)
            if is_module:
                policy.eval()
            try:
                return run_episode(env, policy, spec, record=video)
            finally:
                torch.set_num_threads(threads)
                if was_training:
                    policy.train()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


# One runner per worker process, built by the pool's initializer.
_RUNNER: EpisodeRunner | None = None


def _init_worker(setup: WorkerSetup) -> None:
    if setup.checkpoint is not None:  # baseline-only workers never import torch
        import torch

        torch.set_num_threads(1)
    global _RUNNER
    _RUNNER = EpisodeRunner(setup)


def _run_in_worker(job: tuple[EpisodeSpec, bool]) -> tuple[EpisodeResult, str | None]:
    assert _RUNNER is not None, "worker used before _init_worker"
    return _RUNNER.run(*job)


class EpisodePool:
    """Maps jobs over the in-process runner or a lazily started spawn pool."""

    def __init__(self, local: EpisodeRunner, setup: WorkerSetup, workers: int,
                 stack: ExitStack) -> None:
        self.local, self.setup, self.workers, self.stack = local, setup, workers, stack
        self.pool: Any = None
        self._failed = False

    def map(self, jobs: list[tuple[EpisodeSpec, bool]], progress: bool,
            desc: str) -> list[tuple[EpisodeResult, str | None]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="ep", disable=not progress)
        with bar:
            if self.workers == 0:
                out = []
                for job in jobs:
                    out.append(self.local.run(*job))
                    bar.update()
                return out
            if self.pool is None:
                # spawn: a fork would copy the parent's torch threads and PyBullet clients.
                ctx = mp.get_context("spawn")
                self.pool = ctx.Pool(self.workers, initializer=_init_worker,
                                     initargs=(self.setup,))
                self.stack.callback(self._shutdown)
            results: dict[int, tuple[EpisodeResult, str | None]] = {}
            try:
                for i, res in self.pool.imap_unordered(_indexed, list(enumerate(jobs))):
                    results[i] = res
                    bar.update()
            except BaseException:
                self._failed = True
                raise
            return [results[i] for i in range(len(jobs))]

    def _shutdown(self) -> None:
        # close + join lets workers exit normally (closing their PyBullet clients and the
        # text encoder's semaphores); terminate only when something went wrong.
        if self._failed:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def _indexed(item: tuple[int, tuple[EpisodeSpec, bool]]) -> tuple[int, Any]:
    i, job = item
    return i, _run_in_worker(job)
