"""The RT-1 and Gato policies behind the Policy API (CONTRACTS.md, "Policies: policy")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.spec import DEFAULT_ACTION_SPEC, make_action_spec
from policy import GatoConfig, Policy, RT1Config, make_policy
from policy.gato import GatoPolicy
from policy.rt1 import RT1Policy
from policy.tokenizers.images import FiLM

STATS = {
    "action": {"min": [-1.0] * 8, "max": [1.0] * 8, "mean": [0.0] * 8, "std": [0.5] * 8,
               "p01": [-0.9] * 8, "p99": [0.9] * 8},
    "state": {"min": [-1.0] * 8, "max": [1.0] * 8, "mean": [0.4, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0,
                                                           0.04],
              "std": [0.1, 0.1, 0.05, 0.0, 0.0, 0.0, 0.0, 0.02], "p01": [-1.0] * 8,
              "p99": [1.0] * 8},
}
GATO_LEVERS = [("gato_tiny", ("image_tokenizer=rt1_tokens",)),
               ("gato_tiny", ("text_position=per_step",)),
               ("gato_tiny", ("image_tokenizer=rt1_tokens", "text_position=per_step")),
               ("gato_tiny", ("readout=frame_mean",)),
               ("gato_tiny", ("image_tokenizer=rt1_tokens", "readout=frame_mean",
                              "text_in_sequence=false")),
               ("gato_tiny", ("patch_film=true", "text_in_sequence=false")),
               ("gato_tiny", ("image_tokenizer=rt1_tokens", "aux_frame_mean=1.0"))]
VARIANTS = [("rt1_tiny", ()), ("gato_tiny", ()), ("gato_tiny", ("text_mode=subword",)),
            ("gato_tiny", ("patch_film=true",)), *GATO_LEVERS, ("rt1", ()), ("gato", ())]
TINY = [("rt1_tiny", ()), ("gato_tiny", ()), ("gato_tiny", ("text_mode=subword",)),
        ("gato_tiny", ("patch_film=true",)), *GATO_LEVERS]


def _ids(variants):
    return ["-".join([name, *o]) for name, o in variants]


@pytest.fixture
def build(compose_policy, env_info, text_encoder):
    def build_one(name: str, overrides: tuple[str, ...] = (), stats=STATS) -> Policy:
        torch.manual_seed(0)
        return make_policy(compose_policy(name, overrides), DEFAULT_ACTION_SPEC, env_info, stats)

    return build_one


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=_ids(VARIANTS))
def test_every_variant_builds_saves_and_reloads(build, make_batch, make_obs, tmp_path, name,
                                                overrides) -> None:
    policy = build(name, overrides)
    batch = make_batch(b=2, t=policy.config.history)
    loss, metrics = policy(batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert {"loss", "acc", "acc_last", *(f"acc/{n}" for n in DEFAULT_ACTION_SPEC.names)} <= set(
        metrics)
    policy.eval()
    with torch.no_grad():
        before = policy.logits_and_targets(batch)[0]
    actions = [policy.select_action(make_obs(i)) for i in range(3)]

    policy.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        ["model.safetensors", "config.json", "action_spec.json", "stats.json", "env.json"])
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(policy) and loaded.config == policy.config
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.logits_and_targets(batch)[0], before)
    loaded.reset(make_obs(0)["instruction"])
    for i, a in enumerate(actions):
        assert np.array_equal(loaded.select_action(make_obs(i)), a)


def test_presets_instantiate_their_dataclasses_and_sizes(compose_policy, env_info) -> None:
    sizes = {}
    for path in sorted(Path(__file__).resolve().parents[2].glob("conf/policy/*.yaml")):
        config = compose_policy(path.stem)
        assert isinstance(config, RT1Config | GatoConfig), path
        sizes[path.stem] = make_policy(config, DEFAULT_ACTION_SPEC, env_info).num_parameters()
    assert {"rt1", "rt1_35m", "rt1_tiny", "gato", "gato_tiny"} <= set(sizes)
    assert 0.5e6 < sizes["rt1"] < 3e6  # a few million at most: trains on a laptop CPU
    assert 30e6 < sizes["rt1_35m"] < 40e6  # RT-1's scale (35 M) by config alone
    assert sizes["rt1_tiny"] < 2e5 and sizes["gato_tiny"] < 2e5


@pytest.mark.parametrize(("config", "message"), [
    (lambda: RT1Config(history=0), "history=0"),
    (lambda: RT1Config(conv_strides=(2, 2)), "conv_strides"),
    (lambda: RT1Config(d_model=100, n_head=3), "n_head=3"),
    (lambda: RT1Config(action_bounds="minmax"), "minmax"),
    (lambda: GatoConfig(text_mode="chars"), "chars"),
    (lambda: GatoConfig(resize_to=40), "resize_to=40"),
    (lambda: GatoConfig(action_bins=1), "action_bins=1"),
    (lambda: GatoConfig(patch_film=True, text_mode="subword"), "patch_film=True"),
    (lambda: GatoConfig(image_tokenizer="vit"), "image_tokenizer='vit'"),
    (lambda: GatoConfig(image_tokenizer="rt1_tokens", text_mode="subword"), "rt1_tokens"),
    (lambda: GatoConfig(image_tokenizer="rt1_tokens", conv_strides=(2, 2)), "conv_strides"),
    (lambda: GatoConfig(text_position="suffix"), "text_position='suffix'"),
    (lambda: GatoConfig(text_position="per_step", text_mode="subword"), "per_step"),
    (lambda: GatoConfig(readout="mean"), "readout='mean'"),
    (lambda: GatoConfig(text_in_sequence=False), "text_in_sequence=False needs the sentence"),
    (lambda: GatoConfig(image_tokenizer="rt1_tokens", text_in_sequence=False,
                        text_position="per_step"), "text_position='per_step' needs"),
    (lambda: GatoConfig(aux_frame_mean=-0.5), "aux_frame_mean=-0.5"),
    (lambda: GatoConfig(aux_frame_mean=float("nan")), "aux_frame_mean=nan"),
    (lambda: GatoConfig(aux_frame_mean=1.0, readout="frame_mean"), "aux_frame_mean=1.0 needs"),
])
def test_configs_name_the_bad_value(config, message) -> None:
    with pytest.raises(ValueError, match=message):
        config()


# ------------------------------------------------------------------------------ causality


@pytest.mark.parametrize(("name", "overrides"), TINY, ids=_ids(TINY))
def test_later_frames_do_not_change_earlier_outputs(build, make_batch, name, overrides) -> None:
    policy = build(name, (*overrides, "history=3")).eval()
    batch = make_batch(b=2, t=3)
    batch["pad"][:] = False
    changed = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    g = torch.Generator().manual_seed(7)
    changed["image"][:, 2] = torch.randint(0, 256, changed["image"][:, 2].shape, generator=g,
                                           dtype=torch.uint8)
    changed["state"][:, 2] = torch.randn(2, 8, generator=g)
    changed["action"][:, 2] = -changed["action"][:, 2]
    with torch.no_grad():
        a = policy.logits_and_targets(batch)[0]
        b = policy.logits_and_targets(changed)[0]
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)
    assert not torch.allclose(a[:, 2], b[:, 2])
    # and the history is used: changing the first frame changes the last frame's outputs
    early = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    early["image"][:, 0] = 255 - early["image"][:, 0]
    with torch.no_grad():
        assert not torch.allclose(policy.logits_and_targets(early)[0][:, 2], a[:, 2])


def test_gato_action_tokens_are_autoregressive(build, make_batch) -> None:
    policy = build("gato_tiny").eval()
    batch = make_batch(b=2, t=2)
    changed = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    changed["action"][:, 1, 3] = -changed["action"][:, 1, 3]  # dimension 3 of the last step
    with torch.no_grad():
        a = policy.logits_and_targets(batch)[0]
        b = policy.logits_and_targets(changed)[0]
    assert torch.allclose(a[:, 1, :4], b[:, 1, :4], atol=1e-5)  # dims 0..3 do not see a_3
    assert not torch.allclose(a[:, 1, 4:], b[:, 1, 4:])  # dims 4.. condition on it


@pytest.mark.parametrize(("name", "overrides"), TINY, ids=_ids(TINY))
def test_padded_frames_do_not_affect_the_loss(build, make_batch, name, overrides) -> None:
    policy = build(name, overrides).eval()
    batch = make_batch(b=3, t=2)  # sample 0's first frame is padding
    changed = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    changed["image"][0, 0] = 255 - changed["image"][0, 0]
    changed["state"][0, 0] = torch.randn(8)
    changed["action"][0, 0] = -changed["action"][0, 0]
    with torch.no_grad():
        assert torch.allclose(policy(batch)[0], policy(changed)[0], atol=1e-6)


# ------------------------------------------------------------------------------ acting


@pytest.mark.parametrize("override", ["text_mode=sentence", "text_mode=subword",
                                      "patch_film=true", "image_tokenizer=rt1_tokens",
                                      "text_position=per_step", "readout=frame_mean"])
def test_gato_cached_decoding_equals_uncached(build, make_obs, override) -> None:
    policy = build("gato_tiny", (override,))
    for film in policy.image_tokenizer.modules():  # FiLM starts as identity: make it matter
        if isinstance(film, FiLM):
            torch.nn.init.normal_(film.proj.weight, std=0.1)
    assert isinstance(policy, GatoPolicy)
    steps = policy.config.history + 3  # well past the window: the cache slides
    runs = {}
    for cached in (True, False):
        policy.use_kv_cache = cached
        policy.reset("pick up the qwzxvbnm-9000 thingamajig")  # unknown words: no crash
        actions, logits = [], []
        for i in range(steps):
            obs = make_obs(i, "pick up the qwzxvbnm-9000 thingamajig")
            actions.append(policy.select_action(obs))
            logits.append(policy.last_logits)
        runs[cached] = (actions, logits)
    for a, b in zip(runs[True][0], runs[False][0], strict=True):
        assert np.array_equal(a, b)
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_gato_patch_film_conditions_the_patches_on_the_instruction(build, make_batch) -> None:
    policy = build("gato_tiny", ("patch_film=true",))
    films = policy.image_tokenizer.films
    batch = make_batch(b=3, t=policy.config.history)
    loss, _ = policy(batch)
    loss.backward()
    # identity at start, but the gradient reaches the FiLM layers through the patches
    assert all(f.proj.weight.grad is not None and f.proj.weight.grad.abs().sum() > 0
               for f in films)
    for film in films:
        torch.nn.init.normal_(film.proj.weight, std=0.1)
    policy.eval()
    image = batch["image"][:1]
    state = batch["state"][:1]
    tokens = {}
    for instruction in ("pick up the red block", "pick up the blue cylinder"):
        cond = policy.text_tokens([instruction])[2]
        tokens[instruction] = policy.observation_tokens(image, state, False, cond)
    a, b = tokens.values()
    patches = policy.image_tokenizer.num_patches
    assert not torch.allclose(a[..., :patches, :], b[..., :patches, :])  # patches differ
    assert torch.equal(a[..., patches:, :], b[..., patches:, :])  # state and separator do not


def test_gato_cache_stays_bounded(build, make_obs) -> None:
    policy = build("gato_tiny")
    policy.reset("pick up the red block")
    lengths = []
    for i in range(6):
        policy.select_action(make_obs(i))
        lengths.append(len(policy._cache))
    assert lengths[-1] == lengths[-2] == lengths[-3]  # slid, not grown
    assert lengths[-1] <= 1 + policy.config.history * policy.step_len


@pytest.mark.parametrize(("name", "overrides"), TINY, ids=_ids(TINY))
def test_acting_matches_forward_on_the_same_frames(build, make_obs, name, overrides) -> None:
    """select_action's incremental path == forward on a padded batch of the same frames."""
    policy = build(name, overrides)
    t = policy.config.history
    # RT-1 keeps exactly the last t frames; Gato's window slides, so compare within one window
    obs = [make_obs(i) for i in range(t + 1 if isinstance(policy, RT1Policy) else t)]
    actions, tokens = [], []
    for o in obs:
        actions.append(policy.select_action(o))
        tokens.append(getattr(policy, "last_tokens", None))
    image = torch.stack([torch.from_numpy(o["image"]) for o in obs[-t:]])[None]
    state = torch.stack([torch.from_numpy(o["state"]) for o in obs[-t:]])[None]
    valid = torch.ones(1, t, dtype=torch.bool)
    policy.eval()
    with torch.no_grad():
        if isinstance(policy, GatoPolicy):
            # teacher-force the tokens the policy chose (a decoded action may lie outside the
            # spec and re-encode to another bin, so the tokens are compared, not the actions)
            logits = policy.sequence_logits(image, state, torch.stack(tokens)[None], valid,
                                            [obs[0]["instruction"]])[0, -1]
            assert torch.allclose(logits, policy.last_logits, atol=1e-4)
        else:
            batch = {"image": image, "state": state, "action": torch.zeros(1, t, 8),
                     "pad": ~valid, "instruction": [obs[0]["instruction"]]}
            logits = policy.logits_and_targets(batch)[0][0, -1]  # (A, K)
    decoded = policy.action_tokenizer.decode(logits.argmax(-1)).numpy()
    assert np.array_equal(decoded, actions[-1])


