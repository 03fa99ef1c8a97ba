"""Image tokenizers: camera frames -> a few embedding tokens per frame.

RT-1 (Brohan et al. 2022, sec. 4): an EfficientNet-style conv net whose blocks are FiLM-
conditioned on the instruction embedding (FiLM layers start as the identity, so a pretrained
backbone is not disturbed at the start of training), followed by TokenLearner (Ryoo et al.
2021), which pools the feature map into 8 learned soft-attention tokens per frame. GroupNorm
replaces BatchNorm because CPU batches here are small
(docs/experiments/2026-11-28-prototype.md).

Gato (Reed et al. 2022, sec. 2.1-2.2): the frame is cut into 16x16 patches, each patch is
normalized to [-1, 1] and divided by sqrt(patch size), passed through a single ResNet v2
block, and given learned row and column position encodings.

Both are trained from scratch by default. RT-1 itself starts from an ImageNet EfficientNet:
``backbone=efficientnet_lite0`` with ``pretrained_backbone=imagenet`` builds the first blocks
of EfficientNet-Lite0 (:class:`FiLMEfficientNetLite0`) and loads the shipped ImageNet weights
(policy/pretrained/backbones/, made by scripts/convert_efficientnet_lite0.py; how it compares:
docs/experiments/2026-11-30-competence.md). :func:`load_backbone` loads any local
safetensors / state-dict file when a user has other pretrained weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from policy.tokenizers.objects import BoxEmbedding, box_present, cell_weights


def preprocess_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1] (area-resized if needed)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3); got {images.dtype} "
                         f"{tuple(images.shape)}")
    x = rearrange(images, "n h w c -> n c h w").float().div_(255.0)
    if size is not None and (x.shape[-2], x.shape[-1]) != (size, size):
        # area interpolation averages whole pixels: the cheap, alias-free way down to 64 px
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Random-shift augmentation (pad by replication, crop back; Kostrikov et al. 2020).

    x: (B, T, C, H, W). One shift per sample, shared by its T frames, so motion between the
    frames of a history is not confused with the augmentation.
    """
    return random_shift_offsets(x, pad, generator)[0]


def random_shift_offsets(x: torch.Tensor, pad: int, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """random_shift, and each sample's crop offsets (B, 2) as (dy, dx) in [0, 2 * pad]: a
    pixel moves by (pad - dy, pad - dx), which is how what is tied to pixels (object boxes)
    follows the shift. pad <= 0: x unchanged and offsets of pad (no move)."""
    b, t, c, h, w = x.shape
    if pad <= 0:
        return x, torch.full((b, 2), max(pad, 0), dtype=torch.long)
    padded = F.pad(rearrange(x, "b t c h w -> b (t c) h w"), (pad, pad, pad, pad),
                   mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    # one slice per sample: two gathers (rows, then columns) gave the same crops 14x slower
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                       for i, (dy, dx) in enumerate(offsets.tolist())])
    return rearrange(out, "b (t c) h w -> b t c h w", t=t), offsets


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the channels, else a single group (LayerNorm-like)."""
    return 8 if channels % 8 == 0 else 1


class FiLM(nn.Module):
    """Feature-wise linear modulation x * (1 + gamma(c)) + beta(c), initialised to identity."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)  # identity at start: gamma = beta = 0
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = rearrange(self.proj(cond), "n (two c) -> two n c 1 1", two=2)
        return x * (1.0 + gamma) + beta


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


