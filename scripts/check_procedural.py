"""The scripted oracle on the procedural training shapes (envs/shapes.py), per task and shape.

    python scripts/check_procedural.py --seeds 50            # every task, seeds 0..49
    python scripts/check_procedural.py --tasks pick --seeds 10 --json out.json

Each episode's target is one of the shapes (stack: the stackable ones; its base, like the
distractors, comes from the seen objects and the shapes, `extra_objects=[procedural]`), so
the table says whether a collection with the shapes gets clean demonstrations. One process,
rendering skipped (images never feed the oracle).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from envs import TASKS  # noqa: E402
from envs.oracle_check import run_oracle_episode  # noqa: E402
from envs.shapes import FAMILY, PROCEDURAL_OBJECTS  # noqa: E402
from envs.splits import OBJECT_COLOURS  # noqa: E402
from envs.tabletop import TabletopEnv  # noqa: E402


def overrides(task: str) -> dict:
    """Targets: the shapes a task may act on, in every colour; the rest: seen + shapes."""
    names = [n for n, d in PROCEDURAL_OBJECTS.items() if task != "stack" or d.stackable]
    return {"extra_objects": [FAMILY],
            "target_combos": [list(c) for c in itertools.product(OBJECT_COLOURS, names)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1 per task")
    ap.add_argument("--json", default="", help="write the per-episode results here")
    args = ap.parse_args()
    rows, episodes = [], []
    for task in args.tasks:
        env = TabletopEnv(task=task, split="seen", skip_render=True,
                          split_overrides=overrides(task))
        by_shape: dict[str, list[bool]] = defaultdict(list)
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            result = run_oracle_episode(env, seed)
            shape = env.task.target.definition.name
            by_shape[shape].append(result.success)
            episodes.append({"task": task, "seed": seed, "shape": shape,
                             "success": result.success, "steps": result.steps,
                             "instruction": result.instruction})
        env.close()
        ok = sum(sum(v) for v in by_shape.values())
        rows.append((task, ok, args.seeds, dict(by_shape), time.perf_counter() - t0))
    print("| task | oracle success | failures by shape (failed/episodes) |")
    print("|---|---|---|")
    for task, ok, n, by_shape, _ in rows:
        fails = ", ".join(f"{s} {len(v) - sum(v)}/{len(v)}" for s, v in sorted(by_shape.items())
                          if len(v) > sum(v)) or "none"
        print(f"| {task} | {ok}/{n} ({ok / n:.0%}) | {fails} |")
    for task, _, _, by_shape, secs in rows:
        print(f"{task}: {secs:.0f} s; episodes per shape "
              + ", ".join(f"{s} {len(v)}" for s, v in sorted(by_shape.items())))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(episodes, indent=1))


if __name__ == "__main__":
    main()
