"""Gato's settings (policy/gato/modeling.py has the model and what each option changes).

The fields every policy shares, and their defaults, are PolicyConfig's (policy/base.py);
GatoConfig declares again the four whose Gato default differs, then adds its own. Notes on
the shared fields for Gato: `history` counts the control steps a token can see (its own
included), `augment_shift` is in pixels at model resolution, `text_dim` is the
sentence-mode embedding width, and `pretrained_backbone` is a local file with
image-encoder weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policy.base import PolicyConfig
from policy.tokenizers.images import GRID_POOLS, LITE0_BLOCKS, PATCH_ENCODERS, check_conv_stem

IMAGE_TOKENIZERS = ("patches", "rt1_tokens", "film_grid", "film_objects")
# the tokenizers built on RT-1's FiLM conv stem
FILM_STEMS = ("rt1_tokens", "film_grid", "film_objects")
TEXT_POSITIONS = ("prefix", "per_step")
READOUTS = ("per_token", "frame_mean")
ACT_READOUTS = ("per_token", "aux_frame_mean")


@dataclass
class GatoConfig(PolicyConfig):
    """Gato model and tokenizer settings; every field is saved in config.json."""

    # PolicyConfig's fields with Gato's own defaults
    resize_to: int | None = None  # None: native resolution (96 px -> 6x6 = 36 patches)
    n_layer: int = 4
    action_bins: int = 1024  # Gato: 1024 bins after mu-law
    label_sigma_bins: float = 0.0  # Gaussian target width in (mu-law) bins; 0 = one-hot
    # Gato's own fields
    patch_size: int = 16  # Gato: 16x16 patches
    patch_channels: int = 32  # width of the per-patch ResNet block
    text_mode: str = "sentence"  # "sentence": 1 token from the frozen encoder; "subword": ids
    patch_film: bool = False  # not Gato: FiLM the patch encoder on the sentence (as RT-1)
    max_text_tokens: int = 16  # subword mode: instruction truncated to this many ids
    mu: float = 100.0  # mu-law mu (Gato: 100)
    mu_m: float = 256.0  # mu-law M (Gato: 256)
    # "patches": Gato's; "rt1_tokens" (not Gato): RT-1's FiLM conv stem + TokenLearner tokens;
    # "film_grid" (not Gato): RT-1's FiLM conv stem over the whole frame, its feature map
    # averaged over the patch grid: one token per patch_size x patch_size patch, as "patches";
    # "film_objects" (not Gato; VIMA's object-centric tokens): the same stem's feature map
    # averaged over each object's box (obs["object_boxes"], envs.spec.OBJECT_BOXES) plus an
    # embedding of the box: one token per object slot (a learned "no object" token in empty
    # slots); the env and the store must carry the boxes (env/collect object_boxes=true)
    image_tokenizer: str = "patches"
    # film_grid: how a patch's cell of the feature map becomes its token: "mean" of its
    # feature vectors | "concat": all of them, concatenated and projected (ViT's patch
    # embedding on the map)
    grid_pool: str = "mean"
    image_tokens: int = 8  # rt1_tokens: TokenLearner tokens per frame (RT-1: 8)
    conv_channels: tuple[int, ...] = (16, 32, 64, 128)  # rt1_tokens: RT-1's stem, then stages
    conv_strides: tuple[int, ...] = (2, 2, 1)  # rt1_tokens: stride of each stage after the stem
    conv_blocks: int = 1  # rt1_tokens: blocks per stage
    conv_expand: int = 2  # rt1_tokens: MBConv expansion ratio
    conv_fused_stages: int = 3  # rt1_tokens: leading Fused-MBConv stages
    text_position: str = "prefix"  # "prefix": once before step 1 | "per_step": in every step
    # "per_token": Gato's autoregressive action tokens | "frame_mean" (a diagnostic, not Gato):
    # all action dims in parallel from one head over the mean of the step's tokens, as RT-1
    readout: str = "per_token"
    text_in_sequence: bool = True  # False: no text token (rt1_tokens / patch_film FiLM only)
    # > 0: weight of an auxiliary training loss from a frame-mean head over each step's
    # observation tokens (not the action tokens); acting stays per-token. 0 = off
    aux_frame_mean: float = 0.0
    # how a per_token policy acts: "per_token" (Gato: the action tokens decoded one by one) |
    # "aux_frame_mean" (a diagnostic, not Gato: every dimension's bins from aux_frame_mean's
    # head over the step's observation tokens, the chosen bins then fed as the step's action
    # tokens). It separates what the observation tokens hold from what per-token decoding
    # reads out of them; set it in a copy of a checkpoint's config.json to evaluate it.
    act_readout: str = "per_token"
    # > 0: weight of an auxiliary grounding loss (not in Gato): from
    # the instruction's tokens, score every image patch of each frame and predict the one
    # that holds the named object (and the second object of place, stack and move_near). The
    # labels are the objects' pixels from the simulator, stored at collection
    # (collect.object_pixels=true). Needs image_tokenizer='patches'. 0 = off
    grounding_loss: float = 0.0
    # the per-patch encoder of image_tokenizer='patches': "resnet" (Gato's lift + ResNet v2
    # block, from scratch) or "efficientnet_lite0" (not in Gato: ImageNet EfficientNet-Lite0's
    # stem + first lite_blocks blocks on every patch, the first lite_frozen frozen; with
    # pretrained_backbone="imagenet" the shipped weights; patch_channels is its output width)
    patch_encoder: str = "resnet"
    lite_blocks: int = 5
    lite_frozen: int = 3

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.conv_strides = tuple(int(s) for s in self.conv_strides)
        super().__post_init__()
        if self.image_tokenizer not in IMAGE_TOKENIZERS:
            raise ValueError(f"image_tokenizer={self.image_tokenizer!r}; expected one of "
                             f"{IMAGE_TOKENIZERS}")
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(f"text_position={self.text_position!r}; expected one of "
                             f"{TEXT_POSITIONS}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout={self.readout!r}; expected one of {READOUTS}")
        if self.grid_pool not in GRID_POOLS:
            raise ValueError(f"grid_pool={self.grid_pool!r}; expected one of {GRID_POOLS}")
        if self.grid_pool != "mean" and self.image_tokenizer != "film_grid":
            raise ValueError(f"grid_pool={self.grid_pool!r} needs image_tokenizer='film_grid' "
                             f"(got {self.image_tokenizer!r})")
        for name in ("aux_frame_mean", "grounding_loss"):
            weight = getattr(self, name)
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name}={weight}; expected a finite weight >= 0 (0: off)")
        if self.act_readout not in ACT_READOUTS:
            raise ValueError(f"act_readout={self.act_readout!r}; expected one of {ACT_READOUTS}")
        if self.act_readout == "aux_frame_mean" and not self.aux_frame_mean > 0:
            raise ValueError("act_readout='aux_frame_mean' acts through aux_frame_mean's head; "
                             f"expected aux_frame_mean > 0 (got {self.aux_frame_mean})")
        if self.aux_frame_mean > 0 and self.readout != "per_token":
            raise ValueError(f"aux_frame_mean={self.aux_frame_mean} needs readout='per_token' "
                             f"(got {self.readout!r}): frame_mean already reads the frame mean")
        if self.grounding_loss > 0 and self.image_tokenizer in ("rt1_tokens", "film_objects"):
            raise ValueError(f"grounding_loss={self.grounding_loss} needs image_tokenizer="
                             f"'patches' or 'film_grid' (got {self.image_tokenizer!r}): it scores "
                             "image patches")
        if self.image_tokenizer in FILM_STEMS:
            self._check_rt1_tokens()
        self._check_patch_encoder()
        if not self.text_in_sequence:
            self._check_text_outside_sequence()
        if self.text_position == "per_step" and self.text_mode != "sentence":
            raise ValueError(f"text_position='per_step' needs text_mode='sentence' (got "
                             f"{self.text_mode!r}): the repeated text is one token")
        if self.resize_to is not None and self.resize_to % self.patch_size:
            raise ValueError(f"resize_to={self.resize_to} must be a multiple of patch_size="
                             f"{self.patch_size}")
        if self.patch_size < 2 or self.patch_size % 2:
            raise ValueError(f"patch_size={self.patch_size}; expected an even size >= 2")
        if self.patch_channels < 1:
            raise ValueError(f"patch_channels={self.patch_channels}; expected >= 1")
        if self.text_mode not in ("sentence", "subword"):
            raise ValueError(f"text_mode={self.text_mode!r}; expected 'sentence' or 'subword'")
        if self.patch_film and self.text_mode != "sentence":
            raise ValueError(f"patch_film=True needs text_mode='sentence' (got "
                             f"{self.text_mode!r}): FiLM is conditioned on the sentence embedding")
        if self.max_text_tokens < 2:
            raise ValueError(f"max_text_tokens={self.max_text_tokens}; expected >= 2")
        if self.mu <= 0 or self.mu_m <= 0:
            raise ValueError(f"mu={self.mu}, mu_m={self.mu_m}; expected positive mu-law mu "
                             "and M")

    def _check_rt1_tokens(self) -> None:
        if self.text_mode != "sentence" or self.patch_film:
            raise ValueError(f"image_tokenizer={self.image_tokenizer!r} needs "
                             f"text_mode='sentence' and patch_film=False (got "
                             f"{self.text_mode!r}, {self.patch_film}): its convs are "
                             "FiLM-conditioned on the sentence embedding")
        check_conv_stem(self.conv_channels, self.conv_strides, self.conv_blocks,
                        self.conv_expand, self.conv_fused_stages, self.image_tokens)

    def _check_patch_encoder(self) -> None:
        if self.patch_encoder not in PATCH_ENCODERS:
            raise ValueError(f"patch_encoder={self.patch_encoder!r}; expected one of "
                             f"{PATCH_ENCODERS}")
        lite = self.patch_encoder == "efficientnet_lite0"
        if lite and self.image_tokenizer != "patches":
            raise ValueError(f"patch_encoder='efficientnet_lite0' encodes patches: it needs "
                             f"image_tokenizer='patches' (got {self.image_tokenizer!r})")
        if lite and not 1 <= self.lite_blocks <= len(LITE0_BLOCKS):
            raise ValueError(f"lite_blocks={self.lite_blocks}; expected 1..{len(LITE0_BLOCKS)}")
        if lite and not 0 <= self.lite_frozen < self.lite_blocks:
            raise ValueError(f"lite_frozen={self.lite_frozen}; expected 0..{self.lite_blocks - 1}"
                             f" (lite_blocks={self.lite_blocks}: at least one block trains)")
        if lite and self.patch_size % 8:
            raise ValueError(f"patch_encoder='efficientnet_lite0' needs patch_size a multiple "
                             f"of 8 (its output stride); got {self.patch_size}")
        if self.pretrained_backbone == "imagenet" and not lite:
            raise ValueError("pretrained_backbone='imagenet' needs patch_encoder="
                             f"'efficientnet_lite0' (got {self.patch_encoder!r}); give a file "
                             "path for other encoders")

    def _check_text_outside_sequence(self) -> None:
        if self.image_tokenizer == "patches" and not self.patch_film:
            raise ValueError("text_in_sequence=False needs the sentence in the image stem "
                             "(image_tokenizer='rt1_tokens', 'film_grid' or 'film_objects', "
                             "or patch_film=True); with "
                             f"image_tokenizer={self.image_tokenizer!r} and patch_film=False "
                             "the policy would never see its instruction")
        if self.text_position != "prefix":
            raise ValueError(f"text_in_sequence=False leaves no text token to place; "
                             f"text_position={self.text_position!r} needs text_in_sequence=True")
