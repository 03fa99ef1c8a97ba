"""The evaluation plan: which episodes run, with which seed, and how shards split them.

Seeds are a pure function of the episode index: episode j of every (task, split) cell runs
with seed `seed_start + j`. So
- the seed never depends on the number of workers, the order episodes finish in, the shard
  layout, or which other tasks and splits were requested (evaluating only `pick` gives the
  very same `pick` episodes as the full suite);
- the oracle, the baselines and the checkpoint see exactly the same scenes (a paired
  comparison: the oracle row is an upper bound on *these* scenes, not on similar ones);
- evaluation seeds start at `envs.spec.EVAL_SEED_START`, disjoint from collection's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from envs.spec import EVAL_SEED_START


@dataclass(frozen=True, order=True)
class EpisodeSpec:
    """One episode to run: who acts, in which task and split, and from which seed."""

    policy: str
    task: str
    split: str
    index: int  # j: the episode's position within its (task, split) cell
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def episode_seed(index: int, seed_start: int = EVAL_SEED_START) -> int:
    """The seed of episode `index` of any (task, split) cell."""
    if index < 0:
        raise ValueError(f"episode index must be >= 0; got {index}")
    return seed_start + index


def plan_episodes(
    policies: Sequence[str],
    tasks: Sequence[str],
    splits: Sequence[str],
    episodes: int,
    seed_start: int = EVAL_SEED_START,
) -> list[EpisodeSpec]:
    """Every (policy, task, split, j) episode, in a fixed order: policy, task, split, j."""
    if episodes < 1:
        raise ValueError(f"episodes per (task, split) must be >= 1; got {episodes}")
    for name, values in (("policies", policies), ("tasks", tasks), ("splits", splits)):
        if not values:
            raise ValueError(f"no {name} to evaluate; got {list(values)!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate {name}: {list(values)!r}")
    if seed_start < EVAL_SEED_START:
        # Seeds below EVAL_SEED_START belong to collection: evaluating on them would score
        # the policy on scenes it may have been trained on.
        raise ValueError(
            f"seed_start={seed_start} overlaps the collection seed range; expected >= "
            f"envs.spec.EVAL_SEED_START={EVAL_SEED_START}"
        )
    return [
        EpisodeSpec(pol, task, split, j, episode_seed(j, seed_start))
        for pol in policies
        for task in tasks
        for split in splits
        for j in range(episodes)
    ]


def shard(plan: Sequence[EpisodeSpec], shard_index: int, num_shards: int) -> list[EpisodeSpec]:
    """The episodes of shard `shard_index` of `num_shards` (round-robin, so shards balance
    across policies, tasks and splits; the union of all shards is the whole plan)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1; got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}); got {shard_index}")
    return list(plan[shard_index::num_shards])
