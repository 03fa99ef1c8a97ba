"""Bridge server + client over loopback: equality with in-process inference, error replies for
malformed requests, per-connection histories, the token gate, /healthz and timeouts.

The policy served here is a small deterministic torch module with a frame history (a conv
encoder, a 3-frame memory and a linear head), so that a bridge which mixed up histories or
mangled bytes would produce different actions. The checkpoint-level tests (real RT-1, the
serve script, SIGTERM) live in test_bridge_e2e.py.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import torch
from einops import rearrange
from websockets.exceptions import InvalidStatus

from envs.spec import DEFAULT_ACTION_SPEC, STATE_NAMES, make_action_spec
from policy.bridge import protocol as P
from policy.bridge.client import (
    ActionSpecMismatch,
    BridgeClient,
    BridgeError,
    BridgeTimeout,
    ServerMismatch,
)
from policy.bridge.server import ServedPolicy, ServerConfig, ServerThread

IMAGE_SHAPE = (32, 32, 3)
N_ACT = len(DEFAULT_ACTION_SPEC)


class TinyNet(torch.nn.Module):
    """Image + state + instruction -> features; shared by every session."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=5, stride=4)
        self.text = torch.nn.EmbeddingBag(256, 8)
        self.head = torch.nn.Linear(8 * 7 * 7 + len(STATE_NAMES) + 8, N_ACT)

    def frame(self, image: np.ndarray) -> torch.Tensor:
        x = rearrange(torch.from_numpy(image).float() / 255.0, "h w c -> 1 c h w")
        return torch.tanh(self.conv(x)).flatten()  # (8 * 7 * 7,)


class HistoryPolicy:
    """Policy API (reset / select_action) with a 3-frame history: the action depends on the
    mean of the last three frames' features, so sessions that shared history would diverge."""

    def __init__(self, net: TinyNet) -> None:
        self.net = net
        self.frames: deque[torch.Tensor] = deque(maxlen=3)
        self.text: torch.Tensor | None = None

    def reset(self, instruction: str) -> None:
        self.frames = deque(maxlen=3)
        ids = torch.tensor([list(instruction.encode()[:64])])
        with torch.no_grad():
            self.text = self.net.text(ids)[0]

    @torch.no_grad()
    def select_action(self, observation: dict) -> np.ndarray:
        assert self.text is not None, "select_action before reset"
        self.frames.append(self.net.frame(observation["image"]))
        memory = torch.stack(list(self.frames)).mean(0)
        x = torch.cat([memory, torch.from_numpy(observation["state"]), self.text])
        return torch.tanh(self.net.head(x)).numpy().astype(np.float32)


def make_served(net: TinyNet, sessions: list | None = None,
                delay_s: float = 0.0) -> ServedPolicy:
    def new_session() -> HistoryPolicy:
        session = HistoryPolicy(net)
        if delay_s:
            inner = session.select_action

            def slow(observation: dict) -> np.ndarray:
                time.sleep(delay_s)
                return inner(observation)

            session.select_action = slow  # type: ignore[method-assign]
        if sessions is not None:
            sessions.append(weakref.ref(session))
        return session

    return ServedPolicy(
        kind="toy-history", new_session=new_session,
        action_spec=DEFAULT_ACTION_SPEC.to_dict(),
        observation={"image": P.ArraySpec(IMAGE_SHAPE, "uint8"),
                     "state": P.ArraySpec((len(STATE_NAMES),), "float32")},
        state_names=STATE_NAMES, control_hz=10.0, checkpoint_sha256="0" * 64)


def observations(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),
             "state": rng.normal(size=len(STATE_NAMES)).astype(np.float32),
             "instruction": "ignored by the bridge"} for _ in range(n)]


@pytest.fixture(scope="module")
def net() -> TinyNet:
    torch.set_num_threads(1)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def sessions() -> list:
    return []


