"""Structured configs of a training run, registered in hydra's ConfigStore.

`conf/train.yaml` starts its defaults list with the `train_schema` node stored here, so every
group file (data/, optim/, train/, logger/) is merged onto a typed dataclass: a misspelt
key or a value of the wrong type fails when hydra composes the config, with hydra's own
message, not an hour into a run. The dataclasses hold every default; a group file holds only
what its option changes (conf/train/tiny.yaml, conf/logger/jsonl.yaml). The `policy` and
`eval` groups belong to other modules and carry their own `_target_`, so they are typed
`Any` here and validated when they are instantiated at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZER_IMPLS = ("for", "foreach", "fused")


@dataclass
class DataConfig:
    """Where the episodes are and how a training sample is cut from them."""

    # an episode store directory (envs/store/), relative to the launch directory:
    # scripts/collect.py's default output
    path: str = "data/demos"
    history: int = 1  # frames per sample; conf/data/default.yaml follows ${policy.history}
    # read the store into RAM once (loading was 0.1-1.5% of a step:
    # docs/experiments/2026-11-28-training-runs.md)
    in_memory: bool = True
    tasks: Optional[list[str]] = None  # noqa: UP045 (OmegaConf 2.3 needs typing.Optional)
    # DataLoader worker processes (one torch thread each); in-memory indexing is cheap
    # enough in-process
    num_workers: int = 0
    # Each task's share of the training samples, relative to its share of the store's steps:
    # {stack: 2.0} draws stack's windows twice as often (with replacement, per epoch, from
    # train.seed). Tasks left out weigh 1.0; None (default) is the plain shuffled epoch.
    # Typed Any so that 'data.task_weights={stack: 2.0}' replaces the node instead of merging
    # into a struct; __post_init__ checks it.
    task_weights: Any = None
    # Load the wrist camera's frames: None loads every camera the store has; false leaves
    # the wrist frames on disk (half the RAM for a front-camera policy on a wrist store).
    # conf/data/default.yaml follows ${policy.wrist_camera}.
    wrist_camera: Optional[bool] = None  # noqa: UP045
    # Add each frame's gripper phase (policy/tokenizers/phase.py) to the samples, for a policy
    # that reads it; conf/data/default.yaml follows ${policy.phase_state}.
    phase_state: bool = False

    def __post_init__(self) -> None:
        if self.history < 1:
            raise ValueError(f"data.history={self.history}; expected >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers}; expected >= 0")
        if self.task_weights is not None and not isinstance(self.task_weights, dict):
            raise ValueError(f"data.task_weights={self.task_weights!r}; expected a mapping "
                             "{task: weight}, e.g. 'data.task_weights={stack: 2.0}'")
        for task, weight in (self.task_weights or {}).items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
                raise ValueError(
                    f"data.task_weights.{task}={weight!r}; expected a number >= 0")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, and gradient-norm clipping."""

    # the prototype learned pick in ~10 CPU-minutes with batch 64
    # (docs/experiments/2026-11-28-prototype.md)
    lr: float = 3e-4
    weight_decay: float = 0.01  # matrices only; biases and norm gains are not decayed
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio, not at zero
    grad_clip: float = 1.0  # max global L2 norm; 0 disables clipping (the norm is still logged)
    # how AdamW computes its update, not what it computes: "for" (torch's per-tensor loop),
    # "foreach" (one multi-tensor kernel per op: the same bits as "for", measured), "fused"
    # (one kernel for the whole update: differs from "for" in the last bit)
    impl: str = "foreach"

    def __post_init__(self) -> None:
        if self.impl not in OPTIMIZER_IMPLS:
            raise ValueError(f"optim.impl={self.impl!r}; expected one of {OPTIMIZER_IMPLS}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr}; expected > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps}; expected >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio}; expected in [0, 1]")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip}; expected >= 0 (0 = off)")


BF16_CPU_SETTINGS = ("auto", "true", "false")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def bf16_cpu_enabled(setting: str | bool) -> bool:
    """`train.bf16_cpu` ("auto", "true", "false" or a bool) -> whether to autocast on the CPU."""
    value = str(setting).lower()
    if value not in BF16_CPU_SETTINGS:
        raise ValueError(f"train.bf16_cpu={setting!r}; expected one of {BF16_CPU_SETTINGS}")
    return cpu_has_bf16() if value == "auto" else value == "true"


@dataclass
class ScheduleConfig:
    """How long to train, how often to log, evaluate and checkpoint, and from where."""

    steps: int = 10000  # optimizer steps; also the horizon of the cosine schedule
    batch_size: int = 64  # global batch: split evenly over DDP ranks
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000
    eval_every: int = 1000  # 0: no in-training evaluation; else also forces a checkpoint
    keep_last: int = 2  # older checkpoints are deleted, except the best one
    # null: start fresh; "true": continue the newest run with the same `name`;
    # a path: a run directory or one checkpoint directory to continue from
    resume: Optional[str] = None  # noqa: UP045
    # stop this invocation after this step (with a checkpoint) while keeping the schedule
    # of `steps`: for time-boxed jobs such as preemptible slots; null runs to `steps`
    stop_after: Optional[int] = None  # noqa: UP045
    bf16: bool = True  # bf16 autocast on CUDA
    # bf16 autocast on the CPU as well: "auto" (default) turns it on where the CPU has bf16
    # instructions (AVX-512 BF16 / AMX: 1.3x RT-1, 1.7x Gato, loss within a reseed and the
    # demo's success within noise; docs/experiments/2026-11-30-speed.md) and off elsewhere,
    # where bf16 is emulated and slower; true / false force it
    bf16_cpu: str = "auto"
    # torch.compile (inductor) the image tokenizer and the transformer in place; where it
    # cannot compile (no C compiler, an unsupported platform) the run warns and stays eager
    compile: bool = False
    channels_last: bool = False  # convolution weights in NHWC memory order
    num_threads: Optional[int] = None  # noqa: UP045 (null: cores // local processes)
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)}; expected >= 1")
        for name in ("checkpoint_every", "eval_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}={getattr(self, name)}; expected >= 0")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"train.stop_after={self.stop_after}; expected >= 1 or null")
        self.bf16_cpu = str(self.bf16_cpu).lower()  # YAML true/false arrive as "True"/"False"
        if self.bf16_cpu not in BF16_CPU_SETTINGS:
            raise ValueError(f"train.bf16_cpu={self.bf16_cpu!r}; expected one of "
                             f"{BF16_CPU_SETTINGS}")


@dataclass
class LoggerConfig:
    """Where scalars go: metrics.jsonl always (rank 0), TensorBoard if enabled."""

    tensorboard: bool = True
    videos: bool = True  # rollout videos of in-training evaluation as TensorBoard GIFs
    flush_secs: int = 30


@dataclass
class TrainRunConfig:
    """The whole composed `conf/train.yaml`."""

    name: str = "run"  # the run directory's suffix; `train.resume=true` looks runs up by it
    device: str = "auto"  # auto: cuda when available, else cpu
    policy: Any = MISSING  # conf/policy/*.yaml: `_target_` to RT1Config / GatoConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: Any = None  # conf/eval/*.yaml, owned by policy.evaluation
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}; expected one of {DEVICES}")


def register_configs() -> None:
    """Store the schema as `train_schema` so that conf/train.yaml can build on it, and the
    defaults its `eval` and `policy` groups build on (`eval/base`, `policy/<kind>_base`)."""
    from policy.base import register_policy_configs
    from policy.evaluation.config import register_configs as register_eval_configs

    ConfigStore.instance().store(name="train_schema", node=TrainRunConfig)
    register_eval_configs()
    register_policy_configs()
