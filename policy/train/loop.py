"""The training loop: one function that runs alone, under torchrun, fresh or resumed.

`train(cfg, policy_config, run_dir, train_config)` builds the dataset and the policy,
restores a checkpoint when asked, and runs `cfg.train.steps` AdamW steps with warm-up +
cosine, gradient clipping, optional bf16 autocast (CUDA; the CPU when asked),
DistributedDataParallel when several processes run, periodic logging, atomic checkpoints and
in-training evaluation.
scripts/train.py is the hydra entry point that calls it.

The speed switches (`optim.impl`, `train.bf16_cpu`, `train.compile`, `train.channels_last`)
are applied by the helpers below, which policy/benchmark.py reuses so that a benchmark
times the same step a run takes (docs/experiments/2026-11-30-speed.md has their figures).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from policy.train import checkpoint as ckpt
from policy.train.config import OPTIMIZER_IMPLS, DataConfig, TrainRunConfig
from policy.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    default_num_threads,
    dist_info,
    gather_objects,
    init_process_group,
    mean_over_ranks,
)
from policy.train.logger import RunLogger
from policy.train.optim import WarmupCosine, make_optimizer
from policy.train.sampler import ResumableSampler, batches, make_loader
from policy.train.state import (
    Progress,
    TrainingState,
    capture_rng,
    load_training_state,
    restore_rng,
)

log = logging.getLogger(__name__)

RESUME_NOTE = "resumed_into.txt"


@dataclass
class TrainResult:
    """What a finished (or stopped) invocation leaves behind."""

    run_dir: Path  # where checkpoints and logs went (the original run's dir when resumed)
    last_checkpoint: Path | None
    progress: Progress
    samples_per_s: float  # over this invocation's steps, all ranks together
    data_share: float  # fraction of step time spent waiting for the batch
    final_metrics: dict[str, float] = field(default_factory=dict)


def build_dataset(cfg: DataConfig) -> Dataset:
    """The episode store as torch samples (policy.data.EpisodeDataset)."""
    from policy.data import EpisodeDataset

    return EpisodeDataset(
        cfg.path, history=cfg.history, in_memory=cfg.in_memory,
        tasks=list(cfg.tasks) if cfg.tasks else None,
    )


def build_policy(policy_config: Any, dataset: Any, checkpoint: Path | None) -> nn.Module:
    """A fresh policy fitted to the dataset, or the one saved in `checkpoint` (resume)."""
    from policy import Policy, make_policy

    if checkpoint is not None:
        return Policy.from_pretrained(checkpoint)
    return make_policy(
        policy_config, action_spec=dataset.action_spec, env_info=dataset.info, stats=dataset.stats
    )


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False; use auto/cpu")
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds the legacy global generator others use)
    torch.manual_seed(seed)


def find_resume_checkpoint(resume: str | None, run_dir: Path, name: str) -> Path | None:
    """The checkpoint that `train.resume` names: None, "true" (latest run named `name`), or
    a path to a run dir, a checkpoints dir or a checkpoint dir."""
    if resume is None or resume.strip().lower() in ("", "false", "none", "null"):
        return None
    if resume.strip().lower() == "true":
        # runs live at <outputs>/<date>/<time>_<name>; look beside this run's own directory
        outputs_root = run_dir.parent.parent
        latest = ckpt.find_latest_run(outputs_root, name, exclude=None)
        if latest is None:
            raise FileNotFoundError(
                f"train.resume=true: no run named {name!r} with a checkpoint under "
                f"{outputs_root}/*/*_{name}/; pass train.resume=PATH or start fresh"
            )
        return ckpt.resolve_checkpoint(latest)
    return ckpt.resolve_checkpoint(resume)


def autocast_for(device: torch.device, bf16_cuda: bool, bf16_cpu: bool
                 ) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of the forward pass's autocast context: bf16 where asked for, else none."""
    if device.type == "cuda" and bf16_cuda:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and bf16_cpu:
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