@pytest.fixture(scope="module")
def server(net: TinyNet, sessions: list) -> Iterator[ServerThread]:
    config = ServerConfig(port=0, max_message_bytes=64 * 1024)
    with ServerThread(make_served(net, sessions), config) as st:
        yield st


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# --- protocol ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int64", "bool", ">f4"])
def test_ndarray_round_trip_is_exact(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    back = P.unpack(P.pack({"type": "x", "a": array}))["a"]
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_ndarray_decode_rejects_object_dtype_and_wrong_length() -> None:
    bad_dtype = {"type": "x", "a": {"__ndarray__": True, "dtype": "object", "shape": [1],
                                    "data": b"\0" * 8}}
    with pytest.raises(P.ProtocolError, match="'object' is not allowed"):
        P.unpack(msgpack.packb(bad_dtype))
    short = {"type": "x", "a": {"__ndarray__": True, "dtype": "float32", "shape": [4],
                                "data": b"\0" * 15}}
    with pytest.raises(P.ProtocolError, match="15 bytes.*needs 16"):
        P.unpack(msgpack.packb(short))
    with pytest.raises(TypeError, match="object"):
        P.pack({"a": np.array([object()])})


# --- equality with in-process inference ------------------------------------------------------


def test_actions_over_bridge_equal_in_process(server: ServerThread, net: TinyNet) -> None:
    local = HistoryPolicy(net)
    local.reset("pick up the red block")
    with BridgeClient(server.url, expected_action_spec=DEFAULT_ACTION_SPEC) as client:
        assert client.metadata.policy_kind == "toy-history"
        assert client.metadata.state_names == STATE_NAMES
        assert client.metadata.observation["image"] == P.ArraySpec(IMAGE_SHAPE, "uint8")
        client.reset("pick up the red block")
        for i, obs in enumerate(observations(1, 6)):
            result = client.act(obs)
            expected = local.select_action(obs)
            assert result.action.dtype == np.float32
            np.testing.assert_array_equal(result.action, expected)
            assert result.step == i + 1
            timing = result.server_timing
            assert timing.total_ms >= timing.decode_ms + timing.queue_ms + timing.infer_ms
            assert min(timing.decode_ms, timing.queue_ms) >= 0 and timing.infer_ms > 0
            assert result.round_trip_ms >= result.server_timing.total_ms


def test_reset_clears_history(server: ServerThread, net: TinyNet) -> None:
    obs = observations(2, 4)
    with BridgeClient(server.url) as client:
        client.reset("push the cube")
        first = [client.select_action(o) for o in obs]
        client.reset("push the cube")
        second = [client.select_action(o) for o in obs]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    # and the history matters: the same frame later in the episode gives another action
    assert not np.array_equal(first[0], first[3])


# --- malformed requests ------------------------------------------------------------------------


def _act(obs: dict) -> bytes:
    return P.pack({"type": "act", "observation": obs})


GOOD = observations(3, 1)[0]
MALFORMED = {
    "wrong_shape": (lambda: _act({**GOOD, "image": GOOD["image"][:16]}),
                    "bad_shape",
                    "observation['image'] has shape [16, 32, 3]; expected [32, 32, 3]"),
    "wrong_dtype": (lambda: _act({**GOOD, "state": GOOD["state"].astype(np.float64)}),
                    "bad_dtype", "observation['state'] has dtype float64; expected float32"),
    "missing_key": (lambda: _act({"image": GOOD["image"]}),
                    "missing_key", "observation lacks key 'state'"),
    "missing_observation": (lambda: P.pack({"type": "act"}),
                            "missing_key", "lacks key 'observation'"),
    "not_msgpack": (lambda: b"\xc1 this is not msgpack", "not_msgpack", "not valid msgpack"),
    "not_a_map": (lambda: msgpack.packb([1, 2, 3]), "bad_message", "expected a map"),
    "text_frame": (lambda: "hello", "not_binary", "text frame"),
    "unknown_type": (lambda: P.pack({"type": "jump"}), "unknown_type", "'jump'"),
    "oversized": (lambda: _act({**GOOD, "image": np.zeros((200, 200, 3), np.uint8)}),
                  "too_large", "exceeds max_message_bytes=65536"),
    "non_finite_state": (lambda: _act({**GOOD, "state": np.full(8, np.nan, np.float32)}),
                         "bad_value", "observation['state'] has non-finite values"),
    "bad_instruction": (lambda: P.pack({"type": "reset", "instruction": 7}),
                        "bad_value", "reset 'instruction' is 7"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_gets_error_reply_and_serving_continues(
        server: ServerThread, net: TinyNet, case: str) -> None:
    payload, code, fragment = MALFORMED[case]
    local = HistoryPolicy(net)
    local.reset("stack the blocks")
    with BridgeClient(server.url) as client:
        client.reset("stack the blocks")
        with pytest.raises(BridgeError) as err:
            client.request_raw(payload())
        assert err.value.code == code
        assert fragment in err.value.message
        # the same connection serves the next valid request, history untouched by the error
        np.testing.assert_array_equal(client.select_action(GOOD), local.select_action(GOOD))
    with BridgeClient(server.url) as fresh:  # and so does a fresh connection
        fresh.reset("stack the blocks")
        assert fresh.select_action(GOOD).shape == (N_ACT,)


def test_act_before_reset_is_an_error_then_served(server: ServerThread) -> None:
    with BridgeClient(server.url) as client:
        with pytest.raises(BridgeError, match="act before reset") as err:
            client.act(GOOD)
        assert err.value.code == "not_reset"
        client.reset("pick up the block")
        assert client.act(GOOD).step == 1


def test_request_id_is_echoed(server: ServerThread) -> None:
    with BridgeClient(server.url) as client:
        reply = client.request({"type": "reset", "instruction": "x", "id": "abc"})
        assert reply == {"type": "reset_done", "id": "abc", "server_timing": reply["server_timing"]}
        with pytest.raises(BridgeError):
            client.request({"type": "act", "id": 5})


# --- sessions ----------------------------------------------------------------------------------


def test_concurrent_clients_keep_separate_histories(server: ServerThread, net: TinyNet) -> None:
    episodes = {"a": ("pick up the red block", observations(10, 8)),
                "b": ("push the blue cube", observations(11, 8))}
    expected = {}
    for name, (instruction, obs) in episodes.items():
        local = HistoryPolicy(net)
        local.reset(instruction)
        expected[name] = np.stack([local.select_action(o) for o in obs])
    got: dict[str, np.ndarray] = {}
    barrier = threading.Barrier(2)

    def robot(name: str) -> None:
        instruction, obs = episodes[name]
        with BridgeClient(server.url) as client:
            client.reset(instruction)
            barrier.wait()  # both episodes in flight at the same time, steps interleaved
            got[name] = np.stack([client.select_action(o) for o in obs])

    threads = [threading.Thread(target=robot, args=(n,)) for n in episodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in episodes:
        np.testing.assert_array_equal(got[name], expected[name])


def test_client_dropping_mid_episode_frees_its_state(server: ServerThread,
                                                     sessions: list) -> None:
    assert wait_for(lambda: server.server.active_sessions == 0)
    client = BridgeClient(server.url)
    client.reset("pick up the block")
    client.act(GOOD)
    assert server.server.active_sessions == 1
    session_ref = sessions[-1]
    assert session_ref() is not None
    # drop without a closing handshake, as a crashed robot process would
    client._ws.socket.close()
    assert wait_for(lambda: server.server.active_sessions == 0)
    assert wait_for(lambda: session_ref() is None), "session (frame history) still referenced"
    with BridgeClient(server.url) as other:  # the server keeps serving
        other.reset("pick up the block")
        other.act(GOOD)


# --- metadata, health, auth, timeouts ---------------------------------------------------------


def test_expected_action_spec_mismatch_names_the_difference(server: ServerThread) -> None:
    other = make_action_spec(names=("terminate", "x", "y", "z", "gripper"))
    with pytest.raises(ActionSpecMismatch, match=r"dimensions .* != expected"):
        BridgeClient(server.url, expected_action_spec=other)
    coarse = make_action_spec(metres_per_unit=0.05)
    with pytest.raises(ActionSpecMismatch, match="'x': server scale=0.03 != expected scale=0.05"):
        BridgeClient(server.url, expected_action_spec=coarse)
    with pytest.raises(ServerMismatch, match="serves checkpoint 0{64}; expected f{64}"):
        BridgeClient(server.url, expected_checkpoint_sha256="f" * 64)


def test_healthz_reports_status_over_plain_http(server: ServerThread) -> None:
    with BridgeClient(server.url) as client:
        client.reset("x")
        with urllib.request.urlopen(server.url.replace("ws://", "http://") + "/healthz",
                                    timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            health = json.loads(response.read())
    assert health["status"] == "ok"
    assert health["policy_kind"] == "toy-history"
    assert health["sessions"] >= 1
    assert health["rss_bytes"] > 0


def test_non_loopback_bind_without_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBOTOK_BRIDGE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="non-loopback host '0.0.0.0' without a token"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="without a token"):
        ServerConfig(host="robot-server.local", token="")
    monkeypatch.setenv("ROBOTOK_BRIDGE_TOKEN", "s3cret")
    assert ServerConfig(host="0.0.0.0").token == "s3cret"
    assert ServerConfig(host="::1", token=None).token == "s3cret"


def test_token_is_required_and_a_wrong_token_rejected(net: TinyNet,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBOTOK_BRIDGE_TOKEN", raising=False)
    with ServerThread(make_served(net), ServerConfig(port=0, token="s3cret")) as st:
        for token in (None, "wrong"):
            with pytest.raises(InvalidStatus) as err:
                BridgeClient(st.url, token=token)
            assert err.value.response.status_code == 401
            assert b"missing or wrong token" in err.value.response.body
        assert st.server.active_sessions == 0
        # supervisors probe health without the token; it reveals no session data
        with urllib.request.urlopen(st.url.replace("ws://", "http://") + "/healthz",
                                    timeout=5) as response:
            assert response.status == 200
        with BridgeClient(st.url, token="s3cret") as client:
            client.reset("pick up the block")
            assert client.select_action(GOOD).shape == (N_ACT,)


def test_client_times_out_on_a_slow_server(net: TinyNet) -> None:
    with (ServerThread(make_served(net, delay_s=0.5), ServerConfig(port=0)) as st,
          BridgeClient(st.url, timeout_s=0.2) as client):
        client.reset("x")
        start = time.monotonic()
        with pytest.raises(BridgeTimeout, match="no reply"):
            client.act(GOOD)
        assert time.monotonic() - start < 0.45
        # The late reply to the timed-out step must not be taken as the next step's answer.
        client.timeout_s = 2.0
        assert client.act(GOOD).step == 2
    with pytest.raises((ConnectionError, OSError)):
        BridgeClient(st.url, open_timeout_s=1.0)  # server gone: refused, not hanging


def test_protocol_doc_byte_examples_match_the_encoder() -> None:
    # docs/PROTOCOL.md shows bytes for implementers in other languages; keep them true.
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```\n")[1:]]
    hex_blocks = [bytes.fromhex(" ".join(b.split())) for b in blocks
                  if b.strip() and all(len(t) == 2 for t in b.split())]
    assert len(hex_blocks) == 2
    assert P.unpack(hex_blocks[0]) == {"type": "reset", "instruction": "pick up the red block",
                                       "id": 1}
    assert hex_blocks[0] == P.pack({"type": "reset", "instruction": "pick up the red block",
                                    "id": 1})
    array = np.array([0.0, 1.0], dtype=np.float32)
    assert hex_blocks[1] == msgpack.packb(P.encode_ndarray(array), use_bin_type=True)


def test_frame_above_hard_limit_closes_only_that_connection(net: TinyNet) -> None:
    config = ServerConfig(port=0, max_message_bytes=16 * 1024, hard_max_message_bytes=32 * 1024)
    with ServerThread(make_served(net), config) as st:
        with BridgeClient(st.url) as client:
            client.reset("x")
            with pytest.raises(BridgeError, match="too_large"):  # between the limits: a reply
                client.request_raw(b"\0" * (20 * 1024))
            with pytest.raises(ConnectionError, match="1009"):  # above: websockets closes
                client.request_raw(b"\0" * (40 * 1024))
        with BridgeClient(st.url) as fresh:
            fresh.reset("x")
            assert fresh.act(GOOD).step == 1


# --- the robot-side control loop ---------------------------------------------------------------


class ScriptedRobot:
    """A Robot (policy/bridge/robot.py) that replays observations and records commands;
    `command_s` simulates a slow arm controller."""

    def __init__(self, steps: int, command_s: float = 0.0) -> None:
        self.obs = observations(20, steps)
        self.steps = steps
        self.command_s = command_s
        self.commands: list[np.ndarray] = []
        self.t = 0

    def start_episode(self) -> str:
        self.t = 0
        self.commands = []
        return "pick up the red block"

    def observe(self) -> dict:
        return self.obs[self.t]

    def command(self, action: np.ndarray) -> None:
        self.commands.append(action)
        self.t += 1
        time.sleep(self.command_s)

    def episode_status(self) -> tuple[bool, bool]:
        done = self.t >= self.steps
        return done, done and bool(self.commands[-1][0] < 0)


def test_control_loop_runs_at_the_rate_and_commands_the_served_actions(
        server: ServerThread, net: TinyNet) -> None:
    from policy.bridge.robot import control_loop

    robot = ScriptedRobot(steps=6)
    local = HistoryPolicy(net)
    local.reset("pick up the red block")
    with BridgeClient(server.url) as client:
        report = control_loop(robot, client, control_hz=20.0, episodes=1)
    (episode,) = report.episodes
    assert episode.steps == 6 and episode.timeouts == 0
    assert episode.late_steps <= 1  # 50 ms period vs a few ms per step; a loaded CI may hiccup
    assert 14.0 < episode.achieved_hz <= 20.5
    assert episode.success == bool(robot.commands[-1][0] < 0)
    expected = [local.select_action(o) for o in robot.obs]
    np.testing.assert_array_equal(np.stack(robot.commands), np.stack(expected))


def test_control_loop_counts_late_steps_without_bursting(server: ServerThread) -> None:
    from policy.bridge.robot import control_loop

    robot = ScriptedRobot(steps=4, command_s=0.08)  # slower than the 50 ms period
    with BridgeClient(server.url) as client:
        report = control_loop(robot, client, control_hz=20.0, episodes=2)
    for episode in report.episodes:
        assert episode.late_steps == episode.steps == 4
        assert episode.achieved_hz < 13.0  # paced by the slow arm, never catching up in bursts


def test_robot_observation_is_checked_against_the_metadata(server: ServerThread) -> None:
    from policy.bridge.robot import check_observation_fits

    with BridgeClient(server.url) as client:
        check_observation_fits(client, GOOD)
        with pytest.raises(ValueError, match=r"'image' is uint8 \[64, 64, 3\]; server expects "
                                             r"uint8 \[32, 32, 3\]"):
            check_observation_fits(client, {**GOOD, "image": np.zeros((64, 64, 3), np.uint8)})
        with pytest.raises(ValueError, match="lacks 'state'"):
            check_observation_fits(client, {"image": GOOD["image"]})


def test_client_refuses_another_protocol_version(net: TinyNet) -> None:
    from dataclasses import replace

    st = ServerThread(make_served(net), ServerConfig(port=0))
    future = replace(st.server.metadata, protocol_version=P.PROTOCOL_VERSION + 1)
    st.server._metadata_bytes = P.pack(future.to_wire())  # a server from a later release
    with st, pytest.raises(ServerMismatch, match="protocol version 2; this client speaks 1"):
        BridgeClient(st.url)
