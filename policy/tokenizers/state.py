"""The proprioceptive state token: normalize with the data's mean/std, project to d.

One end-effector-state token per frame helped the prototype (the fixed front camera gives a
weak height cue; the state carries it exactly): docs/experiments/2026-11-28-prototype.md.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# A state dimension that never varies in the data (std ~ 0) would blow up on the smallest
# deviation at test time; its std is floored, and normalized values are clipped.
_MIN_STD = 1e-2
_CLIP = 10.0


class StateTokenizer(nn.Module):
    """float (..., S) -> (..., d): (state - mean) / std, clipped to +-10, then a linear map."""

    def __init__(self, *, state_dim: int, d_model: int, stats: dict | None = None) -> None:
        super().__init__()
        mean = np.zeros(state_dim, np.float32)
        std = np.ones(state_dim, np.float32)
        if stats is not None and "state" in stats:
            mean = np.asarray(stats["state"]["mean"], np.float32)
            std = np.asarray(stats["state"]["std"], np.float32)
            if mean.shape != (state_dim,) or std.shape != (state_dim,):
                raise ValueError(f"state stats have shapes {mean.shape}/{std.shape}; expected "
                                 f"({state_dim},)")
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("std", torch.from_numpy(np.maximum(std, _MIN_STD)))
        self.proj = nn.Linear(state_dim, d_model)

    def normalize(self, state: torch.Tensor) -> torch.Tensor:
        return ((state - self.mean) / self.std).clamp(-_CLIP, _CLIP)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.proj(self.normalize(state))
