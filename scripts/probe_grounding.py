"""Probe: can RT-1's image tokenizer find the object an instruction names, from few scenes?

A fast diagnostic (1-2 CPU-minutes) for the part of learning that failed first in this
project: grounding. The first action of a pick episode is the oracle's direction from a fixed
start pose to the named object, so it depends only on where that object is in the first
frame. The probe trains RT-1's FiLM image tokenizer (policy/tokenizers/images.py) plus a
linear head to predict that x/y/z direction from the first frame and the instruction, on 85%
of the episodes of a store, and reports the mean absolute error on the other 15% beside the
error of always predicting the training mean. With distractors in the scene an encoder that
does not ground the instruction cannot beat the mean by much.

    python scripts/probe_grounding.py STORE [--text raw|layernorm] [--loss mse|onehot|gauss]
        [--mirror] [--episodes N] [--steps N]

Results and the commands behind them: docs/experiments/2026-11-28-what-made-it-learn.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.store import EpisodeStore
from policy.base import binned_action_loss
from policy.text import get_text_encoder
from policy.tokenizers.images import RT1ImageTokenizer

BINS = 256
DIMS = slice(1, 4)  # x, y, z of envs.spec.DEFAULT_ACTION_SPEC


def load_first_frames(path: str, episodes: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    store = EpisodeStore(path)
    n = min(store.num_episodes, episodes)
    if n < 20:
        raise ValueError(f"store {path!r} has {store.num_episodes} episodes; the probe needs >= 20")
    images, labels, texts = [], [], []
    for i in range(n):
        ep = store.episode(i)
        images.append(np.asarray(ep.image[0]))
        labels.append(np.asarray(ep.action[0])[DIMS])
        texts.append(ep.instruction)
    x = torch.as_tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.as_tensor(np.stack(labels)).float(), texts


class Probe(nn.Module):
    def __init__(self, loss: str, text: str) -> None:
        super().__init__()
        self.tokenizer = RT1ImageTokenizer(d_model=128, text_dim=384, channels=(16, 32, 64, 128),
                                           strides=(2, 2, 1), blocks=1, expand=2, num_tokens=8,
                                           fused_stages=3)
        if text == "raw":
            self.tokenizer.text_norm = nn.Identity()
        self.loss = loss
        self.head = nn.Linear(128, 3 if loss == "mse" else 3 * BINS)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out = self.head(self.tokenizer(x, text).mean(1))
        return out if self.loss == "mse" else out.view(-1, 3, BINS)

    def predict(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out = self(x, text)
        if self.loss == "mse":
            return out
        return -1.0 + (out.argmax(-1).float() + 0.5) * (2.0 / BINS)

    def objective(self, x: torch.Tensor, text: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self(x, text)
        if self.loss == "mse":
            return F.mse_loss(out, y)
        bins = ((y + 1.0) / 2.0 * BINS).long().clamp(0, BINS - 1)[:, None]  # (B, 1, 3)
        valid = torch.ones(bins.shape[:2], dtype=torch.bool)
        sigma = 4.0 if self.loss == "gauss" else 0.0
        return binned_action_loss(out[:, None], bins, valid, sigma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--text", choices=["raw", "layernorm"], default="layernorm")
    ap.add_argument("--loss", choices=["mse", "onehot", "gauss"], default="mse")
    ap.add_argument("--mirror", action="store_true", help="left-right mirror half the samples")
    ap.add_argument("--episodes", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y, texts = load_first_frames(args.store, args.episodes)
    text = get_text_encoder(None).encode(texts).float()
    n_train = int(len(x) * 0.85)
    baseline = (y[n_train:] - y[:n_train].mean(0)).abs().mean(0)
    model = Probe(args.loss, args.text)
    opt = torch.optim.AdamW(model.parameters(), 3e-4)
    t0 = time.perf_counter()
    result = {}
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, n_train, (64,))
        xb, yb = x[idx], y[idx].clone()
        if args.mirror:  # image x is world y for the front camera (policy/augment.py)
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yb[flip, 1] *= -1.0
        loss = model.objective(xb, text[idx], yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                err = (model.predict(x[n_train:], text[n_train:]) - y[n_train:]).abs().mean(0)
            model.train()
            result = {"step": step, "held_out_mae_xyz": [round(v, 3) for v in err.tolist()],
                      "mean_predictor_mae_xyz": [round(v, 3) for v in baseline.tolist()],
                      "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(result), flush=True)
    print(json.dumps({"final": result, "args": vars(args), "episodes": len(x)}))


if __name__ == "__main__":
    main()
