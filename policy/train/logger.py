"""What a run reports: a metrics.jsonl file always, TensorBoard scalars and rollout GIFs.

Only rank 0 creates a `RunLogger`. metrics.jsonl (one JSON object per line: kind "train"
or "eval", step, training time, wall time, scalars) is the machine-readable record that
scripts/plot_learning_curve.py reads; TensorBoard gets the same scalars for humans.
Evaluation reports (success per task and split, rollout GIFs) go to TensorBoard through
`policy.evaluation.log_report` with this logger's `writer`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from policy.train.config import LoggerConfig

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """Writes the scalars of one run directory; `purge_step` drops a resumed run's tail."""

    def __init__(self, run_dir: Path, cfg: LoggerConfig, purge_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.start = time.time()
        run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_path = run_dir / METRICS_FILE
        if purge_step is not None:
            self._truncate_jsonl(purge_step)
        self._jsonl = open(self._metrics_path, "a")  # noqa: SIM115 (closed in close())
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(run_dir / TENSORBOARD_DIR), purge_step=purge_step, flush_secs=cfg.flush_secs
            )

    def _truncate_jsonl(self, purge_step: int) -> None:
        # a resumed run replays steps after its checkpoint: drop what the killed run logged
        # past it, as TensorBoard's purge_step does for the event files
        if not self._metrics_path.is_file():
            return
        keep = [
            line
            for line in self._metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] < purge_step
        ]
        self._metrics_path.write_text("".join(f"{line}\n" for line in keep))

    def log(
        self, kind: str, step: int, train_time_s: float, scalars: dict[str, float],
        tensorboard: bool = True,
    ) -> None:
        """One jsonl line, and `scalars` as `<kind>/<name>` in TensorBoard if `tensorboard`."""
        clean = {k: float(v) for k, v in scalars.items()}
        record = {
            "kind": kind,
            "step": step,
            "train_time_s": round(train_time_s, 3),
            "wall_time": round(time.time(), 3),
            **{k: (v if math.isfinite(v) else None) for k, v in clean.items()},
        }
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None and tensorboard:
            for name, value in clean.items():
                self._tb.add_scalar(f"{kind}/{name}", value, step)

    @property
    def writer(self) -> Any:
        """The TensorBoard SummaryWriter, or None when TensorBoard is off."""
        return self._tb

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
