"""Physics and IK settings of the tabletop: substeps per control step, solver, IK effort.

The defaults are the settings every store and checkpoint so far was made with (240 Hz
physics, 24 substeps per 10 Hz control step, 20 solver iterations, IK with 50 iterations
to a 1e-4 residual). Other values give other episodes from the same seed: an env built
with them reports them in `describe()["physics"]`, and a store collected with them records
them in its info. Evaluation builds envs with the defaults, so a checkpoint is always
evaluated under the physics it was trained with (docs/experiments/2026-11-30-env-speed.md
measures what cheaper settings save and what they cost the oracles).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from envs.spec import CONTROL_HZ, PHYSICS_HZ


@dataclass(frozen=True)
class PhysicsConfig:
    """How one control step is simulated; physics_hz = CONTROL_HZ * substeps."""

    substeps: int = PHYSICS_HZ // CONTROL_HZ  # physics steps per action (each 1/physics_hz s)
    solver_iterations: int = 20  # bullet's default is 50; the joint motors dominate a substep
    ik_iterations: int = 50  # calculateInverseKinematics' maxNumIterations per control step
    ik_residual: float = 1e-4  # m: IK stops once the grasp point is this close to its target

    def __post_init__(self) -> None:
        for name in ("substeps", "solver_iterations", "ik_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"physics {name}={value!r} must be an integer >= 1")
        if isinstance(self.ik_residual, bool) or not isinstance(self.ik_residual, int | float) \
                or not self.ik_residual > 0:
            raise ValueError(f"physics ik_residual={self.ik_residual!r} must be a number > 0 (m)")

    @property
    def physics_hz(self) -> int:
        return CONTROL_HZ * self.substeps

    @property
    def time_step(self) -> float:
        """Seconds per physics step."""
        return 1.0 / self.physics_hz

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "physics_hz": self.physics_hz}

    @classmethod
    def from_value(cls, value: PhysicsConfig | Mapping[str, Any] | None) -> PhysicsConfig:
        """A config from None (the defaults), a PhysicsConfig, or a mapping of its fields
        (a hydra DictConfig or a describe()["physics"]; its derived physics_hz is checked)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"physics={value!r}: expected a PhysicsConfig, a mapping or None")
        data = dict(value)
        hz = data.pop("physics_hz", None)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown physics setting(s) {unknown}; expected {sorted(names)}")
        config = cls(**data)
        if hz is not None and hz != config.physics_hz:
            raise ValueError(f"physics_hz={hz!r} does not match substeps={config.substeps} "
                             f"at {CONTROL_HZ} Hz control (physics_hz={config.physics_hz})")
        return config
