"""Training pieces without a policy: schedule, state files, checkpoint pointers, sampler."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from policy.train import checkpoint as ckpt
from policy.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainRunConfig
from policy.train.distributed import DistInfo, default_num_threads
from policy.train.loop import autocast_for, compile_policy, set_optimizer_impl
from policy.train.optim import WarmupCosine, make_optimizer
from policy.train.sampler import ResumableSampler, batches, make_loader, task_sample_weights
from policy.train.state import (
    Progress,
    TrainingState,
    capture_rng,
    from_tree,
    load_training_state,
    restore_rng,
    save_training_state,
    to_tree,
)


def test_warmup_then_cosine_to_floor() -> None:
    f = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # past the horizon: stays at the floor
    lrs = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_weight_decay_spares_biases_and_norms() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt, _ = make_optimizer(model, OptimConfig(weight_decay=0.05), total_steps=10)
    decayed, undecayed = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and [p.shape for p in decayed["params"]] == [(4, 3)]
    assert undecayed["weight_decay"] == 0.0 and len(undecayed["params"]) == 3


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (OptimConfig, {"lr": 0.0}, "optim.lr=0.0"),
        (OptimConfig, {"min_lr_ratio": 2.0}, "optim.min_lr_ratio=2.0"),
        (ScheduleConfig, {"steps": 0}, "train.steps=0"),
        (ScheduleConfig, {"stop_after": 0}, "train.stop_after=0"),
        (TrainRunConfig, {"device": "tpu"}, "device='tpu'"),
        (OptimConfig, {"impl": "loop"}, "optim.impl='loop'"),
    ],
)
def test_config_checks_name_the_bad_value(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_state_tree_keeps_types_without_pickle(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt, sched = make_optimizer(model, OptimConfig(warmup_steps=2), total_steps=5)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    state = TrainingState(
        Progress(step=1, epoch=2, batch_in_epoch=3, best_success=0.5),
        opt.state_dict(), sched.state_dict(), [capture_rng()],
    )
    save_training_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "tensors.safetensors"]
    loaded = load_training_state(tmp_path)
    assert loaded.progress == state.progress
    assert set(loaded.optimizer["state"]) == {0, 1}  # int keys survive JSON
    assert loaded.optimizer["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples too
    for i in (0, 1):
        for k, v in opt.state_dict()["state"][i].items():
            assert torch.equal(loaded.optimizer["state"][i][k], v)
    assert loaded.scheduler == sched.state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    restore_rng(loaded.rng[0])
    again = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_state_tree_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError, match="cannot store object at 'x/0'"):
        to_tree([object()], "x", {})
    tree = to_tree({"a": {(1, 2): "pair"}}, "s", {})
    assert from_tree(json.loads(json.dumps(tree)), {}) == {"a": {(1, 2): "pair"}}


class _Saver:
    """Stands in for a policy: writes one file, like save_pretrained writes several."""

    def save_pretrained(self, directory: str | Path) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"w")


def _state(step: int) -> TrainingState:
    return TrainingState(Progress(step=step), {"state": {}, "param_groups": []}, {}, [])


def test_checkpoints_pointers_and_pruning_keep_best(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        path = ckpt.save_checkpoint(tmp_path, step, _Saver(), {"a": step}, _state(step))
        if step == 1:
            ckpt.mark_best(path, step, success=0.75)
        ckpt.prune(tmp_path / "checkpoints", keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best", "best.json", "last", "last.json", "step_00000001", "step_00000003",
                     "step_00000004"]
    # the symlinks stand for the checkpoint dirs, e.g. for scripts/evaluate.py checkpoint=...
    assert (tmp_path / "checkpoints" / "last").resolve().name == "step_00000004"
    assert (tmp_path / "checkpoints" / "best" / "train_config.yaml").is_file()
    assert ckpt.read_pointer(tmp_path / "checkpoints") == ckpt.Pointer("step_00000004", 4)
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.BEST).success == 0.75
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000004"
    assert ckpt.resolve_checkpoint(tmp_path / "checkpoints").name == "step_00000004"
    last = tmp_path / "checkpoints" / "step_00000004"
    assert "a: 4" in (last / "train_config.yaml").read_text()
    # re-saving an existing step replaces it whole
    ckpt.save_checkpoint(tmp_path, 4, _Saver(), {"a": 40}, _state(4))
    assert "a: 40" in (last / "train_config.yaml").read_text()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_resolve_checkpoint_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.resolve_checkpoint(tmp_path)


def test_find_latest_run_by_date_and_time(tmp_path: Path) -> None:
    for run in ("2026-01-01/23-00-00_rt1", "2026-01-02/01-00-00_rt1", "2026-01-03/00-00-00_gato"):
        ckpt.save_checkpoint(tmp_path / run, 1, _Saver(), {}, _state(1))
    (tmp_path / "2026-01-04/00-00-00_rt1").mkdir(parents=True)  # no checkpoint yet
    assert ckpt.find_latest_run(tmp_path, "rt1") == tmp_path / "2026-01-02/01-00-00_rt1"
    assert ckpt.find_latest_run(tmp_path, "other") is None


def test_pause_hook_rejects_malformed_value(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ckpt.PAUSE_ENV, "soon")
    with pytest.raises(ValueError, match="expected 'STEP:SECONDS'"):
        ckpt.save_checkpoint(tmp_path, 1, _Saver(), {}, _state(1))


def test_sampler_resumes_mid_epoch_and_splits_ranks() -> None:
    data = list(range(10))

    def run(progress: Progress, n: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        sampler = ResumableSampler(data, world, rank, seed=3, batch_size=2)
        stream = batches(make_loader(data, sampler, 0, seed=0), sampler, progress)
        return [next(stream).tolist() for _ in range(n)]

    whole = run(Progress(), 7)  # 5 batches per epoch: crosses into epoch 1
    assert sorted(sum(whole[:5], [])) == data  # an epoch is a permutation
    first = Progress()
    head = run(first, 3)
    assert (first.epoch, first.batch_in_epoch) == (0, 3)
    assert head + run(first, 4) == whole  # continuing from the saved position
    ranks = [sum(run(Progress(), 2, rank=r, world=2), []) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])  # each rank sees its own part


class _TaskData(list):
    """A list dataset that names each sample's task, as EpisodeDataset does."""

    def __init__(self, task_of: list[int]) -> None:
        super().__init__(range(len(task_of)))
        self.tasks = ["pick", "stack"]
        self.task_of_window = np.array(task_of)


