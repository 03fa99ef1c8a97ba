"""Importing a policy's configuration must not load the simulator.

Policy configs import envs.spec for the action layout; Python runs envs/__init__.py first,
which once imported the tabletop env and with it PyBullet (~140 ms, and a simulator that a
training config or a robot-side server never uses). Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import sys
    {imports}
    sim = sorted(m for m in sys.modules
                 if m.split(".")[0] in ("pybullet", "pybullet_data")
                 or m in ("envs.tabletop", "envs.catalog", "envs.tasks"))
    print(",".join(sim))
""")


@pytest.mark.parametrize("imports", [
    "from policy.rt1 import RT1Config",
    "from policy.gato import GatoConfig",
    "from policy.train.config import TrainRunConfig",
    "from policy.evaluation.config import EvalConfig",
    "import envs, envs.spec, envs.store",
])
def test_config_import_loads_no_simulator(imports: str) -> None:
    out = subprocess.run([sys.executable, "-c", CHECK.format(imports=imports)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`{imports}` loaded simulator modules: {out}"
