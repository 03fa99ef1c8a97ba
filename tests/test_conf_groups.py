"""Every hydra config group in conf/ is in some config's defaults list.

A group that no entry point composes is dead configuration that drifts from the code it
claims to describe (conf/task/ and conf/split/ once were: envs/tasks and envs/splits.py are
the sources of truth, and collection and evaluation name tasks and splits as plain fields).
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"


def groups_in_defaults() -> set[str]:
    """Group names that some defaults list in conf/ selects (`policy: rt1`,
    `policy@models.rt1: rt1`, `override hydra/launcher: ...`)."""
    used: set[str] = set()
    for path in CONF.rglob("*.yaml"):
        doc = yaml.safe_load(path.read_text()) or {}
        for entry in doc.get("defaults", []) if isinstance(doc, dict) else []:
            if isinstance(entry, dict):
                for key in entry:
                    used.add(key.removeprefix("override ").split("@")[0].strip())
    return used


def test_every_config_group_is_composed_by_some_config() -> None:
    groups = {d.name for d in CONF.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    assert groups, f"no config groups under {CONF}"
    unused = sorted(groups - groups_in_defaults())
    assert unused == [], f"config groups in no defaults list: {unused}"
