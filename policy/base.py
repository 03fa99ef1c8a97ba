"""The Policy API shared by every model family, and checkpoints without hydra or pickle.

LeRobot-like (docs/CONTRACTS.md): ``forward(batch) -> (loss, metrics)``,
``reset(instruction)``, ``select_action(observation)``, ``save_pretrained(dir)``,
``Policy.from_pretrained(dir)``, plus ``check_env(env_info)``. A checkpoint directory holds
``model.safetensors``, ``config.json`` (policy kind + config dataclass fields),
``action_spec.json``, ``stats.json`` and ``env.json`` (the env's ``describe()`` or the store's
info); loading reads only those files and fails loudly, naming the mismatch or missing file.

Every family's config subclasses :class:`PolicyConfig` (the fields all families share) and
its Policy subclass registers itself with ``@register_policy(kind, config_class)``
(policy/registry.py); :func:`make_policy` dispatches on the config's type, ``from_pretrained``
on the saved kind. This module imports no family: the registry imports them when first read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from envs.spec import (
    ACTION,
    IMAGE,
    INSTRUCTION,
    MAX_OBJECT_BOXES,
    MAX_PROMPT_IMAGES,
    OBJECT_BOXES,
    PROMPT_IMAGES,
    STATE,
    STATE_NAMES,
    WRIST_IMAGE,
    ActionSpec,
    config_defaults,
    prompt_slots,
)
from policy.augment import check_mirror_camera, check_mirror_wrist, mirror_batch
from policy.registry import policies
from policy.tokenizers.objects import check_boxes
from policy.transformer import TransformerConfig

CHECKPOINT_FILES = ("model.safetensors", "config.json", "action_spec.json", "stats.json",
                    "env.json")
FORMAT_VERSION = 1
# Camera fields that a split varies on purpose (per-episode jitter): evaluating a policy on a
# split with more jitter is a zero-shot test, not a mismatch.
CAMERA_RANDOMIZATION_KEYS = frozenset({"jitter_m"})


# ----------------------------------------------------------------------------- env info


@dataclass(frozen=True)
class EnvSummary:
    """What a policy checks about an environment: image shape, camera, renderer, action spec,
    and the wrist camera (None where the env has none)."""

    image_shape: tuple[int, ...] | None
    camera: Any
    renderer: Any
    action_spec: ActionSpec | None
    wrist_camera: Any = None
    # (K, S, S, 3) of the visual prompts' crops where the env or store has them, else None
    prompt_image_shape: tuple[int, ...] | None = None


def summarize_env(env_info: Mapping[str, Any] | None) -> EnvSummary:
    """Pull the fields a policy depends on out of an env ``describe()`` or a store's info.

    Keys are looked up at the top level, then under ``"env"`` (a store may nest the env's own
    description); the image shape at the top level or in ``camera["image_shape"]``.
    """
    if env_info is None:
        return EnvSummary(None, None, None, None)
    if not isinstance(env_info, Mapping):
        raise TypeError(f"env_info must be a dict; got {type(env_info).__name__}")
    nested = env_info.get("env") if isinstance(env_info.get("env"), Mapping) else {}

    def find(key: str) -> Any:
        return env_info[key] if key in env_info else nested.get(key)

    camera = find("camera")
    shape = find("image_shape")
    if shape is None and isinstance(camera, Mapping):
        shape = camera.get("image_shape")
    spec = find("action_spec")
    return EnvSummary(
        image_shape=None if shape is None else tuple(int(s) for s in shape),
        camera=_jsonable(camera),
        renderer=_jsonable(find("renderer")),
        action_spec=None if spec is None else (
            spec if isinstance(spec, ActionSpec) else ActionSpec.from_dict(spec)),
        wrist_camera=_jsonable(find("wrist_camera")),
        prompt_image_shape=_prompt_image_shape(find("prompt_image_shape"),
                                               find("prompt_images")),
    )


def _prompt_image_shape(stored: Any, described: Any) -> tuple[int, ...] | None:
    """(K, S, S, 3) from a store's info["prompt_image_shape"] or an env's
    describe()["prompt_images"] (its crop size; K = MAX_PROMPT_IMAGES)."""
    if stored:
        return tuple(int(v) for v in stored)
    if isinstance(described, Mapping) and described.get("image_size"):
        size = int(described["image_size"])
        return (MAX_PROMPT_IMAGES, size, size, 3)
    return None


def _jsonable(value: Any) -> Any:
    """numpy arrays/scalars, tuples and ActionSpecs -> plain JSON types (for stats/env files)."""
    if isinstance(value, ActionSpec):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # e.g. a Path in a store's info: keep it readable, never pickled


# ----------------------------------------------------------------------------- metrics


def token_metrics(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                  names: list[str]) -> dict[str, float]:
    """Token accuracies: overall (every valid frame), on the last frame, and per dimension.

    logits (B, T, A, K), targets (B, T, A) int, valid (B, T) bool. Per-dimension accuracy is on
    the last frame: the one a policy acts on.
    """
    with torch.no_grad():
        pred = logits.argmax(-1)
        correct = (pred == targets).float()  # (B, T, A)
        last_valid = valid[:, -1]
        last = correct[:, -1][last_valid]  # (B', A)
        # how far off in bins: accuracy hides whether a miss is by one bin or by half the range
        off = (pred - targets).abs().float()[:, -1][last_valid]  # (B', A)
        # one tensor, one transfer to Python: a training step used to pay 2 + 2A .item() calls
        values = torch.cat([torch.stack([correct[valid].mean(), last.mean()]),
                            last.mean(0), off.mean(0)]).tolist()  # (2 + 2A,)
    a = len(names)
    metrics = {"acc": values[0], "acc_last": values[1]}
    for i, name in enumerate(names):
        metrics[f"acc/{name}"] = values[2 + i]
        metrics[f"bin_err/{name}"] = values[2 + a + i]
    return metrics


def check_training_targets(label_sigma_bins: float, augment_mirror: float) -> None:
    """Validate the config fields behind `binned_action_loss` and `Policy.augment`."""
    if label_sigma_bins < 0:
        raise ValueError(f"label_sigma_bins={label_sigma_bins}; expected >= 0 "
                         "(0: one-hot targets)")
    if not 0.0 <= augment_mirror <= 1.0:
        raise ValueError(f"augment_mirror={augment_mirror}; expected a probability in [0, 1]")


def binned_action_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                       sigma_bins: float) -> torch.Tensor:
    """Cross-entropy of logits (B, T, A, K) against target bins (B, T, A) on valid frames.

    sigma_bins = 0: one-hot targets (RT-1, Gato). sigma_bins > 0: the target is a Gaussian
    over neighbouring bins ("HL-Gauss", Imani & White 2018; Farebrother et al. 2024), so a
    prediction one bin off costs little and a far one costs much: the bins keep their order
    (docs/experiments/2026-11-28-what-made-it-learn.md has what it changed and what is not
    yet isolated).
    """
    # float32 whatever the forward's autocast made the logits: the loss is not computed in bf16
    logits, targets = logits[valid].float(), targets[valid]  # (N, A, K), (N, A)
    if sigma_bins <= 0:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    k = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    soft = (-0.5 * ((k - targets[..., None].to(logits.dtype)) / sigma_bins) ** 2).softmax(-1)
    return -(soft * logits.log_softmax(-1)).sum(-1).mean()


# ----------------------------------------------------------------------------- config


@dataclass
class PolicyConfig:
    """The settings every policy family has; every field is saved in config.json.

    A family's config (RT1Config, GatoConfig) subclasses this and adds its own fields; where
    its default differs, it declares the field again with its own default (`resize_to`,
    `n_layer`, `action_bins` and `label_sigma_bins` differ between RT-1 and Gato). A subclass's
    ``__post_init__`` calls this one before its own checks.
    """

    history: int = 2  # frames (control steps) in context, the newest included
    resize_to: int | None = None  # model resolution in px; None: the camera's own
    augment_shift: int = 4  # random-shift pixels at model resolution during training; 0 = off
    augment_mirror: float = 0.5  # share of training samples mirrored left-right (augment.py)
    use_state: bool = True  # one end-effector-state token per frame
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1
    action_bins: int = 256  # bins per action dimension
    label_sigma_bins: float = 0.0  # Gaussian target width in bins; 0 = one-hot
    text_encoder: str | None = None  # None: the offline all-MiniLM-L6-v2 package
    text_dim: int = 384  # width of the sentence embedding (all-MiniLM-L6-v2: 384)
    # local file with image-encoder weights, read when the policy is first built (not by
    # from_pretrained: the checkpoint holds the weights); a family may accept names too
    # (RT1Config: "imagenet")
    pretrained_backbone: str | None = None
    # read multimodal prompts: the object crops that stand in for a name ("pick up the
    # {image}"), through an encoder of their own (policy/tokenizers/prompt.py); needs a store
    # collected with collect.visual_prompts > 0
    prompt_images: bool = False

    def __post_init__(self) -> None:
        if self.history < 1:
            raise ValueError(f"history={self.history}; expected >= 1 frame")
        if self.augment_shift < 0:
            raise ValueError(f"augment_shift={self.augment_shift}; expected >= 0")
        check_training_targets(self.label_sigma_bins, self.augment_mirror)
        if self.action_bins < 2:
            raise ValueError(f"action_bins={self.action_bins}; expected >= 2")
        if self.text_dim < 1:
            raise ValueError(f"text_dim={self.text_dim}; expected >= 1")
        self.transformer  # noqa: B018 - validates d_model / n_head / dropout

    @property
    def transformer(self) -> TransformerConfig:
        return TransformerConfig(d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head,
                                 dropout=self.dropout)


# ----------------------------------------------------------------------------- policy


class Policy(nn.Module):
    """Base class: the narrow API every policy family implements (see module docstring).

    Subclasses are registered with ``@register_policy(kind, config_class)``
    (policy/registry.py), which sets ``kind`` and ``config_class``; they implement
    ``logits_and_targets``, ``_reset`` and ``_act``. This class handles the training loss,
    instructions, eval/inference mode, checkpoints and checks.
    """

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig, action_spec: ActionSpec,
                 env_info: Mapping[str, Any] | None, stats: Mapping[str, Any] | None) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}; got "
                            f"{type(config).__name__}")
        self.config = config
        self.action_spec = action_spec
        self.env_info = _jsonable(dict(env_info or {}))
        self.stats = _jsonable(dict(stats or {}))
        summary = summarize_env(env_info)
        if summary.action_spec is not None:
            problem = action_spec.mismatch(summary.action_spec)
            if problem:
                raise ValueError(f"action spec differs from env_info's: {problem}")
        if summary.image_shape is None:
            raise ValueError("env_info gives no image shape; expected 'image_shape' or "
                             f"camera['image_shape'] in {sorted(self.env_info)}")
        if len(summary.image_shape) != 3 or summary.image_shape[2] != 3:
            raise ValueError(f"image shape {summary.image_shape}; expected (H, W, 3)")
        self.image_shape: tuple[int, int, int] = summary.image_shape  # type: ignore[assignment]
        self.wrist_shape: tuple[int, int, int] | None = None
        if self.reads_wrist:
            self.wrist_shape = _wrist_shape(summary.wrist_camera)
        self.prompt_shape: tuple[int, int, int, int] | None = None
        if self.reads_prompt_images:
            self.prompt_shape = _checked_prompt_shape(summary.prompt_image_shape)
        self.instruction: str | None = None
        # this episode's prompt crops, uint8 (K, S, S, 3) on the model's device (zeros in
        # slots the instruction does not use), or None for a text-only instruction
        self.prompt_images: torch.Tensor | None = None
        self.mirror_prob = float(config.augment_mirror)
        if self.mirror_prob > 0:
            cam = summary.camera
            if not isinstance(cam, Mapping) or "eye" not in cam or "target" not in cam:
                warnings.warn("augment_mirror is on but env_info gives no camera eye and "
                              "target; the mirror augmentation is off for this policy",
                              stacklevel=2)
                self.mirror_prob = 0.0
            else:
                check_mirror_camera(cam)
                if self.reads_wrist:
                    check_mirror_wrist(summary.wrist_camera)

    # -- to implement ---------------------------------------------------------------------

    @property
    def reads_wrist(self) -> bool:
        """Whether this policy reads the wrist camera (obs["wrist_image"]) besides the front
        one; a family that can overrides this from its config."""
        return False

    @property
    def reads_object_boxes(self) -> bool:
        """Whether this policy reads obs["object_boxes"] (envs.spec.OBJECT_BOXES: one box per
        visible object, from segmentation in simulation or a detector on a robot); a family
        with object-centric tokens overrides this from its config."""
        return False

    @property
    def reads_prompt_images(self) -> bool:
        """Whether this policy reads multimodal prompts (obs["prompt_images"] with "{image}"
        slots in the instruction); ``config.prompt_images``."""
        return bool(self.config.prompt_images)

    def logits_and_targets(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """A contract batch -> logits (B, T, A, K), target bins (B, T, A), valid (B, T)."""
        raise NotImplementedError

    def _reset(self, instruction: str) -> None:
        raise NotImplementedError

    def _act(self, image: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """One control step: uint8 (H, W, 3), float (S,) -> action float (A,). A policy that
        reads the wrist camera also gets ``wrist=`` uint8 (H', W', 3); one that reads object
        boxes ``boxes=`` float (MAX_OBJECT_BOXES, 4)."""
        raise NotImplementedError

    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The arrays ``select_action`` needs: key -> (shape, dtype); the bridge announces
        them to clients (besides the instruction, which comes with ``reset``)."""
        shapes = {IMAGE: (tuple(self.image_shape), "uint8")}
        if self.wrist_shape is not None:
            shapes[WRIST_IMAGE] = (tuple(self.wrist_shape), "uint8")
        shapes[STATE] = ((len(STATE_NAMES),), "float32")
        if self.reads_object_boxes:
            shapes[OBJECT_BOXES] = ((MAX_OBJECT_BOXES, 4), "float32")
        return shapes

    # -- training -------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """A contract batch -> (loss, metrics): the cross-entropy of the action bins
        (:func:`binned_action_loss` with ``config.label_sigma_bins``) and the token accuracies
        (:func:`token_metrics`). A family with an auxiliary training head (``aux_logits``
        from ``_outputs_and_targets``) adds its loss, on the same targets, times
        ``aux_loss_weight``; the metrics then also hold ``token_loss`` and ``aux_loss``."""
        logits, aux, targets, valid = self._outputs_and_targets(batch)
        sigma = self.config.label_sigma_bins
        loss = binned_action_loss(logits, targets, valid, sigma)
        metrics = {"loss": loss.item(),
                   **token_metrics(logits, targets, valid, self.action_spec.names)}
        if aux is not None:
            aux_loss = binned_action_loss(aux, targets, valid, sigma)
            metrics["token_loss"], metrics["aux_loss"] = metrics["loss"], aux_loss.item()
            loss = loss + self.aux_loss_weight * aux_loss
            metrics["loss"] = loss.item()
        return loss, metrics

    def _outputs_and_targets(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor | None, ...]:
        """``logits_and_targets`` with an auxiliary head's logits (B, T, A, K), or None,
        second: (logits, aux_logits, targets, valid). A family with such a head overrides
        this and ``aux_loss_weight``."""
        logits, targets, valid = self.logits_and_targets(batch)
        return logits, None, targets, valid

    @property
    def aux_loss_weight(self) -> float:
        """Weight of the auxiliary head's loss in ``forward`` (no head here: 0)."""
        return 0.0

    # -- acting ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def reset(self, instruction: str | None = None, prompt_images: Any = None) -> None:
        """Forget the frame history; encode ``instruction`` once (None keeps the last one).

        ``prompt_images``: the crops of a multimodal instruction, uint8 (n, S, S, 3), one per
        "{image}" slot in order (n = the slot count, or MAX_PROMPT_IMAGES zero-padded as the
        env gives them); None where the instruction has no slot, or where they will come with
        the first observation (obs["prompt_images"]).
        """
        if instruction is None:
            instruction = self.instruction
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str; got {type(instruction).__name__}")
        self.prompt_images = (None if instruction is None
                              else self._checked_prompt(instruction, prompt_images))
        self.instruction = instruction
        if instruction is not None and not self._awaits_prompt():
            with self._acting():
                self._reset(instruction)

    def _awaits_prompt(self) -> bool:
        """A multimodal instruction whose crops have not come yet: they come with the first
        observation (obs["prompt_images"]), which then resets the episode with them."""
        return (self.reads_prompt_images and self.instruction is not None
                and prompt_slots(self.instruction) > 0 and self.prompt_images is None)

    def _checked_prompt(self, instruction: str, images: Any) -> torch.Tensor | None:
        """``reset``'s prompt images as uint8 (K, S, S, 3) on the device, or a clear error."""
        slots = prompt_slots(instruction)
        if slots and not self.reads_prompt_images:
            raise ValueError(f"instruction {instruction!r} shows {slots} object(s) by image, and "
                             "this policy reads text prompts only (policy.prompt_images=false)")
        if slots > MAX_PROMPT_IMAGES:
            raise ValueError(f"instruction {instruction!r} has {slots} image slots; expected at "
                             f"most {MAX_PROMPT_IMAGES}")
        if images is None or not self.reads_prompt_images:
            return None
        assert self.prompt_shape is not None
        arr = torch.as_tensor(np.asarray(images))
        k, size = self.prompt_shape[0], tuple(self.prompt_shape[1:])
        if (arr.dtype != torch.uint8 or arr.ndim != 4 or tuple(arr.shape[1:]) != size
                or arr.shape[0] not in (slots, k)):
            raise ValueError(f"prompt images are {arr.dtype} {tuple(arr.shape)}; expected uint8 "
                             f"({slots}, {', '.join(map(str, size))}), one per '{{image}}' slot "
                             f"of {instruction!r}, or ({k}, ...) zero-padded")
        out = torch.zeros(self.prompt_shape, dtype=torch.uint8)
        out[:slots] = arr[:slots]
        return out.to(self.device)

    def build_prompt_encoder(self, out_dim: int, empty_token: bool = False) -> nn.Module | None:
        """The crop encoder (policy/tokenizers/prompt.py) for this policy's prompt shape, or
        None for a policy that reads text only."""
        if self.prompt_shape is None:
            return None
        from policy.tokenizers.prompt import PromptImageEncoder

        return PromptImageEncoder(out_dim=out_dim, image_size=self.prompt_shape[1],
                                  slots=self.prompt_shape[0], empty_token=empty_token)

    def episode_prompt(self) -> torch.Tensor:
        """This episode's crops as uint8 (1, K, S, S, 3) for a family's conditioning (zeros
        for a text-only instruction); only for a policy that reads prompt images."""
        assert self.prompt_shape is not None and not self._awaits_prompt()
        if self.prompt_images is None:
            return torch.zeros((1, *self.prompt_shape), dtype=torch.uint8, device=self.device)
        return self.prompt_images[None]

    @contextmanager
    def _acting(self) -> Iterator[None]:
        """Eval mode (no dropout) and inference mode for acting; the mode is restored after."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.train(was_training)

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Observation as the env returns it -> float32 action (A,) in the action spec's units.

        A new instruction (differing from the last ``reset``) resets the history first.
        """
        for key in (IMAGE, STATE, INSTRUCTION):
            if key not in observation:
                raise KeyError(f"observation lacks {key!r}; has {sorted(observation)}")
        instruction = observation[INSTRUCTION]
        prompt = observation.get(PROMPT_IMAGES) if self.reads_prompt_images else None
        if instruction != self.instruction:
            self.reset(instruction, prompt)
        elif prompt is not None and prompt_slots(instruction) and (
                self.prompt_images is None or not np.array_equal(
                    np.asarray(prompt)[:prompt_slots(instruction)],
                    self.prompt_images[:prompt_slots(instruction)].cpu().numpy())):
            # the same words with other crops: another episode ("pick up the {image}")
            self.reset(instruction, prompt)
        if self._awaits_prompt():
            raise ValueError(f"instruction {instruction!r} shows an object by image, but no "
                             f"prompt images came with reset() or the observation "
                             f"({PROMPT_IMAGES!r})")
        image = torch.as_tensor(np.asarray(observation[IMAGE]))
        if tuple(image.shape) != self.image_shape or image.dtype != torch.uint8:
            raise ValueError(f"observation image is {image.dtype} {tuple(image.shape)}; this "
                             f"policy expects uint8 {self.image_shape}")
        state = torch.as_tensor(np.asarray(observation[STATE], dtype=np.float32))
        if tuple(state.shape) != (len(STATE_NAMES),):
            raise ValueError(f"observation state has shape {tuple(state.shape)}; expected "
                             f"({len(STATE_NAMES)},) for {list(STATE_NAMES)}")
        extra = {}
        if self.wrist_shape is not None:
            if WRIST_IMAGE not in observation:
                raise KeyError(f"observation lacks {WRIST_IMAGE!r}: this policy reads the wrist "
                               f"camera (make the env with wrist_camera=True); has "
                               f"{sorted(observation)}")
            wrist = torch.as_tensor(np.asarray(observation[WRIST_IMAGE]))
            if tuple(wrist.shape) != self.wrist_shape or wrist.dtype != torch.uint8:
                raise ValueError(f"observation wrist image is {wrist.dtype} "
                                 f"{tuple(wrist.shape)}; this policy expects uint8 "
                                 f"{self.wrist_shape}")
            extra["wrist"] = wrist.to(self.device)
        if self.reads_object_boxes:
            extra["boxes"] = self._observed_boxes(observation)
        with self._acting():
            action = self._act(image.to(self.device), state.to(self.device), **extra)
        return action.float().cpu().numpy().astype(np.float32)

    # -- batches --------------------------------------------------------------------------

    def augment(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The batch with training-time augmentation that changes labels (the left-right
        mirror, policy/augment.py) when training; unchanged in eval mode."""
        if self.training and self.mirror_prob > 0:
            return mirror_batch(batch, self.action_spec.names, self.mirror_prob,
                                wrist=self.reads_wrist)
        return batch

    def unpack_wrist(self, batch: Mapping[str, Any], image: torch.Tensor) -> torch.Tensor:
        """The batch's wrist images uint8 (B, T, H', W', 3) on the model's device, checked
        against the front images (B, T, ...) and this policy's wrist shape."""
        if WRIST_IMAGE not in batch:
            raise KeyError(f"batch lacks {WRIST_IMAGE!r}: this policy reads the wrist camera, "
                           f"so its store must be collected with env.wrist_camera=true; has "
                           f"{sorted(batch)}")
        wrist = batch[WRIST_IMAGE]
        if wrist.ndim != 5 or tuple(wrist.shape[:2]) != tuple(image.shape[:2]) or tuple(
                wrist.shape[2:]) != self.wrist_shape:
            raise ValueError(f"batch wrist image has shape {tuple(wrist.shape)}; expected "
                             f"({image.shape[0]}, {image.shape[1]}, "
                             f"{', '.join(map(str, self.wrist_shape or ()))})")
        return wrist.to(self.device)

    def _observed_boxes(self, observation: Mapping[str, Any]) -> torch.Tensor:
        """obs["object_boxes"] checked, as float32 (K, 4) on the model's device."""
        if OBJECT_BOXES not in observation:
            raise KeyError(f"observation lacks {OBJECT_BOXES!r}: this policy reads object boxes "
                           f"(make the env with object_boxes=True, or send a detector's boxes); "
                           f"has {sorted(observation)}")
        boxes = torch.as_tensor(np.asarray(observation[OBJECT_BOXES], dtype=np.float32))
        if boxes.ndim != 2:
            raise ValueError(f"observation object boxes have shape {tuple(boxes.shape)}; "
                             f"expected ({MAX_OBJECT_BOXES}, 4)")
        check_boxes(boxes, MAX_OBJECT_BOXES, "observation")
        return boxes.to(self.device)

    def unpack_boxes(self, batch: Mapping[str, Any], image: torch.Tensor) -> torch.Tensor:
        """The batch's object boxes float (B, T, K, 4) on the model's device, checked against
        the front images (B, T, ...)."""
        if OBJECT_BOXES not in batch:
            raise KeyError(f"batch lacks {OBJECT_BOXES!r}: this policy reads object boxes, so its "
                           "store must be collected with collect.object_boxes=true; has "
                           f"{sorted(batch)}")
        boxes = batch[OBJECT_BOXES]
        if boxes.ndim != 4 or tuple(boxes.shape[:2]) != tuple(image.shape[:2]) or tuple(
                boxes.shape[2:]) != (MAX_OBJECT_BOXES, 4):
            raise ValueError(f"batch object boxes have shape {tuple(boxes.shape)}; expected "
                             f"({image.shape[0]}, {image.shape[1]}, {MAX_OBJECT_BOXES}, 4)")
        return boxes.to(self.device).float()

    def unpack_prompt(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's prompt crops uint8 (B, K, S, S, 3) on the model's device, checked
        against this policy's prompt shape."""
        if PROMPT_IMAGES not in batch:
            raise KeyError(f"batch lacks {PROMPT_IMAGES!r}: this policy reads prompt images, so "
                           "its store must be collected with collect.visual_prompts > 0; has "
                           f"{sorted(batch)}")
        images = batch[PROMPT_IMAGES]
        b = len(batch[INSTRUCTION])
        if images.ndim != 5 or images.shape[0] != b or tuple(images.shape[1:]) != (
                self.prompt_shape):
            raise ValueError(f"batch prompt images have shape {tuple(images.shape)}; expected "
                             f"({b}, {', '.join(map(str, self.prompt_shape or ()))})")
        return images.to(self.device)

    def _unpack(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """Check a contract batch and move it to the model's device.

        Returns image uint8 (B, T, H, W, 3), state (B, T, S), action (B, T, A), valid (B, T).
        """
        for key in (IMAGE, STATE, ACTION, INSTRUCTION):
            if key not in batch:
                raise KeyError(f"batch lacks {key!r}; has {sorted(batch)}")
        image, state, action = batch[IMAGE], batch[STATE], batch[ACTION]
        if image.ndim != 5 or tuple(image.shape[2:]) != self.image_shape:
            raise ValueError(f"batch image has shape {tuple(image.shape)}; expected "
                             f"(B, T, {', '.join(map(str, self.image_shape))})")
        b, t = image.shape[:2]
        if action.shape != (b, t, len(self.action_spec)):
            raise ValueError(f"batch action has shape {tuple(action.shape)}; expected "
                             f"({b}, {t}, {len(self.action_spec)})")
        if len(batch[INSTRUCTION]) != b:
            raise ValueError(f"batch has {len(batch[INSTRUCTION])} instructions for {b} samples")
        pad = batch.get("pad")
        valid = torch.ones(b, t, dtype=torch.bool) if pad is None else ~pad.bool()
        dev = self.device
        return (image.to(dev), state.to(dev).float(), action.to(dev).float(), valid.to(dev))

    # -- checkpoints ----------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors, config.json, action_spec.json, stats.json, env.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"), metadata={"kind": self.kind})
        config = {"kind": self.kind, "format_version": FORMAT_VERSION,
                  "config": _jsonable(asdict(self.config))}
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        (directory / "action_spec.json").write_text(self.action_spec.to_json())
        (directory / "stats.json").write_text(json.dumps(self.stats, indent=2))
        (directory / "env.json").write_text(json.dumps(self.env_info, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, env_info: Mapping[str, Any] | None = None,
                        map_location: str | torch.device = "cpu") -> Policy:
        """Rebuild a policy from ``save_pretrained``'s files (no hydra, no pickle), in eval mode.

        With ``env_info`` the policy is also checked against that environment.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
        for name in CHECKPOINT_FILES:
            if not (directory / name).is_file():
                raise FileNotFoundError(f"checkpoint {str(directory)!r} lacks {name}; expected "
                                        f"all of {list(CHECKPOINT_FILES)}")
        saved = json.loads((directory / "config.json").read_text())
        kind = saved.get("kind")
        known = policies()
        if kind not in known:
            raise ValueError(f"config.json names policy kind {kind!r}; expected one of "
                             f"{sorted(known)}")
        klass = known[kind]
        if cls is not Policy and not issubclass(klass, cls):
            raise ValueError(f"checkpoint holds a {kind!r} policy, not a {cls.kind!r} one")
        config = _config_from_dict(klass.config_class, saved.get("config", {}))
        spec = ActionSpec.from_json((directory / "action_spec.json").read_text())
        stats = json.loads((directory / "stats.json").read_text())
        env = json.loads((directory / "env.json").read_text())
        # the weights come from model.safetensors: do not look for a pretrained backbone file
        # that may only exist on the machine that trained the policy
        build = (replace(config, pretrained_backbone=None) if config.pretrained_backbone
                 else config)
        policy = klass(build, spec, env, stats)
        policy.config = config
        state = load_file(str(directory / "model.safetensors"))
        _check_state(policy, state, directory)
        policy.load_state_dict(state, strict=True)
        policy.to(map_location)
        policy.eval()
        if env_info is not None:
            policy.check_env(env_info)
        return policy

    def check_env(self, env_info: Mapping[str, Any]) -> None:
        """Raise ValueError naming any mismatch of action spec, image shape, camera, physics or
        renderer."""
        mine, theirs = summarize_env(self.env_info), summarize_env(env_info)
        if theirs.action_spec is None:
            raise ValueError("env_info has no action_spec to check against; expected the env's "
                             "describe() or a store's info")
        problem = self.action_spec.mismatch(theirs.action_spec)
        if problem:
            raise ValueError(f"action spec mismatch (policy vs env): {problem}")
        if theirs.image_shape != self.image_shape:
            raise ValueError(f"image shape mismatch: policy expects {self.image_shape}, env "
                             f"gives {theirs.image_shape}")
        if self.wrist_shape is not None and mine.wrist_camera != theirs.wrist_camera:
            raise ValueError(f"wrist camera mismatch: policy reads {mine.wrist_camera!r}, env "
                             f"has {theirs.wrist_camera!r} (make it with wrist_camera=True)")
        if mine.renderer is not None and mine.renderer != theirs.renderer:
            raise ValueError(f"renderer mismatch: policy was trained with {mine.renderer!r}, "
                             f"env has {theirs.renderer!r}")
        # another physics rate or solver gives other episodes from the same actions
        # (envs/physics.py); compared where both record it (older checkpoints lack `physics`)
        for key in ("physics_hz", "substeps", "physics"):
            if key in self.env_info and key in env_info and self.env_info[key] != env_info[key]:
                raise ValueError(f"physics mismatch: policy was trained with {key}="
                                 f"{self.env_info[key]!r}, env has {env_info[key]!r}")
        if mine.camera is not None:
            if not isinstance(theirs.camera, Mapping):
                raise ValueError(f"env_info has no camera to compare with the policy's "
                                 f"{mine.camera!r}")
            keys = sorted((set(mine.camera) | set(theirs.camera)) - CAMERA_RANDOMIZATION_KEYS)
            diff = [k for k in keys if mine.camera.get(k) != theirs.camera.get(k)]
            if diff:
                detail = ", ".join(f"{k}: {mine.camera.get(k)!r} != {theirs.camera.get(k)!r}"
                                   for k in diff)
                raise ValueError(f"camera mismatch (policy vs env): {detail}")


def _wrist_shape(wrist_camera: Any) -> tuple[int, int, int]:
    """(H, W, 3) from an env's wrist camera description, or a clear error."""
    if not isinstance(wrist_camera, Mapping) or "image_shape" not in wrist_camera:
        raise ValueError(f"this policy reads the wrist camera, but env_info describes none "
                         f"(wrist_camera={wrist_camera!r}); collect and evaluate with "
                         f"env.wrist_camera=true")
    shape = tuple(int(v) for v in wrist_camera["image_shape"])
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"wrist image shape {shape}; expected (H, W, 3)")
    return shape  # type: ignore[return-value]


def _checked_prompt_shape(shape: tuple[int, ...] | None) -> tuple[int, int, int, int]:
    """(K, S, S, 3) of the prompt crops from env_info, or a clear error."""
    if shape is None:
        raise ValueError("this policy reads prompt images (prompt_images=true), but env_info "
                         "has none: collect its store with collect.visual_prompts > 0")
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise ValueError(f"prompt image shape {shape}; expected (K, S, S, 3)")
    return shape  # type: ignore[return-value]


def _config_from_dict(config_class: type[PolicyConfig], data: Mapping[str, Any]
                      ) -> PolicyConfig:
    names = {f.name for f in fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"config.json has fields {unknown} that {config_class.__name__} does "
                         f"not know; expected a subset of {sorted(names)}")
    return config_class(**data)


def _check_state(policy: Policy, state: Mapping[str, torch.Tensor], directory: Path) -> None:
    own = policy.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"model.safetensors in {str(directory)!r} does not fit the config: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"weight {key!r} in {str(directory)!r} has shape "
                             f"{tuple(value.shape)}; the config (image shape "
                             f"{policy.image_shape}) builds {tuple(own[key].shape)}")


def register_policy_configs() -> None:
    """Store every policy family's config defaults as the hydra node `policy/<kind>_base`.

    The dataclass is the one source of each default: conf/policy/<name>.yaml starts from
    its family's node (``defaults: [rt1_base, _self_]``) and holds `_target_` and the values
    that differ. Entry points that compose the `policy` group call this first (policy/train,
    scripts/benchmark_policy.py, the tests' compose helper); :func:`load_policy_yaml` reads
    a preset file without hydra.
    """
    from hydra.core.config_store import ConfigStore

    for kind, klass in policies().items():
        ConfigStore.instance().store(group="policy", name=f"{kind}_base",
                                     node=config_defaults(klass.config_class))


def load_policy_yaml(path: str | Path, overrides: Mapping[str, Any] | None = None
                     ) -> PolicyConfig:
    """A conf/policy/*.yaml file -> its config dataclass, outside a hydra app: the family's
    defaults (the ``<kind>_base`` entries of its ``defaults`` list), then the file, then
    `overrides` (field -> value)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    known = policies()
    cfg = OmegaConf.load(str(path))
    merged = OmegaConf.create({})
    for entry in cfg.pop("defaults", []) or []:
        if entry == "_self_":
            continue
        kind = str(entry).removesuffix("_base")
        if kind not in known:
            raise ValueError(f"{path}: defaults entry {entry!r}; expected one of "
                             f"{[f'{k}_base' for k in sorted(known)]} or _self_")
        merged = OmegaConf.merge(merged, config_defaults(known[kind].config_class))
    merged = OmegaConf.merge(merged, cfg, dict(overrides or {}))
    return instantiate(merged, _convert_="all")


def make_policy(config: PolicyConfig, action_spec: ActionSpec,
                env_info: Mapping[str, Any] | None, stats: Mapping[str, Any] | None = None
                ) -> Policy:
    """Build the policy family that ``config``'s dataclass belongs to."""
    known = policies()
    for klass in known.values():
        if isinstance(config, klass.config_class):
            return klass(config, action_spec, env_info, stats)
    raise TypeError(f"no policy family takes a {type(config).__name__}; expected one of "
                    f"{[k.config_class.__name__ for k in known.values()]}")
