"""Success statistics for the zero-shot report: Wilson 95% intervals and aggregates.

A success rate from 10 or 20 episodes is a rough estimate, and a report that prints "70%"
without its uncertainty invites over-reading small differences between splits. Every rate
in eval_info.json, report.md and report.png therefore carries a Wilson score interval
(Wilson 1927; recommended over the normal approximation by Brown, Cai and DasGupta 2001
because it stays inside [0, 1] and keeps its coverage at 0 or n successes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TypeVar

# z for a two-sided 95% interval: the 97.5th percentile of the standard normal.
Z_95 = 1.959963984540054

Row = TypeVar("Row")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion, as (low, high) in [0, 1].

    With n == 0 nothing is known, so the interval is the whole of [0, 1].
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n; got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # Rounding can put the bounds a hair outside [0, 1] or off the exact 0/1 at the edges.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Aggregate:
    """Success over a group of episodes (one policy; a task, a split, both or neither)."""

    policy: str
    task: str | None  # None: all tasks
    split: str | None  # None: all splits
    successes: int
    episodes: int
    success_rate: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(
        cls, policy: str, task: str | None, split: str | None, outcomes: Iterable[bool]
    ) -> Aggregate:
        flags = [bool(o) for o in outcomes]
        n, k = len(flags), sum(flags)
        low, high = wilson_interval(k, n)
        rate = k / n if n else 0.0
        return cls(policy, task, split, k, n, rate, low, high)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """`62% [41, 79] (n=20)`: a rate with its interval, for tables."""
        if self.episodes == 0:
            return "-"
        rate = 100 * self.success_rate
        text = f"{rate:.0f}"
        if text in ("0", "100") and 0 < self.successes < self.episodes:
            # 298 of 299 is not "100%": keep a decimal so only exact rates read as 0 or 100.
            text = f"{rate:.1f}"
        return (
            f"{text}% [{100 * self.ci_low:.0f}, {100 * self.ci_high:.0f}] (n={self.episodes})"
        )


def aggregate_groups(
    rows: Iterable[Row],
    policy_of: Callable[[Row], str],
    task_of: Callable[[Row], str],
    split_of: Callable[[Row], str],
    success_of: Callable[[Row], bool],
) -> list[Aggregate]:
    """Aggregates per (policy, task, split), per (policy, task), per (policy, split), per policy.

    The order is deterministic (policies, tasks and splits in first-seen order of `rows`), so
    the same rows always serialise to the same JSON.
    """
    rows = list(rows)
    policies = list(dict.fromkeys(policy_of(r) for r in rows))
    tasks = list(dict.fromkeys(task_of(r) for r in rows))
    splits = list(dict.fromkeys(split_of(r) for r in rows))
    out: list[Aggregate] = []
    for pol in policies:
        mine = [r for r in rows if policy_of(r) == pol]
        for task in tasks:
            for split in splits:
                cell = [success_of(r) for r in mine if task_of(r) == task and split_of(r) == split]
                if cell:
                    out.append(Aggregate.of(pol, task, split, cell))
        for task in tasks:
            cell = [success_of(r) for r in mine if task_of(r) == task]
            if cell:
                out.append(Aggregate.of(pol, task, None, cell))
        for split in splits:
            cell = [success_of(r) for r in mine if split_of(r) == split]
            if cell:
                out.append(Aggregate.of(pol, None, split, cell))
        out.append(Aggregate.of(pol, None, None, [success_of(r) for r in mine]))
    return out
