"""CPU benchmark of the policies: batch-1 acting latency and training throughput.

Measures, in one process and one run (so the figures are comparable on a shared machine):
- ``act``: one control step through ``select_action`` (what a robot waits for), per policy;
- ``window``: one eval forward over the whole T-frame window without any cache (the work a
  model without per-frame caching, such as the peer, does every step);
- ``train``: forward + backward + AdamW step on a synthetic contract batch, in samples/s;
and the same for lucidrains' robotic-transformer-pytorch RT1 (MaxViT + FiLM + TokenLearner),
given precomputed text embeddings, at the same image size and history, when its package can be
imported. The peer's text conditioner builds a T5 model from the hub when constructed;
following FINDINGS.md its ``t5`` entry is replaced by a stub that only supplies
``dim_latent=768``, so nothing touches the network. The peer's own package imports
``open_clip`` (which needs torchvision, forbidden here) for an adapter RT1 does not use; that
import is answered by an empty module.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from envs.spec import DEFAULT_ACTION_SPEC
from policy.base import Policy, make_policy


@dataclass
class Timing:
    """Per-call time in milliseconds: wall clock, and the process's CPU time.

    On a machine shared with other jobs the wall clock includes waiting for a core; the CPU
    time of a one-thread process does not, so it approximates the wall time on a quiet core.
    """

    median_ms: float
    p99_ms: float
    mean_ms: float
    calls: int
    cpu_median_ms: float | None = None
    cpu_p99_ms: float | None = None

    @classmethod
    def of(cls, seconds: list[float], cpu_seconds: list[float] | None = None) -> Timing:
        ms = np.asarray(seconds) * 1e3
        cpu = None if cpu_seconds is None else np.asarray(cpu_seconds) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.mean()),
                   len(ms), None if cpu is None else float(np.median(cpu)),
                   None if cpu is None else float(np.percentile(cpu, 99)))


@dataclass
class ModelResult:
    name: str
    parameters: int
    history: int
    image_size: int
    act: Timing | None = None
    act_uncached: Timing | None = None  # Gato with its KV cache switched off
    window: Timing | None = None
    train_samples_per_s: float | None = None
    train_samples_per_cpu_s: float | None = None  # per second of this process's CPU time
    train_batch: int | None = None
    note: str = ""


@dataclass
class BenchmarkResult:
    threads: int
    torch_version: str
    models: list[ModelResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """Wall-clock figures, then CPU-time figures (robust to a shared machine)."""
        rows = ["| model | params | T x px | act ms, median / p99 | act ms without KV cache | "
                "full-window forward ms | train samples/s (batch) |",
                "|---|---|---|---|---|---|---|"]
        for clock in ("wall", "cpu"):
            for m in self.models:
                rows.append(f"| {m.name} ({clock}) | {m.parameters / 1e6:.2f} M | {m.history} x "
                            f"{m.image_size} | {_ms(m.act, clock)} | {_ms(m.act_uncached, clock)}"
                            f" | {_ms(m.window, clock)} | {_rate(m, clock)} |")
        return "\n".join(rows)


def _ms(t: Timing | None, clock: str) -> str:
    if t is None:
        return "-"
    if clock == "wall":
        return f"{t.median_ms:.1f} / {t.p99_ms:.1f}"
    return f"{t.cpu_median_ms:.1f} / {t.cpu_p99_ms:.1f}"


def _rate(m: ModelResult, clock: str) -> str:
    rate = m.train_samples_per_s if clock == "wall" else m.train_samples_per_cpu_s
    return "-" if rate is None else f"{rate:.1f} ({m.train_batch})"


def time_calls(fn: Callable[[int], Any], calls: int, warmup: int) -> Timing:
    """Time ``fn(i)`` for i in range(calls) after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(i)
    seconds, cpu_seconds = [], []
    for i in range(calls):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn(i)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return Timing.of(seconds, cpu_seconds)