def test_select_action_contract(build, make_obs) -> None:
    policy = build("rt1_tiny")
    policy.train()
    a = policy.select_action(make_obs(0))
    assert a.dtype == np.float32 and a.shape == (8,)
    assert np.all(a >= -1) and np.all(a <= 1)
    assert policy.training  # select_action ran in eval mode and restored the mode
    # a new instruction resets the history: same as a fresh policy on that observation
    policy.select_action(make_obs(1))
    switched = policy.select_action(make_obs(2, "pick up the blue cylinder"))
    policy.reset("pick up the blue cylinder")
    assert np.array_equal(policy.select_action(make_obs(2, "pick up the blue cylinder")),
                          switched)
    with pytest.raises(ValueError, match=r"\(96, 96, 3\)"):
        policy.select_action({**make_obs(3), "image": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(KeyError, match="state"):
        policy.select_action({"image": make_obs(3)["image"], "instruction": "x"})
    # reset in training mode still acts without dropout: the same actions twice
    gato = build("gato", ("dropout=0.5",)).train()
    twice = []
    for _ in range(2):
        gato.reset("pick up the red block")
        twice.append([gato.select_action(make_obs(i)) for i in range(2)])
    assert np.array_equal(np.stack(twice[0]), np.stack(twice[1])) and gato.training
    with pytest.raises(ValueError, match="ee_x"):
        policy.select_action({**make_obs(3), "state": np.zeros(7, np.float32)})


def test_pretrained_backbone_is_loaded_and_not_needed_to_reload(build, tmp_path) -> None:
    from safetensors.torch import save_file

    donor = build("rt1_tiny")
    weights = {k: v.contiguous() + 1.0
               for k, v in donor.image_tokenizer.backbone.state_dict().items()}
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    policy = build("rt1_tiny", (f"pretrained_backbone={tmp_path / 'backbone.safetensors'}",))
    stem = policy.image_tokenizer.backbone.stem[0].weight
    assert torch.equal(stem, weights["stem.0.weight"])
    policy.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "backbone.safetensors").unlink()  # e.g. the checkpoint moved to a robot
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.image_tokenizer.backbone.stem[0].weight, stem)
    assert loaded.config.pretrained_backbone == policy.config.pretrained_backbone


