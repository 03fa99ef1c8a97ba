"""Image prompts over the bridge: the metadata announces the crops' shape, `reset` carries one
crop per "{image}" slot, every malformed prompt is refused before the model (the running
episode untouched, the id echoed, the connection serving on), the simulated robot sends the
env's crops, and a prompt-reading RT-1 checkpoint acts over the bridge exactly as in process.

The first part serves a small torch module (the HistoryPolicy of test_bridge.py whose text
vector also mixes in the crops), so that a bridge which dropped, reordered or mangled the
crops would produce different actions; the last part serves a real rt1_tiny checkpoint.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

import envs
from envs.spec import DEFAULT_ACTION_SPEC, EVAL_SEED_START, MAX_PROMPT_IMAGES, PROMPT_SLOT
from policy import Policy, make_policy
from policy.bridge import protocol as P
from policy.bridge.client import BridgeClient, BridgeError
from policy.bridge.loading import load_served_policy
from policy.bridge.robot import control_loop, episode_prompt, run_sim_robot
from policy.bridge.server import PolicyServer, ServedPolicy, ServerConfig, largest_requests
from policy.bridge.thread import ServerThread
from policy.tokenizers.images import FiLM

from .test_bridge import GOOD, HistoryPolicy, TinyNet, make_served, observations
from .test_policies import STATS

CROP = (8, 8, 3)
SPEC = P.PromptSpec(shape=CROP, dtype="uint8", max_images=2)
ONE = "pick up the {image}"
TWO = "put the {image} into the {image}"
TEXT = "stack the blocks"
LIMIT = 8 * 1024  # max_message_bytes of the toy servers: two crops fit, two 64 px ones do not


def crops(seed: int, n: int = 1, shape: tuple[int, ...] = CROP) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


class PromptHistoryPolicy(HistoryPolicy):
    """HistoryPolicy whose instruction vector also carries its crops' pixels (each crop's
    first 8 values, weighted by its slot), recording every reset it gets."""

    def __init__(self, net: TinyNet, resets: list | None = None) -> None:
        super().__init__(net)
        self.resets = resets if resets is not None else []

    def reset(self, instruction: str, prompt_images: np.ndarray | None = None) -> None:
        if PROMPT_SLOT in instruction and prompt_images is None:
            raise ValueError(f"{instruction!r} without its crops")
        super().reset(instruction)
        self.resets.append((instruction, None if prompt_images is None
                            else np.array(prompt_images)))
        if prompt_images is not None:
            pixels = torch.from_numpy(np.asarray(prompt_images)).float().flatten(1)[:, :8]
            weights = torch.arange(1, len(pixels) + 1, dtype=torch.float32)[:, None]
            assert self.text is not None
            self.text = self.text + (weights * pixels / 255.0).sum(0)


def served_prompts(net: TinyNet, resets: list | None = None,
                   spec: P.PromptSpec = SPEC) -> ServedPolicy:
    served = make_served(net)
    served.new_session = lambda: PromptHistoryPolicy(net, resets)
    served.prompt_images = spec
    return served


@pytest.fixture(scope="module")
def net() -> TinyNet:
    torch.set_num_threads(1)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def resets() -> list:
    return []


@pytest.fixture(scope="module")
def prompt_server(net: TinyNet, resets: list) -> Iterator[ServerThread]:
    with ServerThread(served_prompts(net, resets),
                      ServerConfig(port=0, max_message_bytes=LIMIT)) as st:
        yield st


@pytest.fixture(scope="module")
def text_server(net: TinyNet) -> Iterator[ServerThread]:
    with ServerThread(make_served(net), ServerConfig(port=0, max_message_bytes=LIMIT)) as st:
        yield st


# --- metadata ----------------------------------------------------------------------------------


def test_metadata_announces_the_prompt_images(prompt_server: ServerThread,
                                              text_server: ServerThread) -> None:
    with BridgeClient(prompt_server.url) as client:
        assert client.metadata.prompt_images == SPEC
        raw = client.metadata.to_wire()
    assert raw["prompt_images"] == {"shape": [8, 8, 3], "dtype": "uint8", "max_images": 2,
                                    "slot": "{image}"}
    assert SPEC.slot == PROMPT_SLOT  # the wire's marker is the env's
    with BridgeClient(text_server.url) as client:  # text only: the key is there, nil
        assert client.metadata.prompt_images is None
        wire = client.metadata.to_wire()
    assert "prompt_images" in wire and wire["prompt_images"] is None
    # a server from before image prompts sends no such key: read as text only
    del wire["prompt_images"]
    assert P.BridgeMetadata.from_wire(wire).prompt_images is None
    # what the server sends on the wire, byte for byte, carries the map
    metadata = P.unpack(prompt_server.server._metadata_bytes)
    assert metadata["prompt_images"]["shape"] == [8, 8, 3]


# --- acting with image prompts -----------------------------------------------------------------


def test_crops_travel_with_reset_and_steer_the_actions(prompt_server: ServerThread,
                                                       net: TinyNet) -> None:
    obs = observations(40, 4)
    images = crops(1, 2)
    local = PromptHistoryPolicy(net)
    local.reset(TWO, images)
    expected = [local.select_action(o) for o in obs]
    with BridgeClient(prompt_server.url) as client:
        client.reset(TWO, [images[0], images[1]])  # a list of (S, S, 3) arrays
        for i, o in enumerate(obs):
            result = client.act(o)
            np.testing.assert_array_equal(result.action, expected[i])
            assert result.step == i + 1
        client.reset(TWO, images)  # one (n, S, S, 3) array: the same episode start
        np.testing.assert_array_equal(client.select_action(obs[0]), expected[0])
        # the crops matter, and so does their order: each is its slot's
        client.reset(TWO, images[::-1])
        assert not np.array_equal(client.select_action(obs[0]), expected[0])
        client.reset(ONE, images[:1])
        assert not np.array_equal(client.select_action(obs[0]), expected[0])
        # text-only instructions work on a prompt-reading server, with no images or nil or []
        text = PromptHistoryPolicy(net)
        text.reset(TEXT)
        for prompt in (None, [], "nil"):
            if prompt == "nil":
                client.request({"id": 9, "type": "reset", "instruction": TEXT,
                                "prompt_images": None})
            else:
                client.reset(TEXT, prompt)
            np.testing.assert_array_equal(client.select_action(obs[0]),
                                          text.select_action(obs[0]))
            text.reset(TEXT)


def test_a_text_only_server_takes_nil_or_no_images(text_server: ServerThread,
                                                   net: TinyNet) -> None:
    local = HistoryPolicy(net)
    local.reset(TEXT)
    with BridgeClient(text_server.url) as client:
        for prompt in (None, []):
            client.reset(TEXT, prompt)
            assert client.act(GOOD).step == 1
        client.request({"id": 3, "type": "reset", "instruction": TEXT, "prompt_images": None})
        np.testing.assert_array_equal(client.select_action(GOOD), local.select_action(GOOD))


# --- refusals ----------------------------------------------------------------------------------


def _reset(instruction: Any, images: Any = "absent", request_id: int = 7) -> bytes:
    message: dict[str, Any] = {"id": request_id, "type": "reset", "instruction": instruction}
    if not (isinstance(images, str) and images == "absent"):
        message["prompt_images"] = images
    return P.pack(message)


def _map(image: np.ndarray, **override: object) -> dict:
    return {**P.encode_ndarray(image), **override}


def _endless_array() -> bytes:
    """A reset whose prompt_images claims 2**32 - 1 elements and holds none."""
    head = msgpack.packb({"id": 7, "type": "reset", "instruction": ONE})
    assert head[0] == 0x83  # a map of 3 entries; the frame has a fourth
    return (b"\x84" + head[1:] + msgpack.packb("prompt_images") + b"\xdd"
            + struct.pack(">I", 2**32 - 1))


NO_TEXT = "this server's policy reads text prompts only (metadata 'prompt_images' is nil)"
PER_SLOT = "expected one uint8 [8, 8, 3] image per '{image}', in order"
# case -> (server, frame, code, fragment of the message)
REFUSED = {
    # a prompt-reading server: counts against the instruction's slots and max_images
    "more_images_than_slots": ("prompt", lambda: _reset(ONE, list(crops(2, 2))), "bad_value",
                               "reset 'prompt_images' has 2 image(s); the instruction "
                               f"'pick up the {{image}}' has 1 '{{image}}' slot(s): {PER_SLOT}"),
    "fewer_images_than_slots": ("prompt", lambda: _reset(TWO, list(crops(2, 1))), "bad_value",
                                "has 1 image(s); the instruction 'put the {image} into the "
                                "{image}' has 2 '{image}' slot(s)"),
    "no_images_for_a_slot": ("prompt", lambda: _reset(ONE), "bad_value",
                             "reset 'prompt_images' is absent; the instruction 'pick up the "
                             "{image}' has 1 '{image}' slot(s)"),
    "nil_images_for_a_slot": ("prompt", lambda: _reset(ONE, None), "bad_value",
                              "reset 'prompt_images' is nil; the instruction"),
    "empty_images_for_a_slot": ("prompt", lambda: _reset(ONE, []), "bad_value",
                                "reset 'prompt_images' has 0 image(s); the instruction"),
    "images_without_slots": ("prompt", lambda: _reset(TEXT, list(crops(2, 1))), "bad_value",
                             "has 1 image(s); the instruction 'stack the blocks' has 0 "
                             "'{image}' slot(s)"),
    "more_slots_than_max_images": ("prompt",
                                   lambda: _reset(TWO + " by the {image}", list(crops(2, 3))),
                                   "bad_value", "has 3 '{image}' slots; expected at most 2 "
                                                "(metadata 'prompt_images' max_images)"),
    "more_images_than_max_images": ("prompt", lambda: _reset(ONE, list(crops(2, 5))),
                                    "bad_value", "reset 'prompt_images' has 5 images; expected "
                                                 f"at most 2 (metadata 'prompt_images' "
                                                 f"max_images), {PER_SLOT[9:]}"),
    "array_header_of_4e9_images": ("prompt", _endless_array, "not_msgpack",
                                   "not valid msgpack"),
    # each image checked against the announced shape and dtype
    "wrong_shape": ("prompt", lambda: _reset(ONE, list(crops(2, 1, (16, 16, 3)))), "bad_shape",
                    "reset 'prompt_images'[0] has shape [16, 16, 3]; expected [8, 8, 3]"),
    "grey_crop": ("prompt", lambda: _reset(ONE, list(crops(2, 1, (8, 8)))), "bad_shape",
                  "reset 'prompt_images'[0] has shape [8, 8]; expected [8, 8, 3]"),
    "second_image_wrong_shape": ("prompt", lambda: _reset(TWO, [crops(2)[0], crops(3)[0, :4]]),
                                 "bad_shape", "reset 'prompt_images'[1] has shape [4, 8, 3]"),
    "float_crop": ("prompt", lambda: _reset(ONE, [crops(2)[0].astype(np.float32) / 255]),
                   "bad_dtype", "reset 'prompt_images'[0] has dtype float32; expected uint8"),
    "images_as_one_array_map": ("prompt", lambda: _reset(ONE, crops(2, 1)), "bad_message",
                                "reset 'prompt_images' is a msgpack map; expected an array of "
                                "ndarray maps, one per '{image}' in the instruction"),
    "images_as_string": ("prompt", lambda: _reset(ONE, "pixels"), "bad_message",
                         "reset 'prompt_images' is a msgpack str"),
    "image_not_an_array_map": ("prompt", lambda: _reset(ONE, [7]), "bad_ndarray",
                               "reset 'prompt_images'[0] is 7; expected an ndarray map of "
                               "uint8 [8, 8, 3]"),
    "image_bytes_cut_short": ("prompt",
                              lambda: _reset(ONE, [_map(crops(2)[0], data=b"\0" * 191)]),
                              "bad_ndarray", "reset 'prompt_images'[0]: array data has 191 "
                                             "bytes; shape [8, 8, 3] of uint8 needs 192"),
    "image_of_object_dtype": ("prompt", lambda: _reset(ONE, [_map(crops(2)[0], dtype="object")]),
                              "bad_ndarray", "'object' is not allowed"),
    "image_without_tag": ("prompt", lambda: _reset(ONE, [_map(crops(2)[0], __ndarray__=False)]),
                          "bad_ndarray", "reset 'prompt_images'[0] lacks '__ndarray__': true"),
    "images_beyond_max_message_bytes": ("prompt",
                                        lambda: _reset(TWO, list(crops(2, 2, (64, 64, 3)))),
                                        "too_large", f"exceeds max_message_bytes={LIMIT}"),
    # a text-only server: no slots, no images
    "slot_for_a_text_policy": ("text", lambda: _reset(ONE, list(crops(2, 1))), "bad_value",
                               "reset 'instruction' 'pick up the {image}' shows 1 object(s) by "
                               f"image ('{{image}}'); {NO_TEXT}"),
    "slot_without_images_for_a_text_policy": ("text", lambda: _reset(TWO), "bad_value",
                                              f"shows 2 object(s) by image ('{{image}}'); "
                                              f"{NO_TEXT}"),
    "images_for_a_text_policy": ("text", lambda: _reset(TEXT, list(crops(2, 1))), "bad_value",
                                 f"reset 'prompt_images' has 1 image(s); {NO_TEXT}: send none"),
    "images_as_string_for_a_text_policy": ("text", lambda: _reset(TEXT, "pixels"), "bad_message",
                                           "reset 'prompt_images' is a msgpack str"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_prompt_leaves_the_episode_and_the_connection_serving(
        prompt_server: ServerThread, text_server: ServerThread, net: TinyNet,
        case: str) -> None:
    kind, frame, code, fragment = REFUSED[case]
    server = prompt_server if kind == "prompt" else text_server
    images = crops(5, 2)
    if kind == "prompt":
        local: HistoryPolicy = PromptHistoryPolicy(net)
        local.reset(TWO, images)
    else:
        local = HistoryPolicy(net)
        local.reset(TEXT)
    obs = observations(41, 2)
    errors = server.server.errors_sent
    with BridgeClient(server.url) as client:
        if kind == "prompt":
            client.reset(TWO, images)
        else:
            client.reset(TEXT)
        np.testing.assert_array_equal(client.select_action(obs[0]), local.select_action(obs[0]))
        client._ws.send(frame())  # raw: the reply's keys as sent
        reply = P.unpack(client._ws.recv(timeout=5))
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert fragment in reply["message"], reply["message"]
        assert len(reply["message"]) < 400  # nothing big is echoed back
        assert reply["id"] == 7, f"{case}: the error reply lacks the request's id"
        # refused before the model: same instruction, crops, history; the steps go on
        result = client.act(obs[1])
        np.testing.assert_array_equal(result.action, local.select_action(obs[1]))
        assert result.step == 2
    assert server.server.errors_sent == errors + 1
    with BridgeClient(server.url) as fresh:  # and a new connection is served as well
        fresh.reset(TEXT)
        assert fresh.act(GOOD).step == 1


def test_the_python_client_raises_the_refusals(prompt_server: ServerThread,
                                               text_server: ServerThread) -> None:
    with BridgeClient(text_server.url) as client, pytest.raises(BridgeError) as err:
        client.reset(ONE, crops(1))
    assert err.value.code == "bad_value" and "reads text prompts only" in err.value.message
    with BridgeClient(prompt_server.url) as client:
        with pytest.raises(BridgeError, match=r"\[bad_shape\] reset 'prompt_images'\[0\]"):
            client.reset(ONE, crops(1, 1, (9, 8, 3)))
        with pytest.raises(BridgeError, match="not_reset"):  # nothing was started
            client.act(GOOD)


# --- max_message_bytes -------------------------------------------------------------------------


def test_the_largest_valid_prompt_reset_fits_the_limit_the_server_starts_with(
        net: TinyNet) -> None:
    spec = P.PromptSpec(shape=(64, 64, 3), dtype="uint8", max_images=2)
    served = served_prompts(net, spec=spec)
    with pytest.raises(ValueError, match=r"server.max_message_bytes=16384 cannot hold a valid "
                                         r"'reset' request: the longest instruction and 2 "
                                         r"prompt images of uint8 \[64, 64, 3\] take 2\d{4} "
                                         "bytes; raise server.max_message_bytes"):
        ServerThread(served, ServerConfig(port=0, max_message_bytes=16 * 1024))
    with pytest.raises(ValueError, match=r"cannot hold a valid 'act' request: the observation "
                                         r"\['image', 'state'\]"):
        ServerThread(make_served(net), ServerConfig(port=0, max_message_bytes=2048))
    # at exactly the computed limit, the largest valid reset is served
    probe = PolicyServer(served, ServerConfig(port=0, max_message_bytes=1 << 20))
    limit = max(largest_requests(probe.metadata).values())
    chars = ServerConfig().max_instruction_chars
    instruction = "\U0001f916" * (chars - 14) + "{image}{image}"
    with (ServerThread(served, ServerConfig(port=0, max_message_bytes=limit)) as st,
          BridgeClient(st.url) as client):
        message = {"id": "i" * 256, "type": "reset", "instruction": instruction,
                   "prompt_images": list(crops(3, 2, (64, 64, 3)))}
        assert len(P.pack(message)) <= limit
        assert client.request(message)["type"] == "reset_done"
        assert client.act(GOOD).step == 1


# --- the robot side ----------------------------------------------------------------------------


class PromptRobot:
    """A Robot whose episode shows its object by image: observe() carries the crops padded to
    MAX_PROMPT_IMAGES, as the env gives them (the padding is not sent)."""

    def __init__(self, instruction: str, images: np.ndarray | None, steps: int) -> None:
        self.instruction = instruction
        self.obs = observations(42, steps)
        if images is not None:
            for o in self.obs:
                o["prompt_images"] = images
        self.steps = steps
        self.commands: list[np.ndarray] = []

    def start_episode(self) -> str:
        self.commands = []
        return self.instruction

    def observe(self) -> dict:
        return self.obs[len(self.commands)]

    def command(self, action: np.ndarray) -> None:
        self.commands.append(action)

    def episode_status(self) -> tuple[bool, bool]:
        return len(self.commands) >= self.steps, False


def test_control_loop_sends_one_crop_per_slot_at_reset(prompt_server: ServerThread,
                                                       net: TinyNet, resets: list) -> None:
    padded = crops(6, MAX_PROMPT_IMAGES)  # a second crop that the instruction does not use
    robot = PromptRobot(ONE, padded, steps=3)
    local = PromptHistoryPolicy(net)
    local.reset(ONE, padded[:1])
    with BridgeClient(prompt_server.url) as client:
        resets.clear()
        control_loop(robot, client, control_hz=1000.0, episodes=1)
        (instruction, sent), = resets
        assert instruction == ONE
        np.testing.assert_array_equal(sent, padded[:1])
        np.testing.assert_array_equal(np.stack(robot.commands),
                                      np.stack([local.select_action(o) for o in robot.obs]))
        assert episode_prompt(client, TEXT, robot.obs[0]) is None
        with pytest.raises(ValueError, match=r"shows 1 object\(s\) by image, but the robot's "
                                             "observation has no 'prompt_images'"):
            control_loop(PromptRobot(ONE, None, steps=1), client, 1000.0, episodes=1)


def test_sim_robot_sends_the_envs_crops(prompt_server: ServerThread, resets: list) -> None:
    resets.clear()
    report = run_sim_robot(prompt_server.url, split="visual_prompt", episodes=2, max_steps=2,
                           control_hz=1000.0, timeout_s=5.0)
    assert len(report.episodes) == 2 and all(e.steps >= 1 for e in report.episodes)
    env = envs.make_env("pick", "visual_prompt", image_size=32, prompt_image_size=CROP[0])
    try:
        for (instruction, sent), seed in zip(resets, (EVAL_SEED_START, EVAL_SEED_START + 1),
                                             strict=True):
            obs, _ = env.reset(seed=seed)
            slots = instruction.count(PROMPT_SLOT)
            assert instruction == obs["instruction"] and slots >= 1
            assert sent.shape == (slots, *CROP) and sent.any()
            np.testing.assert_array_equal(sent, obs["prompt_images"][:slots])
    finally:
        env.close()


def test_sim_robot_refuses_a_text_server_on_a_visual_split(text_server: ServerThread) -> None:
    with pytest.raises(ValueError, match="split 'visual_prompt' shows objects by image, and the "
                                         "server's policy reads text prompts only"):
        run_sim_robot(text_server.url, split="visual_prompt", episodes=1, max_steps=1)


# --- a real prompt-reading checkpoint ----------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_checkpoint(tmp_path_factory: pytest.TempPathFactory, compose_policy,
                      text_encoder) -> Path:
    env = envs.make_env("pick", "visual_prompt", image_size=64, skip_render=True)
    try:
        env_info = env.unwrapped.describe()
    finally:
        env.close()
    torch.manual_seed(0)
    policy = make_policy(compose_policy("rt1_tiny", ("prompt_images=true",)),
                         DEFAULT_ACTION_SPEC, env_info, STATS)
    # FiLM starts as the identity (the crops would not move the actions): as after training
    for film in (m for m in policy.modules() if isinstance(m, FiLM)):
        torch.nn.init.normal_(film.proj.weight, std=0.05)
    assert policy.prompt_shape == (MAX_PROMPT_IMAGES, 32, 32, 3)
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "rt1_prompts")


def test_rt1_with_image_prompts_over_the_bridge_equals_in_process(
        prompt_checkpoint: Path) -> None:
    served = load_served_policy(prompt_checkpoint, warmup_steps=1)
    assert served.prompt_images == P.PromptSpec((32, 32, 3), "uint8", MAX_PROMPT_IMAGES)
    local = Policy.from_pretrained(prompt_checkpoint)
    crop = crops(8, 1, (32, 32, 3))
    rng = np.random.default_rng(9)
    obs = [{"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "state": rng.normal(size=8).astype(np.float32)} for _ in range(3)]
    with ServerThread(served, ServerConfig(port=0)) as st, BridgeClient(st.url) as client:
        assert client.metadata.prompt_images == served.prompt_images
        client.reset(ONE, crop)
        local.reset(ONE, crop)
        actions = [client.select_action(o) for o in obs]
        for o, action in zip(obs, actions, strict=True):
            np.testing.assert_array_equal(action, local.select_action({**o, "instruction": ONE}))
        # another crop, same words: another action (the crop reached the model)
        client.reset(ONE, crops(10, 1, (32, 32, 3)))
        assert not np.array_equal(client.select_action(obs[0]), actions[0])
        # a text prompt on the same server, and a refusal that leaves it serving
        client.reset(TEXT)
        local.reset(TEXT)
        np.testing.assert_array_equal(client.select_action(obs[0]),
                                      local.select_action({**obs[0], "instruction": TEXT}))
        with pytest.raises(BridgeError, match="bad_value"):
            client.reset(ONE)
        np.testing.assert_array_equal(client.select_action(obs[1]),
                                      local.select_action({**obs[1], "instruction": TEXT}))


def test_sim_robot_drives_a_prompt_checkpoint_on_the_visual_split(
        prompt_checkpoint: Path) -> None:
    resets: list = []
    served = load_served_policy(prompt_checkpoint, warmup_steps=0)
    new_session = served.new_session

    def recording_session() -> Any:
        session = new_session()
        reset = session.reset

        def record(instruction: str, prompt_images: Any = None) -> None:
            resets.append((instruction, prompt_images))
            reset(instruction, prompt_images)

        session.reset = record
        return session

    served.new_session = recording_session
    with ServerThread(served, ServerConfig(port=0)) as st:
        report = run_sim_robot(st.url, split="visual_prompt", episodes=1, max_steps=2,
                               control_hz=1000.0, timeout_s=10.0)
    (episode,) = report.episodes
    (instruction, sent), = resets
    assert episode.steps >= 1 and instruction == episode.instruction
    assert sent.shape == (instruction.count(PROMPT_SLOT), 32, 32, 3) and sent.any()
