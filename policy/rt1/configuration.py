"""RT-1's settings (policy/rt1/modeling.py has the model and the departures from the paper).

The fields every policy shares, and their defaults, are PolicyConfig's (policy/base.py);
RT1Config declares again the four whose RT-1 default differs, then adds its own. Notes on the
shared defaults for RT-1: `history` 2 (RT-1 used 6; in the prototype 3 frames cost 2.3x the
time of 2), `augment_shift` 4 px at model resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.base import PolicyConfig
from policy.tokenizers.images import BACKBONES, LITE0_BLOCKS, check_conv_stem


@dataclass
class RT1Config(PolicyConfig):
    """RT-1 model and tokenizer settings; every field is saved in config.json."""

    # PolicyConfig's fields with RT-1's own defaults
    resize_to: int | None = 64  # model resolution; prototype: 64 px learned 1.6x faster than 96
    n_layer: int = 3
    action_bins: int = 256  # uniform bins per action dimension (RT-1: 256)
    label_sigma_bins: float = 4.0  # Gaussian target width in bins; 0 = one-hot
    # RT-1's own fields
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
    action_bounds: str = "spec"  # "spec": the action spec's bounds; "data": stats p01/p99
    # pretrained_backbone (PolicyConfig): a local safetensors/state-dict file, or "imagenet":
    # the shipped ImageNet weights of `backbone` (efficientnet_lite0 only)
    backbone: str = "film_efficientnet"  # or "efficientnet_lite0": RT-1's ImageNet family
    lite_blocks: int = 8  # efficientnet_lite0: how many of its blocks (8: through 80 channels)
    lite_frozen: int = 0  # efficientnet_lite0: stem + this many blocks kept frozen, no FiLM
    wrist_camera: bool = False  # also read the wrist camera: its own FiLM stem + TokenLearner
    wrist_tokens: int = 8  # TokenLearner tokens per wrist frame (with wrist_camera)
    # the wrist stem's resolution in px; None: resize_to. A lower one makes the second stem
    # cheaper (32 px: a quarter of the pixels of 64); the random shift scales with it
    wrist_resize_to: int | None = None
    # object-centric tokens beside TokenLearner's (VIMA, Jiang et al. 2023): the FiLM stem's
    # feature map averaged over each of obs["object_boxes"] (MAX_OBJECT_BOXES slots) plus an
    # embedding of the box, a learned "no object" token in empty slots. The boxes are an
    # observation: collect with collect.object_boxes=true; a robot sends a detector's boxes
    object_tokens: bool = False
    # the gripper phase (policy/tokenizers/phase.py): closes so far, whether the last command
    # was close, steps since it changed, from the policy's own gripper commands, added to the
    # state token; needs use_state
    phase_state: bool = False

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.conv_strides = tuple(int(s) for s in self.conv_strides)
        super().__post_init__()
        if self.resize_to is not None and self.resize_to < 16:
            raise ValueError(f"resize_to={self.resize_to}; expected None or >= 16 px")
        if not 0.0 <= self.augment_background <= 1.0:
            raise ValueError(f"augment_background={self.augment_background}; expected a "
                             "probability in [0, 1]")
        check_conv_stem(self.conv_channels, self.conv_strides, self.conv_blocks,
                        self.conv_expand, self.conv_fused_stages, self.image_tokens)
        if self.action_bounds not in ("spec", "data"):
            raise ValueError(f"action_bounds={self.action_bounds!r}; expected 'spec' or 'data'")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r}; expected one of {BACKBONES}")
        if self.backbone == "efficientnet_lite0" and not 1 <= self.lite_blocks <= len(
                LITE0_BLOCKS):
            raise ValueError(f"lite_blocks={self.lite_blocks}; expected 1..{len(LITE0_BLOCKS)}")
        if self.backbone == "efficientnet_lite0" and not 0 <= self.lite_frozen < self.lite_blocks:
            raise ValueError(f"lite_frozen={self.lite_frozen}; expected 0..{self.lite_blocks - 1}"
                             f" (lite_blocks={self.lite_blocks}: at least one block trains)")
        if self.wrist_resize_to is not None and self.wrist_resize_to < 16:
            raise ValueError(f"wrist_resize_to={self.wrist_resize_to}; expected None or >= 16 px")
        if self.wrist_camera and self.wrist_tokens < 1:
            raise ValueError(f"wrist_tokens={self.wrist_tokens}; expected >= 1 with wrist_camera")
        if self.phase_state and not self.use_state:
            raise ValueError("phase_state=True adds the gripper phase to the state token; "
                             "expected use_state=True")
        if self.pretrained_backbone == "imagenet" and self.backbone != "efficientnet_lite0":
            raise ValueError(f"pretrained_backbone='imagenet' needs backbone="
                             f"'efficientnet_lite0'; got {self.backbone!r}")
