"""Offline action error (policy/evaluation/offline.py, scripts/action_error.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.evaluation.offline import DimError, action_error, markdown_table, swap_instructions
from policy.tokenizers.actions import UniformActionTokenizer

ROOT = Path(__file__).resolve().parents[2]


class Scripted(nn.Module):
    """A stand-in policy whose greedy bins are the labels' (exact) or always bin 0."""

    def __init__(self, exact: bool) -> None:
        super().__init__()
        self.exact = exact
        self.action_spec = DEFAULT_ACTION_SPEC
        self.action_tokenizer = UniformActionTokenizer.from_spec(DEFAULT_ACTION_SPEC, 256)

    def logits_and_targets(self, batch):
        targets = self.action_tokenizer.encode(batch["action"].float())
        logits = torch.zeros(*targets.shape, 256)
        if self.exact:
            logits.scatter_(-1, targets[..., None], 1.0)
        else:
            logits[..., 0] = 1.0
        return logits, targets, torch.ones(targets.shape[:2], dtype=torch.bool)


def _batches(make_batch, n=3):
    return [make_batch(b=4, t=2, seed=s) for s in range(n)]


def test_exact_bins_err_by_at_most_half_a_bin_and_beat_the_constant(make_batch) -> None:
    policy = Scripted(exact=True)
    errors = action_error(policy, _batches(make_batch))
    assert [e.name for e in errors] == DEFAULT_ACTION_SPEC.names
    half_bin = (DEFAULT_ACTION_SPEC.high - DEFAULT_ACTION_SPEC.low) / 256 / 2
    for e, h in zip(errors, half_bin, strict=True):
        assert e.policy <= h + 1e-6
        assert e.constant > 0.1  # uniform labels in [-1, 1] (clipped to the bounds)
        assert e.ratio < 0.1


def test_always_bin_zero_errs_by_the_distance_to_the_lower_bound(make_batch) -> None:
    batches = _batches(make_batch)
    errors = action_error(Scripted(exact=False), batches)
    labels = torch.cat([b["action"][:, -1] for b in batches]).numpy()
    spec = DEFAULT_ACTION_SPEC
    labels = np.clip(labels, spec.low, spec.high)
    bin0 = spec.low + (spec.high - spec.low) / 256 / 2
    expected = np.abs(labels - bin0).mean(axis=0)
    np.testing.assert_allclose([e.policy for e in errors], expected, rtol=1e-5, atol=1e-6)
    assert all(e.ratio > 1 for e in errors)  # worse than the median guess


def test_real_policy_runs_in_eval_mode_and_restores_training(compose_policy, env_info,
                                                             text_encoder, make_batch) -> None:
    torch.manual_seed(0)
    policy = make_policy(compose_policy("rt1_tiny"), DEFAULT_ACTION_SPEC, env_info)
    policy.train()
    errors = action_error(policy, _batches(make_batch, 2))
    assert policy.training
    assert len(errors) == len(DEFAULT_ACTION_SPEC) and all(np.isfinite(e.policy) for e in errors)
    # eval mode: no augmentation or dropout, so a second pass gives the same figures
    again = action_error(policy, _batches(make_batch, 2))
    assert [e.policy for e in errors] == [e.policy for e in again]


def test_no_batches_is_an_error() -> None:
    with pytest.raises(ValueError, match="no batches"):
        action_error(Scripted(exact=True), [])


def test_ratio_and_table() -> None:
    assert DimError("x", 0.1, 0.2).ratio == pytest.approx(0.5)
    assert DimError("roll", 0.0, 0.0).ratio == 0.0
    assert DimError("roll", 0.1, 0.0).ratio == float("inf")
    table = markdown_table({"a": [DimError("x", 0.1, 0.2)], "b": [DimError("x", 0.3, 0.2)]})
    lines = table.splitlines()
    assert lines[0] == "| dim | constant (median) | a | ratio | b | ratio |"
    assert lines[2] == "| x | 0.2000 | 0.1000 | 0.50 | 0.3000 | 1.50 |"


def _x_of(instructions) -> torch.Tensor:
    """A label x that depends on the instruction (the fixture's three differ in length)."""
    return torch.tensor([(len(i) - 20) / 10 for i in instructions])[:, None]


class Instructed(Scripted):
    """Predicts x from the instruction alone, exactly (the other dims from the labels)."""

    def logits_and_targets(self, batch):
        action = batch["action"].clone().float()
        action[:, :, 1] = _x_of(batch["instruction"])
        return super().logits_and_targets({**batch, "action": action})


def _grounded_batches(make_batch):
    batches = _batches(make_batch)
    for b in batches:
        b["action"][:, :, 1] = _x_of(b["instruction"])
    return batches


def test_swap_instructions_gives_each_window_a_different_one() -> None:
    assert swap_instructions(["a", "a", "b"]) == (["b", "b", "a"], 3)
    assert swap_instructions(["a", "b", "c"]) == (["b", "c", "a"], 3)
    assert swap_instructions(["a", "a"]) == (["a", "a"], 0)
    assert swap_instructions([]) == ([], 0)


