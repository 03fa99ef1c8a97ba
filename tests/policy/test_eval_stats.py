"""Wilson intervals, the episode plan (seeds, shards) and aggregates."""

from __future__ import annotations

import pytest

from envs.spec import COLLECT_SEED_START, EVAL_SEED_START
from policy.evaluation.episodes import plan_episodes, shard
from policy.evaluation.stats import Aggregate, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Reference values of the Wilson score interval (z = 1.96).
        (7, 10, 0.3968, 0.8922),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_matches_reference_values(k: int, n: int, low: float, high: float):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_is_whole_range_without_episodes_and_rejects_bad_counts():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes=5, n=3"):
        wilson_interval(5, 3)


def test_aggregate_label_shows_rate_interval_and_count():
    agg = Aggregate.of("oracle", "pick", "seen", [True] * 7 + [False] * 3)
    assert (agg.successes, agg.episodes, agg.success_rate) == (7, 10, 0.7)
    assert agg.label == "70% [40, 89] (n=10)"
    # only an exact 100% reads as 100%
    assert Aggregate.of("oracle", None, None, [True] * 298 + [False]).label.startswith("99.7% ")
    assert Aggregate.of("random", None, None, [True] + [False] * 299).label.startswith("0.3% ")


def test_seeds_depend_only_on_episode_index_and_start_past_collection():
    """Fails when episode j's seed is not seed_start + j (checked with seed_start + 2j)."""
    full = plan_episodes(["rt1", "oracle"], ["pick", "place"], ["seen", "distractors"], 3)
    only_pick = plan_episodes(["rt1"], ["pick"], ["distractors"], 3)
    seeds = {(e.policy, e.task, e.split, e.index): e.seed for e in full}
    for e in only_pick:
        assert seeds[(e.policy, e.task, e.split, e.index)] == e.seed
    # the oracle runs on exactly the checkpoint's seeds
    assert [e.seed for e in full if e.policy == "oracle"] == [
        e.seed for e in full if e.policy == "rt1"
    ]
    # every seed lies past the collection range, and the first is its start
    assert all(e.seed >= EVAL_SEED_START for e in full)
    assert min(e.seed for e in full) == EVAL_SEED_START
    assert {e.seed for e in full} == {EVAL_SEED_START + j for j in range(3)}
    with pytest.raises(ValueError, match="overlaps the collection seed range"):
        plan_episodes(["rt1"], ["pick"], ["seen"], 2, seed_start=COLLECT_SEED_START)


def test_shards_partition_the_plan():
    plan = plan_episodes(["rt1", "random"], ["pick", "place", "push"], ["seen", "backgrounds"], 5)
    parts = [shard(plan, i, 4) for i in range(4)]
    assert sorted(e for p in parts for e in p) == sorted(plan)
    assert len({e for p in parts for e in p}) == len(plan)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="shard_index must be in"):
        shard(plan, 4, 4)
