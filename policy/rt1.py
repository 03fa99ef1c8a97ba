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
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from envs.spec import INSTRUCTION, STATE_NAMES, ActionSpec
from policy.background import background_batch, check_background_masks
from policy.base import Policy, binned_action_loss, check_training_targets, token_metrics
from policy.text import get_text_encoder
from policy.tokenizers.actions import UniformActionTokenizer
from policy.tokenizers.images import (
    BACKBONES,
    LITE0_BLOCKS,
    RT1ImageTokenizer,
    check_conv_stem,
    load_backbone,
    preprocess_images,
    random_shift,
    resolve_pretrained,
)
from policy.tokenizers.state import StateTokenizer
from policy.transformer import Transformer, TransformerConfig


@dataclass
class RT1Config:
    """RT-1 model and tokenizer settings; every field is saved in config.json."""

    history: int = 2  # frames in context (RT-1 used 6; prototype: 3 frames cost 2.3x)
    resize_to: int | None = 64  # model resolution; prototype: 64 px learned 1.6x faster than 96
    augment_shift: int = 4  # random-shift pixels at model resolution during training; 0 = off
    augment_mirror: float = 0.5  # share of training samples mirrored left-right (augment.py)
    # share of training samples whose background pixels get a generated table (needs a store
    # collected with collect.background_mask=true; policy/background.py); 0 = off
    augment_background: float = 0.0
    conv_channels: tuple[int, ...] = (16, 32, 64, 128)  # stem width, then one stage per entry
    conv_strides: tuple[int, ...] = (2, 2, 1)  # stride of each stage after the stride-2 stem
    conv_blocks: int = 1  # MBConv blocks per stage
    conv_expand: int = 2  # MBConv expansion ratio (EfficientNet uses 6; 2 is CPU-friendly)
    conv_fused_stages: int = 3  # leading Fused-MBConv stages (EfficientNetV2): 1.3x faster
    image_tokens: int = 8  # TokenLearner tokens per frame (RT-1: 8)
    position_encoding: bool = True  # add each feature cell's (x, y) before TokenLearner
    text_norm: bool = True  # LayerNorm on the sentence embedding before FiLM; False: raw
    use_state: bool = True  # one end-effector-state token per frame
    d_model: int = 128
    n_layer: int = 3
    n_head: int = 4
    dropout: float = 0.1
    action_bins: int = 256  # uniform bins per action dimension (RT-1: 256)
    label_sigma_bins: float = 4.0  # Gaussian target width in bins; 0 = one-hot
    action_bounds: str = "spec"  # "spec": the action spec's bounds; "data": stats p01/p99
    text_encoder: str | None = None  # None: the offline all-MiniLM-L6-v2 package
    text_dim: int = 384  # width of the sentence embedding (all-MiniLM-L6-v2: 384)
    pretrained_backbone: str | None = None  # local safetensors/state-dict file; "imagenet":
    # the shipped ImageNet weights of `backbone` (efficientnet_lite0 only)
    backbone: str = "film_efficientnet"  # or "efficientnet_lite0": RT-1's ImageNet family
    lite_blocks: int = 8  # efficientnet_lite0: how many of its blocks (8: through 80 channels)
    lite_frozen: int = 0  # efficientnet_lite0: stem + this many blocks kept frozen, no FiLM
    wrist_camera: bool = False  # also read the wrist camera: its own FiLM stem + TokenLearner
    wrist_tokens: int = 8  # TokenLearner tokens per wrist frame (with wrist_camera)

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.conv_strides = tuple(int(s) for s in self.conv_strides)
        if self.history < 1:
            raise ValueError(f"history={self.history}; expected >= 1 frame")
        if self.resize_to is not None and self.resize_to < 16:
            raise ValueError(f"resize_to={self.resize_to}; expected None or >= 16 px")
        if self.augment_shift < 0:
            raise ValueError(f"augment_shift={self.augment_shift}; expected >= 0")
        check_training_targets(self.label_sigma_bins, self.augment_mirror)
        if not 0.0 <= self.augment_background <= 1.0:
            raise ValueError(f"augment_background={self.augment_background}; expected a "
                             "probability in [0, 1]")
        check_conv_stem(self.conv_channels, self.conv_strides, self.conv_blocks,
                        self.conv_expand, self.conv_fused_stages, self.image_tokens)
        if self.action_bins < 2:
            raise ValueError(f"action_bins={self.action_bins}; expected >= 2")
        if self.action_bounds not in ("spec", "data"):
            raise ValueError(f"action_bounds={self.action_bounds!r}; expected 'spec' or 'data'")
        if self.text_dim < 1:
            raise ValueError(f"text_dim={self.text_dim}; expected >= 1")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r}; expected one of {BACKBONES}")
        if self.backbone == "efficientnet_lite0" and not 1 <= self.lite_blocks <= len(
                LITE0_BLOCKS):
            raise ValueError(f"lite_blocks={self.lite_blocks}; expected 1..{len(LITE0_BLOCKS)}")
        if self.backbone == "efficientnet_lite0" and not 0 <= self.lite_frozen < self.lite_blocks:
            raise ValueError(f"lite_frozen={self.lite_frozen}; expected 0..{self.lite_blocks - 1}"
                             f" (lite_blocks={self.lite_blocks}: at least one block trains)")
        if self.wrist_camera and self.wrist_tokens < 1:
            raise ValueError(f"wrist_tokens={self.wrist_tokens}; expected >= 1 with wrist_camera")
        if self.pretrained_backbone == "imagenet" and self.backbone != "efficientnet_lite0":
            raise ValueError(f"pretrained_backbone='imagenet' needs backbone="
                             f"'efficientnet_lite0'; got {self.backbone!r}")
        self.transformer  # noqa: B018 - validates d_model / n_head / dropout

    @property
    def transformer(self) -> TransformerConfig:
        return TransformerConfig(d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head,
                                 dropout=self.dropout)


