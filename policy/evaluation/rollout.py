"""One evaluation episode: reset from the episode's seed, act until the episode ends.

The episode ends when the actor's terminate flag fires (env `terminated`) or at the env's
step limit (`truncated`); success is the simulator's `info["is_success"]` at that last step,
so a policy that reaches the goal and then knocks the object off does not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.spec import IMAGE, INSTRUCTION
from policy.evaluation.actors import Actor
from policy.evaluation.episodes import EpisodeSpec
from policy.evaluation.results import EpisodeResult

# A guard against an env without a step limit: no task here needs more than a few hundred
# control steps (the oracles take 15-30: docs/experiments/2026-11-28-env-suite.md), so this
# only ever fires on a bug.
MAX_EPISODE_STEPS = 10_000


@dataclass
class Rollout:
    result: EpisodeResult
    frames: list[np.ndarray] = field(default_factory=list)  # only when recording


def run_episode(env: Any, actor: Actor, spec: EpisodeSpec, record: bool = False) -> Rollout:
    """Run `actor` for one episode of `env` from `spec.seed`; keep frames when `record`.

    A scene the env cannot build from this seed (its reset raises ValueError, e.g. objects
    that do not fit on the table) is returned as a row with `error` set rather than raised:
    it is the env's fault, not the policy's, and the same seed fails for every policy, so
    leaving it out of the aggregates keeps the comparison paired. Errors while acting are
    raised as usual.
    """
    try:
        obs, info = env.reset(seed=spec.seed)
    except ValueError as err:
        return Rollout(EpisodeResult(
            policy=spec.policy, task=spec.task, split=spec.split, index=spec.index,
            seed=spec.seed, instruction="", success=False, steps=0, episode_return=0.0,
            ended_by="error", error=f"env.reset(seed={spec.seed}) failed: {err}"))
    instruction = str(obs[INSTRUCTION])
    actor.reset(instruction)
    frames = [np.asarray(obs[IMAGE]).copy()] if record else []
    total, steps, ended_by, furthest = 0.0, 0, "", 0
    while not ended_by:
        action = actor.select_action(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        furthest = max(furthest, int(info.get("milestone", 0)))
        if record:
            frames.append(np.asarray(obs[IMAGE]).copy())
        ended_by = end_reason(terminated, truncated)
        if not ended_by and steps >= MAX_EPISODE_STEPS:
            raise RuntimeError(
                f"episode {spec} ran {steps} steps without terminating or truncating; "
                "expected the env to truncate at its max_steps"
            )
    if "is_success" not in info:
        raise KeyError(f"env step info has no 'is_success'; keys are {sorted(info)}")
    result = EpisodeResult(
        policy=spec.policy,
        task=spec.task,
        split=spec.split,
        index=spec.index,
        seed=spec.seed,
        instruction=instruction,
        success=bool(info["is_success"]),
        steps=steps,
        episode_return=round(total, 6),
        ended_by=ended_by,
        furthest=milestone_name(env, furthest) if "milestone" in info else "",
        prompt_words=tuple(str(w) for w in getattr(env, "prompt_words", ())),
    )
    return Rollout(result, frames)


def end_reason(terminated: bool, truncated: bool) -> str:
    """Why a step ended the episode: "terminate" (the actor's flag), "step_limit" (the env
    truncated), or "" while it goes on."""
    if terminated:
        return "terminate"
    return "step_limit" if truncated else ""


def milestone_name(env: Any, reached: int) -> str:
    """"none" for 0, else the name of the `reached`-th of the task's milestones."""
    names = tuple(getattr(getattr(env, "task", None), "milestones", ()))
    if reached == 0:
        return "none"
    if not 1 <= reached <= len(names):
        raise ValueError(f"env reported milestone {reached}; its task has {len(names)} "
                         f"milestones {names}")
    return names[reached - 1]
