"""AdamW with decoupled weight decay, and the linear warm-up + cosine learning-rate schedule.

Weight decay is applied to matrices and convolution kernels only; biases, norm gains and
embeddings of size-1 dimensions are left undecayed, as in nanoGPT and most transformer
recipes (decaying a LayerNorm gain towards zero only fights the normalization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from policy.train.config import OptimConfig


@dataclass
class WarmupCosine:
    """lr multiplier: 0 -> 1 linearly over `warmup` steps, then cosine down to `min_ratio`.

    A callable dataclass rather than a closure, so LambdaLR's state_dict stores its fields
    (plain numbers, JSON-able) and a resumed run can check it continues the same schedule.
    """

    warmup: int
    total: int
    min_ratio: float

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError(f"schedule total={self.total}; expected >= 1 step")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup  # step 0 already trains, at lr / warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * cosine


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (ndim >= 2) and undecayed (biases, norms) trainable params."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue  # frozen parts (e.g. a pretrained text encoder) are not optimised
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `model`'s trainable parameters and its per-step warm-up + cosine schedule."""
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return opt, sched
