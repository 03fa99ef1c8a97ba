"""Every recipe in conf/recipe/ (what scripts/pipeline.py runs: `make demo`, the full
recipe, the Gato demo) gives each of its three steps overrides that compose into that
step's typed config, with the values the recipe names. A typo in a recipe otherwise shows
only after the minutes of collection that come before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from envs.collect import CollectConfig
from envs.collect import register_configs as register_collect
from policy.evaluation import EvalConfig
from policy.train import TrainRunConfig
from policy.train import register_configs as register_train

CONF = Path(__file__).resolve().parents[1] / "conf"
RECIPES = sorted(CONF.glob("recipe/*.yaml"))


def test_the_recipes_are_found() -> None:
    assert {p.stem for p in RECIPES} >= {"demo", "full", "demo_gato"}


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.policy} in train.yaml
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_step_of_a_recipe_composes(recipe: Path, tmp_path: Path) -> None:
    steps = yaml.safe_load(recipe.read_text())
    assert set(steps) >= {"name", "collect", "train", "evaluate"}, recipe.name

    register_collect()
    collect_cfg = _compose("collect", [f"output={tmp_path / 'data'}", *steps["collect"]])
    collect_config = instantiate(collect_cfg.collect)
    assert isinstance(collect_config, CollectConfig) and collect_config.episodes > 0

    register_train()
    train_cfg = _compose("train", [f"data.path={tmp_path / 'data'}", *steps["train"]])
    run = OmegaConf.to_object(train_cfg)
    assert isinstance(run, TrainRunConfig) and run.train.steps > 0

    eval_cfg = _compose("evaluate", [f"checkpoint={tmp_path / 'ckpt'}", *steps["evaluate"]])
    assert isinstance(instantiate(eval_cfg.eval), EvalConfig)

    # the policy that reads object boxes is trained on a store that has them
    if train_cfg.policy.get("image_tokenizer") == "film_objects":
        assert collect_config.object_boxes, f"{recipe.name}: collect.object_boxes=true is missing"


def test_the_gato_demo_is_the_demo_with_object_tokens() -> None:
    demo = yaml.safe_load((CONF / "recipe" / "demo.yaml").read_text())
    gato = yaml.safe_load((CONF / "recipe" / "demo_gato.yaml").read_text())
    assert gato["collect"] == demo["collect"] + ["collect.object_boxes=true"]
    assert "policy=gato_objects" in gato["train"] and "optim.lr=1e-3" in gato["train"]
    assert gato["evaluate"] == demo["evaluate"]
