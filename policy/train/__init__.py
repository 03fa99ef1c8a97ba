"""Training runs: configs, the loop, checkpoints, DDP helpers and logging.

`scripts/train.py` composes conf/train.yaml and calls `train`; everything it needs lives
here so that runs can also be started from Python.
"""

from policy.train.checkpoint import (
    find_latest_run,
    mark_best,
    read_pointer,
    resolve_checkpoint,
    save_checkpoint,
)
from policy.train.config import (
    DataConfig,
    LoggerConfig,
    OptimConfig,
    ScheduleConfig,
    TrainRunConfig,
    register_configs,
)
from policy.train.distributed import DistInfo, dist_info, prepare_launch
from policy.train.loop import TrainResult, train
from policy.train.optim import WarmupCosine, make_optimizer
from policy.train.state import Progress, TrainingState, load_training_state

__all__ = [
    "DataConfig",
    "DistInfo",
    "LoggerConfig",
    "OptimConfig",
    "Progress",
    "ScheduleConfig",
    "TrainResult",
    "TrainRunConfig",
    "TrainingState",
    "WarmupCosine",
    "dist_info",
    "find_latest_run",
    "load_training_state",
    "make_optimizer",
    "mark_best",
    "prepare_launch",
    "read_pointer",
    "register_configs",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
]
