"""Gato (Reed et al. 2022) for one embodiment: one flat token sequence, actions autoregressive.

The context is the instruction's text tokens followed by one block of tokens per control step:

    [text] | [36 image patches][state][separator][a_0 ... a_7] | [patches][state][sep][a_0 ...]

Image patches come from :class:`~policy.tokenizers.images.PatchTokenizer` (16x16 patches, a
ResNet v2 block, row/column encodings); actions are mu-law companded and cut into 1024 bins
(:class:`~policy.tokenizers.actions.MuLawActionTokenizer`) and embedded as tokens. The mask is
causal over tokens; the output at the separator predicts a_0 and the output at a_i predicts
a_i+1; the loss is on action tokens only. The text is either one token projected from the
frozen sentence embedding (``text_mode="sentence"``) or WordPiece ids with learned embeddings
(``text_mode="subword"``, Gato's own choice). ``patch_film`` (off by default; not Gato)
also conditions the patch encoder on the sentence with FiLM, as RT-1 conditions its convs:
at this project's scale Gato's attention alone did not ground the instruction
(docs/experiments/2026-11-28-gato.md).

Two options (off by default; docs/experiments/2026-11-30-gato-grounding.md) separate what
Gato's grounding failure is made of, keeping the one flat sequence, the autoregressive action
tokens and Gato's mu-law bins:

- ``image_tokenizer="rt1_tokens"``: each frame becomes RT-1's image tokens instead of patches
  (:class:`~policy.tokenizers.images.RT1ImageTokenizer`: a FiLM-conditioned conv net over
  the whole frame, Fourier positions, TokenLearner to ``image_tokens`` tokens), so the image
  stem and the decoding can be judged apart.
- ``image_tokenizer="film_grid"``: RT-1's FiLM-conditioned conv net over the whole frame, its
  feature map (with Fourier positions) averaged over the patch grid, so each frame gives one
  token per ``patch_size`` patch in row-major order, as Gato's patches, but each computed
  with the instruction by a deep stem that sees past its patch (a ViT "hybrid" tokenizer).
  It separates "conditioned on the words by a deep stem" from TokenLearner's pooling by
  content; ``grounding_loss`` scores its tokens as patches. ``grid_pool="concat"`` projects
  each cell's feature vectors concatenated instead of their mean (ViT's patch embedding on
  the feature map), so where in its patch a feature sits survives into the token.
- ``image_tokenizer="film_objects"`` (VIMA's object-centric tokens, Jiang et al. 2023): the
  same stem and Fourier positions, its feature map averaged over each object's box
  (obs["object_boxes"]: up to MAX_OBJECT_BOXES rows, sorted by place, never by role) plus an
  embedding of the box's centre and size, one token per slot and a learned "no object" token
  in empty slots; the random shift and the mirror move the boxes with the pixels
  (policy/tokenizers/objects.py). A frame is then as many tokens as object slots, each
  standing for one thing on the table rather than one square of the frame.
- ``text_position="per_step"``: the text token is repeated in every step, after its image and
  state tokens and just before the separator, instead of once before the first step; the
  text token can then attend to the patches of its own frame, and every action token has the
  instruction a few positions away:

    [patches][state][text][separator][a_0 ... a_7] | [patches][state][text][sep][a_0 ...]

Measured at the demo's scale (7,500 steps), neither made Gato ground: with RT-1's tokens its
x/y predictions still ignore the object's name, while RT-1 with the same stem grounds by step
5,000, so what Gato lacks lies after the image stem. Two more options (off by default) take
the decoding side apart:

- ``readout="frame_mean"`` (a diagnostic that leaves Gato's autoregressive decoding): a step
  has no action tokens, ``[image][state][separator]``, and one head over the mean of that
  step's hidden states gives the bins of every action dimension at once, as RT-1 reads its
  frame; the mask stays Gato's (causal over tokens).
- ``text_in_sequence=False``: no text token in the sequence; the sentence reaches the policy
  only through the image stem's FiLM (``rt1_tokens`` or ``patch_film``, required).

The frame-mean readout grounds and the per-token one does not, so a last option keeps Gato's
per-token autoregressive decoding and adds the frame-mean gradient path in training alone:

- ``aux_frame_mean=w`` (w > 0; 0 = off): a second head over the mean of each step's
  observation tokens' hidden states (image, state, per-step text and separator; never the
  step's own action tokens, so it does not see the actions it predicts, teacher-forced)
  predicts every action
  dimension's bins, and its cross-entropy (the main loss's targets and bins) is added with
  weight w. Acting never reads that head: it decodes per token with the KV cache as before.

Only local positions exist (a token's place within its step, Gato's "local position
encodings", plus the patch row/column): nothing depends on a step's absolute index, so the
attention window can slide. Every token sees the text and the tokens of the last ``history``
steps (its own included), in training as in acting. Acting keeps a key/value cache: a control
step feeds only its own tokens (patches + state + separator, then one token per action
dimension) and evicts the step that left the window, so one step costs one step, not the
whole context. Because the window lives in the mask, the cached decoding equals a full
recomputation over the whole episode under the same mask (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from envs.spec import INSTRUCTION, MAX_OBJECT_BOXES, OBJECT_PIXELS, STATE_NAMES, ActionSpec
from policy.base import Policy
from policy.gato.configuration import GatoConfig
from policy.registry import register_policy
from policy.text import get_subword_tokenizer, get_text_encoder
from policy.tokenizers.actions import MuLawActionTokenizer
from policy.tokenizers.images import (
    PatchTokenizer,
    RT1ImageTokenizer,
    load_backbone,
    preprocess_images,
    random_shift_offsets,
    resolve_pretrained,
)
from policy.tokenizers.objects import shift_boxes
from policy.tokenizers.prompt import slot_mask
from policy.tokenizers.state import StateTokenizer
from policy.transformer import KVCache, Transformer

TEXT_STEP = -1  # step id of prefix text tokens: always visible, never evicted


def window_mask(q_step: torch.Tensor, q_pos: torch.Tensor, k_step: torch.Tensor,
                k_pos: torch.Tensor, k_valid: torch.Tensor, window: int) -> torch.Tensor:
    """Boolean attention mask (B, 1, nq, nk): causal, within ``window`` steps, valid keys.

    q_step/q_pos (nq,), k_step/k_pos (nk,): step id (TEXT_STEP for text) and absolute order
    of queries and keys; k_valid (B, nk) False on padding. A token always sees itself, so no
    row is empty.
    """
    causal = k_pos[None, :] <= q_pos[:, None]  # (nq, nk)
    in_window = (k_step[None, :] == TEXT_STEP) | (q_step[:, None] - k_step[None, :] < window)
    allowed = (causal & in_window)[None] & k_valid[:, None, :]  # (B, nq, nk)
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]
    return rearrange(allowed, "b q k -> b 1 q k")


@register_policy("gato", GatoConfig)
class GatoPolicy(Policy):
    config: GatoConfig

    def __init__(self, config: GatoConfig, action_spec: ActionSpec,
                 env_info: Mapping[str, Any] | None, stats: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(config, action_spec, env_info, stats)
        c = config
        h, w, _ = self.image_shape
        size = c.resize_to or h
        if c.image_tokenizer == "patches" and c.resize_to is None and (h != w or h % c.patch_size):
            raise ValueError(f"image shape {self.image_shape} does not cut into {c.patch_size} px "
                             "patches; set resize_to to a multiple of patch_size")
        self.action_tokenizer = MuLawActionTokenizer.from_spec(action_spec, c.action_bins, c.mu,
                                                               c.mu_m)
        if c.image_tokenizer == "patches":
            self.image_tokenizer = PatchTokenizer(
                d_model=c.d_model, image_size=size, patch_size=c.patch_size,
                channels=c.patch_channels, cond_dim=c.text_dim if c.patch_film else None,
                encoder=c.patch_encoder, lite_blocks=c.lite_blocks, lite_frozen=c.lite_frozen)
            n_image = self.image_tokenizer.num_patches
        else:  # rt1_tokens / film_grid / film_objects: RT-1's stem, as RT1Policy builds it
            grid = size // c.patch_size if c.image_tokenizer == "film_grid" else None
            objects = MAX_OBJECT_BOXES if c.image_tokenizer == "film_objects" else None
            if grid is not None and size % c.patch_size:
                raise ValueError(f"image_tokenizer='film_grid': a {size} px frame does not cut "
                                 f"into {c.patch_size} px patches; set resize_to to a multiple "
                                 "of patch_size")
            self.image_tokenizer = RT1ImageTokenizer(
                d_model=c.d_model, text_dim=c.text_dim, channels=c.conv_channels,
                strides=c.conv_strides, blocks=c.conv_blocks, expand=c.conv_expand,
                num_tokens=c.image_tokens, fused_stages=c.conv_fused_stages, grid=grid,
                grid_pool=c.grid_pool, image_size=size, objects=objects)
            n_image = (objects if objects is not None else c.image_tokens if grid is None
                       else grid * grid)
        self.state_tokenizer = (StateTokenizer(state_dim=len(STATE_NAMES), d_model=c.d_model,
                                               stats=self.stats) if c.use_state else None)
        if c.text_mode == "sentence":
            # LayerNorm: unit-norm sentence embeddings are too small for a fresh Linear
            # (see RT1ImageTokenizer.text_norm)
            self.text_proj = nn.Sequential(nn.LayerNorm(c.text_dim),
                                           nn.Linear(c.text_dim, c.d_model))
        else:
            vocab = get_subword_tokenizer(c.text_encoder).vocab_size
            self.text_embed = nn.Embedding(vocab, c.d_model)
            self.text_pos = nn.Parameter(torch.randn(c.max_text_tokens, c.d_model) * 0.02)
        # Multimodal prompts: one token per prompt-image slot, after the text in the prefix
        # (policy/tokenizers/prompt.py), as Gato puts images among its tokens.
        self.prompt_encoder = self.build_prompt_encoder(c.d_model, empty_token=True)
        self.separator = nn.Parameter(torch.randn(c.d_model) * 0.02)
        self.n_actions = len(action_spec)
        # frame_mean: no action tokens in the sequence; one head gives every dimension's bins
        self.frame_mean = c.readout == "frame_mean"
        if not self.frame_mean:
            self.action_embed = nn.Embedding(c.action_bins, c.d_model)
        self.per_step_text = c.text_position == "per_step"
        self.text_in_sequence = c.text_in_sequence and not self.per_step_text  # the prefix
        # tokens of a step before its separator: image, state, and (per_step) the text token
        self.obs_len = n_image + int(c.use_state) + int(self.per_step_text)
        self.step_len = self.obs_len + 1 + (0 if self.frame_mean else self.n_actions)
        self.local_pos = nn.Parameter(torch.randn(self.step_len, c.d_model) * 0.02)
        self.transformer = Transformer(c.transformer)
        self.head = nn.Linear(c.d_model,
                              c.action_bins * (self.n_actions if self.frame_mean else 1))
        # aux_frame_mean: a training-only head over the mean of a step's observation tokens
        self.aux_head = (nn.Linear(c.d_model, c.action_bins * self.n_actions)
                         if c.aux_frame_mean > 0 else None)
        # grounding_loss: queries for the named object and the second one from the
        # instruction's tokens, keys from each frame's patch outputs (training only)
        self.n_image = n_image
        self.ground_query = (nn.Linear(c.d_model, 2 * c.d_model)
                             if c.grounding_loss > 0 else None)
        self.ground_key = nn.Linear(c.d_model, c.d_model) if c.grounding_loss > 0 else None
        self._ground_metrics: tuple[torch.Tensor, dict[str, float]] | None = None
        if c.pretrained_backbone:
            target = (self.image_tokenizer.backbone if c.image_tokenizer != "patches"
                      else self.image_tokenizer.lite if c.patch_encoder == "efficientnet_lite0"
                      else self.image_tokenizer)
            load_backbone(target, resolve_pretrained(c.pretrained_backbone, c.patch_encoder))
        # acting state (see _reset / _act)
        self.use_kv_cache = True  # False: recompute the whole episode per token (reference)
        self.last_logits: torch.Tensor | None = None  # (A, bins) of the last select_action
        self.last_tokens: torch.Tensor | None = None  # (A,) bins it chose
        self._cache: KVCache | None = None
        self._k_step = torch.zeros(0, dtype=torch.long)
        self._k_pos = torch.zeros(0, dtype=torch.long)
        self._next_pos = 0
        self._step = 0
        self._pending: torch.Tensor | None = None  # last action token of the previous step
        self._text: torch.Tensor | None = None  # (1, L, d) the prefix (L = 0 for per_step)
        self._step_text: torch.Tensor | None = None  # (1, 1, d) per_step's text token
        self._cond: torch.Tensor | None = None  # (1, text_dim) image-stem FiLM input, or None
        self._history: list[torch.Tensor] = []  # uncached reference: every step's tokens

    # -- tokens ---------------------------------------------------------------------------

    def text_tokens(self, instructions: Sequence[str]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Instruction strings -> tokens (B, L, d), a mask (B, L) True on real tokens, and the
        image stem's FiLM input (B, text_dim) or None: the normalized sentence for
        ``patch_film``, the raw one for ``rt1_tokens`` (RT-1's stem has its own LayerNorm)."""
        c = self.config
        if c.text_mode == "sentence":
            emb = get_text_encoder(c.text_encoder).encode(list(instructions)).to(self.device)
            if emb.shape[-1] != c.text_dim:
                raise ValueError(f"text encoder gives {emb.shape[-1]}-d embeddings; config "
                                 f"text_dim is {c.text_dim}")
            norm = self.text_proj[0](emb)
            tokens = rearrange(self.text_proj[1](norm), "b d -> b 1 d")
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=self.device)
            cond = norm if c.patch_film else emb if c.image_tokenizer != "patches" else None
            return tokens, mask, cond
        ids, mask = get_subword_tokenizer(c.text_encoder).encode(list(instructions),
                                                                 c.max_text_tokens)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.text_embed(ids) + self.text_pos[: ids.shape[1]], mask, None

    @property
    def reads_object_boxes(self) -> bool:
        return self.config.image_tokenizer == "film_objects"

    def observation_tokens(self, image: torch.Tensor, state: torch.Tensor, augment: bool,
                           cond: torch.Tensor | None = None, text: torch.Tensor | None = None,
                           boxes: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, T, H, W, 3), state (B, T, S) -> [image, state, (text), separator]
        (B, T, n, d).

        ``cond`` (B, text_dim): the image stem's FiLM input (``patch_film``, ``rt1_tokens``);
        ``text`` (B, 1, d): the text token, required exactly when ``text_position`` is
        "per_step"; ``boxes`` (B, T, K, 4): the frames' object boxes (``film_objects``),
        moved with the random shift."""
        if (text is None) == self.per_step_text:
            raise ValueError("text tokens are required exactly when text_position='per_step'")
        if (boxes is None) == self.reads_object_boxes:
            raise ValueError("object boxes are required exactly when image_tokenizer="
                             "'film_objects'")
        b, t = image.shape[:2]
        x = preprocess_images(rearrange(image, "b t h w c -> (b t) h w c"), self.config.resize_to)
        if augment and self.config.augment_shift > 0:
            x, offsets = random_shift_offsets(rearrange(x, "(b t) c h w -> b t c h w", b=b),
                                              self.config.augment_shift)
            x = rearrange(x, "b t c h w -> (b t) c h w")
            if boxes is not None:
                boxes = shift_boxes(boxes, offsets, self.config.augment_shift, x.shape[-1])
        if cond is not None:
            cond = cond.repeat_interleave(t, dim=0)  # (B * T, text_dim), frames of a sample
        extra = {} if boxes is None else {"boxes": rearrange(boxes, "b t k f -> (b t) k f")}
        parts = [rearrange(self.image_tokenizer(x, cond, **extra), "(b t) p d -> b t p d", b=b)]
        if self.state_tokenizer is not None:
            parts.append(rearrange(self.state_tokenizer(state), "b t d -> b t 1 d"))
        if text is not None:
            parts.append(repeat(text, "b l d -> b t l d", t=t))
        parts.append(self.separator.expand(b, t, 1, -1))
        return torch.cat(parts, dim=2) + self.local_pos[: self.obs_len + 1]

    def frame_logits(self, h: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """frame_mean readout: hidden states (..., n, d) of one step's tokens -> logits
        (..., A, K) of every action dimension, from their mean (RT-1's readout). ``head``:
        another head than ``self.head`` (aux_frame_mean's ``aux_head``)."""
        head = self.head if head is None else head
        return rearrange(head(h.mean(dim=-2)), "... (a k) -> ... a k", a=self.n_actions)

    def action_tokens(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Action bins (..., k) for dims first..first+k-1 -> embeddings (..., k, d)."""
        k = tokens.shape[-1]
        start = self.obs_len + 1 + first
        return self.action_embed(tokens) + self.local_pos[start:start + k]

    # -- Policy API -----------------------------------------------------------------------

    def logits_and_targets(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """A contract batch -> logits (B, T, A, K), target bins (B, T, A), valid (B, T)."""
        logits, _, targets, valid = self._outputs_and_targets(batch)
        return logits, targets, valid

    def _outputs_and_targets(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor | None, ...]:
        """logits_and_targets with aux_frame_mean's logits (or None) second; Policy.forward
        adds their loss times ``aux_loss_weight``."""
        batch = self.augment(batch)
        image, state, action, valid = self._unpack(batch)
        targets = self.action_tokenizer.encode(action)  # (B, T, A)
        prompt = self.unpack_prompt(batch) if self.reads_prompt_images else None
        boxes = self.unpack_boxes(batch, image) if self.reads_object_boxes else None
        logits, aux, query, patches = self._sequence(image, state, targets, valid,
                                                     batch[INSTRUCTION], prompt, boxes)
        if self.ground_query is not None and self.training:
            self._ground_metrics = self.grounding(query, patches, batch, valid, image.shape[2])
        return logits, aux, targets, valid

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Policy.forward, plus grounding_loss's term when training with it on."""
        self._ground_metrics = None
        loss, metrics = super().forward(batch)
        if self._ground_metrics is not None:
            ground, extra = self._ground_metrics
            self._ground_metrics = None
            loss = loss + self.config.grounding_loss * ground
            metrics.update(extra, loss=loss.item())
        return loss, metrics

    def grounding(self, query: torch.Tensor, patches: torch.Tensor, batch: Mapping[str, Any],
                  valid: torch.Tensor, image_px: int) -> tuple[torch.Tensor, dict[str, float]]:
        """grounding_loss's cross-entropy over each frame's patches, and its accuracy.

        query (B, d): the mean of the instruction's tokens; patches (B, T, P, d): the
        transformer's outputs at each frame's patch tokens; labels: batch["object_pixels"]
        (B, T, 2, 2), (u, v) pixels of the named and the second object in the camera image
        (NaN where a task has no second object), mapped to the patch that holds them at model
        resolution. The random shift moves the image by a few pixels that the labels do not
        follow: label noise of at most augment_shift px, under a quarter of a 16 px patch."""
        if OBJECT_PIXELS not in batch:
            raise KeyError(f"batch lacks {OBJECT_PIXELS!r}: grounding_loss needs a store "
                           "collected with collect.object_pixels=true")
        c = self.config
        size = c.resize_to or image_px
        grid = size // c.patch_size
        pix = batch[OBJECT_PIXELS].to(self.device).float() * (size / image_px)  # (B, T, 2, 2)
        cell = torch.div(pix, c.patch_size, rounding_mode="floor")
        inside = (torch.isfinite(pix).all(-1) & (pix >= 0).all(-1) & (pix < size).all(-1)
                  & valid[..., None])  # (B, T, 2)
        label = (cell[..., 1] * grid + cell[..., 0]).nan_to_num(0).long().clamp(0, grid * grid - 1)
        q = rearrange(self.ground_query(query), "b (o d) -> b o d", o=2)
        k = self.ground_key(patches)  # (B, T, P, d)
        scores = torch.einsum("bod,btpd->btop", q, k) / math.sqrt(q.shape[-1])  # (B, T, 2, P)
        if not bool(inside.any()):
            zero = scores.sum() * 0.0  # keeps the graph (DDP) without a label to learn from
            return zero, {"grounding_loss": 0.0, "grounding_acc": float("nan")}
        ce = F.cross_entropy(scores[inside].float(), label[inside])
        acc = (scores[inside].argmax(-1) == label[inside]).float().mean()
        return ce, {"grounding_loss": ce.item(), "grounding_acc": acc.item()}

    def sequence_logits(self, image: torch.Tensor, state: torch.Tensor, targets: torch.Tensor,
                        valid: torch.Tensor, instructions: Sequence[str],
                        prompt: torch.Tensor | None = None, boxes: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Teacher-forced logits (B, T, A, K) for action tokens ``targets`` (B, T, A)."""
        return self.sequence_outputs(image, state, targets, valid, instructions, prompt,
                                     boxes)[0]

    def prompt_tokens(self, instructions: Sequence[str], prompt: torch.Tensor | None
                      ) -> torch.Tensor | None:
        """One token per prompt-image slot (B, K, d) for a policy that reads prompt images
        (the "no image" token in slots the instruction leaves empty); None otherwise."""
        if self.prompt_encoder is None:
            return None
        if prompt is None:
            raise ValueError("this Gato reads prompt images (prompt_images=true); none given")
        filled = slot_mask(instructions, self.prompt_encoder.slots, device=prompt.device)
        return self.prompt_encoder.slot_tokens(prompt, filled)

    def sequence_outputs(self, image: torch.Tensor, state: torch.Tensor, targets: torch.Tensor,
                         valid: torch.Tensor, instructions: Sequence[str],
                         prompt: torch.Tensor | None = None, boxes: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced logits (B, T, A, K) and aux_frame_mean's logits (B, T, A, K) from
        the mean of each step's observation tokens (None when the option is off).
        ``prompt``: uint8 (B, K, S, S, 3) crops, for a policy that reads prompt images;
        ``boxes`` (B, T, K, 4): object boxes, for ``film_objects``."""
        return self._sequence(image, state, targets, valid, instructions, prompt, boxes)[:2]

    def _sequence(self, image: torch.Tensor, state: torch.Tensor, targets: torch.Tensor,
                  valid: torch.Tensor, instructions: Sequence[str],
                  prompt: torch.Tensor | None = None, boxes: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor | None, ...]:
        """sequence_outputs, plus what grounding_loss reads: the mean of the instruction's
        tokens (B, d) and the outputs at each frame's image tokens (B, T, P, d)."""
        b, t = image.shape[:2]
        text, text_mask, cond = self.text_tokens(instructions)  # (B, L, d), (B, L)
        weights = text_mask[..., None].to(text.dtype)
        query = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, d)
        step_text = text if self.per_step_text else None
        if not self.text_in_sequence:  # per_step, or FiLM alone carries the text: no prefix
            text, text_mask = text[:, :0], text_mask[:, :0]
        images = self.prompt_tokens(instructions, prompt)
        if images is not None:  # the prompt's images follow its words in the prefix
            text = torch.cat([text, images.to(text.dtype)], dim=1)
            text_mask = torch.cat([text_mask, text_mask.new_ones(images.shape[:2])], dim=1)
        steps = self.observation_tokens(image, state, self.training, cond, step_text, boxes)
        if not self.frame_mean:
            steps = torch.cat([steps, self.action_tokens(targets)], dim=2)  # (B, T, step_len, d)
        x = torch.cat([text, rearrange(steps, "b t n d -> b (t n) d")], dim=1)
        length = text.shape[1]
        step_ids = torch.arange(t, device=x.device).repeat_interleave(self.step_len)
        k_step = torch.cat([torch.full((length,), TEXT_STEP, device=x.device), step_ids])
        pos = torch.arange(x.shape[1], device=x.device)
        k_valid = torch.cat([text_mask, valid.repeat_interleave(self.step_len, dim=1)], dim=1)
        mask = window_mask(k_step, pos, k_step, pos, k_valid, self.config.history)
        h = self.transformer(x, mask)[:, length:]  # (B, T * step_len, d)
        h = rearrange(h, "b (t n) d -> b t n d", t=t)
        patches = h[:, :, :self.n_image]
        if self.frame_mean:
            return self.frame_logits(h), None, query, patches  # (B, T, A, K)
        # the observation tokens (image, state, text, separator), never the action tokens
        aux = (None if self.aux_head is None
               else self.frame_logits(h[:, :, :self.obs_len + 1], self.aux_head))
        # outputs at the separator and a_0..a_{A-2} predict a_0..a_{A-1}
        return (self.head(h[:, :, self.obs_len:self.obs_len + self.n_actions]), aux, query,
                patches)

    @property
    def aux_loss_weight(self) -> float:
        return self.config.aux_frame_mean

    def _reset(self, instruction: str) -> None:
        text, mask, self._cond = self.text_tokens([instruction])
        self._text = text[:, mask[0]]  # acting needs no padding: (1, L, d)
        # per_step: the text token goes into every step's observation tokens, not the prefix
        self._step_text = self._text if self.per_step_text else None
        if not self.text_in_sequence:
            self._text = self._text[:, :0]
        if self.reads_prompt_images:
            images = self.prompt_tokens([instruction], self.episode_prompt())
            self._text = torch.cat([self._text, images], dim=1)
        self._cache = self.transformer.new_cache()
        self._k_step = torch.zeros(0, dtype=torch.long, device=self.device)
        self._k_pos = torch.zeros(0, dtype=torch.long, device=self.device)
        self._next_pos = 0
        self._step = 0
        self._pending = None
        self._history = []
        if self.use_kv_cache and self._text.shape[1]:
            self._feed(self._text, TEXT_STEP)

    def _feed(self, x: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """Append tokens (1, n, d) of ``step`` (or per-token steps (n,)) to the cache."""
        n = x.shape[1]
        q_step = (torch.full((n,), step, dtype=torch.long, device=x.device)
                  if isinstance(step, int) else step)
        q_pos = torch.arange(self._next_pos, self._next_pos + n, device=x.device)
        self._k_step = torch.cat([self._k_step, q_step])
        self._k_pos = torch.cat([self._k_pos, q_pos])
        self._next_pos += n
        k_valid = torch.ones(1, self._k_step.shape[0], dtype=torch.bool, device=x.device)
        mask = window_mask(q_step, q_pos, self._k_step, self._k_pos, k_valid,
                           self.config.history)
        return self.transformer(x, mask, self._cache)

    def _act(self, image: torch.Tensor, state: torch.Tensor,
             boxes: torch.Tensor | None = None) -> torch.Tensor:
        obs = self.observation_tokens(image[None, None], state[None, None], False, self._cond,
                                      self._step_text,
                                      None if boxes is None else boxes[None, None])[0]
        if not self.use_kv_cache:
            return self._act_uncached(obs)
        s = self._step
        x, steps = obs, torch.full((obs.shape[1],), s, dtype=torch.long, device=obs.device)
        if self._pending is not None:  # the previous step's last action joins this call
            x = torch.cat([self._pending, obs], dim=1)
            steps = torch.cat([steps.new_tensor([s - 1]), steps])
        h = self._feed(x, steps)
        # the step that just left the window is invisible to every later token: evict it
        keep = ((self._k_step == TEXT_STEP) | (self._k_step > s - self.config.history)).nonzero()
        if keep.shape[0] < self._k_step.shape[0]:
            keep = keep[:, 0]
            self._cache.keep(keep)
            self._k_step, self._k_pos = self._k_step[keep], self._k_pos[keep]
        if self.frame_mean:  # x is this step's tokens alone (nothing pending)
            return self._finish_step(self.frame_logits(h[0]))
        if self.config.act_readout == "aux_frame_mean":
            # the diagnostic readout: all bins from the aux head, then fed as action tokens
            logits = self.frame_logits(h[0, -obs.shape[1]:], self.aux_head)
            emb = self.action_tokens(logits.argmax(-1)[None])  # (1, A, d)
            for i in range(self.n_actions - 1):  # one at a time: each the newest, no mask
                self.transformer(emb[:, i:i + 1], None, self._cache)
            self._pending = emb[:, -1:]
        else:
            logits = self._decode_tokens(h)
        fed = self.n_actions - 1
        self._k_step = torch.cat([self._k_step, self._k_step.new_full((fed,), s)])
        self._k_pos = torch.cat([self._k_pos, torch.arange(
            self._next_pos, self._next_pos + fed, device=self._k_pos.device)])
        self._next_pos += fed
        return self._finish_step(logits)

    def _decode_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """Gato's decoding: one action token at a time from the cache -> logits (A, K).

        Every key now in the cache is text or a step inside the window of this step, and each
        action token is the newest position: it may see every key, so it needs no mask. Its
        step and position are booked by the caller (nothing reads them before)."""
        logits, tokens = [], []
        for i in range(self.n_actions):
            logits.append(self.head(h[0, -1]))  # (K,)
            tokens.append(logits[-1].argmax())
            emb = self.action_tokens(tokens[-1].view(1, 1), first=i)  # (1, 1, d)
            if i < self.n_actions - 1:
                h = self.transformer(emb, None, self._cache)
            else:
                self._pending = emb
        return torch.stack(logits)

    def _finish_step(self, logits: torch.Tensor) -> torch.Tensor:
        """Book the step; logits (A, K) -> the greedy action (A,)."""
        self._step += 1
        self.last_logits, self.last_tokens = logits, logits.argmax(-1)
        return self.action_tokenizer.decode(self.last_tokens)

    def _act_uncached(self, obs: torch.Tensor) -> torch.Tensor:
        """Reference decoding: every action token recomputes the whole episode, no cache."""
        prefix = torch.cat([self._text, *self._history], dim=1) if self._history else self._text
        n_text = self._text.shape[1]

        def hidden(current: torch.Tensor) -> torch.Tensor:
            x = torch.cat([prefix, current], dim=1)
            steps = torch.cat([
                torch.full((n_text,), TEXT_STEP, dtype=torch.long),
                torch.arange(len(self._history)).repeat_interleave(self.step_len),
                torch.full((current.shape[1],), self._step, dtype=torch.long)]).to(x.device)
            pos = torch.arange(x.shape[1], device=x.device)
            valid = torch.ones(1, x.shape[1], dtype=torch.bool, device=x.device)
            return self.transformer(x, window_mask(steps, pos, steps, pos, valid,
                                                   self.config.history))[0]

        if self.frame_mean:
            logits = self.frame_logits(hidden(obs)[-obs.shape[1]:])
            self._history.append(obs)
            return self._finish_step(logits)
        if self.config.act_readout == "aux_frame_mean":
            logits = self.frame_logits(hidden(obs)[-obs.shape[1]:], self.aux_head)
            self._history.append(torch.cat([obs, self.action_tokens(logits.argmax(-1)[None])],
                                           dim=1))
            return self._finish_step(logits)
        logits, tokens = [], []
        current = obs
        for i in range(self.n_actions):
            logits.append(self.head(hidden(current)[-1]))
            tokens.append(logits[-1].argmax())
            current = torch.cat([current, self.action_tokens(tokens[-1].view(1, 1), first=i)],
                                dim=1)
        self._history.append(current)
        return self._finish_step(torch.stack(logits))