class RT1Policy(Policy):
    kind = "rt1"
    config_class = RT1Config

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
        self.image_tokenizer = RT1ImageTokenizer(num_tokens=c.image_tokens, **stem)
        # The wrist camera gets a stem of its own (same settings): it sees the scene from the
        # hand, at another scale and angle, so sharing the front stem's filters buys little.
        self.wrist_tokenizer = (RT1ImageTokenizer(num_tokens=c.wrist_tokens, **stem)
                                if c.wrist_camera else None)
        self.state_tokenizer = (StateTokenizer(state_dim=len(STATE_NAMES), d_model=c.d_model,
                                               stats=self.stats) if c.use_state else None)
        self.tokens_per_frame = (c.image_tokens + (c.wrist_tokens if c.wrist_camera else 0)
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

    @property
    def reads_wrist(self) -> bool:
        return bool(self.config.wrist_camera)

    def _image_tokens(self, tokenizer: nn.Module, image: torch.Tensor, text: torch.Tensor,
                      augment: bool) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) through one camera's stem -> tokens (B, T, n, d)."""
        b, t = image.shape[:2]
        x = preprocess_images(rearrange(image, "b t h w c -> (b t) h w c"), self.config.resize_to)
        if augment and self.config.augment_shift > 0:
            x = random_shift(rearrange(x, "(b t) c h w -> b t c h w", b=b),
                             self.config.augment_shift)
            x = rearrange(x, "b t c h w -> (b t) c h w")
        tokens = tokenizer(x, repeat(text, "b d -> (b t) d", t=t))  # (BT, n, d)
        return rearrange(tokens, "(b t) n d -> b t n d", b=b)

    def frame_tokens(self, image: torch.Tensor, state: torch.Tensor, text: torch.Tensor,
                     augment: bool, wrist: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, T, H, W, 3), state (B, T, S), text (B, Dt) [, wrist uint8 (B, T, H', W',
        3)] -> tokens (B, T, n, d): front image, wrist image, state."""
        parts = [self._image_tokens(self.image_tokenizer, image, text, augment)]
        if self.wrist_tokenizer is not None:
            if wrist is None:
                raise ValueError("this RT-1 reads the wrist camera (wrist_camera=True); no "
                                 "wrist image was given")
            parts.append(self._image_tokens(self.wrist_tokenizer, wrist, text, augment))
        if self.state_tokenizer is not None:
            parts.append(rearrange(self.state_tokenizer(state), "b t d -> b t 1 d"))
        return torch.cat(parts, dim=2)

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
        text = self.encode_text(batch[INSTRUCTION])
        tokens = self.frame_tokens(image, state, text, augment=self.training, wrist=wrist)
        return self.action_logits(tokens, valid), self.action_tokenizer.encode(action), valid

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets, valid = self.logits_and_targets(batch)
        loss = binned_action_loss(logits, targets, valid, self.config.label_sigma_bins)
        metrics = {"loss": loss.item(),
                   **token_metrics(logits, targets, valid, self.action_spec.names)}
        return loss, metrics

    def _reset(self, instruction: str) -> None:
        self._text_emb = self.encode_text([instruction])
        self._frames.clear()

    def _act(self, image: torch.Tensor, state: torch.Tensor,
             wrist: torch.Tensor | None = None) -> torch.Tensor:
        tok = self.frame_tokens(image[None, None], state[None, None], self._text_emb,
                                augment=False,
                                wrist=None if wrist is None else wrist[None, None])
        self._frames.append(tok[0, 0])
        t, n = self.config.history, len(self._frames)
        tokens = torch.zeros(1, t, *tok.shape[2:], device=tok.device)
        tokens[0, t - n:] = torch.stack(list(self._frames))
        valid = torch.arange(t, device=tok.device)[None] >= t - n  # (1, T)
        logits = self.action_logits(tokens, valid)[0, -1]  # (A, K)
        return self.action_tokenizer.decode(logits.argmax(-1))