class MBConv(nn.Module):
    """EfficientNet's inverted bottleneck (expand 1x1, depthwise 3x3, SE, project 1x1) + FiLM."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, cond_dim: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = None
        if expand != 1:
            self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                        nn.GroupNorm(_groups(hidden), hidden), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.GroupNorm(_groups(hidden), hidden), nn.SiLU())
        self.se = SqueezeExcite(hidden, max(1, cin // 4))
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False),
                                     nn.GroupNorm(_groups(cout), cout))
        self.film = FiLM(cond_dim, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = x if self.expand is None else self.expand(x)
        h = self.project(self.se(self.depthwise(h)))
        h = self.film(h, cond)
        return x + h if self.residual else h


class FusedMBConv(nn.Module):
    """EfficientNetV2's fused block (one 3x3 conv in place of expand + depthwise) + FiLM.

    Depthwise convolutions are slow to train on CPUs (and GPUs) at small widths; EfficientNetV2
    (Tan & Le 2021) fuses the early stages for the same reason.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int, cond_dim: int) -> None:
        super().__init__()
        hidden = cin * expand if expand != 1 else cout  # expand 1: a single 3x3 conv
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(_groups(hidden), hidden), nn.SiLU())
        self.project = None
        if expand != 1:
            self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False),
                                         nn.GroupNorm(_groups(cout), cout))
        self.film = FiLM(cond_dim, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.film(h if self.project is None else self.project(h), cond)
        return x + h if self.residual else h


class FiLMEfficientNet(nn.Module):
    """Stem conv + one stage of MBConv blocks per channel width, every block FiLM-conditioned.

    channels[0] is the stem width (stride 2); stage i > 0 has ``blocks`` blocks of width
    channels[i], the first with stride strides[i - 1]; the first ``fused_stages`` stages use
    Fused-MBConv blocks, the rest MBConv. Output (N, channels[-1], h, w).
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], blocks: int,
                 expand: int, cond_dim: int, fused_stages: int = 0) -> None:
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError(f"conv_strides {tuple(strides)} must have one entry per stage after "
                             f"the stem; expected {len(channels) - 1} for channels "
                             f"{tuple(channels)}")
        c0 = channels[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, stride=2, padding=1, bias=False),
                                  nn.GroupNorm(_groups(c0), c0), nn.SiLU())
        self.stem_film = FiLM(cond_dim, c0)
        layers: list[nn.Module] = []
        for stage, (cin, cout, stride) in enumerate(zip(channels[:-1], channels[1:], strides,
                                                        strict=True)):
            block = FusedMBConv if stage < fused_stages else MBConv
            for j in range(blocks):
                layers.append(block(cin if j == 0 else cout, cout, stride if j == 0 else 1,
                                    expand, cond_dim))
        self.blocks = nn.ModuleList(layers)
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.stem_film(self.stem(x), cond)
        for block in self.blocks:
            x = block(x, cond)
        return x


class ChannelAffine(nn.Module):
    """Per-channel scale and shift: a BatchNorm folded with its running statistics.

    A pretrained BatchNorm's statistics come from ImageNet batches; on this project's small CPU
    batches they would be re-estimated badly, so they are folded into a trainable affine
    (frozen-statistics BatchNorm, as detection fine-tuning does).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class LiteMBConv(nn.Module):
    """EfficientNet-Lite's block: expand 1x1, depthwise kxk, project 1x1; ReLU6, no SE; + FiLM."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 cond_dim: int | None) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = (nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                     ChannelAffine(hidden), nn.ReLU6())
                       if expand != 1 else None)
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden,
                      bias=False),
            ChannelAffine(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), ChannelAffine(cout))
        self.film = FiLM(cond_dim, cout) if cond_dim else None  # None: a frozen block
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = x if self.expand is None else self.expand(x)
        h = self.project(self.depthwise(h))
        if self.film is not None:
            h = self.film(h, cond)
        return x + h if self.residual else h


# EfficientNet-Lite0 (Tan & Le 2019; the Lite variants drop SE and use ReLU6): one row per
# block, (cin, cout, kernel, stride, expand), as the ImageNet weights lay them out.
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (32, 16, 3, 1, 1),
    (16, 24, 3, 2, 6), (24, 24, 3, 1, 6),
    (24, 40, 5, 2, 6), (40, 40, 5, 1, 6),
    (40, 80, 3, 2, 6), (80, 80, 3, 1, 6), (80, 80, 3, 1, 6),
    (80, 112, 5, 1, 6), (112, 112, 5, 1, 6), (112, 112, 5, 1, 6),
)


class FiLMEfficientNetLite0(nn.Module):
    """The first ``blocks`` blocks of EfficientNet-Lite0, each FiLM-conditioned (RT-1's recipe).

    RT-1 starts from an ImageNet EfficientNet and adds FiLM to every block; the FiLM layers
    start as the identity, so the pretrained features are intact at the first step. At this
    project's 64 px the full network's 32x downsampling would leave a 2x2 map, so every stride
    after the map reaches 1/8 of the input is set to 1 (an output stride of 8, as DeepLab does
    for dense prediction): 64 px -> an 8x8 map, like the default backbone. Inputs are scaled to
    [-1, 1], the Lite models' preprocessing. Output (N, out_channels, h, w).

    ``frozen`` > 0 keeps the stem and the first ``frozen`` blocks at their ImageNet weights,
    without FiLM, and runs them without gradients: the full-resolution layers cost most of a
    training step on a CPU (their backward pass ~3x their forward), and edge and colour
    filters are what ImageNet gives them.
    """

    def __init__(self, cond_dim: int | None, blocks: int = 8, out_channels: int = 128,
                 frozen: int = 0) -> None:
        super().__init__()
        if not 1 <= blocks <= len(LITE0_BLOCKS):
            raise ValueError(f"lite0 blocks={blocks}; expected 1..{len(LITE0_BLOCKS)}")
        if not 0 <= frozen < blocks:
            raise ValueError(f"lite0 frozen={frozen}; expected 0..{blocks - 1} (at least one "
                             f"trained block)")
        self.frozen = frozen
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
                                  ChannelAffine(32), nn.ReLU6())
        self.stem_film = FiLM(cond_dim, 32) if not frozen and cond_dim else None
        layers, total_stride = [], 2
        for i, (cin, cout, kernel, stride, expand) in enumerate(LITE0_BLOCKS[:blocks]):
            stride = stride if total_stride < 8 else 1
            total_stride *= stride
            layers.append(LiteMBConv(cin, cout, kernel, stride, expand,
                                     None if i < frozen else cond_dim))
        self.blocks = nn.ModuleList(layers)
        if frozen:
            for module in (self.stem, *self.blocks[:frozen]):
                module.requires_grad_(False)
        width = LITE0_BLOCKS[blocks - 1][1]
        # a trained 1x1 projection to the token width (the pretrained head is 1280-d at 1/32)
        self.head = nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=False),
                                  nn.GroupNorm(_groups(out_channels), out_channels), nn.SiLU())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                x = self.stem(x)
                for block in self.blocks[:self.frozen]:
                    x = block(x, None)
        else:
            x = self.stem(x)
            if self.stem_film is not None:
                x = self.stem_film(x, cond)
        for block in self.blocks[self.frozen:]:
            x = block(x, cond)
        return self.head(x)


class FourierPositions(nn.Module):
    """Adds where each feature-map cell is: a learned 1x1 projection of fixed 2-D Fourier features.

    Convolutions are (almost) translation-equivariant and TokenLearner pools with soft
    attention, so without this a token says *what* it attended to but hardly *where*; a policy
    must know where the object is to move to it. With the cell's (x, y) added before pooling,
    each token carries the expected image position of what it attends to, as the spatial
    softmax of visuomotor policies does (Levine et al. 2016). Resolution-independent: the
    features are computed for whatever map size arrives. The projection starts at zero, so a
    pretrained backbone's features are undisturbed at the start of training.
    """

    def __init__(self, channels: int, num_freqs: int = 4) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self._features: dict[tuple[int, int, str], torch.Tensor] = {}
        self.proj = nn.Conv2d(4 * num_freqs, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def features(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(4 * num_freqs, h, w): sin and cos of x and y in [-1, 1] at octave frequencies.

        Constants of the map size, so computed once per size and device (a dozen small ops
        that every training step and every control step repeated); not in the state dict.
        """
        key = (h, w, str(device))
        cached = self._features.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                cached = self._features[key] = self._compute_features(h, w, device)
        return cached

    def _compute_features(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ys = torch.linspace(-1.0, 1.0, h, device=device)
        xs = torch.linspace(-1.0, 1.0, w, device=device)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # (2, h, w)
        freqs = (2.0 ** torch.arange(self.num_freqs, device=device)) * (math.pi / 2)
        angles = rearrange(grid[:, None] * freqs[None, :, None, None], "a f h w -> (a f) h w")
        return torch.cat([angles.sin(), angles.cos()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.proj(self.features(x.shape[-2], x.shape[-1], x.device)[None])
        return x + pos


class TokenLearner(nn.Module):
    """Pool a feature map into ``num_tokens`` soft-attention tokens (Ryoo et al. 2021)."""

    def __init__(self, channels: int, num_tokens: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(),
                                  nn.Linear(hidden, num_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "n c h w -> n (h w) c")
        weights = self.attn(self.norm(x)).softmax(dim=1)  # (N, HW, S): a map per token
        return torch.einsum("nps,npc->nsc", weights, x)  # (N, S, C)


BACKBONES = ("film_efficientnet", "efficientnet_lite0")
GRID_POOLS = ("mean", "concat")  # RT1ImageTokenizer(grid=...): how a cell becomes a token
# Gato's per-patch encoders: "resnet" (Gato's lift + ResNet v2 block, from scratch) or
# "efficientnet_lite0" (ImageNet EfficientNet-Lite0's first blocks on each patch alone)
PATCH_ENCODERS = ("resnet", "efficientnet_lite0")


def check_conv_stem(channels: Sequence[int], strides: Sequence[int], blocks: int, expand: int,
                    fused_stages: int, image_tokens: int) -> None:
    """Raise ValueError naming a bad setting of RT1ImageTokenizer's FiLM-EfficientNet stem."""
    if len(channels) < 2 or min(channels) < 1:
        raise ValueError(f"conv_channels={tuple(channels)}; expected >= 2 positive widths")
    if len(strides) != len(channels) - 1 or not set(strides) <= {1, 2}:
        raise ValueError(f"conv_strides={tuple(strides)}; expected {len(channels) - 1} entries "
                         f"of 1 or 2")
    if blocks < 1 or expand < 1 or image_tokens < 1:
        raise ValueError(f"conv_blocks={blocks}, conv_expand={expand}, image_tokens="
                         f"{image_tokens}; expected each >= 1")
    if not 0 <= fused_stages <= len(strides):
        raise ValueError(f"conv_fused_stages={fused_stages}; expected 0..{len(strides)} "
                         f"(the number of stages)")
# The ImageNet Lite0 stem and blocks, converted by scripts/convert_efficientnet_lite0.py;
# `pretrained_backbone=imagenet` selects it.
LITE0_IMAGENET = (Path(__file__).resolve().parents[1] / "pretrained" / "backbones"
                  / "efficientnet_lite0_imagenet.safetensors")


def resolve_pretrained(name: str, backbone: str) -> Path:
    """`pretrained_backbone` -> a file: "imagenet" names the shipped weights of `backbone`."""
    if name == "imagenet":
        if backbone != "efficientnet_lite0":
            raise ValueError(f"pretrained_backbone='imagenet' needs backbone="
                             f"'efficientnet_lite0'; got backbone={backbone!r} (give a file "
                             f"path for other backbones)")
        return LITE0_IMAGENET
    return Path(name)


class RT1ImageTokenizer(nn.Module):
    """Frames (N, 3, H, W) in [0, 1] + instruction embedding (N, Dt) -> tokens (N, S, d)."""

    def __init__(self, *, d_model: int, text_dim: int, channels: Sequence[int],
                 strides: Sequence[int], blocks: int, expand: int, num_tokens: int,
                 fused_stages: int = 0, position_encoding: bool = True,
                 text_norm: bool = True, backbone: str = "film_efficientnet",
                 lite_blocks: int = 8, lite_frozen: int = 0, grid: int | None = None,
                 grid_pool: str = "mean", image_size: int | None = None,
                 objects: int | None = None, keep_learner: bool = False) -> None:
        """``grid``: None pools the feature map to ``num_tokens`` tokens by TokenLearner (RT-1);
        an int g cuts it into a g x g grid instead, one token per cell in row-major order
        (the cells of g x g image patches), so every token stands for one place in the frame.
        ``grid_pool``: how a cell becomes a token: "mean" averages its feature vectors, "concat"
        projects them all, concatenated (ViT's patch embedding on the feature map: where in
        its cell a feature sits survives); "concat" needs ``image_size`` to size the
        projection. ``objects``: an int K pools the feature map over each of K object boxes
        instead (policy/tokenizers/objects.py: ``forward(..., boxes=(N, K, 4))``), each
        token the box's mean feature plus an embedding of the box, a learned "no object"
        token in empty slots (VIMA's object-centric tokens on RT-1's FiLM stem).
        ``keep_learner`` (with ``objects``): keep TokenLearner's ``num_tokens`` tokens as well,
        the K object tokens after them (RT-1's ``object_tokens``: the whole scene, the gripper
        included, plus one token per object)."""
        super().__init__()
        if keep_learner and objects is None:
            raise ValueError("keep_learner=True needs objects (TokenLearner is kept beside "
                             "object tokens; without them it is the default)")
        if objects is not None and (objects < 1 or grid is not None):
            raise ValueError(f"objects={objects} with grid={grid}; expected objects >= 1 and "
                             "no grid (a frame is pooled by boxes or by cells, not both)")
        if grid is not None and grid < 1:
            raise ValueError(f"grid={grid}; expected None (TokenLearner) or a grid side >= 1")
        if grid_pool not in GRID_POOLS:
            raise ValueError(f"grid_pool={grid_pool!r}; expected one of {GRID_POOLS}")
        if grid_pool == "concat" and (grid is None or image_size is None):
            raise ValueError("grid_pool='concat' needs a grid and the image_size (got "
                             f"grid={grid}, image_size={image_size})")
        if backbone == "film_efficientnet":
            self.backbone: nn.Module = FiLMEfficientNet(channels, strides, blocks, expand,
                                                        text_dim, fused_stages)
        elif backbone == "efficientnet_lite0":
            self.backbone = FiLMEfficientNetLite0(text_dim, lite_blocks, channels[-1],
                                                  lite_frozen)
        else:
            raise ValueError(f"backbone={backbone!r}; expected one of {BACKBONES}")
        self.positions = (FourierPositions(self.backbone.out_channels) if position_encoding
                          else None)
        # Sentence embeddings are unit-norm (components ~0.05): the zero-initialised FiLM
        # layers then learn ~20x slower than the convs they modulate, and the policy ignores
        # which object the instruction names. LayerNorm rescales them to unit variance
        # (a probe's held-out localisation error fell 40%:
        # docs/experiments/2026-11-28-what-made-it-learn.md). False: the embedding as the
        # encoder gives it (an ablation).
        self.text_norm = nn.LayerNorm(text_dim) if text_norm else nn.Identity()
        self.grid = grid
        self.objects = objects
        self.token_learner = (TokenLearner(self.backbone.out_channels, num_tokens)
                              if grid is None and (objects is None or keep_learner) else None)
        if objects is not None:
            self.box_embed = BoxEmbedding(d_model)
            self.empty_object = nn.Parameter(torch.randn(d_model) * 0.02)
        self.grid_pool = grid_pool
        self.cell = 1  # feature-map positions per cell side ("concat")
        if grid_pool == "concat":
            with torch.no_grad():  # the map's side at this image size, from the stem itself
                side = self.backbone(torch.zeros(1, 3, image_size, image_size),
                                     torch.zeros(1, text_dim)).shape[-1]
            if side % grid:
                raise ValueError(f"a {image_size} px frame gives a {side}x{side} feature map, "
                                 f"which does not cut into a {grid}x{grid} grid")
            self.cell = side // grid
        self.proj = nn.Linear(self.backbone.out_channels * self.cell ** 2, d_model)
        # ImageNet statistics: harmless from scratch, and what a pretrained backbone expects;
        # the Lite models were trained on [-1, 1] inputs ((x - 127) / 128 on 0..255)
        lite = backbone == "efficientnet_lite0"
        mean = [0.5] * 3 if lite else [0.485, 0.456, 0.406]
        std = [0.5] * 3 if lite else [0.229, 0.224, 0.225]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, text: torch.Tensor,
                boxes: torch.Tensor | None = None) -> torch.Tensor:
        """``boxes`` (N, K, 4): the frames' object boxes, exactly when built with ``objects``."""
        if (boxes is None) != (self.objects is None):
            raise ValueError(f"object boxes are needed exactly when the tokenizer pools by "
                             f"objects (objects={self.objects}); got boxes="
                             f"{None if boxes is None else tuple(boxes.shape)}")
        x = self.backbone((images - self.mean) / self.std, self.text_norm(text))
        if self.positions is not None:
            x = self.positions(x)
        if boxes is not None:  # one token per object slot
            weights = cell_weights(boxes.to(x.dtype), x.shape[-2], x.shape[-1])  # (N, K, h, w)
            pooled = torch.einsum("nkhw,nchw->nkc", weights, x)
            tokens = self.proj(pooled) + self.box_embed(boxes).to(pooled.dtype)
            present = box_present(boxes)[..., None]
            tokens = torch.where(present, tokens, self.empty_object.to(tokens.dtype))
            if self.token_learner is not None:  # keep_learner: the scene's tokens first
                tokens = torch.cat([self.proj(self.token_learner(x)), tokens], dim=1)
            return tokens
        if self.grid is not None:  # one token per grid cell, row-major
            if x.shape[-1] % self.grid or x.shape[-2] % self.grid:
                raise ValueError(f"feature map {tuple(x.shape[-2:])} does not divide into a "
                                 f"{self.grid}x{self.grid} grid; use an image size whose map "
                                 "(image / the stem's stride) is a multiple of the grid")
            if self.grid_pool == "concat":
                if x.shape[-1] != self.grid * self.cell:
                    raise ValueError(f"feature map {tuple(x.shape[-2:])}; grid_pool='concat' "
                                     f"was sized for {self.grid * self.cell} per side")
                x = rearrange(x, "n c (g k) (h l) -> n (g h) (k l c)", g=self.grid, h=self.grid)
            else:
                x = rearrange(F.adaptive_avg_pool2d(x, self.grid), "n c h w -> n (h w) c")
            return self.proj(x)
        return self.proj(self.token_learner(x))


class ResNetV2Block(nn.Module):
    """Pre-activation residual block: GN-GELU-conv-GN-GELU-conv plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PatchTokenizer(nn.Module):
    """Gato's image encoding: 16x16 patches -> ResNet v2 block -> tokens with row/col encodings.

    A 2x2 stride-2 convolution first lifts each patch from 3 to ``channels`` channels at half
    resolution, so the residual block runs at 8x8 (a quarter of the cost on a CPU).
    Input (N, 3, H, W) in [0, 1]; output (N, rows * cols, d).

    ``cond_dim`` (not in Gato): FiLM layers after the lift and after the block, conditioned on
    a (N, cond_dim) vector such as the instruction embedding, as RT-1 conditions its convs;
    identity at initialisation.

    ``encoder="efficientnet_lite0"`` (not in Gato): instead of the lift and the block, the
    stem and first ``lite_blocks`` blocks of EfficientNet-Lite0 (FiLMEfficientNetLite0: the
    first ``lite_frozen`` frozen, output stride 8, ``channels`` wide) encode each patch on its
    own, so a 16 px patch gives a 2x2 map; load its ImageNet weights into ``self.lite``. With
    ``cond_dim`` its trained blocks carry FiLM.
    """

    def __init__(self, *, d_model: int, image_size: int, patch_size: int = 16,
                 channels: int = 32, cond_dim: int | None = None, encoder: str = "resnet",
                 lite_blocks: int = 5, lite_frozen: int = 3) -> None:
        super().__init__()
        if image_size % patch_size or patch_size % 2:
            raise ValueError(f"image size {image_size} must be a multiple of patch_size "
                             f"{patch_size} (itself even)")
        if encoder not in PATCH_ENCODERS:
            raise ValueError(f"patch encoder {encoder!r}; expected one of {PATCH_ENCODERS}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.cond_dim = cond_dim
        if encoder == "resnet":
            self.lite = None
            self.lift = nn.Conv2d(3, channels, 2, stride=2)
            self.block = ResNetV2Block(channels)
            self.films = (nn.ModuleList([FiLM(cond_dim, channels), FiLM(cond_dim, channels)])
                          if cond_dim else None)
            self.proj = nn.Linear(channels * (patch_size // 2) ** 2, d_model)
        else:  # efficientnet_lite0: its ImageNet layers on every patch alone (stride 8)
            if patch_size % 8:
                raise ValueError(f"patch encoder 'efficientnet_lite0' needs patch_size a "
                                 f"multiple of 8 (its output stride); got {patch_size}")
            self.lite = FiLMEfficientNetLite0(cond_dim, lite_blocks, channels, lite_frozen)
            self.films = None
            self.proj = nn.Linear(channels * (patch_size // 8) ** 2, d_model)
        self.row = nn.Parameter(torch.randn(self.grid, d_model) * 0.02)
        self.col = nn.Parameter(torch.randn(self.grid, d_model) * 0.02)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = images.shape
        if h != w or h // self.patch_size != self.grid:
            raise ValueError(f"image {h}x{w} does not give a {self.grid}x{self.grid} patch grid "
                             f"of {self.patch_size} px")
        if (cond is None) != (self.cond_dim is None):
            raise ValueError("cond is required exactly when the tokenizer has FiLM (cond_dim)")
        x = images * 2.0 - 1.0  # [-1, 1]: Gato's inputs and the Lite models' alike
        if self.lite is None:
            x = x / math.sqrt(self.patch_size)  # Gato's patch normalization
        # each patch is encoded on its own, as Gato's are
        x = rearrange(x, "n c (gh p1) (gw p2) -> (n gh gw) c p1 p2",
                      p1=self.patch_size, p2=self.patch_size)
        if cond is not None:
            cond = cond.repeat_interleave(self.num_patches, dim=0)  # one row per patch
        x = self._resnet(x, cond) if self.lite is None else self.lite(x, cond)
        x = self.proj(rearrange(x, "(n g) c h w -> n g (c h w)", n=n))  # (N, P, d)
        pos = rearrange(self.row, "r d -> r 1 d") + rearrange(self.col, "c d -> 1 c d")
        return x + rearrange(pos, "r c d -> (r c) d")

    def _resnet(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Gato's encoder on patches (N * P, 3, p, p): lift + one ResNet v2 block ->
        (N * P, C, p/2, p/2); ``cond`` (N * P, cond_dim) for the FiLM layers."""
        x = self.lift(x)
        if self.films is not None:
            return self.films[1](self.block(self.films[0](x, cond)), cond)
        return self.block(x)


def load_backbone(module: nn.Module, path: str | Path) -> list[str]:
    """Load pretrained weights from a local safetensors or torch state-dict file.

    Keys may carry a prefix up to the module's own names. Returns the module keys that stayed
    untrained (e.g. FiLM layers); raises if no key matches, or a shape disagrees.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_backbone file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = module.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for own_key in own:
            if key == own_key or key.endswith("." + own_key):
                if own[own_key].shape != value.shape:
                    raise ValueError(f"pretrained weight {key!r} has shape {tuple(value.shape)};"
                                     f" expected {tuple(own[own_key].shape)}")
                matched[own_key] = value
                break
    if not matched:
        raise ValueError(f"no weight in {str(path)!r} matches the backbone; expected keys like "
                         f"{list(own)[:3]}")
    module.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))
