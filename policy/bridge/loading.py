"""Turn a checkpoint directory into what the bridge server serves (this part needs torch).

One model in memory, one session per connection: a session is another instance of the same
policy class whose parameters and persistent buffers *are* the loaded model's tensors (not
copies), so each robot gets its own instruction and frame history while the weights exist
once. Building a session costs a constructor call, which is why it runs on the server's
inference thread, not on the event loop.

The metadata a client sees (image shape, control rate, state layout, action spec, the
checkpoint hash and, for a policy that reads image prompts, the crops' shape) is read from the
checkpoint's own files, never from the serving config, so a server cannot advertise something
other than what the model was trained on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.spec import CONTROL_HZ, INSTRUCTION, OBJECT_BOXES, PROMPT_SLOT, STATE, STATE_NAMES
from policy.base import Policy, summarize_env
from policy.checkpoint_hash import checkpoint_sha256

from .protocol import ArraySpec, PromptSpec
from .server import ServedPolicy

log = logging.getLogger(__name__)


def share_weights(source: nn.Module, target: nn.Module) -> None:
    """Make `target`'s parameters and persistent buffers the very tensors of `source`.

    Both must be built from the same config. Non-persistent buffers stay the target's own:
    they are not part of a checkpoint and may hold per-instance working state.
    """
    modules = dict(source.named_modules(remove_duplicate=False))
    for name, module in target.named_modules(remove_duplicate=False):
        if name not in modules or type(modules[name]) is not type(module):
            raise ValueError(f"cannot share weights: submodule {name!r} is "
                             f"{type(module).__name__} here and "
                             f"{type(modules.get(name)).__name__} in the loaded model")
        twin = modules[name]
        for key in module._parameters:
            module._parameters[key] = twin._parameters[key]
        for key in module._buffers:
            if key not in module._non_persistent_buffers_set:
                module._buffers[key] = twin._buffers[key]


class SessionFactory:
    """Builds per-connection policies that share one loaded model's weights."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self) -> Policy:
        p = self.policy
        session = type(p)(p.config, p.action_spec, p.env_info, p.stats)
        share_weights(p, session)
        return session.to(p.device).eval()


def warm_up(policy: Policy, steps: int) -> float:
    """Run `steps` dummy control steps (first calls allocate and load the text model);
    return the last step's latency in milliseconds."""
    observation: dict[str, Any] = {key: np.zeros(shape, dtype=dtype)
                                   for key, (shape, dtype) in policy.observation_shapes().items()}
    observation[INSTRUCTION] = "warm up"
    if OBJECT_BOXES in observation:  # one object over the whole frame, the other slots empty
        observation[OBJECT_BOXES][:] = np.nan
        observation[OBJECT_BOXES][0] = (0.0, 0.0, 1.0, 1.0)
    policy.reset("warm up")
    last = float("nan")
    for _ in range(steps):
        start = time.perf_counter()
        policy.select_action(observation)
        last = (time.perf_counter() - start) * 1e3
    return last


def prompt_spec(policy: Policy) -> PromptSpec | None:
    """What `reset` may carry for `policy`: one uint8 (S, S, 3) crop per PROMPT_SLOT of the
    instruction, at most K of them (its prompt_shape (K, S, S, 3)); None for text only."""
    if not policy.reads_prompt_images or policy.prompt_shape is None:
        return None
    k, *image = policy.prompt_shape
    return PromptSpec(shape=tuple(image), dtype="uint8", max_images=int(k), slot=PROMPT_SLOT)


def load_served_policy(checkpoint: str | Path, warmup_steps: int = 3,
                       torch_threads: int | None = 1) -> ServedPolicy:
    """Load `checkpoint` with Policy.from_pretrained, warm it up, describe it for clients."""
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    checkpoint = Path(checkpoint)
    policy = Policy.from_pretrained(checkpoint)
    factory = SessionFactory(policy)
    if warmup_steps > 0:
        # On the loaded instance itself, which lives as long as the server anyway: the first
        # call loads the text model, and that load keeps the calling frames (and so the
        # policy object they hold) referenced; a throw-away session would be kept alive.
        ms = warm_up(policy, warmup_steps)
        log.info("warmed up %s policy: last of %d steps took %.1f ms", policy.kind,
                 warmup_steps, ms)
    env_info: dict[str, Any] = dict(policy.env_info)
    summary = summarize_env(env_info)
    nested = env_info.get("env") if isinstance(env_info.get("env"), dict) else {}
    control_hz = env_info.get("control_hz", nested.get("control_hz", CONTROL_HZ))
    state_names = tuple(env_info.get("state_names", nested.get("state_names", STATE_NAMES)))
    return ServedPolicy(
        kind=policy.kind,
        new_session=factory,
        action_spec=policy.action_spec.to_dict(),
        observation={key: ArraySpec((len(state_names),) if key == STATE else shape, dtype)
                     for key, (shape, dtype) in policy.observation_shapes().items()},
        state_names=state_names,
        control_hz=float(control_hz),
        checkpoint_sha256=checkpoint_sha256(checkpoint),
        prompt_images=prompt_spec(policy),
        extra={"camera": summary.camera, "renderer": summary.renderer,
               "num_parameters": policy.num_parameters(), "checkpoint": checkpoint.name},
    )