def test_task_weights_change_the_mix_and_resume_exactly() -> None:
    # 80 pick samples and 20 stack samples: stack weighted 4x draws them as often as pick
    data = _TaskData([0] * 80 + [1] * 20)
    weights = task_sample_weights(data, {"stack": 4.0})
    assert weights is not None and weights[:80].eq(1).all() and weights[80:].eq(4).all()
    assert task_sample_weights(data, None) is None and task_sample_weights(data, {}) is None

    def run(progress: Progress, n: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        sampler = ResumableSampler(data, world, rank, seed=3, batch_size=10, weights=weights)
        stream = batches(make_loader(data, sampler, 0, seed=0), sampler, progress)
        return [next(stream).tolist() for _ in range(n)]

    whole = run(Progress(), 60)  # 10 batches per epoch: six epochs
    drawn = np.array(sum(whole, []))
    share = float((drawn >= 80).mean())
    assert 0.4 < share < 0.6, share  # unweighted it would be 0.2
    assert len(set(sum(whole[:10], []))) < 100  # drawn with replacement
    first = Progress()
    head = run(first, 13)
    assert head + run(first, 47) == whole  # a resumed run continues the same draws
    ranks = [run(Progress(), 5, rank=r, world=2) for r in (0, 1)]
    assert ranks[0] != ranks[1]
    assert run(Progress(), 60) == whole  # the same seed, the same draws
    # a weight of 0 drops a task
    only_pick = task_sample_weights(data, {"stack": 0.0})
    sampler = ResumableSampler(data, 1, 0, seed=3, batch_size=10, weights=only_pick)
    assert max(sampler) < 80


def test_task_weights_refuse_what_they_cannot_mean() -> None:
    data = _TaskData([0] * 8 + [1] * 2)
    with pytest.raises(ValueError, match=r"names tasks \['push'\].*holds \['pick', 'stack'\]"):
        task_sample_weights(data, {"push": 2.0})
    with pytest.raises(ValueError, match="every sample weight 0"):
        task_sample_weights(data, {"pick": 0.0, "stack": 0.0})
    with pytest.raises(ValueError, match="knows each sample's task"):
        task_sample_weights(list(range(4)), {"pick": 2.0})
    with pytest.raises(ValueError, match="expected 10 weights >= 0"):
        ResumableSampler(data, 1, 0, seed=0, batch_size=2, weights=torch.ones(3))
    with pytest.raises(ValueError, match="data.task_weights.stack=-1.0; expected a number >= 0"):
        DataConfig(task_weights={"stack": -1.0})
    with pytest.raises(ValueError, match="data.task_weights.stack='x'; expected a number"):
        DataConfig(task_weights={"stack": "x"})
    with pytest.raises(ValueError, match="data.task_weights=2.0; expected a mapping"):
        DataConfig(task_weights=2.0)


def test_worker_processes_give_the_same_batches() -> None:
    data = list(range(12))

    def first(workers: int, progress: Progress) -> list[list[int]]:
        sampler = ResumableSampler(data, 1, 0, seed=5, batch_size=3)
        stream = batches(make_loader(data, sampler, workers, seed=0), sampler, progress)
        return [next(stream).tolist() for _ in range(6)]

    assert first(1, Progress()) == first(0, Progress())
    resumed = Progress(epoch=0, batch_in_epoch=2)
    assert first(1, resumed)[:4] == first(0, Progress())[2:]


def test_too_few_samples_for_a_batch_is_an_error() -> None:
    sampler = ResumableSampler(list(range(3)), 1, 0, seed=0, batch_size=4)
    with pytest.raises(ValueError, match="fewer than one batch of 4"):
        next(batches(make_loader(list(range(3)), sampler, 0, 0), sampler, Progress()))


def test_threads_shared_between_local_processes() -> None:
    one = default_num_threads(DistInfo())
    assert one >= 1
    assert default_num_threads(DistInfo(world_size=2, local_world_size=2)) == max(1, one // 2)


def test_learning_curves_are_named_after_the_run_not_its_train_folder(tmp_path: Path) -> None:
    from policy.train.curves import eval_curve
    from policy.train.logger import METRICS_FILE

    record = {"kind": "eval", "step": 10, "train_time_s": 60.0, "rt1/success": 0.5}
    for run in (tmp_path / "full" / "train", tmp_path / "alone"):
        run.mkdir(parents=True)
        (run / METRICS_FILE).write_text(json.dumps(record) + "\n")
    assert eval_curve(tmp_path / "full" / "train").run == "full"  # a pipeline run dir
    assert eval_curve(tmp_path / "alone").run == "alone"  # scripts/train.py's own run dir
    (tmp_path / "label").symlink_to(tmp_path / "full")  # a link names a run for a plot
    assert eval_curve(tmp_path / "label" / "train").run == "label"


def _train_tiny(impl: str, steps: int = 20) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))
    opt, sched = make_optimizer(model, OptimConfig(warmup_steps=2), total_steps=steps)
    set_optimizer_impl(opt, impl)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    for _ in range(steps):
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_foreach_adamw_is_bit_identical_to_the_loop_and_fused_is_close() -> None:
    loop, foreach, fused = (_train_tiny(impl) for impl in ("for", "foreach", "fused"))
    assert not torch.equal(loop, _train_tiny("for", steps=19))  # the steps do change weights
    assert torch.equal(loop, foreach)  # why optim.impl defaults to foreach
    assert torch.allclose(loop, fused, atol=1e-5)


