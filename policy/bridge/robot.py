"""A robot's control loop driven through the bridge, and a simulated robot to run it on.

`control_loop` is what runs on a robot computer: read the sensors, ask the server for an
action, command the arm, sleep to the next tick of a fixed-rate clock, and count the steps
that missed their tick. It talks to the hardware only through the four methods of `Robot`,
so integrating a real arm means writing one class:

    class MyArm:                       # satisfies the Robot protocol
        def start_episode(self) -> str:
            # home the arm, open the gripper, return the operator's instruction
        def observe(self) -> dict:
            # camera frame: uint8 (H, W, 3) RGB at the shape in bridge.metadata.observation
            # state: float32 (8,) in envs.spec.STATE_NAMES order (ee xyz in metres, ee
            #        quaternion xyzw, gripper width in metres), same frame as training
            # prompt_images: only for an instruction that shows objects by image ("pick up
            #        the {image}"): uint8 (n, S, S, 3) crops, the first one per slot in order
            #        (shape in bridge.metadata.prompt_images); sent once, with reset
        def command(self, action) -> None:
            # scale by the action spec's units (x/y/z: metres per unit, roll/pitch/yaw:
            # radians per unit), send an end-effector delta to the controller, set gripper
        def episode_status(self) -> tuple[bool, bool]:
            # (done, success): e.g. terminate flag, operator button, time limit

`SimRobot` is that class for the PyBullet env; scripts/robot.py runs it in its own process
against a server in another, which is the end-to-end proof of the bridge.

Like the client, this module does not import torch.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from . import protocol as P
from .client import ActionSpecMismatch, BridgeClient, BridgeTimeout


class Robot(Protocol):
    """The four calls the control loop makes to the hardware (or the simulator)."""

    def start_episode(self) -> str: ...

    def observe(self) -> dict[str, Any]: ...

    def command(self, action: np.ndarray) -> None: ...

    def episode_status(self) -> tuple[bool, bool]: ...


class SimRobot:
    """The PyBullet env (envs.make_env) behind the Robot protocol, one seed per episode."""

    def __init__(self, env: Any, seed_start: int) -> None:
        self.env = env
        self.next_seed = seed_start
        self.seed = seed_start
        self._obs: dict[str, Any] = {}
        self._done = False
        self._success = False

    def start_episode(self) -> str:
        self.seed = self.next_seed
        self.next_seed += 1
        self._obs, _ = self.env.reset(seed=self.seed)
        self._done, self._success = False, False
        return str(self._obs["instruction"])

    def observe(self) -> dict[str, Any]:
        # The env rendered this frame at the end of the previous step (or at reset).
        return self._obs

    def command(self, action: np.ndarray) -> None:
        self._obs, _, terminated, truncated, info = self.env.step(action)
        self._success = bool(info.get("is_success", False))
        self._done = bool(terminated or truncated)

    def episode_status(self) -> tuple[bool, bool]:
        return self._done, self._success


@dataclass
class EpisodeReport:
    """One episode as the robot saw it; times in milliseconds."""

    episode: int
    instruction: str
    success: bool
    steps: int
    late_steps: int  # steps whose work overran the control period
    timeouts: int  # steps without a reply in time (nothing was commanded)
    achieved_hz: float
    round_trip_ms_median: float
    round_trip_ms_p99: float
    server_total_ms_median: float
    seed: int | None = None


@dataclass
class RobotReport:
    control_hz: float
    episodes: list[EpisodeReport] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return sum(e.success for e in self.episodes) / max(len(self.episodes), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"control_hz": self.control_hz, "success_rate": self.success_rate,
                "episodes": [asdict(e) for e in self.episodes]}

    def table(self) -> str:
        rows = ["| ep | seed | success | steps | late | timeouts | Hz | rtt med ms | "
                "rtt p99 ms | instruction |", "|---|---|---|---|---|---|---|---|---|---|"]
        for e in self.episodes:
            rows.append(f"| {e.episode} | {e.seed} | {e.success} | {e.steps} | "
                        f"{e.late_steps} | {e.timeouts} | {e.achieved_hz:.2f} | "
                        f"{e.round_trip_ms_median:.2f} | {e.round_trip_ms_p99:.2f} | "
                        f"{e.instruction} |")
        n_ok = sum(e.success for e in self.episodes)
        rows.append(f"\nsuccess {n_ok}/{len(self.episodes)} at {self.control_hz:g} Hz target")
        return "\n".join(rows)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def control_loop(robot: Robot, bridge: BridgeClient, control_hz: float, episodes: int,
                 max_steps: int | None = None, max_timeouts: int = 3) -> RobotReport:
    """Run `episodes` episodes at a fixed rate. A step that overruns its period is counted
    late and the clock re-anchors instead of bursting to catch up, because a real arm must
    not receive a volley of stale commands. A step whose reply times out commands nothing;
    more than `max_timeouts` of them in an episode re-raise BridgeTimeout."""
    if control_hz <= 0:
        raise ValueError(f"control_hz={control_hz}; expected > 0")
    period = 1.0 / control_hz
    report = RobotReport(control_hz=control_hz)
    for episode in range(episodes):
        instruction = robot.start_episode()
        if episode == 0:
            check_observation_fits(bridge, robot.observe())
        bridge.reset(instruction, episode_prompt(bridge, instruction, robot.observe()))
        steps = late = timeouts = 0
        round_trips: list[float] = []
        server_ms: list[float] = []
        done, success = False, False
        started = next_tick = time.monotonic()
        while not done and (max_steps is None or steps < max_steps):
            try:
                result = bridge.act(robot.observe())
            except BridgeTimeout:
                # No fresh action: send nothing (a real arm holds its pose), try next tick.
                timeouts += 1
                if timeouts > max_timeouts:
                    raise
            else:
                robot.command(result.action)
                round_trips.append(result.round_trip_ms)
                server_ms.append(result.server_timing.total_ms)
            steps += 1
            done, success = robot.episode_status()
            next_tick += period
            slack = next_tick - time.monotonic()
            if slack > 0:
                time.sleep(slack)
            else:
                late += 1
                next_tick = time.monotonic()
        elapsed = time.monotonic() - started
        report.episodes.append(EpisodeReport(
            episode=episode, instruction=instruction, success=success, steps=steps,
            late_steps=late, timeouts=timeouts,
            achieved_hz=steps / elapsed if elapsed > 0 else float("nan"),
            round_trip_ms_median=statistics.median(round_trips) if round_trips else float("nan"),
            round_trip_ms_p99=percentile(round_trips, 99),
            server_total_ms_median=statistics.median(server_ms) if server_ms else float("nan"),
            seed=getattr(robot, "seed", None)))
    return report


def check_observation_fits(bridge: BridgeClient, observation: dict[str, Any]) -> None:
    """Refuse to start when the robot's sensors do not produce what the model expects."""
    for key, spec in bridge.metadata.observation.items():
        if key not in observation:
            raise ValueError(f"robot observation lacks {key!r}; server expects keys "
                             f"{sorted(bridge.metadata.observation)}")
        value = np.asarray(observation[key])
        if tuple(value.shape) != spec.shape or value.dtype.name != spec.dtype:
            raise ValueError(f"robot observation {key!r} is {value.dtype.name} "
                             f"{list(value.shape)}; server expects {spec.dtype} "
                             f"{list(spec.shape)}")


