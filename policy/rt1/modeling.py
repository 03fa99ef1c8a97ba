"""RT-1 (Brohan et al. 2022): FiLM-conditioned image tokens + a frame-causal transformer.

Per frame: the camera image (resized to 64 px by default) goes through an EfficientNet-style
conv net whose blocks are FiLM-conditioned on the instruction's sentence embedding (by default
EfficientNetV2's Fused-MBConv blocks, which trained 1.3x faster on a CPU than depthwise
MBConv; docs/experiments/2026-11-28-policies-and-tokenizers.md), TokenLearner pools it to
8 tokens, and one proprioceptive-state token is added
(docs/experiments/2026-11-28-prototype.md). A history of T frames of those tokens is read
by a decoder-only transformer whose mask is causal over frames (every token of
frame t sees all tokens of frames <= t). The tokens of each frame are mean-pooled and one
linear head predicts all action dimensions of that step in parallel, as the released RT-1 code
does; the loss is cross-entropy over 256 bins per dimension on every non-padded frame, against
a Gaussian over neighbouring bins (HL-Gauss) rather than RT-1's one-hot target, so the bins
keep their order.

Three departures from the paper came in together when the policy began to learn on a 2-core
CPU (docs/experiments/2026-11-28-what-made-it-learn.md): a LayerNorm on the sentence
embedding before FiLM, the left-right mirror augmentation (policy/augment.py), and the
Gaussian targets.

While acting, each frame's tokens depend only on that frame and the instruction, so they are
computed once and kept in a deque: one control step costs one image encoding plus a
transformer pass over T * 9 tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from envs.spec import INSTRUCTION, MAX_OBJECT_BOXES, STATE_NAMES, ActionSpec
from policy.background import background_batch, check_background_masks
from policy.base import Policy
from policy.registry import register_policy
from policy.rt1.configuration import RT1Config
from policy.text import get_text_encoder
from policy.tokenizers.actions import UniformActionTokenizer
from policy.tokenizers.images import (
    RT1ImageTokenizer,
    load_backbone,
    preprocess_images,
    random_shift_offsets,
    resolve_pretrained,
)
from policy.tokenizers.objects import shift_boxes
from policy.tokenizers.phase import (
    PHASE,
    PHASE_DIM,
    PhaseEmbedding,
    PhaseTracker,
    gripper_index,
)
from policy.tokenizers.prompt import slot_mask
from policy.tokenizers.state import StateTokenizer
from policy.transformer import Transformer


@register_policy("rt1", RT1Config)
class RT1Policy(Policy):
    config: RT1Config

    def __init__(self, config: RT1Config, action_spec: ActionSpec,
                 env_info: Mapping[str, Any] | None, stats: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(config, action_spec, env_info, stats)
        c = config
        if c.augment_background > 0:
            check_background_masks(self.env_info, c.augment_background)
        self.action_tokenizer = UniformActionTokenizer.from_spec(
            action_spec, c.action_bins, self.stats, c.action_bounds)
        stem = dict(d_model=c.d_model, text_dim=c.text_dim, channels=c.conv_channels,
                    strides=c.conv_strides, blocks=c.conv_blocks, expand=c.conv_expand,
                    fused_stages=c.conv_fused_stages, position_encoding=c.position_encoding,
                    text_norm=c.text_norm, backbone=c.backbone, lite_blocks=c.lite_blocks,
                    lite_frozen=c.lite_frozen)
        # object_tokens: the front stem also pools its map over each object box (the boxes
        # are tied to the front camera's pixels), its K tokens after TokenLearner's
        objects = dict(objects=MAX_OBJECT_BOXES, keep_learner=True) if c.object_tokens else {}
        self.image_tokenizer = RT1ImageTokenizer(num_tokens=c.image_tokens, **stem, **objects)
        # The wrist camera gets a stem of its own (same settings): it sees the scene from the
        # hand, at another scale and angle, so sharing the front stem's filters buys little.
        self.wrist_tokenizer = (RT1ImageTokenizer(num_tokens=c.wrist_tokens, **stem)
                                if c.wrist_camera else None)
        self.state_tokenizer = (StateTokenizer(state_dim=len(STATE_NAMES), d_model=c.d_model,
                                               stats=self.stats) if c.use_state else None)
        # phase_state: the gripper phase joins the state token (its own embedding, summed)
        self.phase_embedding = PhaseEmbedding(c.d_model) if c.phase_state else None
        self._gripper = (gripper_index(action_spec.names, "the action spec") if c.phase_state
                         else -1)
        self._phase = PhaseTracker()
        self.tokens_per_frame = (c.image_tokens + (MAX_OBJECT_BOXES if c.object_tokens else 0)
                                 + (c.wrist_tokens if c.wrist_camera else 0)
                                 + int(c.use_state))
        # learned position of every token in the window: (frame, token within frame)
        self.pos = nn.Parameter(torch.randn(c.history, self.tokens_per_frame, c.d_model) * 0.02)
        self.transformer = Transformer(c.transformer)
        self.head = nn.Linear(c.d_model, len(action_spec) * c.action_bins)
        if c.pretrained_backbone:
            for tokenizer in (self.image_tokenizer, self.wrist_tokenizer):
                if tokenizer is not None:
                    load_backbone(tokenizer.backbone,
                                  resolve_pretrained(c.pretrained_backbone, c.backbone))
        # Multimodal prompts: the crops' vectors join the sentence embedding that FiLM reads
        # (policy/tokenizers/prompt.py); a text-only prompt adds exactly zero.
        self.prompt_encoder = self.build_prompt_encoder(c.text_dim)
        self._text_emb: torch.Tensor | None = None
        self._frames: deque[torch.Tensor] = deque(maxlen=c.history)

    # -- tokens ---------------------------------------------------------------------------

    def encode_text(self, instructions: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings (B, text_dim) from the shared, cached text encoder."""
        emb = get_text_encoder(self.config.text_encoder).encode(list(instructions))
        if emb.shape[-1] != self.config.text_dim:
            raise ValueError(f"text encoder {self.config.text_encoder!r} gives {emb.shape[-1]}-d "
                             f"embeddings; config text_dim is {self.config.text_dim}")
        return emb.to(self.device)

    def conditioning(self, instructions: Sequence[str],
                     prompt: torch.Tensor | None = None) -> torch.Tensor:
        """What FiLM reads (B, text_dim): the sentence embedding, plus the sum of the prompt
        crops' vectors (uint8 (B, K, S, S, 3)) for a policy that reads prompt images."""
        text = self.encode_text(instructions)
        if self.prompt_encoder is None:
            return text
        if prompt is None:
            raise ValueError("this RT-1 reads prompt images (prompt_images=true); none given")
        filled = slot_mask(instructions, self.prompt_encoder.slots, device=text.device)
        return text + self.prompt_encoder.pooled(prompt, filled).to(text.dtype)

    @property
    def reads_wrist(self) -> bool:
        return bool(self.config.wrist_camera)

    @property
    def reads_object_boxes(self) -> bool:
        return bool(self.config.object_tokens)

    def _image_tokens(self, tokenizer: nn.Module, image: torch.Tensor, text: torch.Tensor,
                      augment: bool, size: int | None = None,
                      boxes: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) through one camera's stem -> tokens (B, T, n, d); ``size``:
        that stem's resolution (None: resize_to); the random shift scales with it. ``boxes``
        (B, T, K, 4): the frames' object boxes (object_tokens), moved with the shift."""
        c = self.config
        b, t = image.shape[:2]
        size = c.resize_to if size is None else size
        x = preprocess_images(rearrange(image, "b t h w c -> (b t) h w c"), size)
        shift = c.augment_shift
        if shift > 0 and c.resize_to and size != c.resize_to:
            shift = max(1, round(shift * size / c.resize_to))
        if augment and shift > 0:
            x, offsets = random_shift_offsets(rearrange(x, "(b t) c h w -> b t c h w", b=b),
                                              shift)
            x = rearrange(x, "b t c h w -> (b t) c h w")
            if boxes is not None:
                boxes = shift_boxes(boxes, offsets, shift, x.shape[-1])
        extra = {} if boxes is None else {"boxes": rearrange(boxes, "b t k f -> (b t) k f")}
        tokens = tokenizer(x, repeat(text, "b d -> (b t) d", t=t), **extra)  # (BT, n, d)
        return rearrange(tokens, "(b t) n d -> b t n d", b=b)

    def frame_tokens(self, image: torch.Tensor, state: torch.Tensor, text: torch.Tensor,
                     augment: bool, wrist: torch.Tensor | None = None,
                     boxes: torch.Tensor | None = None,
                     phase: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, T, H, W, 3), state (B, T, S), text (B, Dt) [, wrist uint8 (B, T, H', W',
        3)] [, object boxes (B, T, K, 4)] [, gripper phase (B, T, 3)] -> tokens (B, T, n, d):
        front image (its objects after TokenLearner's tokens), wrist image, state (+ phase)."""
        if (phase is None) != (self.phase_embedding is None):
            raise ValueError("the gripper phase is required exactly when phase_state=True (this "
                             f"RT-1: phase_state={self.config.phase_state})")
        if (boxes is None) == self.reads_object_boxes:
            raise ValueError("object boxes are required exactly when object_tokens=True (this "
                             f"RT-1: object_tokens={self.config.object_tokens})")
        parts = [self._image_tokens(self.image_tokenizer, image, text, augment, boxes=boxes)]
        if self.wrist_tokenizer is not None:
            if wrist is None:
                raise ValueError("this RT-1 reads the wrist camera (wrist_camera=True); no "
                                 "wrist image was given")
            parts.append(self._image_tokens(self.wrist_tokenizer, wrist, text, augment,
                                            self.config.wrist_resize_to))
        if self.state_tokenizer is not None:
            token = self.state_tokenizer(state)
            if self.phase_embedding is not None:
                token = token + self.phase_embedding(phase)
            parts.append(rearrange(token, "b t d -> b t 1 d"))
        return torch.cat(parts, dim=2)

    def unpack_phase(self, batch: Mapping[str, Any], image: torch.Tensor) -> torch.Tensor:
        """The batch's gripper phase float (B, T, 3) on the model's device."""
        if PHASE not in batch:
            raise KeyError(f"batch lacks {PHASE!r}: this RT-1 reads the gripper phase "
                           "(phase_state=true), so its dataset must be built with "
                           f"phase_state=True (data.phase_state); has {sorted(batch)}")
        phase = batch[PHASE]
        if tuple(phase.shape) != (*image.shape[:2], PHASE_DIM):
            raise ValueError(f"batch phase has shape {tuple(phase.shape)}; expected "
                             f"({image.shape[0]}, {image.shape[1]}, {PHASE_DIM})")
        return phase.to(self.device).float()

    def action_logits(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Frame tokens (B, T, n, d) + valid frames (B, T) -> logits (B, T, A, bins).

        Frames are right-aligned in the window (the newest frame takes the last position),
        so a short history at the start of an episode looks like a padded training window.
        """
        b, t, n, _ = tokens.shape
        if t > self.config.history:
            raise ValueError(f"{t} frames given; this policy's history is {self.config.history}")
        x = rearrange(tokens + self.pos[self.config.history - t:], "b t n d -> b (t n) d")
        frame = repeat(torch.arange(t, device=x.device), "t -> (t n)", n=n)  # frame of a token
        key_valid = repeat(valid, "b t -> b 1 (t n)", n=n)  # (B, 1, N): keys of real frames
        allowed = (rearrange(frame, "q -> q 1") >= rearrange(frame, "k -> 1 k")) & key_valid
        allowed |= torch.eye(t * n, dtype=torch.bool, device=x.device)  # no empty rows
        h = self.transformer(x, rearrange(allowed, "b q k -> b 1 q k"))  # (B, N, d)
        h = reduce(h, "b (t n) d -> b t d", "mean", t=t)  # one vector per frame
        return rearrange(self.head(h), "b t (a k) -> b t a k", a=len(self.action_spec))

    # -- Policy API -----------------------------------------------------------------------

    def logits_and_targets(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """A contract batch -> logits (B, T, A, K), target bins (B, T, A), valid (B, T)."""
        if self.training and self.config.augment_background > 0:  # before mirror and shift
            batch = background_batch(batch, self.config.augment_background)
        batch = self.augment(batch)
        image, state, action, valid = self._unpack(batch)
        wrist = self.unpack_wrist(batch, image) if self.reads_wrist else None
        boxes = self.unpack_boxes(batch, image) if self.reads_object_boxes else None
        prompt = self.unpack_prompt(batch) if self.reads_prompt_images else None
        phase = self.unpack_phase(batch, image) if self.phase_embedding is not None else None
        text = self.conditioning(batch[INSTRUCTION], prompt)
        tokens = self.frame_tokens(image, state, text, augment=self.training, wrist=wrist,
                                   boxes=boxes, phase=phase)
        return self.action_logits(tokens, valid), self.action_tokenizer.encode(action), valid

    def _reset(self, instruction: str) -> None:
        prompt = self.episode_prompt() if self.reads_prompt_images else None
        self._text_emb = self.conditioning([instruction], prompt)
        self._frames.clear()
        self._phase.reset()

    def _act(self, image: torch.Tensor, state: torch.Tensor,
             wrist: torch.Tensor | None = None, boxes: torch.Tensor | None = None
             ) -> torch.Tensor:
        phase = None
        if self.phase_embedding is not None:  # from this episode's own gripper commands
            phase = torch.as_tensor(self._phase.current(), device=state.device)[None, None]
        tok = self.frame_tokens(image[None, None], state[None, None], self._text_emb,
                                augment=False,
                                wrist=None if wrist is None else wrist[None, None],
                                boxes=None if boxes is None else boxes[None, None],
                                phase=phase)
        self._frames.append(tok[0, 0])
        t, n = self.config.history, len(self._frames)
        tokens = torch.zeros(1, t, *tok.shape[2:], device=tok.device)
        tokens[0, t - n:] = torch.stack(list(self._frames))
        valid = torch.arange(t, device=tok.device)[None] >= t - n  # (1, T)
        logits = self.action_logits(tokens, valid)[0, -1]  # (A, K)
        action = self.action_tokenizer.decode(logits.argmax(-1))
        if self.phase_embedding is not None:
            self._phase.sent(float(action[self._gripper]))
        return action