def test_optimizer_impl_sets_every_group_and_names_a_bad_one() -> None:
    opt, _ = make_optimizer(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), OptimConfig(), 5)
    set_optimizer_impl(opt, "fused")
    assert all(g["fused"] and not g["foreach"] for g in opt.param_groups)
    with pytest.raises(ValueError, match="'fast'"):
        set_optimizer_impl(opt, "fast")
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    del sgd.param_groups[0]["fused"]
    with pytest.raises(TypeError, match="SGD"):
        set_optimizer_impl(sgd, "foreach")


def test_bf16_autocast_only_where_asked() -> None:
    layer, x = nn.Linear(4, 4), torch.randn(2, 4)
    cpu = torch.device("cpu")
    with autocast_for(cpu, bf16_cuda=True, bf16_cpu=False)():
        assert layer(x).dtype == torch.float32  # train.bf16 alone is CUDA-only
    with autocast_for(cpu, bf16_cuda=False, bf16_cpu=True)():
        assert layer(x).dtype == torch.bfloat16


def test_bf16_cpu_auto_follows_the_cpu(monkeypatch) -> None:
    import policy.train.config as config

    assert config.ScheduleConfig().bf16_cpu == "auto"
    # YAML booleans arrive as bools or "True"/"False"; both are accepted
    assert config.ScheduleConfig(bf16_cpu=True).bf16_cpu == "true"
    assert config.ScheduleConfig(bf16_cpu="False").bf16_cpu == "false"
    with pytest.raises(ValueError, match="train.bf16_cpu='turbo'"):
        config.ScheduleConfig(bf16_cpu="turbo")
    for native in (True, False):
        monkeypatch.setattr(config, "cpu_has_bf16", lambda native=native: native)
        assert config.bf16_cpu_enabled("auto") is native
        assert config.bf16_cpu_enabled("true") and not config.bf16_cpu_enabled(False)


def test_compile_falls_back_to_eager_without_a_compiler(monkeypatch, caplog) -> None:
    import policy.train.loop as loop

    class Policy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = nn.Linear(2, 2)

    policy = Policy()
    found = loop.shutil.which
    monkeypatch.setattr(loop.shutil, "which", lambda name: None)
    assert compile_policy(policy) is False
    assert "no C compiler" in caplog.text
    assert policy.transformer._compiled_call_impl is None  # still eager
    if any(found(cc) for cc in ("cc", "gcc", "clang", "g++")):
        monkeypatch.setattr(loop.shutil, "which", found)
        assert compile_policy(policy) is True  # compiled in place (lazily, at the first call)
        assert policy.transformer._compiled_call_impl is not None
        assert list(policy.state_dict()) == ["transformer.weight", "transformer.bias"]