def synthetic_batch(b: int, t: int, size: int, seed: int = 0) -> dict[str, Any]:
    """A training batch in the contract layout (CONTRACTS.md, "Dataset for torch")."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (b, t, size, size, 3), generator=g,
                                   dtype=torch.uint8),
            "state": torch.randn(b, t, 8, generator=g),
            "action": torch.rand(b, t, 8, generator=g) * 2 - 1,
            "pad": torch.zeros(b, t, dtype=torch.bool),
            "instruction": ["pick up the red block"] * b}


def bench_policy(name: str, config: Any, image_size: int, act_calls: int, warmup: int,
                 train_batch: int, train_steps: int) -> ModelResult:
    env_info = {"image_shape": [image_size, image_size, 3],
                "action_spec": DEFAULT_ACTION_SPEC.to_dict()}
    torch.manual_seed(0)
    policy: Policy = make_policy(config, DEFAULT_ACTION_SPEC, env_info, None)
    history = config.history
    result = ModelResult(name, policy.num_parameters(), history, image_size)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, image_size, image_size, 3), dtype=np.uint8)
    instruction = "pick up the red block"
    policy.eval()
    policy.reset(instruction)

    def act(i: int) -> None:
        policy.select_action({"image": frames[i % 16], "state": np.zeros(8, np.float32),
                              "instruction": instruction})

    result.act = time_calls(act, act_calls, warmup)
    if hasattr(policy, "use_kv_cache"):
        policy.use_kv_cache = False
        policy.reset(instruction)
        # without the cache every token re-reads the episode so far: keep episodes short
        result.act_uncached = time_calls(
            lambda i: (policy.reset(instruction) if i % 10 == 0 else None, act(i)),
            max(10, act_calls // 4), warmup)
        policy.use_kv_cache = True
    one = synthetic_batch(1, history, image_size)

    def window(_: int) -> None:
        with torch.inference_mode():
            policy.logits_and_targets(one)

    result.window = time_calls(window, act_calls, warmup)
    result.train_samples_per_s, result.train_samples_per_cpu_s = train_throughput(
        lambda batch: policy(batch)[0], policy, synthetic_batch(train_batch, history, image_size),
        train_steps)
    result.train_batch = train_batch
    return result


def train_throughput(loss_fn: Callable[[dict[str, Any]], torch.Tensor], model: torch.nn.Module,
                     batch: dict[str, Any], steps: int) -> tuple[float, float]:
    """Samples per second of forward + backward + AdamW step (after one warm-up step), per
    wall-clock second and per second of this process's CPU time."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds, cpu_seconds = [], []
    for i in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    model.eval()
    n = len(batch["action"])
    return n / statistics.median(seconds), n / statistics.median(cpu_seconds)


# ----------------------------------------------------------------------------- the peer


@dataclass
class PeerConfig:
    """lucidrains' RT1 as its README configures it (MaxViT + 6-layer transformer)."""

    site: str | None = None  # a folder holding the peer's packages (pip install --target)
    dim_conv_stem: int = 64
    dim: int = 96
    dim_head: int = 32
    depth: tuple[int, ...] = (2, 2, 5, 2)
    window_size: int = 3  # README uses 7 at 224 px; 96 px needs a window dividing 96 / 32 = 3
    transformer_depth: int = 6
    heads: int = 8
    transformer_dim_head: int = 64
    num_actions: int = 8  # our action spec (README: 11 with the mobile base)
    action_bins: int = 256
    cond_drop_prob: float = 0.0  # classifier-free guidance off: one pass per step


def load_peer(cfg: PeerConfig) -> tuple[Any, Any]:
    """Import (MaxViT, RT1) from robotic-transformer-pytorch with the offline stubs applied."""
    if cfg.site and cfg.site not in sys.path:
        sys.path.insert(0, cfg.site)
    if "open_clip" not in sys.modules:
        try:
            importlib.import_module("open_clip")
        except ImportError:
            sys.modules["open_clip"] = types.ModuleType("open_clip")  # unused by RT1
    cfg_module = importlib.import_module("classifier_free_guidance_pytorch."
                                         "classifier_free_guidance_pytorch")

    class OfflineT5Stub:
        """Supplies what TextConditioner reads at construction; text comes as text_embeds."""

        dim_latent = 768

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def embed_text(self, texts: list[str]) -> torch.Tensor:
            raise RuntimeError("offline benchmark: pass text_embeds, not texts")

    cfg_module.CONDITION_CONFIG["t5"] = OfflineT5Stub
    rt = importlib.import_module("robotic_transformer_pytorch")
    return rt.MaxViT, rt.RT1


