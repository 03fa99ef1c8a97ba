"""What scripts/evaluate.py does with its composed config: evaluate, or merge shards.

Kept here, not in the script, so it is importable and tested (hydra's compose API) and the
script stays a thin entry point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from policy.evaluation.report import write_report
from policy.evaluation.results import EVAL_INFO, EvalReport, VideoRecord, merge_reports


def find_shard_dirs(paths: str | Sequence[str]) -> list[Path]:
    """Shard run directories: each path is one (holding eval_info.json) or a directory whose
    subdirectories are (a hydra multirun sweep directory)."""
    items = [paths] if isinstance(paths, str) else list(paths)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if (p / EVAL_INFO).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(d for d in p.iterdir() if (d / EVAL_INFO).is_file())
        else:
            raise FileNotFoundError(f"no shard report at {p}; expected a directory")
    if not found:
        raise FileNotFoundError(f"no {EVAL_INFO} under {items}")
    return found


def merge_dirs(paths: str | Sequence[str], out_dir: str | Path) -> EvalReport:
    """Merge the shard reports under `paths` into one report written to `out_dir`.

    Each shard chose its videos among its own episodes, so the merged report lists every
    shard's videos; their paths are rewritten relative to `out_dir` (the files stay in the
    shard directories)."""
    dirs = find_shard_dirs(paths)
    out = Path(out_dir).resolve()
    reports = []
    for d in dirs:
        rep = EvalReport.load(d)
        for i, v in enumerate(rep.videos):
            rel = Path(os.path.relpath((d / v.path).resolve(), out)).as_posix()
            rep.videos[i] = VideoRecord(**{**v.to_dict(), "path": rel})
        reports.append(rep)
    merged = merge_reports(reports)
    merged.timing["merged_from"] = [str(d) for d in dirs]
    write_report(merged, out)
    return merged


def save_config(out_dir: str | Path, config: dict) -> None:
    """The resolved config beside the report, so a report says how it was made."""
    path = Path(out_dir) / "eval_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