def episode_prompt(bridge: BridgeClient, instruction: str,
                   observation: dict[str, Any]) -> np.ndarray | None:
    """The crops `reset` sends for `instruction`: observation["prompt_images"][:n] for its n
    slots ("pick up the {image}"), None for a text-only instruction. The server checks
    shape, dtype and count (and refuses slots when its policy reads text only)."""
    spec = bridge.metadata.prompt_images
    slots = instruction.count(spec.slot if spec is not None else P.PROMPT_SLOT)
    if not slots:
        return None
    if observation.get(P.PROMPT_IMAGES) is None:
        raise ValueError(f"instruction {instruction!r} shows {slots} object(s) by image, but the "
                         f"robot's observation has no {P.PROMPT_IMAGES!r}")
    return np.asarray(observation[P.PROMPT_IMAGES])[:slots]


def run_sim_robot(url: str, *, token: str | None = None, task: str = "pick",
                  split: str = "seen", episodes: int = 3, seed_start: int | None = None,
                  control_hz: float | None = None, max_steps: int | None = None,
                  timeout_s: float = 1.0, expected_checkpoint_sha256: str | None = None
                  ) -> RobotReport:
    """The simulated robot: build the PyBullet env at the image size the server expects,
    refuse a server whose action spec or camera differs from the env's, run the episodes.
    `control_hz` None uses the rate the server's checkpoint was trained at. On a split with
    visual prompts (e.g. "visual_prompt") the env renders crops at the size the server
    announces and each reset sends them; a server whose policy reads text only is refused."""
    import envs  # imported here: the bridge package itself stays free of the simulator
    from envs.spec import EVAL_SEED_START

    with BridgeClient(url, token=token, timeout_s=timeout_s,
                      expected_checkpoint_sha256=expected_checkpoint_sha256) as bridge:
        image = bridge.metadata.observation.get("image")
        if image is None or len(image.shape) != 3 or image.shape[0] != image.shape[1]:
            raise ValueError(f"server expects image {image}; this simulated robot renders "
                             "square (S, S, 3) uint8 frames")
        prompt = bridge.metadata.prompt_images
        # a server whose policy reads the wrist camera announces "wrist_image" too
        env = envs.make_env(task=task, split=split, image_size=image.shape[0],
                            max_steps=max_steps,
                            wrist_camera="wrist_image" in bridge.metadata.observation,
                            # and one that reads object boxes announces "object_boxes"
                            object_boxes="object_boxes" in bridge.metadata.observation,
                            **({} if prompt is None
                               else {"prompt_image_size": prompt.shape[0]}))
        try:
            described = env.describe()
            if described.get(P.PROMPT_IMAGES) is not None and prompt is None:
                raise ValueError(f"split {split!r} shows objects by image, and the server's "
                                 "policy reads text prompts only (metadata prompt_images is "
                                 "nil); use a text split or serve a checkpoint trained with "
                                 "policy.prompt_images=true")
            problem = P.action_spec_mismatch(bridge.metadata.action_spec,
                                             described["action_spec"])
            if problem:
                raise ActionSpecMismatch(f"server's action spec does not fit the env: {problem}")
            served_camera = bridge.metadata.extra.get("camera")
            # Compare as JSON: the env gives tuples where the wire carries lists.
            if served_camera is not None and (json.loads(json.dumps(served_camera))
                                              != json.loads(json.dumps(described["camera"]))):
                raise ValueError(f"server's model was trained with camera {served_camera}; "
                                 f"this env has {described['camera']}")
            robot = SimRobot(env, EVAL_SEED_START if seed_start is None else seed_start)
            hz = bridge.metadata.control_hz if control_hz is None else control_hz
            return control_loop(robot, bridge, hz, episodes, max_steps)
        finally:
            env.close()
