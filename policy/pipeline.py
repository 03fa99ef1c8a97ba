"""The collect -> train -> evaluate pipeline behind `make demo` and the full recipe.

The pipeline owns no learning logic: every step is one of the project's hydra entry points
(scripts/collect.py, scripts/train.py, scripts/evaluate.py) run as a child process with the
overrides that the recipe (conf/recipe/*.yaml) lists for it, and with paths that chain the
steps inside one run directory:

    <run_dir>/data        the episode store (collect)
    <run_dir>/train       the training run: checkpoints/, tensorboard/ (train)
    <run_dir>/eval        eval_info.json, report.md, report.png, videos/ (evaluate)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

STEPS = ("collect", "train", "evaluate")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class PipelineConfig:
    """What to run and where; `steps` may skip steps whose outputs already exist."""

    run_dir: str
    name: str = "demo"
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    collect: list[str] = field(default_factory=list)  # overrides for scripts/collect.py
    train: list[str] = field(default_factory=list)  # overrides for scripts/train.py
    evaluate: list[str] = field(default_factory=list)  # overrides for scripts/evaluate.py

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown pipeline steps {unknown}; expected a subset of {STEPS}")

    @classmethod
    def from_omegaconf(cls, cfg: DictConfig) -> PipelineConfig:
        recipe = OmegaConf.to_container(cfg.recipe, resolve=True)
        return cls(
            run_dir=str(cfg.run_dir),
            name=str(recipe.get("name", "demo")),
            steps=list(cfg.steps),
            collect=[str(o) for o in recipe.get("collect", [])],
            train=[str(o) for o in recipe.get("train", [])],
            evaluate=[str(o) for o in recipe.get("evaluate", [])],
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.run_dir) / "data"

    @property
    def train_dir(self) -> Path:
        return Path(self.run_dir) / "train"

    @property
    def eval_dir(self) -> Path:
        return Path(self.run_dir) / "eval"

    @property
    def checkpoint(self) -> Path:
        return self.train_dir / "checkpoints" / "last"


def step_command(cfg: PipelineConfig, step: str) -> list[str]:
    """The exact command line of one step, as a user would type it."""
    py = sys.executable
    if step == "collect":
        return [py, str(REPO / "scripts/collect.py"), f"output={cfg.data_dir}",
                f"hydra.run.dir={cfg.run_dir}/.hydra_collect", *cfg.collect]
    if step == "train":
        return [py, str(REPO / "scripts/train.py"), f"data.path={cfg.data_dir}",
                f"hydra.run.dir={cfg.train_dir}", f"name={cfg.name}", *cfg.train]
    if step == "evaluate":
        return [py, str(REPO / "scripts/evaluate.py"), f"checkpoint={cfg.checkpoint}",
                f"hydra.run.dir={cfg.eval_dir}", *cfg.evaluate]
    raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")


def run_pipeline(cfg: PipelineConfig) -> dict[str, float]:
    """Run the configured steps in order; returns the seconds each took."""
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for i, step in enumerate(s for s in STEPS if s in cfg.steps):
        cmd = step_command(cfg, step)
        print(f"\n=== [{i + 1}/{len(cfg.steps)}] {step}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO, env=dict(os.environ))
        timings[step] = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(
                f"pipeline step {step!r} failed with exit code {result.returncode}; "
                f"command: {' '.join(cmd)}"
            )
        print(f"=== {step} done in {timings[step] / 60:.1f} min", flush=True)
    summarize(cfg, timings)
    return timings


def summarize(cfg: PipelineConfig, timings: dict[str, float]) -> None:
    """Print the success table and where everything is."""
    report = cfg.eval_dir / "report.md"
    print("\n" + "=" * 78)
    if report.exists():
        print(report.read_text())
    total = sum(timings.values())
    print("steps: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
          + f"; total {total / 60:.1f} min")
    print(f"episode store : {cfg.data_dir}")
    print(f"checkpoint    : {cfg.checkpoint}")
    print(f"tensorboard   : tensorboard --logdir {cfg.train_dir}")
    print(f"report        : {report} (+ report.png, eval_info.json)")
    print(f"videos        : {cfg.eval_dir / 'videos'}")
