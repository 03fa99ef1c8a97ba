"""Offline action error: how far a policy's greedy actions are from the demonstrations.

Rollouts say whether a policy succeeds; this says which action dimensions it has not learned,
in minutes and without a simulator. On windows of an episode store, each policy predicts the
last step's action from the true history (teacher forcing, greedy bins decoded to action
units, eval mode: no augmentation), and the mean absolute error per dimension is reported
beside the error of the best constant guess (the per-dimension median of the same labels),
which is what a policy that ignores its image and instruction can reach. A ratio near 1 on
x/y means the policy does not find the object it is told about
(docs/experiments/2026-11-28-gato.md).

Run it on a store the policy never trained on (collect with another ``collect.seed_start``)
for a held-out figure; on the training store it measures fit. With ``swap_instructions`` every
window is scored under another window's (different) instruction: a policy whose x/y error does
not grow ignores its instruction, which separates "cannot find objects" from "does not
ground the words" (docs/experiments/2026-11-28-gato.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.spec import ACTION, INSTRUCTION


@dataclass(frozen=True)
class DimError:
    """Mean absolute error of one action dimension, in the action spec's units."""

    name: str
    policy: float  # the policy's greedy action
    constant: float  # the per-dimension median of the evaluated labels

    @property
    def ratio(self) -> float:
        """policy / constant; inf when the labels are constant and the policy is not exact."""
        if self.constant > 0:
            return self.policy / self.constant
        return 0.0 if self.policy == 0 else float("inf")


def swap_instructions(instructions: list[str]) -> tuple[list[str], int]:
    """Give each window the next (cyclically) window's instruction that differs from its own.

    Returns the new list and how many windows got a different instruction (a window keeps
    its own only when every instruction in the list is the same).
    """
    out, swapped = list(instructions), 0
    n = len(instructions)
    for i, own in enumerate(instructions):
        for k in range(1, n):
            other = instructions[(i + k) % n]
            if other != own:
                out[i], swapped = other, swapped + 1
                break
    return out, swapped


def action_error(policy: Any, batches: Iterable[Mapping[str, Any]],
                 swap: bool = False, aux_head: bool = False) -> list[DimError]:
    """Greedy teacher-forced action error of ``policy`` on contract batches, per dimension.

    ``policy`` needs ``logits_and_targets(batch) -> (logits (B, T, A, K), targets, valid)``,
    ``action_tokenizer.decode`` and ``action_spec`` (RT-1 and Gato both have them). The last
    step of every window is scored. ``swap``: each window under another window's instruction
    (:func:`swap_instructions`, within its batch); raises if no window could be swapped.
    ``aux_head``: score the auxiliary frame-mean head's logits instead (a Gato trained with
    ``aux_frame_mean`` > 0; what ``act_readout='aux_frame_mean'`` acts on).
    """
    if aux_head and getattr(policy, "aux_head", None) is None:
        raise ValueError(f"aux_head=True needs a policy trained with aux_frame_mean > 0; this "
                         f"{getattr(policy, 'kind', type(policy).__name__)} policy has no "
                         "auxiliary head")
    was_training = policy.training
    policy.eval()
    predicted, labels, swapped = [], [], 0
    try:
        with torch.inference_mode():
            for batch in batches:
                if swap:
                    instructions, k = swap_instructions(list(batch[INSTRUCTION]))
                    batch, swapped = {**batch, INSTRUCTION: instructions}, swapped + k
                logits = (policy._outputs_and_targets(batch)[1] if aux_head
                          else policy.logits_and_targets(batch)[0])
                tokens = logits[:, -1].argmax(dim=-1)  # (B, A)
                predicted.append(policy.action_tokenizer.decode(tokens).float().cpu())
                labels.append(torch.as_tensor(batch[ACTION])[:, -1].float())
    finally:
        policy.train(was_training)
    if not predicted:
        raise ValueError("action_error got no batches")
    if swap and swapped == 0:
        raise ValueError("swap=True but every window in each batch has the same instruction; "
                         "use larger batches or a store with several instructions")
    pred, true = torch.cat(predicted).numpy(), torch.cat(labels).numpy()
    names = list(policy.action_spec.names)
    if true.shape[1] != len(names):
        raise ValueError(f"labels have {true.shape[1]} action dims; the policy's spec has "
                         f"{len(names)}: {names}")
    # the labels clipped to the spec bounds: a policy cannot output anything else
    low, high = np.asarray(policy.action_spec.low), np.asarray(policy.action_spec.high)
    true = np.clip(true, low, high)
    err = np.abs(pred - true).mean(axis=0)
    const = np.abs(true - np.median(true, axis=0)).mean(axis=0)
    return [DimError(n, float(e), float(c)) for n, e, c in zip(names, err, const, strict=True)]


def markdown_table(results: Mapping[str, list[DimError]]) -> str:
    """{policy label: errors} -> one markdown table, a row per dimension, two columns each."""
    labels = list(results)
    if not labels:
        raise ValueError("markdown_table got no results")
    names = [d.name for d in results[labels[0]]]
    head = "| dim | constant (median) | " + " | ".join(f"{lab} | ratio" for lab in labels) + " |"
    rule = "|---|---|" + "---|---|" * len(labels)
    rows = []
    for i, name in enumerate(names):
        cells = [f"{results[lab][i].policy:.4f} | {results[lab][i].ratio:.2f}" for lab in labels]
        rows.append(f"| {name} | {results[labels[0]][i].constant:.4f} | " + " | ".join(cells)
                    + " |")
    return "\n".join([head, rule, *rows])
