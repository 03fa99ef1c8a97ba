"""The playground's episode logic, without a browser: what the page shows comes from here.

The reference checkpoint (policy/pretrained/rt1_full) acts, so the numbers are a real RT-1's.
The page itself is driven in a real browser by tests/test_playground_browser.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.spec import EVAL_SEED_START
from policy.playground.config import TOKEN_ENV, PlayServerConfig
from policy.playground.introspect import StepInsight
from policy.playground.session import (
    ORACLE,
    POLICY,
    SECOND,
    PlaySession,
    check_instruction,
    load_checkpoint,
)
from policy.playground.views import HEADER_PX, ROW_PX, attention_view, distribution_view, enlarge

REFERENCE = Path(__file__).resolve().parents[1] / "policy" / "pretrained" / "rt1_full"
SEED = EVAL_SEED_START + 3


@pytest.fixture(scope="module")
def checkpoint():
    return load_checkpoint(REFERENCE, torch_threads=1)


@pytest.fixture
def session(checkpoint):
    s = PlaySession({POLICY: checkpoint})
    yield s
    s.close()


def test_steps_show_the_policys_distributions_and_attention(session: PlaySession) -> None:
    first = session.reset("pick", "seen", SEED)
    assert first.step == 0 and first.action is None and first.insight is None
    assert first.camera.shape == (64, 64, 3) and first.render.shape == (240, 320, 3)
    for _ in range(3):
        view = session.step()
    assert view.step == 3 and not view.done
    assert not np.array_equal(view.camera, first.camera), "the robot did not move in 3 steps"
    insight = view.insight
    assert insight is not None and insight.probs.shape == (8, 256)
    np.testing.assert_allclose(insight.probs.sum(-1), 1.0, atol=1e-5)
    # the action taken is the centre of the bins the page shows as chosen
    policy = session._policies[POLICY]
    decoded = policy.action_tokenizer.decode(torch.as_tensor(insight.bins)).numpy()
    np.testing.assert_allclose(view.action, decoded, atol=1e-6)
    # one spatial softmax per TokenLearner token, over the 64 px frame's feature map
    assert insight.attention is not None and insight.attention.shape[0] == 8
    np.testing.assert_allclose(insight.attention.sum((1, 2)), 1.0, atol=1e-5)


def test_gato_shows_its_1024_bin_distributions_and_no_attention(tmp_path: Path) -> None:
    import envs
    from envs.spec import DEFAULT_ACTION_SPEC
    from policy.base import load_policy_yaml, make_policy

    config = load_policy_yaml(REFERENCE.parents[2] / "conf" / "policy" / "gato_tiny.yaml")
    env = envs.make_env("pick", "seen", image_size=64, skip_render=True)
    info = env.describe()
    env.close()
    make_policy(config, DEFAULT_ACTION_SPEC, info).save_pretrained(tmp_path / "gato")
    session = PlaySession({POLICY: load_checkpoint(tmp_path / "gato", torch_threads=1)})
    try:
        session.reset("pick", "seen", SEED)
        view = session.step()
        insight = view.insight
        assert insight is not None and insight.probs.shape == (8, 1024)
        assert insight.attention is None  # no TokenLearner in Gato's patch tokenizer
        policy = session._policies[POLICY]
        decoded = policy.action_tokenizer.decode(torch.as_tensor(insight.bins)).numpy()
        np.testing.assert_allclose(view.action, decoded, atol=1e-6)
    finally:
        session.close()


def test_a_typed_instruction_reaches_the_policy(session: PlaySession) -> None:
    session.reset("pick", "seen", SEED)
    scene = session.scene_instruction
    session.step()
    session.set_instruction("  knock   over the purple  duck ")
    view = session.step()
    assert view.instruction == "knock over the purple duck" != scene
    assert session._policies[POLICY].instruction == "knock over the purple duck"
    # a new instruction changes what the policy computes on the same frame
    session.reset("pick", "seen", SEED)
    a = session.step().insight.probs
    session.reset("pick", "seen", SEED, instruction="push the red block to the left")
    b = session.step().insight.probs
    assert not np.allclose(a, b)


def test_switching_actor_replays_the_same_scene(session: PlaySession) -> None:
    policy_view = session.reset("pick", "seen", SEED)
    oracle_view = session.reset("pick", "seen", SEED, actor=ORACLE)
    np.testing.assert_array_equal(policy_view.camera, oracle_view.camera)
    np.testing.assert_array_equal(policy_view.render, oracle_view.render)
    while not oracle_view.done:
        oracle_view = session.step()
    assert oracle_view.success and oracle_view.ended_by == "terminate"
    assert oracle_view.insight is None  # the oracle has no distributions
    assert session.step() is oracle_view  # a finished episode stays finished


def test_a_second_checkpoint_acts_on_the_same_seed_with_its_own_history(checkpoint) -> None:
    # The same checkpoint twice: one set of weights, two sessions whose histories are apart,
    # so the second acts exactly as the first on the same seed and instruction.
    session = PlaySession({POLICY: checkpoint, SECOND: checkpoint})
    try:
        session.reset("pick", "seen", SEED)
        first = [session.step().action for _ in range(3)]
        session.reset("pick", "seen", SEED, actor=SECOND)
        second = [session.step().action for _ in range(3)]
        np.testing.assert_array_equal(np.stack(first), np.stack(second))
        assert session.label(SECOND).startswith("second: rt1 rt1_full")
        assert session._policies[POLICY] is not session._policies[SECOND]
    finally:
        session.close()


def test_the_script_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    root = REFERENCE.parents[2]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    result = subprocess.run(
        [sys.executable, "scripts/play.py", f"checkpoint={REFERENCE}", "server.host=0.0.0.0",
         f"hydra.run.dir={tmp_path}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "refusing to listen on non-loopback host '0.0.0.0' without a token" in result.stderr


def test_the_page_asks_for_the_token_when_one_is_set(checkpoint) -> None:
    pytest.importorskip("gradio", reason='needs the "play" extra: pip install -e ".[play]"')
    import http.cookiejar
    import urllib.error
    import urllib.parse
    import urllib.request

    from policy.playground.app import Playground, launch

    app, url = launch(Playground({POLICY: checkpoint}), PlayServerConfig(port=0, token="s3cret"))

    def status(opener: urllib.request.OpenerDirector, path: str, data: bytes | None = None
               ) -> int:
        try:
            with opener.open(url + path, data=data, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        anonymous = urllib.request.build_opener()
        assert status(anonymous, "config") == 401
        for password, code in (("wrong", 400), ("s3cret", 200)):
            browser = urllib.request.build_opener(
                urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
            login = urllib.parse.urlencode({"username": "anyone", "password": password})
            assert status(browser, "login", login.encode()) == code
            assert status(browser, "config") == (200 if code == 200 else 401)
    finally:
        app.close()


def test_the_episode_video_has_every_frame(session: PlaySession) -> None:
    import imageio.v2 as imageio

    session.reset("pick", "seen", SEED)
    for _ in range(4):
        session.step()
    path = session.save_video()
    assert path.suffix == ".mp4" and path.stat().st_size > 1000
    with imageio.get_reader(path) as reader:
        frames = [f for f in reader]
    assert len(frames) == 5  # the reset frame and one per step
    session.close()
    assert not path.exists(), "closing a tab keeps its videos"


def test_bad_input_is_named(session: PlaySession) -> None:
    with pytest.raises(ValueError, match="empty"):
        check_instruction("   ")
    with pytest.raises(ValueError, match="300 characters; expected at most 256"):
        check_instruction("x" * 300)
    with pytest.raises(ValueError, match="task 'fly'"):
        session.reset("fly", "seen", SEED)
    with pytest.raises(ValueError, match="split 'mars'"):
        session.reset("pick", "mars", SEED)
    with pytest.raises(ValueError, match="actor 'second'"):
        session.reset("pick", "seen", SEED, actor="second")
    with pytest.raises(RuntimeError, match="reset the scene"):
        session.step()
    # a tab keeps the envs of its current task and split only
    session.reset("pick", "seen", SEED)
    session.reset("push", "distractors", SEED)
    assert [key[:2] for key in session._envs] == [("push", "distractors")]


def test_the_play_rate_defaults_to_the_checkpoints_and_refuses_zero(checkpoint) -> None:
    pytest.importorskip("gradio", reason='needs the "play" extra: pip install -e ".[play]"')
    from policy.playground.app import Playground

    assert Playground({POLICY: checkpoint}).control_hz == checkpoint.served.control_hz
    assert Playground({POLICY: checkpoint}, control_hz=2).control_hz == 2.0
    with pytest.raises(ValueError, match="control_hz=0; expected a rate > 0 Hz"):
        Playground({POLICY: checkpoint}, control_hz=0)


def test_listening_off_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert PlayServerConfig().host == "127.0.0.1"
    with pytest.raises(ValueError, match="non-loopback host '0.0.0.0' without a token"):
        PlayServerConfig(host="0.0.0.0")
    assert PlayServerConfig(host="0.0.0.0", token="s3cret").token == "s3cret"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert PlayServerConfig(host="0.0.0.0").token == "from-env"
    with pytest.raises(ValueError, match="server.port=70000"):
        PlayServerConfig(port=70000)


def test_a_visual_split_shows_its_crops_and_a_text_only_checkpoint_is_refused(
        session: PlaySession) -> None:
    from policy.playground.views import with_prompt

    # the oracle acts on the visual level; the scene view carries the crop in its corner
    view = session.reset("pick", "visual_prompt", SEED, actor=ORACLE)
    assert "{image}" in view.instruction
    crop = session.obs["prompt_images"][0]
    assert np.array_equal(view.render[2:66, 2:66], enlarge(crop, 2))
    with pytest.raises(ValueError, match="this policy reads text prompts only"):
        session.reset("pick", "visual_prompt", SEED, actor=POLICY)
    picture = np.zeros((100, 200, 3), np.uint8)
    assert with_prompt(picture, np.zeros((2, 32, 32, 3), np.uint8), 0) is picture
    two = with_prompt(picture, np.full((2, 32, 32, 3), 7, np.uint8), 2)
    assert (two[2:66, 2:66] == 7).all() and (two[2:66, 72:136] == 7).all()
    assert (two[0, :68] == 255).all() and (two[0, 70:138] == 255).all() and (two[70:] == 0).all()


def test_views_mark_the_chosen_and_the_label_bins() -> None:
    probs = np.full((2, 1024), 1e-4, dtype=np.float32)  # Gato's 1024 bins pool into the chart
    probs[0, 100], probs[1, 900] = 0.9, 0.9
    insight = StepInsight(("x", "gripper"), probs / probs.sum(-1, keepdims=True),
                          np.array([100, 900]))
    image = distribution_view(insight, np.array([0.1, 0.9]), label_bins=np.array([700, 20]))
    red = np.all(image == (235, 70, 60), axis=-1)
    green = np.all(image == (60, 210, 90), axis=-1)
    assert red.any() and green.any()
    # the red column of row 0 lies left of its green one (bin 100 vs label 700)
    row0 = slice(HEADER_PX, HEADER_PX + ROW_PX)
    assert np.nonzero(red[row0].any(0))[0][0] < np.nonzero(green[row0].any(0))[0][0]
    heat = attention_view(np.zeros((64, 64, 3), np.uint8), np.ones((8, 8, 8)) / 64)
    assert heat.shape[1] == 256 and heat.dtype == np.uint8
    with pytest.raises(ValueError, match="scale must be >= 1"):
        enlarge(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"expected \(2, bins\)"):
        StepInsight(("x", "y"), np.ones((3, 4)), np.zeros(3, int))


def test_a_stored_dataset_is_browsed_with_the_checkpoints_opinion(checkpoint,
                                                                   tmp_path: Path) -> None:
    from envs.collect import CollectConfig, collect
    from policy.playground.dataset import DatasetBrowser

    store = tmp_path / "data"
    collect(CollectConfig(output=str(store), episodes=2, workers=1, image_size=64,
                          progress=False))
    browser = DatasetBrowser(store, checkpoint)
    rows = browser.rows()
    assert len(rows) == 2 and rows[0][1] == "pick" and browser.note == ""
    first = browser.open(1)
    assert first.step == 0 and first.label is not None and first.insight is not None
    last = browser.seek(10_000)  # clamped to the episode's last stored step
    assert last.step == len(browser) - 1 and last.ended_by
    view = browser.seek(2)
    policy = browser.policy
    expected = policy.action_tokenizer.encode(torch.as_tensor(view.label)).numpy()
    np.testing.assert_array_equal(view.label_bins, expected)
    with pytest.raises(ValueError, match="episode 5; expected 0..1"):
        browser.open(5)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        DatasetBrowser(tmp_path / "nowhere")
    browser.close()


def test_a_users_picture_shows_the_object_to_a_prompt_checkpoint(tmp_path: Path) -> None:
    """An uploaded picture (any size, RGBA) replaces a slot's crop: scaled to the checkpoint's
    crop size, drawn in the scene view's corner, given to the policy at reset and at every
    step, kept across resets until cleared; a malformed picture is refused by name."""
    pytest.importorskip("gradio", reason='needs the "play" extra: pip install -e ".[play]"')
    import envs
    from envs.spec import DEFAULT_ACTION_SPEC, MAX_PROMPT_IMAGES
    from policy.base import load_policy_yaml, make_policy
    from policy.playground.session import STUDIO_GREY, prepare_crop

    config = load_policy_yaml(REFERENCE.parents[2] / "conf" / "policy" / "rt1_tiny.yaml")
    config.prompt_images = True
    env = envs.make_env("pick", "visual_prompt", image_size=64, skip_render=True)
    info = env.describe()
    env.close()
    make_policy(config, DEFAULT_ACTION_SPEC, info).save_pretrained(tmp_path / "rt1p")
    loaded = load_checkpoint(tmp_path / "rt1p", torch_threads=1)
    from policy.playground.app import Playground, build_app

    app = build_app(Playground({POLICY: loaded}))  # the page has an upload box per slot
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {f"prompt-image-{i}" for i in range(MAX_PROMPT_IMAGES)} <= ids
    session = PlaySession({POLICY: loaded})
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (90, 60, 4), dtype=np.uint8)  # a tall RGBA photo
    picture[..., 3] = 255
    try:
        session.reset("pick", "seen", SEED, instruction="pick up the {image}")
        session.set_prompt_image(0, picture)
        policy = session._policies[POLICY]
        want = prepare_crop(picture, 32)
        assert want.shape == (32, 32, 3)
        assert np.array_equal(policy.prompt_images[0].cpu().numpy(), want)
        view = session.step()
        assert np.array_equal(policy.prompt_images[0].cpu().numpy(), want)  # not re-reset
        assert np.array_equal(view.render[2:66, 2:66], enlarge(want, 2))
        session.reset("pick", "seen", SEED + 1, instruction="pick up the {image}")
        assert np.array_equal(policy.prompt_images[0].cpu().numpy(), want)  # kept
        # on a visual split the user's picture wins over the env's crop in its slot
        session.reset("pick", "visual_prompt", SEED)
        assert np.array_equal(policy.prompt_images[0].cpu().numpy(), want)
        session.set_prompt_image(0, None)
        assert np.array_equal(policy.prompt_images[0].cpu().numpy(),
                              session.obs["prompt_images"][0])
        with pytest.raises(ValueError, match=r"prompt slot 2; expected 0..1"):
            session.set_prompt_image(MAX_PROMPT_IMAGES, picture)
        with pytest.raises(ValueError, match=r"shape \(4, 4, 5\); expected a picture"):
            session.set_prompt_image(0, np.zeros((4, 4, 5), np.uint8))
        with pytest.raises(ValueError, match="expected uint8 or floats in \\[0, 1\\]"):
            session.set_prompt_image(0, np.full((4, 4, 3), 3.0))
    finally:
        session.close()
    # transparent pixels become the studio's grey floor; a square grey picture stays grey
    clear = np.zeros((10, 10, 4), np.uint8)
    assert np.allclose(prepare_crop(clear, 4) / 255.0, STUDIO_GREY, atol=1 / 255)
    assert (prepare_crop(np.full((6, 6), 128, np.uint8), 3) == 128).all()
