"""The decoder-only transformer core shared by the RT-1 and Gato policies.

Read like nanoGPT's model.py, top to bottom: config, attention, MLP, block, model. The core
takes token embeddings (each policy builds its own tokens) and a boolean attention mask
(True = may attend), so RT-1's frame-causal mask and Gato's token-causal sliding-window mask
are both just masks. Attention runs through torch's scaled_dot_product_attention. A
:class:`KVCache` lets Gato append tokens one at a time while acting, and drop the oldest
positions when its context window slides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    d_model: int = 128  # width of every token
    n_layer: int = 3  # prototype: 3 layers of d=128 learned pick-up in 10 CPU-minutes
    n_head: int = 4  # head size d_model / n_head
    mlp_ratio: int = 4  # MLP hidden = mlp_ratio * d_model, as in GPT-2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if min(self.d_model, self.n_layer, self.n_head, self.mlp_ratio) < 1:
            raise ValueError(f"transformer sizes must be >= 1; got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}; expected 0 <= dropout < 1")


class KVCache:
    """Keys and values of every layer for the positions seen so far: (B, nh, N, hs) each."""

    def __init__(self, n_layer: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        k = self.keys[0]
        return 0 if k is None else int(k.shape[2])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
        """Append this call's k, v (B, nh, n, hs); return all positions (B, nh, N + n, hs)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the positions in ``index`` (1-d, ascending): the sliding window's eviction."""
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None:
                self.keys[i] = k.index_select(2, index)
                self.values[i] = v.index_select(2, index)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under an explicit boolean mask (causality lives in the mask)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        # x: (B, n, C); mask: (B or 1, 1, n, N) with N = cached + n positions, or None when
        # every query may see every key. Plain view/permute rather than einops here: this runs
        # per layer per decoded token, where einops' parsing was a measurable share of acting.
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_head, c // self.n_head)  # (B, n, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, n, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, N, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, n, c)  # (B, n, C)
        y = self.proj(y)
        return self.resid_dropout(y) if self.training else y


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.fc = nn.Linear(config.d_model, hidden)
        self.proj = nn.Linear(hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(F.gelu(self.fc(x)))
        return self.dropout(y) if self.training else y  # eval: skip the no-op module call


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None,
                layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm over token embeddings (B, n, C) -> (B, n, C)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.apply(_init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * config.n_layer) ** 0.5)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        return self.ln_f(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