def bench_peer(cfg: PeerConfig, history: int, image_size: int, act_calls: int, warmup: int,
               train_batch: int, train_steps: int) -> ModelResult:
    max_vit, rt1 = load_peer(cfg)
    torch.manual_seed(0)
    vit = max_vit(num_classes=1000, dim_conv_stem=cfg.dim_conv_stem, dim=cfg.dim,
                  dim_head=cfg.dim_head, depth=tuple(cfg.depth), window_size=cfg.window_size,
                  mbconv_expansion_rate=4, mbconv_shrinkage_rate=0.25,
                  dropout=0.1)
    model = rt1(vit=vit, num_actions=cfg.num_actions, action_bins=cfg.action_bins,
                depth=cfg.transformer_depth, heads=cfg.heads, dim_head=cfg.transformer_dim_head,
                cond_drop_prob=cfg.cond_drop_prob)
    params = sum(p.numel() for p in model.parameters())
    result = ModelResult("lucidrains RT1 (peer)", params, history, image_size,
                         note="no per-frame cache: every step re-encodes the T frames")
    model.eval()
    video = torch.rand(1, 3, history, image_size, image_size)  # (B, C, F, H, W)
    text = torch.randn(1, 768)

    def window(_: int) -> None:
        with torch.inference_mode():
            model(video, text_embeds=text)

    result.window = time_calls(window, act_calls, warmup)
    result.act = result.window  # acting = one full window forward for the peer
    batch = {"video": torch.rand(train_batch, 3, history, image_size, image_size),
             "text": torch.randn(train_batch, 768),
             "action": torch.randint(0, cfg.action_bins,
                                     (train_batch, history, cfg.num_actions))}

    def loss_fn(b: dict[str, Any]) -> torch.Tensor:
        logits = model(b["video"], text_embeds=b["text"])  # (B, F, A, bins)
        return F.cross_entropy(logits.flatten(0, 2), b["action"].flatten())

    result.train_samples_per_s, result.train_samples_per_cpu_s = train_throughput(
        loss_fn, model, batch, train_steps)
    result.train_batch = train_batch
    return result


def run_benchmark(models: dict[str, Any], peer: PeerConfig | None, image_size: int,
                  threads: int, act_calls: int, peer_act_calls: int, warmup: int,
                  train_batch: int, train_steps: int) -> BenchmarkResult:
    """Benchmark each policy config in ``models`` and, unless None, the peer at the first
    model's history."""
    torch.set_num_threads(threads)
    result = BenchmarkResult(threads=threads, torch_version=torch.__version__)
    for name, config in models.items():
        result.models.append(bench_policy(name, config, image_size, act_calls, warmup,
                                          train_batch, train_steps))
    if peer is not None:
        history = next(iter(models.values())).history if models else 2
        try:
            result.models.append(bench_peer(peer, history, image_size, peer_act_calls,
                                            min(warmup, 3), train_batch,
                                            max(1, train_steps // 2)))
        except ImportError as err:
            result.models.append(ModelResult("lucidrains RT1 (peer)", 0, history, image_size,
                                             note=f"not importable: {err}"))
    return result


@dataclass
class OverfitPoint:
    step: int
    seconds: float
    loss: float
    acc: float


def overfit_store(path: str, name: str, config: Any, episodes: int = 4, steps: int = 300,
                  lr: float = 5e-3, every: int = 100) -> list[OverfitPoint]:
    """Memorise the first ``episodes`` recorded episodes of a store with full-batch AdamW.

    The learning path end to end on real data: store -> EpisodeDataset -> batch -> policy.
    Augmentation should be off in ``config`` (memorisation, not generalisation).
    """
    from torch.utils.data import default_collate

    from policy.data import EpisodeDataset

    ds = EpisodeDataset(path, history=config.history, in_memory=True)
    items: list[dict[str, Any]] = []
    starts = 0
    for i in range(len(ds)):
        item = ds[i]
        # every episode's first window is padded (when history > 1) or starts a new episode
        starts += int(bool(item["pad"][0])) if config.history > 1 else int(i == 0)
        if starts > episodes:
            break
        items.append(item)
    batch = default_collate(items)
    torch.manual_seed(0)
    policy = make_policy(config, ds.action_spec, ds.info, ds.stats)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    points, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        policy.train()
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            policy.eval()
            with torch.no_grad():
                _, metrics = policy(batch)
            points.append(OverfitPoint(step, time.perf_counter() - start, metrics["loss"],
                                       metrics["acc"]))
            print(f"{name}: {len(items)} samples, step {step}, {points[-1].seconds:.0f} s, "
                  f"loss {metrics['loss']:.3f}, token accuracy {metrics['acc']:.3f}", flush=True)
    return points