def test_swapped_instructions_hurt_a_grounded_policy_only(make_batch) -> None:
    grounded = Instructed(exact=True)
    right = action_error(grounded, _grounded_batches(make_batch))
    wrong = action_error(grounded, _grounded_batches(make_batch), swap=True)
    assert right[1].name == "x" and right[1].policy < 0.01 and wrong[1].policy > 0.05
    blind = Scripted(exact=True)  # reads the labels, never the instruction
    same = action_error(blind, _grounded_batches(make_batch))
    swapped = action_error(blind, _grounded_batches(make_batch), swap=True)
    assert [e.policy for e in same] == [e.policy for e in swapped]


def test_swap_with_one_instruction_everywhere_is_an_error(make_batch) -> None:
    batches = _batches(make_batch)
    for b in batches:
        b["instruction"] = [b["instruction"][0]] * len(b["instruction"])
    with pytest.raises(ValueError, match="same instruction"):
        action_error(Scripted(exact=True), batches, swap=True)


def test_script_rejects_bad_sample_count() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "action_error.py"), "/nope",
                          "/nope", "--samples", "0"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "--samples 0" in out.stderr


def test_script_scores_two_checkpoints_on_a_store(tmp_path, compose_policy) -> None:
    """The script's table holds the figures action_error gives for the same windows. Fails
    on a script that draws another window set per history (a scratch copy drawing idx with
    the history as seed)."""
    from envs.collect import CollectConfig, collect
    from policy.data import EpisodeDataset

    store = tmp_path / "demos"
    collect(CollectConfig(output=str(store), episodes=4, workers=1, image_size=32,
                          progress=False))
    data = EpisodeDataset(store, history=1)
    checkpoints = []
    for name, history in (("a", 1), ("b", 2)):  # two histories: two window sets, same steps
        torch.manual_seed(0)
        config = compose_policy("gato_tiny", ("text_mode=subword", f"history={history}"))
        policy = make_policy(config, data.action_spec, data.info, data.stats)
        (tmp_path / name).mkdir()
        policy.save_pretrained(tmp_path / name / "ckpt")
        checkpoints.append(str(tmp_path / name / "ckpt"))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "action_error.py"), str(store),
                          *checkpoints, "--samples", "20", "--batch-size", "8",
                          "--swap-instructions"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "20 windows of" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| dim | constant (median) | ckpt | ratio | ckpt, swapped | ratio | "
                       "ckpt (2) | ratio | ckpt (2), swapped | ratio |")
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == DEFAULT_ACTION_SPEC.names
    # the figures: the same 20 windows (seed 0) scored here, in batches of 8, for each
    # checkpoint with and without swapped instructions
    expected = []
    for ckpt in checkpoints:
        policy = Policy.from_pretrained(Path(ckpt))
        windows = EpisodeDataset(store, history=int(policy.config.history))
        idx = np.random.default_rng(0).choice(len(windows), 20, replace=False)
        batches = [default_collate(windows.__getitems__([int(j) for j in idx[i:i + 8]]))
                   for i in range(0, 20, 8)]
        expected += [action_error(policy, batches), action_error(policy, batches, swap=True)]
    printed = np.array([[float(c) for c in r.strip("| ").split(" | ")[1:]] for r in rows[1:]])
    want = np.array([[dim[0].constant] + [x for d in dim for x in (d.policy, d.ratio)]
                     for dim in zip(*expected, strict=True)])  # a row per dimension
    assert printed.shape == want.shape == (len(DEFAULT_ACTION_SPEC), 1 + 2 * 4)
    errors, ratios = [0, 1, 3, 5, 7], [2, 4, 6, 8]  # constant, then (error, ratio) x 4
    np.testing.assert_allclose(printed[:, errors], want[:, errors], atol=6e-5)  # .4f
    np.testing.assert_allclose(printed[:, ratios], want[:, ratios], atol=6e-3)  # .2f


def test_aux_head_scores_the_auxiliary_logits(compose_policy, env_info, text_encoder,
                                              make_batch) -> None:
    torch.manual_seed(0)
    gato = make_policy(compose_policy("gato_tiny", ("image_tokenizer=film_grid",
                                                    "text_mode=sentence", "aux_frame_mean=1.0")),
                       DEFAULT_ACTION_SPEC, env_info)
    batches = _batches(make_batch, 2)
    tokens = action_error(gato, batches)
    aux = action_error(gato, batches, aux_head=True)
    # the aux figures are those of the head's own greedy bins, not the tokens'
    with torch.no_grad():
        gato.eval()
        bins = torch.cat([gato._outputs_and_targets(b)[1][:, -1].argmax(-1) for b in batches])
    labels = torch.cat([b["action"][:, -1] for b in batches]).float().numpy()
    spec = DEFAULT_ACTION_SPEC
    expected = np.abs(gato.action_tokenizer.decode(bins).float().numpy()
                      - np.clip(labels, spec.low, spec.high)).mean(axis=0)
    np.testing.assert_allclose([e.policy for e in aux], expected, rtol=1e-5, atol=1e-6)
    assert [e.policy for e in aux] != [e.policy for e in tokens]
    rt1 = make_policy(compose_policy("rt1_tiny"), DEFAULT_ACTION_SPEC, env_info)
    with pytest.raises(ValueError, match="needs a policy trained with aux_frame_mean > 0"):
        action_error(rt1, batches, aux_head=True)
