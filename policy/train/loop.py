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
from policy.train.config import OPTIMIZER_IMPLS, DataConfig, TrainRunConfig, bf16_cpu_enabled
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
from policy.train.sampler import ResumableSampler, batches, make_loader, task_sample_weights
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
        tasks=list(cfg.tasks) if cfg.tasks else None, wrist_camera=cfg.wrist_camera,
        phase_state=cfg.phase_state,
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


def per_rank_batch_size(batch_size: int, info: DistInfo) -> int:
    """The global batch split evenly over the processes."""
    if batch_size % info.world_size:
        raise ValueError(
            f"train.batch_size={batch_size} is not divisible by the {info.world_size} "
            "processes; expected a multiple of the world size"
        )
    return batch_size // info.world_size


def resume_target(cfg: TrainRunConfig, run_dir: Path, info: DistInfo
                  ) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None), the same on every rank.

    A resumed run keeps writing into the run it continues: one run, one directory. The
    directory hydra made for this invocation gets a note saying where the run went.
    """
    resume_from: Path | None = None
    if info.is_main:
        resume_from = find_resume_checkpoint(cfg.train.resume, run_dir, cfg.name)
    resume_from = broadcast_object(resume_from, info)
    if resume_from is None:
        return run_dir, None
    if info.is_main and resume_from.parent.parent.resolve() != run_dir.resolve():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESUME_NOTE).write_text(f"{resume_from.parent.parent.resolve()}\n")
    log.info("resuming from %s", resume_from)
    return resume_from.parent.parent, resume_from


def build_data_and_policy(
    cfg: TrainRunConfig, policy_config: Any, resume_from: Path | None, device: torch.device,
    info: DistInfo, dataset_factory: Callable[[DataConfig], Dataset],
    policy_factory: Callable[[Any, Any, Path | None], nn.Module],
) -> tuple[Dataset, nn.Module]:
    """The dataset and the policy on `device`, checked to read the same number of frames."""
    # Same seed on every rank for the model's initial weights (DDP also broadcasts rank 0's);
    # per-rank seeds afterwards, so that augmentation differs between ranks.
    seed_everything(cfg.train.seed)
    dataset = dataset_factory(cfg.data)
    policy = policy_factory(policy_config, dataset, resume_from).to(device)
    instructions = getattr(dataset, "instructions", None)
    if instructions and hasattr(getattr(policy, "config", None), "text_encoder"):
        from policy.text import get_text_encoder

        # every instruction of the store stays cached (the encoder loads on first use)
        get_text_encoder(policy.config.text_encoder).reserve(len(instructions) + 1024)
    seed_everything(cfg.train.seed + 1000 * info.rank)
    policy_history = getattr(getattr(policy, "config", None), "history", None)
    if policy_history is not None and policy_history != cfg.data.history:
        raise ValueError(
            f"data.history={cfg.data.history} but the policy reads {policy_history} frames; "
            "expected them equal (conf/data/default.yaml follows ${policy.history})"
        )
    if cfg.train.channels_last:
        policy = policy.to(memory_format=torch.channels_last)
    return dataset, policy


def restore_training_state(
    resume_from: Path, optimizer: torch.optim.Optimizer, scheduler: Any,
    cfg: TrainRunConfig, info: DistInfo,
) -> Progress:
    """Load the optimizer, schedule, progress and this rank's RNG from a checkpoint."""
    state = load_training_state(resume_from / ckpt.TRAINING_STATE)
    optimizer.load_state_dict(state.optimizer)
    set_optimizer_impl(optimizer, cfg.optim.impl)  # this run's choice, not the saved one
    scheduler.load_state_dict(state.scheduler)
    # load_state_dict restored the saved schedule's fields; this run's config wins, so a
    # resume with a larger train.steps extends the cosine instead of ending at the old one
    wanted = WarmupCosine(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
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
    return progress


def batch_stream(dataset: Dataset, cfg: TrainRunConfig, info: DistInfo, progress: Progress,
                 per_rank_batch: int) -> Iterator[Any]:
    """This rank's batches, resuming the data order where `progress` says it stopped."""
    seed = cfg.train.seed
    weights = task_sample_weights(dataset, cfg.data.task_weights)
    sampler = ResumableSampler(dataset, info.world_size, info.rank, seed, per_rank_batch,
                               weights=weights)
    loader = make_loader(dataset, sampler, cfg.data.num_workers, seed + info.rank)
    return batches(loader, sampler, progress)


@dataclass
class StepResult:
    """What one optimizer step reports (tensors: read them only when logging)."""

    loss: torch.Tensor
    metrics: dict[str, float]
    grad_norm: torch.Tensor  # before clipping
    lr: float  # the learning rate this step used


def update_policy(
    model: nn.Module, policy: nn.Module, batch: dict[str, Any],
    optimizer: torch.optim.Optimizer, scheduler: Any, params: list[nn.Parameter],
    grad_clip: float, autocast: Callable[[], AbstractContextManager[Any]], step: int,
) -> StepResult:
    """One optimizer step, as LeRobot's `update_policy`: forward (under `autocast`; through
    the DDP wrapper `model` when there is one), backward, gradient clipping at `grad_clip`
    (0: no clipping, the norm is still measured), AdamW step, schedule step.

    `step` (the steps done before this one) only names the step in an error.
    """
    policy.train()
    with autocast():
        loss, metrics = model(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss.item()} at step {step}; lower optim.lr or check the data"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    return StepResult(loss, metrics, grad_norm, lr)


@dataclass
class _Run:
    """What the steps of one invocation share once it is set up."""

    cfg: TrainRunConfig
    info: DistInfo
    device: torch.device
    run_dir: Path
    train_config: dict[str, Any]
    policy: nn.Module
    model: nn.Module  # the policy, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[nn.Parameter]
    progress: Progress
    stop_at: int
    logger: RunLogger | None  # rank 0 only
    evaluator: Any
    trained_tasks: list[str] | None


def open_logger(run: _Run, resumed: bool, samples: int, per_rank_batch: int) -> RunLogger:
    """Rank 0's metrics.jsonl / TensorBoard writer, after clearing killed writes' leftovers."""
    ckpt.remove_stale_temps(run.run_dir / ckpt.CHECKPOINTS)
    logger = RunLogger(
        run.run_dir, run.cfg.logger, purge_step=run.progress.step + 1 if resumed else None
    )
    log.info(
        "run dir %s | %s | %d trainable parameters | %d samples | %d process(es) x batch "
        "%d | %d torch thread(s)",
        run.run_dir, run.device, sum(p.numel() for p in run.params), samples,
        run.info.world_size, per_rank_batch, torch.get_num_threads(),
    )
    return logger


def save_checkpoint(run: _Run, step: int) -> Path:
    """Rank 0 writes; every rank contributes its RNG state, then all wait."""
    rngs = gather_objects(capture_rng(), run.info)
    path = run.run_dir / ckpt.CHECKPOINTS / ckpt.checkpoint_name(step)
    if run.info.is_main:
        state = TrainingState(
            progress=Progress(**vars(run.progress)),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            rng=rngs,
        )
        path = ckpt.save_checkpoint(run.run_dir, step, run.policy, run.train_config, state)
        ckpt.prune(run.run_dir / ckpt.CHECKPOINTS, run.cfg.train.keep_last)
    barrier(run.info)
    return path


def evaluate_checkpoint(run: _Run, step: int, checkpoint_dir: Path) -> None:
    """Rank 0: run the evaluator on a checkpoint, log it, and mark the best one so far."""
    from policy.evaluation import log_report

    assert run.logger is not None
    progress = run.progress
    out_dir = checkpoint_dir / "eval"
    overrides: dict[str, Any] = {"progress": False}
    if getattr(run.evaluator, "tasks", None) is None:
        # eval.tasks=null means "what this run trains on", not every task there is
        overrides["tasks"] = run.trained_tasks
    report = run.evaluator.run(str(checkpoint_dir), out_dir, **overrides)
    name = report.meta["policies"][0]
    success = report.aggregate(name).success_rate
    scalars = {k.removeprefix("eval/"): v for k, v in report.scalars("eval").items()}
    # TensorBoard gets the same scalars (plus the report table and videos) from log_report
    run.logger.log("eval", step, progress.train_time_s, scalars, tensorboard=False)
    if run.logger.writer is not None:
        log_report(report, run.logger.writer, step, out_dir=out_dir,
                   max_videos=2 if run.cfg.logger.videos else 0)
    if progress.best_success is None or success > progress.best_success:
        progress.best_success = success
        progress.best_checkpoint = checkpoint_dir.name
        ckpt.mark_best(checkpoint_dir, step, success)
    log.info("step %d: success %.3f (best %.3f)", step, success, progress.best_success)


def log_window(run: _Run, window: _Window, lr: float, bar: tqdm) -> dict[str, float]:
    """Average the window's metrics over steps and ranks, log them with the throughput;
    returns the averaged metrics."""
    keys = sorted(window.sums)
    means = mean_over_ranks(torch.tensor([window.sums[k] / window.steps for k in keys]),
                            run.info)
    metrics = dict(zip(keys, means.tolist(), strict=True))
    step_s = (window.data_s + window.update_s) / window.steps
    perf = {
        "samples_per_s": run.cfg.train.batch_size / step_s,
        "data_ms": 1000 * window.data_s / window.steps,
        "update_ms": 1000 * window.update_s / window.steps,
        "data_share": window.data_s / (window.data_s + window.update_s),
        "lr": lr,
        "epoch": run.progress.epoch,
    }
    if run.logger is not None:
        run.logger.log("train", run.progress.step, run.progress.train_time_s,
                       {**metrics, **perf})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", sps=f"{perf['samples_per_s']:.0f}",
                        lr=f"{lr:.1e}")
    return metrics


