"""No pickle in the load paths: a checkpoint, a training state or a backbone file that holds a
pickle is refused, and the pickle never runs (the checkpoint contract, docs/CONTRACTS.md, says
"loads without pickle").

Each pickle here, if unpickled, calls `os.mkdir(marker)`; every test asserts both that the
loader raises and that the marker does not exist. Shown to fail on a build whose
`Policy.from_pretrained` falls back to `pickle.loads` when safetensors refuses the file.
(`torch.load` is no such broken build here: this torch hands a `.safetensors` path to
safetensors itself.)
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import envs
from envs.spec import DEFAULT_ACTION_SPEC
from policy import Policy, make_policy
from policy.base import load_policy_yaml
from policy.tokenizers.images import load_backbone
from policy.train.state import (
    TENSORS,
    Progress,
    TrainingState,
    load_training_state,
    save_training_state,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


class Payload:
    """Unpickling this creates a directory: proof that the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def write_pickles(path: Path, marker: Path, how: str) -> None:
    if how == "pickle":
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    else:  # torch.save writes a zip of pickles
        torch.save({"weight": Payload(marker)}, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_policy_yaml(CONF / "policy" / "rt1_tiny.yaml")
    env = envs.make_env("pick", "seen", image_size=32, skip_render=True)
    try:
        policy = make_policy(cfg, DEFAULT_ACTION_SPEC, env.unwrapped.describe())
    finally:
        env.close()
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "rt1_tiny")


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_checkpoint_weights_that_are_a_pickle_are_refused(checkpoint: Path, tmp_path: Path,
                                                         how: str) -> None:
    Policy.from_pretrained(checkpoint)  # the untouched checkpoint loads
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in checkpoint.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "pickle_ran"
    write_pickles(bad / "model.safetensors", marker, how)
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        Policy.from_pretrained(bad)
    assert not marker.exists(), "loading the checkpoint ran its pickle"


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_training_state_that_is_a_pickle_is_refused(tmp_path: Path, how: str) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    state = TrainingState(progress=Progress(step=1), optimizer=opt.state_dict(), scheduler={},
                          rng=[{"torch": torch.get_rng_state()}])
    save_training_state(tmp_path / "state", state)
    assert load_training_state(tmp_path / "state").progress.step == 1  # the real one loads
    marker = tmp_path / "pickle_ran"
    write_pickles(tmp_path / "state" / TENSORS, marker, how)
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        load_training_state(tmp_path / "state")
    assert not marker.exists(), "loading the training state ran its pickle"


@pytest.mark.parametrize("name", ["backbone.pt", "backbone.safetensors"])
def test_backbone_file_that_holds_a_pickle_is_refused(tmp_path: Path, name: str) -> None:
    """A torch state-dict file is read with weights_only=True: tensors yes, objects no."""
    marker = tmp_path / "pickle_ran"
    write_pickles(tmp_path / name, marker, "torch.save")
    with pytest.raises(Exception):  # noqa: B017 - torch and safetensors raise their own types
        load_backbone(torch.nn.Linear(2, 2), tmp_path / name)
    assert not marker.exists(), "loading the backbone ran its pickle"