def test_data_bounds_travel_in_the_checkpoint(build, tmp_path) -> None:
    policy = build("rt1_tiny", ("action_bounds=data",))
    assert policy.action_tokenizer.low.tolist() == pytest.approx([-0.9] * 8)
    policy.save_pretrained(tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["action"]["p99"] == [0.9] * 8
    loaded = Policy.from_pretrained(tmp_path)
    assert torch.equal(loaded.action_tokenizer.high, policy.action_tokenizer.high)


# ------------------------------------------------------------------------------ checks


def test_from_pretrained_fails_loudly(build, env_info, tmp_path) -> None:
    policy = build("rt1_tiny")
    policy.save_pretrained(tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Policy.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a 'gato'"):
        GatoPolicy.from_pretrained(tmp_path / "ok")
    assert isinstance(RT1Policy.from_pretrained(tmp_path / "ok"), RT1Policy)

    def broken(name: str, edit) -> Path:
        d = tmp_path / name
        policy.save_pretrained(d)
        edit(d)
        return d

    d = broken("no_stats", lambda d: (d / "stats.json").unlink())
    with pytest.raises(FileNotFoundError, match="stats.json"):
        Policy.from_pretrained(d)

    def other_spec(d: Path) -> None:
        spec = make_action_spec(metres_per_unit=0.05)
        (d / "action_spec.json").write_text(spec.to_json())

    with pytest.raises(ValueError, match="action dimension 'x'"):
        Policy.from_pretrained(broken("spec", other_spec))

    def edit_config(**changes):
        def edit(d: Path) -> None:
            saved = json.loads((d / "config.json").read_text())
            saved.update(changes.pop("top", {}))
            saved["config"].update(changes)
            (d / "config.json").write_text(json.dumps(saved))
        return edit

    with pytest.raises(ValueError, match="'pos'"):  # weights no longer fit the config
        Policy.from_pretrained(broken("history", edit_config(history=3)))
    with pytest.raises(ValueError, match="'diffusion'"):
        Policy.from_pretrained(broken("kind", edit_config(top={"kind": "diffusion"})))
    with pytest.raises(ValueError, match="'flux_capacitor'"):
        Policy.from_pretrained(broken("field", edit_config(flux_capacitor=1)))
    with pytest.raises(ValueError, match="image shape"):
        Policy.from_pretrained(tmp_path / "ok", env_info={**env_info, "image_shape": [64, 64, 3],
                                                          "camera": None})


def test_check_env_names_each_mismatch(build, env_info) -> None:
    policy = build("rt1_tiny")
    policy.check_env(env_info)
    policy.check_env({**env_info, "camera": {**env_info["camera"], "jitter_m": 0.02}})
    with pytest.raises(ValueError, match="action spec"):
        policy.check_env({**env_info, "action_spec": make_action_spec(
            names=("x", "y", "z", "gripper")).to_dict()})
    with pytest.raises(ValueError, match="image shape"):
        policy.check_env({**env_info, "image_shape": [128, 128, 3]})
    with pytest.raises(ValueError, match="camera mismatch.*eye"):
        policy.check_env({**env_info, "camera": {**env_info["camera"], "eye": [1.0, 0.0, 0.5]}})
    with pytest.raises(ValueError, match="renderer"):
        policy.check_env({**env_info, "renderer": "egl"})
    # a store's info may nest the env's description
    policy.check_env({"env": env_info})


def test_make_policy_rejects_what_it_cannot_build(env_info) -> None:
    with pytest.raises(ValueError, match="image shape"):
        make_policy(RT1Config(), DEFAULT_ACTION_SPEC, {"renderer": "tiny"})
    with pytest.raises(TypeError, match="RT1Config"):
        make_policy(object(), DEFAULT_ACTION_SPEC, env_info)
    with pytest.raises(TypeError, match="must be a dict"):
        make_policy(GatoConfig(), DEFAULT_ACTION_SPEC, [("image_shape", [96, 96, 3])])
    with pytest.raises(ValueError, match="action spec differs"):
        make_policy(RT1Config(), make_action_spec(names=("x", "y")), env_info)


def test_training_after_acting_and_position_features_cached(build, make_obs,
                                                             make_batch) -> None:
    """Acting runs in inference mode; what it caches (the constant position features) must
    still serve a training step after it, and equal a fresh computation."""
    policy = build("rt1_tiny")
    policy.select_action(make_obs(0))
    positions = policy.image_tokenizer.positions
    cached = positions.features(8, 8, torch.device("cpu"))
    assert not cached.is_inference()
    assert torch.equal(cached, positions._compute_features(8, 8, torch.device("cpu")))
    assert positions.features(8, 8, torch.device("cpu")) is cached  # computed once
    policy.train()
    loss, _ = policy(make_batch())
    loss.backward()
    assert positions.proj.weight.grad is not None
