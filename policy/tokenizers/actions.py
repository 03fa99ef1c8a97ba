"""Action tokenizers: continuous actions <-> integer bins, one token per action dimension.

RT-1 (Brohan et al. 2022, sec. 3.2): each dimension clipped to its bounds and cut into 256
uniform bins. The bounds come from the action spec, or from the data's 1st/99th percentiles
so the bins are spent where the actions are; they live in buffers, so they travel in the
checkpoint's safetensors.

Gato (Reed et al. 2022, sec. 2.1): continuous values are mu-law companded (mu=100, M=256)
into [-1, 1] and then cut into 1024 uniform bins; companding spends more bins near zero,
where small corrective motions live.

Both decode a bin to its centre, so a round trip is exact to within half a bin (in the value
space for RT-1, in the companded space for Gato). Out-of-range inputs are clipped, never an
error: a policy or an oracle may well overshoot the spec.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from envs.spec import ActionSpec

# Below this width a percentile range is degenerate (e.g. an action dimension the oracle
# never moves); such a dimension falls back to its spec bounds instead of dividing by ~0.
_MIN_RANGE = 1e-6


def _as_tensor(x: torch.Tensor | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


class UniformActionTokenizer(nn.Module):
    """Clip each dimension to [low, high] and cut it into ``bins`` uniform bins (RT-1)."""

    def __init__(self, *, low: np.ndarray, high: np.ndarray, bins: int = 256) -> None:
        super().__init__()
        low = np.asarray(low, dtype=np.float32)
        high = np.asarray(high, dtype=np.float32)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"bounds must be two 1-d arrays of one shape; got {low.shape}, "
                             f"{high.shape}")
        if not np.all(high > low):
            raise ValueError(f"every high must exceed its low; got low={low}, high={high}")
        if bins < 2:
            raise ValueError(f"bins={bins}; expected >= 2")
        self.bins = bins
        self.register_buffer("low", torch.from_numpy(low.copy()))
        self.register_buffer("high", torch.from_numpy(high.copy()))

    @classmethod
    def from_spec(cls, spec: ActionSpec, bins: int = 256, stats: dict | None = None,
                  bounds: str = "spec") -> UniformActionTokenizer:
        """Bounds from the spec (``bounds="spec"``) or from ``stats["action"]`` p01/p99."""
        low, high = spec.low, spec.high
        if bounds == "data":
            if stats is None or "action" not in stats:
                raise ValueError("action_bounds='data' needs stats['action'] with p01/p99; "
                                 "got no action stats")
            p01 = np.asarray(stats["action"]["p01"], dtype=np.float32)
            p99 = np.asarray(stats["action"]["p99"], dtype=np.float32)
            if p01.shape != low.shape:
                raise ValueError(f"action stats p01 has shape {p01.shape}; expected {low.shape} "
                                 f"for dims {spec.names}")
            ok = (p99 - p01) > _MIN_RANGE
            low = np.where(ok, np.maximum(p01, low), low)
            high = np.where(ok, np.minimum(p99, high), high)
        elif bounds != "spec":
            raise ValueError(f"action bounds {bounds!r}; expected 'spec' or 'data'")
        return cls(low=low, high=high, bins=bins)

    @property
    def dims(self) -> int:
        return int(self.low.shape[0])

    def bin_width(self) -> torch.Tensor:
        return (self.high - self.low) / self.bins

    def encode(self, action: torch.Tensor) -> torch.Tensor:
        """float (..., A) -> int64 bins (..., A) in [0, bins)."""
        x = action.clamp(self.low, self.high)
        unit = (x - self.low) / (self.high - self.low)  # [0, 1]
        return (unit * self.bins).long().clamp_(0, self.bins - 1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int bins (..., A) -> float (..., A), the centre of each bin."""
        return self.low + (tokens.to(self.low.dtype) + 0.5) * self.bin_width()


def mu_law(x: torch.Tensor, mu: float = 100.0, m: float = 256.0) -> torch.Tensor:
    """Gato's companding: sign(x) log(|x| mu + 1) / log(M mu + 1)."""
    return torch.sign(x) * torch.log1p(x.abs() * mu) / math.log(m * mu + 1.0)


def inverse_mu_law(y: torch.Tensor, mu: float = 100.0, m: float = 256.0) -> torch.Tensor:
    return torch.sign(y) * torch.expm1(y.abs() * math.log(m * mu + 1.0)) / mu


class MuLawActionTokenizer(nn.Module):
    """Clip to the spec bounds, mu-law compand into [-1, 1], cut into ``bins`` bins (Gato)."""

    def __init__(self, *, low: np.ndarray, high: np.ndarray, bins: int = 1024,
                 mu: float = 100.0, m: float = 256.0) -> None:
        super().__init__()
        low = np.asarray(low, dtype=np.float32)
        high = np.asarray(high, dtype=np.float32)
        if low.shape != high.shape or not np.all(high > low):
            raise ValueError(f"bad bounds low={low}, high={high}; expected high > low per dim")
        if bins < 2 or mu <= 0 or m <= 0:
            raise ValueError(f"bins={bins}, mu={mu}, M={m}; expected bins >= 2, mu > 0, M > 0")
        self.bins, self.mu, self.m = bins, float(mu), float(m)
        self.register_buffer("low", torch.from_numpy(low.copy()))
        self.register_buffer("high", torch.from_numpy(high.copy()))

    @classmethod
    def from_spec(cls, spec: ActionSpec, bins: int = 1024, mu: float = 100.0,
                  m: float = 256.0) -> MuLawActionTokenizer:
        return cls(low=spec.low, high=spec.high, bins=bins, mu=mu, m=m)

    @property
    def dims(self) -> int:
        return int(self.low.shape[0])

    def bin_width(self) -> float:
        return 2.0 / self.bins  # in the companded space [-1, 1]

    def compand(self, action: torch.Tensor) -> torch.Tensor:
        return mu_law(action.clamp(self.low, self.high), self.mu, self.m).clamp(-1.0, 1.0)

    def encode(self, action: torch.Tensor) -> torch.Tensor:
        """float (..., A) -> int64 bins (..., A) in [0, bins)."""
        unit = (self.compand(action) + 1.0) / 2.0
        return (unit * self.bins).long().clamp_(0, self.bins - 1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int bins (..., A) -> float (..., A): bin centre, expanded back by inverse mu-law."""
        y = (tokens.to(self.low.dtype) + 0.5) * self.bin_width() - 1.0
        return inverse_mu_law(y, self.mu, self.m).clamp(self.low, self.high)
