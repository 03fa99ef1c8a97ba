"""CPU benchmark of the policies: batch-1 acting latency and training throughput.

Measures, in one process and one run (so the figures are comparable on a shared machine):
- ``act``: one control step through ``select_action`` (what a robot waits for), per policy;
- ``window``: one eval forward over the whole T-frame window without any cache (the work a
  model without per-frame caching, such as the peer, does every step);
- ``train``: forward + backward + AdamW step on a synthetic contract batch, in samples/s;
and the same for lucidrains' robotic-transformer-pytorch RT1 (MaxViT + FiLM + TokenLearner),
given precomputed text embeddings, at the same image size and history, when its package can be
imported. The peer's text conditioner builds a T5 model from the hub when constructed; as
docs/experiments/2026-11-28-prototype.md describes, its ``t5`` entry is replaced by a stub
that only supplies ``dim_latent=768``, so nothing touches the network. The peer's own package
imports ``open_clip`` (which needs torchvision, forbidden here) for an adapter RT1 does not
use; that import is answered by an empty module.

Two more modes serve the training-speed work (docs/experiments/2026-11-30-speed.md):
- :func:`demo_preset`: the demo's training settings (batch 64, history 1, 64 px, 2 threads;
  acting at batch 1 on one thread), the training step exactly as policy/train/loop.py takes
  it, one JSON line;
- :func:`ab_lever`: one speed switch off (A) and on (B) in the same process, alternating
  rounds of steps so that a shared machine's load falls on both alike, plus the loss after
  N steps on a real store with the same seed (and with another seed, for the noise).
"""

from __future__ import annotations

import dataclasses
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

from envs.camera import WristCameraConfig
from envs.spec import DEFAULT_ACTION_SPEC, MAX_OBJECT_BOXES, OBJECT_BOXES, WRIST_IMAGE
from policy.base import Policy, make_policy
from policy.tokenizers.phase import PHASE, SINCE_SCALE
from policy.train.config import OptimConfig, bf16_cpu_enabled
from policy.train.loop import autocast_for, compile_policy, set_optimizer_impl, update_policy
from policy.train.optim import make_optimizer


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


def synthetic_boxes(objects: int = 4) -> np.ndarray:
    """float32 (MAX_OBJECT_BOXES, 4): `objects` boxes in a row across the frame, NaN after
    (obs["object_boxes"] of a scene with that many visible objects)."""
    boxes = np.full((MAX_OBJECT_BOXES, 4), np.nan, dtype=np.float32)
    for i in range(objects):
        u = 0.1 + 0.8 * i / max(objects, 1)
        boxes[i] = (u, 0.5, u + 0.08, 0.6)
    return boxes


def reads_boxes(config: Any) -> bool:
    """Whether a policy config's model reads obs["object_boxes"] (Gato's film_objects,
    RT-1's object_tokens)."""
    return (getattr(config, "image_tokenizer", None) == "film_objects"
            or bool(getattr(config, "object_tokens", False)))


