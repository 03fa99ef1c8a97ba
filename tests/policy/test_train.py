"""Training runs end to end on tiny configs: composition, checkpoints, resume, DDP, kills.

The store is collected once per session with the real oracle collector (32 px, pick).
In-process runs mirror scripts/train.py (compose -> to_object -> instantiate -> train);
torchrun and the SIGKILL test run the script itself in subprocesses.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

from policy import Policy
from policy.evaluation import EpisodeResult, EvalReport
from policy.train import (
    TrainRunConfig,
    load_training_state,
    read_pointer,
    register_configs,
    resolve_checkpoint,
    train,
)
from policy.train.checkpoint import BEST, PAUSE_ENV, PAUSED_MARKER, TRAINING_STATE
from policy.train.curves import eval_curve, plot_learning_curve
from policy.train.logger import METRICS_FILE, TENSORBOARD_DIR

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SCRIPT = ROOT / "scripts" / "train.py"
TINY = ["policy=rt1_tiny", "train=tiny", "logger=jsonl", "train.num_threads=1"]
# Subprocess runs use Gato reading the instruction as WordPiece ids: no sentence-encoder
# weights to load in every process (seconds each on a busy 2-core machine).
SUBWORD = ["policy=gato_tiny", "policy.text_mode=subword"]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from envs.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("train") / "demos"
    collect(CollectConfig(output=str(path), episodes=8, workers=1, image_size=32,
                          progress=False))
    return path


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides: list[str]) -> Any:
    """conf/train.yaml as scripts/train.py sees it (hydra node resolved, then dropped)."""
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:runtime.choices.policy}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run(overrides: list[str], run_dir: Path, evaluator: Any = None):
    cfg = compose_train(overrides)
    run_cfg: TrainRunConfig = OmegaConf.to_object(cfg)
    return train(run_cfg, instantiate(cfg.policy), run_dir,
                 OmegaConf.to_container(cfg, resolve=True), evaluator=evaluator)


# ----------------------------------------------------------------------------- configs


COMBOS = list(itertools.product(*(options(g) for g in
                                  ("policy", "data", "optim", "train", "eval", "logger"))))


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_config_combination_composes_and_instantiates(combo: tuple[str, ...]) -> None:
    groups = ("policy", "data", "optim", "train", "eval", "logger")
    cfg = compose_train([f"{g}={o}" for g, o in zip(groups, combo, strict=True)])
    run_cfg = OmegaConf.to_object(cfg)
    assert isinstance(run_cfg, TrainRunConfig)
    policy_config = instantiate(cfg.policy)
    assert type(policy_config).__name__ in ("RT1Config", "GatoConfig")
    assert run_cfg.data.history == policy_config.history  # data follows the policy
    assert run_cfg.name == combo[0]
    assert type(instantiate(cfg.eval)).__name__ == "EvalConfig"


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("train.stepz=3", ConfigCompositionException),  # typo
        ("train.steps=many", ConfigCompositionException),  # wrong type
        ("optim=adam", ConfigCompositionException),  # no such option
    ],
)
def test_typos_and_wrong_types_fail_at_composition(override: str, error: type) -> None:
    with pytest.raises(error):
        compose_train([override])


def test_bad_values_fail_before_training() -> None:
    with pytest.raises(ValueError, match="optim.lr=-1.0"):
        OmegaConf.to_object(compose_train(["optim.lr=-1"]))


def test_run_dir_layout_and_sweep_subdirs() -> None:
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["policy=gato"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    date, time_name = cfg.hydra.run.dir.split("/")[1:]
    assert cfg.hydra.run.dir.startswith("outputs/") and time_name.endswith("_gato")
    stamp = f"{date}/{time_name[:8]}"  # zero-padded date and time, as sorting needs
    assert time.strftime("%Y-%m-%d/%H-%M-%S", time.strptime(stamp, "%Y-%m-%d/%H-%M-%S")) == stamp
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}_${name}"


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("policy", ["rt1_tiny", "gato_tiny"])
def test_few_steps_write_a_checkpoint_policy_loads(store: Path, tmp_path: Path,
                                                   policy: str) -> None:
    result = run([*TINY, f"policy={policy}", f"data.path={store}", "logger=tensorboard",
                  "train.steps=2"], tmp_path)
    assert result.progress.step == 2 and result.progress.samples_seen == 16
    last = resolve_checkpoint(tmp_path)
    assert last == result.last_checkpoint == tmp_path / "checkpoints" / "step_00000002"
    loaded = Policy.from_pretrained(last)
    assert loaded.config.history == 2
    saved = OmegaConf.load(last / "train_config.yaml")
    assert saved.name == policy and saved.data.path == str(store)  # resolved, not ${...}
    assert load_training_state(last / TRAINING_STATE).progress.step == 2
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [OmegaConf.create(x).step for x in lines] == [1, 2]
    assert {"loss", "grad_norm", "lr", "samples_per_s", "data_share"} <= set(
        OmegaConf.create(lines[-1]))
    assert any(k.startswith("acc/") for k in OmegaConf.create(lines[-1]))  # per-dim accuracy
    assert list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    """Checkpoints `a` and `b` hold the same weights and the same training state: every
    optimizer tensor (AdamW's step, exp_avg and exp_avg_sq), the scheduler, the data position
    and every rank's RNG streams. Only the wall-clock time may differ."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = (load_training_state(c / TRAINING_STATE) for c in (a, b))
    assert sa.scheduler == sb.scheduler
    assert sa.optimizer["param_groups"] == sb.optimizer["param_groups"]
    assert sa.optimizer["state"].keys() == sb.optimizer["state"].keys()
    for i, state in sa.optimizer["state"].items():
        assert state.keys() == sb.optimizer["state"][i].keys() == {"step", "exp_avg",
                                                                    "exp_avg_sq"}
        for name, value in state.items():
            assert torch.equal(value, sb.optimizer["state"][i][name]), (i, name)
    pa, pb = vars(sa.progress), vars(sb.progress)
    assert {k: v for k, v in pa.items() if k != "train_time_s"} == {
        k: v for k, v in pb.items() if k != "train_time_s"}
    assert len(sa.rng) == len(sb.rng)
    for ra, rb in zip(sa.rng, sb.rng, strict=True):
        assert torch.equal(ra["torch"], rb["torch"])


def test_resume_matches_uninterrupted_run_exactly(store: Path, tmp_path: Path) -> None:
    """Stopped at step 5 and resumed to 10 == 10 steps in one go: weights, every optimizer
    tensor, scheduler, data position and RNG. Fails on a build whose resume skips
    `optimizer.load_state_dict` (weights differ after the first resumed step)."""
    # 7 batches of 16 per epoch: 10 steps cross an epoch boundary after the restart at 5
    common = [*TINY, f"data.path={store}", "train.steps=10", "train.batch_size=16",
              "train.checkpoint_every=0", "policy.augment_shift=2", "policy.dropout=0.1",
              "name=resume"]
    whole = run(common, tmp_path / "whole")
    first_dir = tmp_path / "outputs" / "2026-01-01" / "00-00-00_resume"
    first = run([*common, "train.stop_after=5"], first_dir)
    assert first.progress.step == 5 and first.last_checkpoint.name == "step_00000005"
    # train.resume=true: the newest run named "resume" beside this invocation's own dir
    second_dir = tmp_path / "outputs" / "2026-01-01" / "00-10-00_resume"
    second = run([*common, "train.resume=true"], second_dir)
    assert second.run_dir == first_dir  # the run continues in its own directory
    assert (second_dir / "resumed_into.txt").read_text().strip() == str(first_dir.resolve())
    assert second.progress.step == 10 and second.progress.epoch == whole.progress.epoch == 1
    assert_same_run(whole.last_checkpoint, second.last_checkpoint)
    steps = [OmegaConf.create(x).step for x in (first_dir / METRICS_FILE).read_text().split("\n")
             if x]
    assert steps == list(range(1, 11))
    # a later resume may extend the run: the new train.steps is the schedule's horizon
    third = run([*common, f"train.resume={first_dir}", "train.steps=12"], tmp_path / "third")
    assert third.progress.step == 12
    state = load_training_state(third.last_checkpoint / TRAINING_STATE)
    assert state.scheduler["lr_lambdas"][0]["total"] == 12


class ScriptedEvaluator:
    """Returns EvalReports with preset success rates, as EvalConfig.run would."""

    def __init__(self, rates: list[float]) -> None:
        self.rates = rates
        self.calls: list[str] = []

    def run(self, checkpoint: str, out_dir: Path, **overrides: Any) -> EvalReport:
        # evaluated from the published checkpoint: it must load as the policy being trained
        assert isinstance(Policy.from_pretrained(checkpoint), Policy)
        rate = self.rates[len(self.calls)]
        self.calls.append(Path(checkpoint).name)
        rows = [EpisodeResult("rt1", "pick", split, j, 10**9 + j, "pick it", j < rate * 4, 5,
                              1.0, "terminate")
                for split in ("seen", "unseen_object") for j in range(4)]
        return EvalReport(rows=rows, meta={"policies": ["rt1"], "tasks": ["pick"],
                                           "splits": ["seen", "unseen_object"]})


def test_evaluation_keeps_the_best_checkpoint(store: Path, tmp_path: Path) -> None:
    evaluator = ScriptedEvaluator([0.25, 0.75, 0.5])
    common = [*TINY, f"data.path={store}", "train.steps=6", "train.eval_every=2",
              "train.checkpoint_every=0", "train.keep_last=1", "logger=tensorboard"]
    run(common, tmp_path, evaluator)
    assert evaluator.calls == ["step_00000002", "step_00000004", "step_00000006"]
    best = read_pointer(tmp_path / "checkpoints", BEST)
    assert (best.checkpoint, best.success) == ("step_00000004", 0.75)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]  # best + last survive keep_last=1
    evals = [OmegaConf.create(x) for x in (tmp_path / METRICS_FILE).read_text().splitlines()
             if '"eval"' in x]
    assert [e["rt1/success"] for e in evals] == [0.25, 0.75, 0.5]
    assert evals[1]["rt1/split/unseen_object"] == 0.75
    # the learning curve reads the same records
    curve = eval_curve(tmp_path)
    assert (curve.policy, curve.steps, curve.success) == ("rt1", [2, 4, 6], [0.25, 0.75, 0.5])
    assert curve.minutes == sorted(curve.minutes) and curve.splits["seen"] == curve.success
    png = plot_learning_curve([tmp_path], tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resuming from the best checkpoint (saved before its own evaluation) still knows its score
    again = ScriptedEvaluator([0.5])
    run([*common, f"train.resume={tmp_path / 'checkpoints' / 'step_00000004'}"],
        tmp_path / "again", again)
    assert again.calls == ["step_00000006"]
    assert read_pointer(tmp_path / "checkpoints", BEST).checkpoint == "step_00000004"


def test_in_training_evaluation_logs_success_and_a_video(store: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_train([*TINY, f"data.path={store}", "train.steps=2", "train.eval_every=2",
                         "logger=tensorboard", "eval=quick", "eval.splits=[seen]",
                         "eval.episodes=1", "eval.max_steps=5"])
    train(OmegaConf.to_object(cfg), instantiate(cfg.policy), tmp_path,
          OmegaConf.to_container(cfg, resolve=True), evaluator=instantiate(cfg.eval))
    record = [OmegaConf.create(x) for x in (tmp_path / METRICS_FILE).read_text().splitlines()
              if '"eval"' in x][0]
    info = json.loads((tmp_path / "checkpoints" / "step_00000002" / "eval" / "eval_info.json")
                      .read_text())
    played = [e for e in info["episodes"] if e["policy"] == "rt1" and e["split"] == "seen"]
    assert len(played) == 1 and played[0]["steps"] <= 5  # eval.episodes=1, eval.max_steps=5
    # the logged figure is the episode's outcome, not a constant
    assert record.step == 2 and record["rt1/split/seen"] == float(played[0]["success"])
    # eval.tasks=null evaluates the tasks the store holds (pick), not every task
    assert sorted(k for k in record if "/task/" in k) == ["rt1/task/pick"]
    assert (tmp_path / "checkpoints" / "step_00000002" / "eval" / "eval_info.json").is_file()
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert "eval/rt1/split/seen" in events.Tags()["scalars"]
    assert [t for t in events.Tags()["images"] if t.startswith("eval/video/seen/pick")]


# ----------------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env.pop(PAUSE_ENV, None)
    return env


def _metrics(run_dir: Path, key: str) -> list[float]:
    return [OmegaConf.create(x)[key] for x in (run_dir / METRICS_FILE).read_text().splitlines()
            if '"loss"' in x]


def test_torchrun_two_processes_train_like_one(store: Path, tmp_path: Path) -> None:
    """2 ranks x batch 4 under torchrun == 1 process x batch 8: the same per-step loss and
    gradient norm (to 1e-5) and the same weights after 4 steps (to 1e-5; measured 2e-6).

    Shown to fail on broken builds of policy/train/loop.py: without the DDP wrapper (ranks
    step on their own half batch) grad_norm is off by 4e-3 relative and weights by 6e-5; with
    gradients summed instead of averaged grad_norm doubles (the weights alone would not tell:
    AdamW and clipping do not see a gradient's scale). Augmentation is off: its draws come
    from per-rank RNG streams, which a single process cannot reproduce. In float32: bf16
    autocast (on by default where the CPU has it) rounds each rank's half batch on its own,
    which moves grad_norm by ~4e-4 relative, as far as the broken builds above.
    """
    same = [*TINY, *SUBWORD, f"data.path={store}", "train.checkpoint_every=0",
            "policy.augment_shift=0", "policy.augment_mirror=0", "train.bf16_cpu=false"]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(SCRIPT), *same, "name=ddp"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1 and runs[0].name.endswith("_ddp"), runs  # one shared run dir
    ckpts = sorted(p.name for p in (runs[0] / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000004"]
    state = load_training_state(runs[0] / "checkpoints" / ckpts[0] / TRAINING_STATE)
    assert state.progress.world_size == 2 and len(state.rng) == 2
    assert state.progress.samples_seen == 4 * 8  # global batch 8 = 2 ranks x 4
    assert not torch.equal(state.rng[0]["torch"], state.rng[1]["torch"])  # per-rank streams

    one = run(same, tmp_path / "one")
    for key in ("loss", "grad_norm"):
        assert _metrics(runs[0], key) == pytest.approx(_metrics(one.run_dir, key), rel=1e-5), key
    a, b = _weights(runs[0] / "checkpoints" / ckpts[0]), _weights(one.last_checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(store: Path,
                                                                   tmp_path: Path) -> None:
    """A real SIGKILL in the middle of writing checkpoint 4: checkpoint 2 survives, the run
    resumes from it, and the resumed run ends where an uninterrupted run ends (weights and
    training state compared by assert_same_run). Fails on a build whose resume skips
    `optimizer.load_state_dict`."""
    run_dir = tmp_path / "run"
    env = dict(_env(), **{PAUSE_ENV: "4:120"})  # checkpoint 4 stalls before its rename
    cmd = [sys.executable, str(SCRIPT), *TINY, *SUBWORD, f"data.path={store}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((run_dir / "checkpoints").glob(f".tmp-step_00000004*/{PAUSED_MARKER}")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "checkpoint 4 never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    last = resolve_checkpoint(run_dir)
    assert last.name == "step_00000002"
    Policy.from_pretrained(last)  # loads: a half-written checkpoint would raise here
    assert load_training_state(last / TRAINING_STATE).progress.step == 2
    # and the run resumes from it, clearing the half-written checkpoint
    result = run([*TINY, *SUBWORD, f"data.path={store}", f"train.resume={run_dir}"],
                 tmp_path / "again")
    assert result.progress.step == 4 and resolve_checkpoint(run_dir).name == "step_00000004"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    # steps 3-4 of the killed run were logged, then replayed: logged once each
    steps = [OmegaConf.create(x).step for x in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    whole = run([*TINY, *SUBWORD, f"data.path={store}"], tmp_path / "whole")
    assert_same_run(whole.last_checkpoint, resolve_checkpoint(run_dir))
