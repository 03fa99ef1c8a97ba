"""Who acts in an evaluation episode: the checkpoint, the scripted oracle, or a baseline.

Every actor has the narrow Policy API of the rollout loop (`reset(instruction)`,
`select_action(observation) -> float32 action`), so the oracle and the baselines run through
exactly the same loop, env and seeds as the checkpoint.
- `oracle`: the task's scripted expert, `env.unwrapped.oracle_action()` (privileged state):
  the upper bound on these scenes.
- `random`: uniform actions within the action spec's bounds, from a generator seeded by the
  episode's seed (so the row is reproducible). Note that a uniform terminate flag ends an
  episode on the first step with probability 1/2: this is the honest "knows nothing" floor.
- `noop`: zero motion, gripper open, never terminates: runs to the step limit, so it scores
  exactly the scenes that start solved (a check that the tasks are not trivially true).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from envs.spec import ActionSpec

BASELINES = ("oracle", "random", "noop")


class Actor(Protocol):
    """What the rollout loop needs from anything that acts."""

    def reset(self, instruction: str) -> None: ...

    def select_action(self, observation: dict[str, Any]) -> np.ndarray: ...


class OracleActor:
    """The task's scripted expert, reading privileged state from the env."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def reset(self, instruction: str) -> None:
        pass  # the oracle reads the task's goal from the simulator, not from the text

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.env.unwrapped.oracle_action(), dtype=np.float32)


class RandomActor:
    """Uniform actions within the spec's bounds, from a seeded generator."""

    def __init__(self, spec: ActionSpec, seed: int) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)

    def reset(self, instruction: str) -> None:
        pass

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        return self.rng.uniform(self.spec.low, self.spec.high).astype(np.float32)


class NoopActor:
    """No motion, gripper open, never terminates (zero clipped into each dim's bounds)."""

    def __init__(self, spec: ActionSpec) -> None:
        self.action = spec.clip(np.zeros(len(spec), dtype=np.float32))
        if "terminate" in spec.names and self.action[spec.index("terminate")] > 0:
            raise ValueError(f"noop needs terminate <= 0 to be allowed; spec is {spec.to_dict()}")

    def reset(self, instruction: str) -> None:
        pass

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        return self.action.copy()


def make_baseline(name: str, env: Any, spec: ActionSpec, seed: int) -> Actor:
    """A fresh baseline actor for one episode (random is seeded by the episode's seed)."""
    if name == "oracle":
        return OracleActor(env)
    if name == "random":
        return RandomActor(spec, seed)
    if name == "noop":
        return NoopActor(spec)
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