def checkpoint_and_evaluate(run: _Run, stop_requested: bool) -> tuple[Path | None, bool]:
    """After a step: checkpoint when due (or evaluating, or stopping), evaluate when due.

    Returns (the checkpoint written, or None; whether to stop).
    """
    sched, step, info = run.cfg.train, run.progress.step, run.info
    eval_now = run.evaluator is not None and sched.eval_every > 0 and (
        step % sched.eval_every == 0
    )
    stop_now = step == run.stop_at or bool(
        broadcast_object(stop_requested, info) if info.distributed else stop_requested
    )
    ckpt_now = (
        (sched.checkpoint_every > 0 and step % sched.checkpoint_every == 0)
        or eval_now or stop_now
    )
    path = save_checkpoint(run, step) if ckpt_now else None
    if eval_now:
        if info.is_main:
            assert path is not None
            evaluate_checkpoint(run, step, path)
        barrier(info)
    return path, stop_now


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
    sched = cfg.train
    per_rank_batch = per_rank_batch_size(sched.batch_size, info)
    run_dir, resume_from = resume_target(cfg, run_dir, info)
    dataset, policy = build_data_and_policy(cfg, policy_config, resume_from, device, info,
                                            dataset_factory, policy_factory)
    optimizer, scheduler = make_optimizer(policy, cfg.optim, sched.steps)
    set_optimizer_impl(optimizer, cfg.optim.impl)
    progress = Progress(world_size=info.world_size)
    if resume_from is not None:
        progress = restore_training_state(resume_from, optimizer, scheduler, cfg, info)
    model: nn.Module = policy
    if info.distributed:
        model = DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )
    stream = batch_stream(dataset, cfg, info, progress, per_rank_batch)
    params = [p for p in policy.parameters() if p.requires_grad]
    autocast = autocast_for(device, sched.bf16, bf16_cpu_enabled(sched.bf16_cpu))
    if device.type == "cpu" and info.rank == 0:
        log.info("bf16 autocast on the CPU: %s (train.bf16_cpu=%s)",
                 "on" if bf16_cpu_enabled(sched.bf16_cpu) else "off", sched.bf16_cpu)
    if sched.compile:
        compile_policy(policy)
    run = _Run(
        cfg=cfg, info=info, device=device, run_dir=run_dir, train_config=train_config,
        policy=policy, model=model, optimizer=optimizer, scheduler=scheduler,
        params=params, progress=progress,
        stop_at=min(sched.steps, sched.stop_after or sched.steps), logger=None,
        evaluator=evaluator,
        trained_tasks=list(cfg.data.tasks or getattr(dataset, "info", {}).get("tasks") or [])
        or None,
    )
    if info.is_main:
        run.logger = open_logger(run, resume_from is not None, len(dataset), per_rank_batch)
    result = run_steps(run, stream, autocast)
    if run.logger is not None:
        run.logger.close()
    return result


