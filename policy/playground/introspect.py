"""What a policy computed for its last action: per-dimension bin distributions and, for RT-1,
where the TokenLearner looked.

Read through forward hooks (and Gato's `last_logits`), so the model files stay as they are:
- RT-1: its `head` runs once per acting step and gives logits (1, T, A * bins); the last
  frame's row is the distribution the action was decoded from. The TokenLearner's `attn`
  gives (N, HW, S) logits over the feature map; a softmax over HW is each token's spatial
  map (policy/tokenizers/images.py), its input fixes the map's height and width.
- Gato: `last_logits` (A, bins), kept by the policy after each step.
Each `Introspector` hooks one policy instance (a playground session's own), so two tabs never
read each other's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange


@dataclass
class StepInsight:
    """The policy's view of one step. probs (A, K) sum to 1 per row; bins (A,) the chosen
    (argmax) bin per dimension; attention (S, h, w) per TokenLearner token, or None."""

    names: tuple[str, ...]
    probs: np.ndarray
    bins: np.ndarray
    attention: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or self.probs.shape[0] != len(self.names):
            raise ValueError(f"probs has shape {self.probs.shape}; expected "
                             f"({len(self.names)}, bins) for dims {self.names}")
        if self.bins.shape != (len(self.names),):
            raise ValueError(f"bins has shape {self.bins.shape}; expected ({len(self.names)},)")

    @property
    def num_bins(self) -> int:
        return int(self.probs.shape[1])

    def confidence(self) -> np.ndarray:
        """Probability of the chosen bin per dimension (A,)."""
        return self.probs[np.arange(len(self.names)), self.bins]


class Introspector:
    """Hooks one policy; `read()` after `select_action` returns that step's StepInsight."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.names = tuple(policy.action_spec.names)
        self._handles: list[Any] = []
        self._logits: torch.Tensor | None = None
        self._attn_logits: torch.Tensor | None = None
        self._map_hw: tuple[int, int] | None = None
        head = getattr(policy, "head", None)
        if getattr(policy, "kind", "") == "rt1" and isinstance(head, torch.nn.Module):
            self._handles.append(head.register_forward_hook(self._on_head))
            learner = getattr(getattr(policy, "image_tokenizer", None), "token_learner", None)
            if learner is not None:
                self._handles.append(learner.register_forward_pre_hook(self._on_learner_input))
                self._handles.append(learner.attn.register_forward_hook(self._on_attn))

    @property
    def has_attention(self) -> bool:
        return len(self._handles) == 3

    def clear(self) -> None:
        self._logits = self._attn_logits = None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- hooks ---------------------------------------------------------------------------

    def _on_head(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self._logits = output.detach()[0, -1]  # (A * K,): the newest frame's row

    def _on_learner_input(self, module: Any, args: tuple[torch.Tensor, ...]) -> None:
        h, w = args[0].shape[-2:]  # (N, C, h, w)
        self._map_hw = (int(h), int(w))

    def _on_attn(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self._attn_logits = output.detach()[-1]  # (HW, S) of the newest frame

    # -- reading -------------------------------------------------------------------------

    def read(self) -> StepInsight | None:
        """The last step's distributions and attention; None if the policy exposes neither."""
        logits = self._logits
        if logits is None:
            last = getattr(self.policy, "last_logits", None)
            logits = last.detach() if isinstance(last, torch.Tensor) else None
        if logits is None:
            return None
        logits = logits.float().reshape(len(self.names), -1)  # (A, K)
        probs = logits.softmax(-1).cpu().numpy()
        attention = None
        if self._attn_logits is not None and self._map_hw is not None:
            h, w = self._map_hw
            weights = self._attn_logits.float().softmax(dim=0)  # (HW, S): each map sums to 1
            attention = rearrange(weights, "(h w) s -> s h w", h=h, w=w).cpu().numpy()
        return StepInsight(self.names, probs, probs.argmax(-1), attention)