def set_optimizer_impl(optimizer: torch.optim.Optimizer, impl: str) -> None:
    """Switch a torch Adam/AdamW between its per-tensor loop, foreach and fused kernels.

    The choice is a per-group flag that torch reads at every step, so setting it after
    construction (and again after `load_state_dict`, which restores the saved flags) is how
    a resumed run keeps this run's choice.
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optimizer impl {impl!r}; expected one of {OPTIMIZER_IMPLS}")
    for group in optimizer.param_groups:
        if "foreach" not in group or "fused" not in group:
            raise TypeError(f"{type(optimizer).__name__} has no foreach/fused switch; expected "
                            "a torch Adam or AdamW")
        group["foreach"] = impl == "foreach"
        group["fused"] = impl == "fused"


def compile_policy(policy: nn.Module) -> bool:
    """torch.compile the image tokenizer and the transformer in place (state-dict keys and
    checkpoints unchanged); False, with a warning, where inductor cannot run here.

    A graph that fails to compile later falls back to eager for that graph
    (torch._dynamo.config.suppress_errors), so a run never dies of compilation.
    """
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++")):
        log.warning("train.compile: no C compiler on PATH for inductor; training stays eager")
        return False
    import torch._dynamo as dynamo

    dynamo.config.suppress_errors = True
    compiled = False
    for name in ("image_tokenizer", "transformer"):
        module = getattr(policy, name, None)
        if isinstance(module, nn.Module):
            module.compile(dynamic=False)
            compiled = True
    if not compiled:
        log.warning("train.compile: %s has no image_tokenizer or transformer to compile",
                    type(policy).__name__)
    return compiled


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class _StopFlag:
    """SIGTERM/SIGUSR1 (preemption, `scancel --signal`) ask for a checkpoint and a clean
    stop at the end of the current step instead of losing the steps since the last one."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            # ValueError: not the main thread (e.g. a test runner's thread); no handler then
            with suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("signal %d: checkpointing and stopping after this step", signum)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class _Window:
    """Sums over the steps since the last log line."""

    steps: int = 0
    data_s: float = 0.0
    update_s: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)