def run_steps(run: _Run, stream: Iterator[Any],
              autocast: Callable[[], AbstractContextManager[Any]]) -> TrainResult:
    """Step until `stop_at` (or a stop signal): fetch a batch, update, log, checkpoint."""
    progress, sched, device = run.progress, run.cfg.train, run.device
    bar = tqdm(
        total=run.stop_at, initial=progress.step, unit="step", dynamic_ncols=True,
        disable=not (run.info.is_main and sched.progress), mininterval=1.0,
    )
    window, total = _Window(), _Window()
    last_path: Path | None = None
    last_metrics: dict[str, float] = {}
    first_step_done = False
    with _StopFlag() as stop:
        while progress.step < run.stop_at:
            t0 = time.perf_counter()
            batch = _to_device(next(stream), device)
            t1 = time.perf_counter()
            out = update_policy(run.model, run.policy, batch, run.optimizer, run.scheduler,
                                run.params, run.cfg.optim.grad_clip, autocast, progress.step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # honest update time: kernels are async
            t2 = time.perf_counter()

            progress.step += 1
            progress.samples_seen += sched.batch_size
            progress.train_time_s += t2 - t0
            # the first step of an invocation also loads the text encoder and warms up
            # kernels: it counts in train_time_s but not in the throughput figures
            timed = (window, total) if first_step_done else (window,)
            first_step_done = True
            for w in timed:
                w.steps += 1
                w.data_s += t1 - t0
                w.update_s += t2 - t1
            window.add({"loss": out.loss.item(), **out.metrics,
                        "grad_norm": out.grad_norm.item()})
            bar.update(1)

            if progress.step % sched.log_every == 0 or progress.step == run.stop_at:
                last_metrics = log_window(run, window, out.lr, bar)
                window = _Window()
            path, stop_now = checkpoint_and_evaluate(run, stop.requested)
            last_path = path or last_path
            if stop_now:
                break
    bar.close()
    steps_run = max(1, total.steps)
    step_time = (total.data_s + total.update_s) / steps_run
    return TrainResult(
        run_dir=run.run_dir,
        last_checkpoint=last_path,
        progress=progress,
        samples_per_s=sched.batch_size / step_time if total.steps else 0.0,
        data_share=total.data_s / max(1e-12, total.data_s + total.update_s),
        final_metrics=last_metrics,
    )
