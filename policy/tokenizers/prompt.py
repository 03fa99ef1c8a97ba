"""Prompt images: the object crops of a multimodal prompt, encoded per slot.

An instruction may show an object instead of naming it ("put the {image} in the white
tray"; envs/prompts.py renders the crops). Each crop goes through a small conv net of its
own (not the scene's image stem: the crop is a close-up from another camera, in another
light) to one vector per slot, and a learned slot embedding says which slot it filled, so
"put {image} into {image}" keeps its two roles apart. The policies use these vectors the way
their architectures take conditioning:

- RT-1 adds the sum over filled slots to the sentence embedding that FiLM-conditions its
  image stem (`pooled`), the cheapest way into its one conditioning vector;
- Gato puts one token per slot into its flat sequence after the text (`slot_tokens`), as
  Gato and VIMA put prompt images among the prompt's tokens (Reed et al. 2022,
  https://arxiv.org/abs/2205.06175; Jiang et al. 2023, https://arxiv.org/abs/2210.03094).

A text-only prompt has no filled slot: `pooled` is then exactly zero and the policy's
conditioning is the sentence embedding alone; `slot_tokens` gives the learned "no image"
token in every slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from envs.spec import MAX_PROMPT_IMAGES, prompt_slots


def slot_mask(instructions: Sequence[str], slots: int = MAX_PROMPT_IMAGES,
              device: torch.device | None = None) -> torch.Tensor:
    """bool (B, slots): which prompt-image slots each instruction fills (its PROMPT_SLOTs)."""
    counts = [prompt_slots(text) for text in instructions]
    bad = [(text, n) for text, n in zip(instructions, counts, strict=True) if n > slots]
    if bad:
        raise ValueError(f"instruction {bad[0][0]!r} has {bad[0][1]} image slots; expected at "
                         f"most {slots} (envs.spec.MAX_PROMPT_IMAGES)")
    count = torch.tensor(counts, device=device)
    return torch.arange(slots, device=device)[None, :] < count[:, None]


class PromptImageEncoder(nn.Module):
    """uint8 (B, K, S, S, 3) crops -> (B, K, out_dim) slot vectors.

    Three stride-2 3x3 convolutions (32, 64, 128 channels, GroupNorm, GELU), a global
    average pool and a linear map, plus the slot's learned embedding.
    """

    def __init__(self, *, out_dim: int, image_size: int, slots: int = MAX_PROMPT_IMAGES,
                 width: int = 32, empty_token: bool = False) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"prompt image_size={image_size}; expected >= 8 px")
        if slots < 1:
            raise ValueError(f"prompt slots={slots}; expected >= 1")
        self.image_size, self.slots = image_size, slots
        chans = [3, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                       nn.GroupNorm(8, cout), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(chans[-1], out_dim))
        self.slot_embedding = nn.Parameter(torch.zeros(slots, out_dim))
        nn.init.normal_(self.slot_embedding, std=0.02)
        # `slot_tokens`' token for an unused slot; only a policy that calls it has one, so
        # every parameter gets a gradient every step (DDP requires it)
        self.empty = nn.Parameter(torch.randn(out_dim) * 0.02) if empty_token else None

    def check(self, images: torch.Tensor) -> None:
        want = (self.slots, self.image_size, self.image_size, 3)
        if images.ndim != 5 or tuple(images.shape[1:]) != want or images.dtype != torch.uint8:
            raise ValueError(f"prompt images are {images.dtype} {tuple(images.shape)}; expected "
                             f"uint8 (B, {', '.join(map(str, want))})")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, K, S, S, 3) -> (B, K, out_dim): each crop's vector plus its slot's."""
        self.check(images)
        b, k = images.shape[:2]
        x = images.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.net(x).unflatten(0, (b, k)) + self.slot_embedding

    def pooled(self, images: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """(B, out_dim): the sum of the filled slots' vectors; zero where none is filled.
        Runs the conv net even then, so every parameter is in every step's graph (a DDP rank
        whose batch happened to hold no image prompt would otherwise stall the others)."""
        vectors = self(images)
        return (vectors * filled[..., None].to(vectors.dtype)).sum(dim=1)

    def slot_tokens(self, images: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """(B, K, out_dim): the filled slots' vectors, the "no image" token elsewhere."""
        if self.empty is None:
            raise ValueError("this encoder was built without empty_token; slot_tokens needs it")
        vectors = self(images)
        empty = (self.empty + self.slot_embedding).to(vectors.dtype).expand_as(vectors)
        return torch.where(filled[..., None], vectors, empty)