def synthetic_batch(b: int, t: int, size: int, seed: int = 0, wrist: bool = False,
                    boxes: bool = False) -> dict[str, Any]:
    """A training batch in the contract layout (CONTRACTS.md, "Dataset for torch"); with
    `wrist`, wrist-camera images of the same size too; with `boxes`, four object boxes per
    frame (synthetic_boxes). Every batch has a gripper phase (policy/tokenizers/phase.py: one
    close, 10 steps ago), which only a policy with phase_state reads."""
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randint(0, 256, (b, t, size, size, 3), generator=g,
                                    dtype=torch.uint8),
             "state": torch.randn(b, t, 8, generator=g),
             "action": torch.rand(b, t, 8, generator=g) * 2 - 1,
             "pad": torch.zeros(b, t, dtype=torch.bool),
             "instruction": ["pick up the red block"] * b,
             PHASE: torch.tensor([1.0, 1.0, 10 / SINCE_SCALE]).expand(b, t, -1).clone()}
    if wrist:
        batch[WRIST_IMAGE] = torch.randint(0, 256, (b, t, size, size, 3), generator=g,
                                           dtype=torch.uint8)
    if boxes:
        batch[OBJECT_BOXES] = torch.from_numpy(synthetic_boxes()).expand(b, t, -1, -1).clone()
    return batch


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
        obs = {"image": frames[i % 16], "state": np.zeros(8, np.float32),
               "instruction": instruction}
        if policy.reads_wrist:
            obs[WRIST_IMAGE] = frames[(i + 8) % 16]
        if policy.reads_object_boxes:
            obs[OBJECT_BOXES] = synthetic_boxes()
        policy.select_action(obs)

    result.act = time_calls(act, act_calls, warmup)
    if hasattr(policy, "use_kv_cache"):
        policy.use_kv_cache = False
        policy.reset(instruction)
        # without the cache every token re-reads the episode so far: keep episodes short
        result.act_uncached = time_calls(
            lambda i: (policy.reset(instruction) if i % 10 == 0 else None, act(i)),
            max(10, act_calls // 4), warmup)
        policy.use_kv_cache = True
    one = synthetic_batch(1, history, image_size, boxes=reads_boxes(config))

    def window(_: int) -> None:
        with torch.inference_mode():
            policy.logits_and_targets(one)

    result.window = time_calls(window, act_calls, warmup)
    result.train_samples_per_s, result.train_samples_per_cpu_s = train_throughput(
        lambda batch: policy(batch)[0], policy,
        synthetic_batch(train_batch, history, image_size, boxes=reads_boxes(config)),
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


# ------------------------------------------------------- demo preset and lever A/B

LEVERS = ("foreach", "fused", "bf16", "compile", "channels_last")
# the camera of the default env (envs/camera.py): lets the mirror augmentation run as in training
DEMO_CAMERA = {"eye": [0.9, 0.0, 0.5], "target": [0.45, 0.0, 0.04]}


@dataclass
class TrainOptions:
    """The training loop's speed switches, as in a run's config: optim.impl, train.bf16_cpu,
    train.compile, train.channels_last."""

    optimizer_impl: str = "foreach"
    bf16: bool | str = "auto"  # as train.bf16_cpu: "auto" is on where the CPU has bf16
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        self.bf16 = bf16_cpu_enabled(self.bf16)

    def with_lever(self, lever: str) -> TrainOptions:
        """These options with one lever switched on (LEVERS)."""
        if lever in ("foreach", "fused"):
            return dataclasses.replace(self, optimizer_impl=lever)
        if lever in ("bf16", "compile", "channels_last"):
            return dataclasses.replace(self, **{lever: True})
        raise ValueError(f"lever {lever!r}; expected one of {LEVERS}")


class TrainStepper:
    """A policy, its AdamW + schedule and the loop's training step under ``options``.

    The step is policy/train/loop.py's `update_policy`: forward under the autocast it would
    use, backward, gradient clipping at 1.0, AdamW step, schedule step.
    """

    def __init__(self, config: Any, env_info: dict[str, Any], options: TrainOptions,
                 stats: dict[str, Any] | None = None, seed: int = 0, total_steps: int = 1000
                 ) -> None:
        torch.manual_seed(seed)
        self.policy = make_policy(config, DEFAULT_ACTION_SPEC, env_info, stats)
        if options.channels_last:
            self.policy = self.policy.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = make_optimizer(self.policy, OptimConfig(), total_steps)
        set_optimizer_impl(self.optimizer, options.optimizer_impl)
        self.autocast = autocast_for(torch.device("cpu"), False, options.bf16)
        if options.compile:
            compile_policy(self.policy)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]

    def step(self, batch: dict[str, Any]) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        out = update_policy(self.policy, self.policy, batch, self.optimizer, self.scheduler,
                            self.params, 1.0, self.autocast, step=0)
        return float(out.loss.item())


def demo_env_info(image_size: int) -> dict[str, Any]:
    """The demo env's description: front camera, and a wrist camera that only policies with
    ``wrist_camera`` read."""
    return {"image_shape": [image_size, image_size, 3],
            "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "camera": DEMO_CAMERA,
            "wrist_camera": WristCameraConfig(width=image_size, height=image_size).to_dict()}


def act_latency(config: Any, image_size: int, calls: int, warmup: int) -> Timing:
    """Batch-1 ``select_action`` time of a fresh policy (one control step each call)."""
    torch.manual_seed(0)
    policy = make_policy(config, DEFAULT_ACTION_SPEC, demo_env_info(image_size), None)
    frames = np.random.default_rng(0).integers(0, 256, (16, image_size, image_size, 3),
                                               dtype=np.uint8)
    instruction = "pick up the red block"
    policy.reset(instruction)

    def act(i: int) -> None:
        if i % 20 == 0:  # episodes of 20 steps, as a pick takes
            policy.reset(instruction)
        obs = {"image": frames[i % 16], "state": np.zeros(8, np.float32),
               "instruction": instruction}
        if policy.reads_wrist:
            obs[WRIST_IMAGE] = frames[(i + 8) % 16]
        if policy.reads_object_boxes:
            obs[OBJECT_BOXES] = synthetic_boxes()
        policy.select_action(obs)

    return time_calls(act, calls, warmup)


def demo_preset(models: dict[str, Any], options: TrainOptions, image_size: int = 64,
                threads: int = 2, act_threads: int = 1, train_batch: int = 64,
                train_steps: int = 20, act_calls: int = 200, warmup: int = 3
                ) -> dict[str, Any]:
    """Training samples/s (median step, ``threads`` threads) and batch-1 acting ms (median,
    ``act_threads`` threads) of each policy config, as one JSON-able dict."""
    out: dict[str, Any] = {"preset": "demo", "threads": threads, "act_threads": act_threads,
                           "image_size": image_size, "train_batch": train_batch,
                           "options": asdict(options), "torch": torch.__version__}
    for name, config in models.items():
        torch.set_num_threads(act_threads)
        act = act_latency(config, image_size, act_calls, warmup)
        torch.set_num_threads(threads)
        stepper = TrainStepper(config, demo_env_info(image_size), options)
        batch = synthetic_batch(train_batch, config.history, image_size,
                                boxes=reads_boxes(config))
        for _ in range(warmup):
            stepper.step(batch)
        seconds = []
        for _ in range(train_steps):
            start = time.perf_counter()
            stepper.step(batch)
            seconds.append(time.perf_counter() - start)
        out[name] = {"history": config.history,
                     "train_samples_per_s": round(train_batch / statistics.median(seconds), 1),
                     "act_median_ms": round(act.median_ms, 3),
                     "act_cpu_median_ms": round(act.cpu_median_ms or 0.0, 3)}
    return out


@dataclass
class LeverResult:
    """One lever's A/B: speed ratio B/A (medians of alternating rounds) and its loss check."""

    model: str
    lever: str
    threads: int
    a_step_ms: float
    b_step_ms: float
    speedup: float  # a_step_ms / b_step_ms: > 1 means the lever is faster
    rounds: int
    steps_per_round: int
    loss_steps: int = 0
    loss_a: float | None = None  # mean loss over the last loss_window steps, A, seed 0
    loss_b: float | None = None  # the same with the lever on, seed 0
    loss_a_seed1: float | None = None  # A with seed 1: how far a reseed alone moves it
    loss_window: int = 0
    max_step_diff_b: float | None = None  # max |loss_b(t) - loss_a(t)| over every step
    identical: bool | None = None  # every step's loss bit-identical between A and B


def time_ab(a: TrainStepper, b: TrainStepper, batch: dict[str, Any], rounds: int,
            steps_per_round: int, warmup: int = 2) -> tuple[float, float]:
    """Median step seconds of A and of B, alternating A and B rounds (ABAB... then BABA...
    halves, so neither always goes first)."""
    for _ in range(warmup):
        a.step(batch)
        b.step(batch)
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for side in order:
            stepper = (a, b)[side]
            for _ in range(steps_per_round):
                start = time.perf_counter()
                stepper.step(batch)
                times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def store_batches(path: str, history: int, batch_size: int, steps: int, seed: int = 0
                  ) -> tuple[Any, list[dict[str, Any]]]:
    """The store (EpisodeDataset) and ``steps`` shuffled batches drawn with ``seed``."""
    from torch.utils.data import default_collate

    from policy.data import EpisodeDataset

    ds = EpisodeDataset(path, history=history, in_memory=True)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, len(ds), (batch_size,), generator=g).tolist()
        out.append(default_collate(ds.__getitems__(idx)))
    return ds, out


def loss_curve(config: Any, ds: Any, batches: list[dict[str, Any]], options: TrainOptions,
               seed: int) -> list[float]:
    """The loss at every step of a fresh policy trained on ``batches`` (global RNG seeded)."""
    stepper = TrainStepper(config, ds.info, options, ds.stats, seed=seed,
                           total_steps=len(batches))
    torch.manual_seed(seed + 1)  # augmentation and dropout draw from here, alike in A and B
    return [stepper.step(batch) for batch in batches]


def ab_lever(name: str, config: Any, lever: str, base: TrainOptions, image_size: int = 64,
             threads: int = 2, train_batch: int = 64, rounds: int = 6,
             steps_per_round: int = 3, store: str | None = None, loss_steps: int = 200,
             loss_window: int = 50, policy_b: dict[str, Any] | None = None) -> LeverResult:
    """Speed of ``base`` (A) against ``base.with_lever(lever)`` (B) in one process, and, when
    ``store`` is given, the loss after ``loss_steps`` steps of each on the same batches.

    ``lever="policy"``: B is the same options with the policy config fields ``policy_b``
    changed (a different model, e.g. Gato with fewer tokens per frame: its loss differs by
    design, and is reported only for scale)."""
    torch.set_num_threads(threads)
    config_b = config
    if lever == "policy":
        if not policy_b:
            raise ValueError("lever='policy' needs policy_b, the config fields B changes; got "
                             f"{policy_b!r}")
        config_b, b_opts = dataclasses.replace(config, **policy_b), base
    else:
        if lever == "foreach":  # the lever is the switch away from torch's CPU default, "for"
            base = dataclasses.replace(base, optimizer_impl="for")
        elif lever in ("bf16", "compile", "channels_last"):  # A has the lever off
            base = dataclasses.replace(base, **{lever: False})
        b_opts = base.with_lever(lever)
    info = demo_env_info(image_size)
    a, b = TrainStepper(config, info, base), TrainStepper(config_b, info, b_opts)
    wrist = a.policy.reads_wrist or b.policy.reads_wrist
    boxes = reads_boxes(config) or reads_boxes(config_b)
    a_s, b_s = time_ab(a, b, synthetic_batch(train_batch, config.history, image_size,
                                             wrist=wrist, boxes=boxes), rounds, steps_per_round)
    result = LeverResult(name, lever, threads, a_s * 1e3, b_s * 1e3, a_s / b_s, rounds,
                         steps_per_round)
    if store:
        ds, batches = store_batches(store, config.history, train_batch, loss_steps)
        curve_a = loss_curve(config, ds, batches, base, seed=0)
        curve_b = loss_curve(config_b, ds, batches, b_opts, seed=0)
        curve_a1 = loss_curve(config, ds, batches, base, seed=1)
        w = min(loss_window, loss_steps)
        result.loss_steps, result.loss_window = loss_steps, w
        result.loss_a = statistics.fmean(curve_a[-w:])
        result.loss_b = statistics.fmean(curve_b[-w:])
        result.loss_a_seed1 = statistics.fmean(curve_a1[-w:])
        result.max_step_diff_b = max(abs(x - y) for x, y in zip(curve_a, curve_b, strict=True))
        result.identical = curve_a == curve_b
    return result


def profile_train_step(config: Any, options: TrainOptions, image_size: int = 64,
                       threads: int = 2, train_batch: int = 64, steps: int = 5,
                       rows: int = 15) -> str:
    """torch.profiler's table of the top ``rows`` ops by self CPU time over ``steps``
    training steps (after 3 warm-up steps), at the demo's settings."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    stepper = TrainStepper(config, demo_env_info(image_size), options)
    batch = synthetic_batch(train_batch, config.history, image_size, boxes=reads_boxes(config))
    for _ in range(3):
        stepper.step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper.step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