def train(
    cfg: TrainRunConfig,
    policy_config: Any,
    run_dir: Path,
    train_config: dict[str, Any],
    *,
    evaluator: Any = None,
    dataset_factory: Callable[[DataConfig], Dataset] = build_dataset,
    policy_factory: Callable[[Any, Any, Path | None], nn.Module] = build_policy,
) -> TrainResult:
    """Run (or continue) one training run; returns where it ended.

    `train_config` is the resolved config saved beside each checkpoint. `evaluator`, if
    given, is a `policy.evaluation.EvalConfig` (anything with `.run(checkpoint_dir,
    out_dir, **overrides) -> EvalReport`); it runs on rank 0 every `train.eval_every`
    steps on the checkpoint written at that step. The factories are injection points for
    other datasets and policies; the defaults read the episode store and build the policy
    from `policy_config` (or load it from the resumed checkpoint).
    """
    info = dist_info()
    init_process_group(info)
    device = resolve_device(cfg.device, info)
    torch.set_num_threads(cfg.train.num_threads or default_num_threads(info))
    sched_cfg = cfg.train
    if sched_cfg.batch_size % info.world_size:
        raise ValueError(
            f"train.batch_size={sched_cfg.batch_size} is not divisible by the "
            f"{info.world_size} processes; expected a multiple of the world size"
        )
    per_rank_batch = sched_cfg.batch_size // info.world_size

    resume_from: Path | None = None
    if info.is_main:
        resume_from = find_resume_checkpoint(sched_cfg.resume, run_dir, cfg.name)
    resume_from = broadcast_object(resume_from, info)
    if resume_from is not None:
        # a resumed run keeps writing into the run it continues: one run, one directory
        if info.is_main and resume_from.parent.parent.resolve() != run_dir.resolve():
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RESUME_NOTE).write_text(f"{resume_from.parent.parent.resolve()}\n")
        run_dir = resume_from.parent.parent
        log.info("resuming from %s", resume_from)

    # Same seed on every rank for the model's initial weights (DDP also broadcasts rank 0's);
    # per-rank seeds afterwards, so that augmentation differs between ranks.
    seed_everything(sched_cfg.seed)
    dataset = dataset_factory(cfg.data)
    policy = policy_factory(policy_config, dataset, resume_from).to(device)
    seed_everything(sched_cfg.seed + 1000 * info.rank)
    policy_history = getattr(getattr(policy, "config", None), "history", None)
    if policy_history is not None and policy_history != cfg.data.history:
        raise ValueError(
            f"data.history={cfg.data.history} but the policy reads {policy_history} frames; "
            "expected them equal (conf/data/default.yaml follows ${policy.history})"
        )

    trained_tasks = list(cfg.data.tasks or getattr(dataset, "info", {}).get("tasks") or []) or None
    if sched_cfg.channels_last:
        policy = policy.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(policy, cfg.optim, sched_cfg.steps)
    set_optimizer_impl(optimizer, cfg.optim.impl)
    progress = Progress(world_size=info.world_size)
    if resume_from is not None:
        state = load_training_state(resume_from / ckpt.TRAINING_STATE)
        optimizer.load_state_dict(state.optimizer)
        set_optimizer_impl(optimizer, cfg.optim.impl)  # this run's choice, not the saved one
        scheduler.load_state_dict(state.scheduler)
        # load_state_dict restored the saved schedule's fields; this run's config wins, so a
        # resume with a larger train.steps extends the cosine instead of ending at the old one
        wanted = WarmupCosine(cfg.optim.warmup_steps, sched_cfg.steps, cfg.optim.min_lr_ratio)
        for fn in scheduler.lr_lambdas:
            if fn != wanted:
                log.warning("learning-rate schedule changed on resume: %s -> %s", fn, wanted)
                vars(fn).update(vars(wanted))
        progress = state.progress
        # the checkpoint was saved before its own evaluation: best.json is the latest word
        best = ckpt.read_pointer(resume_from.parent, ckpt.BEST)
        if best is not None:
            progress.best_success, progress.best_checkpoint = best.success, best.checkpoint
        if progress.world_size == info.world_size and len(state.rng) == info.world_size:
            restore_rng(state.rng[info.rank])
        else:
            log.warning(
                "checkpoint was written by %d process(es), this run has %d: RNG streams are "
                "reseeded and the data order restarts at the checkpoint's epoch",
                progress.world_size, info.world_size,
            )
            progress.batch_in_epoch = 0
            progress.world_size = info.world_size

    model: nn.Module = policy
    if info.distributed:
        model = DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = ResumableSampler(
        dataset, info.world_size, info.rank, sched_cfg.seed, per_rank_batch
    )
    loader = make_loader(dataset, sampler, cfg.data.num_workers, sched_cfg.seed + info.rank)
    stream: Iterator[Any] = batches(loader, sampler, progress)
    params = [p for p in policy.parameters() if p.requires_grad]
    autocast = autocast_for(device, sched_cfg.bf16, sched_cfg.bf16_cpu)
    if sched_cfg.compile:
        compile_policy(policy)
    stop_at = min(sched_cfg.steps, sched_cfg.stop_after or sched_cfg.steps)

    logger: RunLogger | None = None
    if info.is_main:
        ckpt.remove_stale_temps(run_dir / ckpt.CHECKPOINTS)  # leftovers of killed writes
        logger = RunLogger(
            run_dir, cfg.logger, purge_step=progress.step + 1 if resume_from else None
        )
        n_params = sum(p.numel() for p in params)
        log.info(
            "run dir %s | %s | %d trainable parameters | %d samples | %d process(es) x batch "
            "%d | %d torch thread(s)",
            run_dir, device, n_params, len(dataset), info.world_size, per_rank_batch,
            torch.get_num_threads(),
        )

    def save(step: int) -> Path:
        """Rank 0 writes; every rank contributes its RNG state, then all wait."""
        rngs = gather_objects(capture_rng(), info)
        path = run_dir / ckpt.CHECKPOINTS / ckpt.checkpoint_name(step)
        if info.is_main:
            state = TrainingState(
                progress=Progress(**vars(progress)),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                rng=rngs,
            )
            path = ckpt.save_checkpoint(run_dir, step, policy, train_config, state)
            ckpt.prune(run_dir / ckpt.CHECKPOINTS, sched_cfg.keep_last)
        barrier(info)
        return path

    def evaluate(step: int, checkpoint_dir: Path) -> None:
        from policy.evaluation import log_report

        assert logger is not None
        out_dir = checkpoint_dir / "eval"
        overrides: dict[str, Any] = {"progress": False}
        if getattr(evaluator, "tasks", None) is None:
            # eval.tasks=null means "what this run trains on", not every task there is
            overrides["tasks"] = trained_tasks
        report = evaluator.run(str(checkpoint_dir), out_dir, **overrides)
        name = report.meta["policies"][0]
        success = report.aggregate(name).success_rate
        scalars = {k.removeprefix("eval/"): v for k, v in report.scalars("eval").items()}
        # TensorBoard gets the same scalars (plus the report table and videos) from log_report
        logger.log("eval", step, progress.train_time_s, scalars, tensorboard=False)
        if logger.writer is not None:
            log_report(report, logger.writer, step, out_dir=out_dir,
                       max_videos=2 if cfg.logger.videos else 0)
        if progress.best_success is None or success > progress.best_success:
            progress.best_success = success
            progress.best_checkpoint = checkpoint_dir.name
            ckpt.mark_best(checkpoint_dir, step, success)
        log.info("step %d: success %.3f (best %.3f)", step, success, progress.best_success)

    bar = tqdm(
        total=stop_at, initial=progress.step, unit="step", dynamic_ncols=True,
        disable=not (info.is_main and sched_cfg.progress), mininterval=1.0,
    )
    window = _Window()
    total = _Window()
    last_path: Path | None = None
    last_metrics: dict[str, float] = {}
    first_step_done = False
    with _StopFlag() as stop:
        while progress.step < stop_at:
            t0 = time.perf_counter()
            batch = _to_device(next(stream), device)
            t1 = time.perf_counter()
            policy.train()
            with autocast():
                loss, metrics = model(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {progress.step}; lower optim.lr or check "
                    "the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # honest update time: kernels are async
            t2 = time.perf_counter()

            progress.step += 1
            progress.samples_seen += sched_cfg.batch_size
            progress.train_time_s += t2 - t0
            # the first step of an invocation also loads the text encoder and warms up
            # kernels: it counts in train_time_s but not in the throughput figures
            timed = (window, total) if first_step_done else (window,)
            first_step_done = True
            for w in timed:
                w.steps += 1
                w.data_s += t1 - t0
                w.update_s += t2 - t1
            window.add({"loss": loss.item(), **metrics, "grad_norm": grad_norm.item()})
            bar.update(1)

            step = progress.step
            if step % sched_cfg.log_every == 0 or step == stop_at:
                keys = sorted(window.sums)
                means = mean_over_ranks(
                    torch.tensor([window.sums[k] / window.steps for k in keys]), info
                )
                last_metrics = dict(zip(keys, means.tolist(), strict=True))
                step_s = (window.data_s + window.update_s) / window.steps
                perf = {
                    "samples_per_s": sched_cfg.batch_size / step_s,
                    "data_ms": 1000 * window.data_s / window.steps,
                    "update_ms": 1000 * window.update_s / window.steps,
                    "data_share": window.data_s / (window.data_s + window.update_s),
                    "lr": lr,
                    "epoch": progress.epoch,
                }
                if logger is not None:
                    logger.log("train", step, progress.train_time_s, {**last_metrics, **perf})
                    bar.set_postfix(
                        loss=f"{last_metrics['loss']:.3f}",
                        sps=f"{perf['samples_per_s']:.0f}",
                        lr=f"{lr:.1e}",
                    )
                window = _Window()

            eval_now = evaluator is not None and sched_cfg.eval_every > 0 and (
                step % sched_cfg.eval_every == 0
            )
            stop_now = step == stop_at or bool(
                broadcast_object(stop.requested, info) if info.distributed else stop.requested
            )
            ckpt_now = (
                (sched_cfg.checkpoint_every > 0 and step % sched_cfg.checkpoint_every == 0)
                or eval_now or stop_now
            )
            if ckpt_now:
                last_path = save(step)
            if eval_now:
                if info.is_main:
                    assert last_path is not None
                    evaluate(step, last_path)
                barrier(info)
            if stop_now:
                break
    bar.close()
    if logger is not None:
        logger.close()
    steps_run = max(1, total.steps)
    step_time = (total.data_s + total.update_s) / steps_run
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=last_path,
        progress=progress,
        samples_per_s=sched_cfg.batch_size / step_time if total.steps else 0.0,
        data_share=total.data_s / max(1e-12, total.data_s + total.update_s),
        final_metrics=last_metrics,
    )
