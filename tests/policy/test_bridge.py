"""Bridge server + client over loopback: equality with in-process inference, error replies for
malformed requests, per-connection histories, the token gate, /healthz and timeouts.

The policy served here is a small deterministic torch module with a frame history (a conv
encoder, a 3-frame memory and a linear head), so that a bridge which mixed up histories or
mangled bytes would produce different actions. The checkpoint-level tests (real RT-1, the
serve script, SIGTERM) live in test_bridge_e2e.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Iterator

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
from policy.bridge.server import ServedPolicy, ServerConfig
from policy.bridge.thread import ServerThread

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


def make_served(net: TinyNet, sessions: list | None = None, delay_s: float = 0.0,
                on_reset: Callable[[str], None] | None = None,
                gate: threading.Event | None = None) -> ServedPolicy:
    """`gate`: select_action waits (at most 10 s) until it is set, as a stalled policy would."""

    def new_session() -> HistoryPolicy:
        session = HistoryPolicy(net)
        if on_reset is not None:
            inner_reset = session.reset

            def reset(instruction: str) -> None:
                on_reset(instruction)  # may block or raise, as a slow or broken policy would
                inner_reset(instruction)

            session.reset = reset  # type: ignore[method-assign]
        if delay_s or gate is not None:
            inner = session.select_action

            def slow(observation: dict) -> np.ndarray:
                time.sleep(delay_s)
                if gate is not None:
                    gate.wait(10.0)
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
        with pytest.raises(BridgeError, match="act before a successful reset") as err:
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


# --- ids, bounds, isolation ---------------------------------------------------------------


def _array(**override: object) -> dict:
    image = {"__ndarray__": True, "dtype": "uint8", "shape": list(IMAGE_SHAPE),
             "data": GOOD["image"].tobytes()}
    return {**image, **override}


def _act_with(image: dict, request_id: object = 41) -> bytes:
    state = P.encode_ndarray(GOOD["state"])
    # id first, as docs/PROTOCOL.md recommends: even a frame cut short then names it
    return msgpack.packb({"id": request_id, "type": "act",
                          "observation": {"image": image, "state": state}}, use_bin_type=True)


# Before the id-first decoder, a request that carried an id got an error reply without it.
ID_CASES = {
    "wrong_byte_count": (lambda: _act_with(_array(data=GOOD["image"].tobytes()[:-3])),
                         "bad_ndarray", "has 3069 bytes"),
    "disallowed_dtype": (lambda: _act_with(_array(dtype="object")), "bad_ndarray",
                         "'object' is not allowed"),
    "non_string_dtype": (lambda: _act_with(_array(dtype=["uint8"])), "bad_ndarray",
                         "dtype is a msgpack array"),
    "negative_shape": (lambda: _act_with(_array(shape=[-32, 32, 3])), "bad_ndarray",
                       "[-32, 32, 3] is not a list"),
    "float_shape": (lambda: _act_with(_array(shape=[32.0, 32, 3])), "bad_ndarray",
                    "[32.0, 32, 3] is not a list"),
    "huge_shape": (lambda: _act_with(_array(shape=[2**62, 2**62, 3])), "bad_ndarray",
                   "3072 bytes; shape"),
    "data_as_string": (lambda: _act_with(_array(data="pixels")), "bad_ndarray",
                       "data is a msgpack str"),
    "no_type": (lambda: msgpack.packb({"id": 41}), "missing_key", "no 'type' key"),
    "integer_type": (lambda: msgpack.packb({"type": 5, "id": 41}), "bad_message",
                     "'type' is a msgpack int"),
    "too_large_720p_frame": (lambda: P.pack({"type": "act", "id": 41, "observation": {
        "image": np.zeros((720, 1280, 3), np.uint8), "state": GOOD["state"]}}),
        "too_large", "exceeds max_message_bytes"),
    "not_msgpack_truncated": (lambda: _act_with(_array())[:-5], "not_msgpack",
                              "not valid msgpack"),
    "not_msgpack_trailing_bytes": (lambda: P.pack({"id": 41, "type": "act"}) + b"\xc1",
                                   "not_msgpack", "follow the request map"),
    "not_binary_json_text": (lambda: json.dumps({"type": "reset", "id": 41}), "not_binary",
                             "text frame"),
}


@pytest.mark.parametrize("case", sorted(ID_CASES))
def test_error_reply_carries_the_request_id(server: ServerThread, case: str) -> None:
    payload, code, fragment = ID_CASES[case]
    with BridgeClient(server.url) as client:  # raw send/recv: the reply's keys as sent
        client.reset("stack the blocks")
        client._ws.send(payload())
        reply = P.unpack(client._ws.recv(timeout=5))
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert fragment in reply["message"]
        assert reply["id"] == 41, f"{case}: error reply lacks the request's id: {reply}"
        assert client.act(GOOD).step == 1  # and the connection keeps serving


@pytest.mark.parametrize("payload", [b"\xc1\x00", b"\x93\x01\x02\x03", "plain text"])
def test_unparsable_frame_gets_an_error_reply_without_id(server: ServerThread,
                                                         payload: bytes | str) -> None:
    # Nothing in these frames names an id; docs/PROTOCOL.md tells clients to take an error
    # reply without "id" as the answer to their oldest unanswered request.
    with BridgeClient(server.url) as client:
        client._ws.send(payload)
        reply = P.unpack(client._ws.recv(timeout=5))
        assert reply["type"] == "error" and "id" not in reply
        with pytest.raises(BridgeError):  # and the Python client takes it as its reply
            client.request_raw(payload, request_id=99)


def test_nil_id_is_echoed(server: ServerThread) -> None:
    # Before the id-first decoder, `id: nil` came back without the key.
    with BridgeClient(server.url) as client:
        client._ws.send(msgpack.packb({"type": "reset", "instruction": "x", "id": None}))
        reply = P.unpack(client._ws.recv(timeout=5))
        assert reply["type"] == "reset_done" and "id" in reply and reply["id"] is None
        client._ws.send(msgpack.packb({"type": "act", "id": None}))
        reply = P.unpack(client._ws.recv(timeout=5))
        assert reply["code"] == "missing_key" and "id" in reply and reply["id"] is None


ODD_IDS = {
    "ext_type": (msgpack.ExtType(5, b"\x01"), "extension (type 5)"),
    "timestamp": (msgpack.Timestamp(1_700_000_000, 0), "type -1, a timestamp"),
    "array": ([1, 2], "msgpack array"),
    "map": ({"n": 1}, "msgpack map"),
    "binary": (b"\x01\x02", "msgpack bin"),
    "long_string": ("i" * 257, "257 characters"),
}


@pytest.mark.parametrize("case", sorted(ODD_IDS))
def test_non_scalar_or_extension_id_is_refused(server: ServerThread, case: str) -> None:
    # Before the id-first decoder, extension ids were echoed; the document rules them out.
    request_id, fragment = ODD_IDS[case]
    with BridgeClient(server.url) as client:
        client._ws.send(msgpack.packb({"type": "reset", "instruction": "x", "id": request_id},
                                      use_bin_type=True, datetime=False))
        reply = P.unpack(client._ws.recv(timeout=5))
        assert reply["type"] == "error" and reply["code"] == "bad_value"
        assert "request 'id' is" in reply["message"] and fragment in reply["message"]
        assert "expected nil, a boolean, an integer, a float or a string" in reply["message"]
        assert "id" not in reply  # an id the server refuses is never echoed
        with pytest.raises(BridgeError, match="not_reset"):  # the reset was not performed
            client.act(GOOD)


def test_array_map_with_5000_dimensions_is_bad_ndarray(server: ServerThread) -> None:
    # Before the id-first decoder: not_msgpack (numpy refused the reshape inside the decoder).
    with BridgeClient(server.url) as client:
        client.reset("x")
        with pytest.raises(BridgeError) as err:
            client.request_raw(_act_with(_array(shape=[0] * 5000, data=b"")), request_id=41)
        assert err.value.code == "bad_ndarray"
        assert "shape has 5000 dimensions; expected at most 32" in err.value.message
    with pytest.raises(P.ProtocolError, match="5000 entries|at most 32"):  # the client side too
        P.decode_ndarray({"dtype": "uint8", "shape": [0] * 5000, "data": b""})


def test_instruction_longer_than_the_limit_is_bad_value(server: ServerThread) -> None:
    # Before the length limit, a 1,000,000-character instruction was encoded (750 ms, +53 MB).
    limit = ServerConfig().max_instruction_chars
    with BridgeClient(server.url) as client:
        assert client.metadata.max_instruction_chars == limit == 256
        client.reset("é" * limit)  # counted in characters, not UTF-8 bytes
        for n in (limit + 1, 60_000):  # the fixture answers too_large above 64 KiB
            with pytest.raises(BridgeError) as err:
                client.reset("a" * n)
            assert err.value.code == "bad_value"
            assert f"at most {limit} characters" in err.value.message
            assert len(err.value.message) < 200  # the instruction is never echoed back
        for blank in ("", "   "):
            with pytest.raises(BridgeError, match="bad_value"):
                client.reset(blank)


def test_refused_reset_mid_episode_keeps_the_episode(server: ServerThread, net: TinyNet) -> None:
    local = HistoryPolicy(net)
    local.reset("stack the blocks")
    obs = observations(30, 3)
    with BridgeClient(server.url) as client:
        client.reset("stack the blocks")
        np.testing.assert_array_equal(client.select_action(obs[0]), local.select_action(obs[0]))
        with pytest.raises(BridgeError, match="bad_value"):
            client.reset("a" * 10_000)
        # same instruction, same history, step count goes on
        result = client.act(obs[1])
        np.testing.assert_array_equal(result.action, local.select_action(obs[1]))
        assert result.step == 2


def test_failed_reset_mid_episode_ends_the_episode(net: TinyNet) -> None:
    def on_reset(instruction: str) -> None:
        if instruction == "explode":
            raise RuntimeError("text encoder out of memory")

    with (ServerThread(make_served(net, on_reset=on_reset), ServerConfig(port=0)) as st,
          BridgeClient(st.url) as client):
        client.reset("stack the blocks")
        assert client.act(GOOD).step == 1
        with pytest.raises(BridgeError, match="policy_error"):
            client.reset("explode")
        with pytest.raises(BridgeError, match="not_reset"):  # the episode is over
            client.act(GOOD)
        client.reset("stack the blocks")
        assert client.act(GOOD).step == 1


def test_step_counts_only_served_acts(server: ServerThread) -> None:
    with BridgeClient(server.url) as client:
        client.reset("x")
        assert client.act(GOOD).step == 1
        for payload in (_act({**GOOD, "image": GOOD["image"][:16]}), b"\xc1", "text"):
            with pytest.raises(BridgeError):
                client.request_raw(payload)
        assert client.act(GOOD).step == 2
        client.reset("x")
        assert client.act(GOOD).step == 1


def test_slow_request_of_one_robot_does_not_block_another(net: TinyNet) -> None:
    # With one inference thread for all robots, a slow reset made every robot wait.
    # Here robot A's reset never finishes until the test says so; robot B must be served
    # throughout. Structural, no clock: with one shared worker B would time out.
    entered, release = threading.Event(), threading.Event()

    def on_reset(instruction: str) -> None:
        if instruction == "slow":
            entered.set()
            assert release.wait(30)

    with ServerThread(make_served(net, on_reset=on_reset), ServerConfig(port=0)) as st:
        a = BridgeClient(st.url, timeout_s=30)
        a_done = threading.Event()
        thread = threading.Thread(target=lambda: (a.reset("slow"), a_done.set()))
        thread.start()
        try:
            assert entered.wait(10)
            with BridgeClient(st.url, timeout_s=5) as b:
                b.reset("pick up the block")
                steps = [b.act(o).step for o in observations(31, 10)]
            assert steps == list(range(1, 11))
            assert not a_done.is_set()  # all of B's steps were served while A's reset ran
        finally:
            release.set()
            thread.join(30)
            a.close()
        assert a_done.is_set()


def _worst_requests() -> list[bytes]:
    """The costliest frames the limits allow: the largest frame of msgpack the server must
    walk, an array map with thousands of dimensions and a maximal new instruction."""
    import struct

    n = ServerConfig().max_message_bytes - 64
    junk_map = (b"\x83\xa4type\xa3act\xa2id\x01\xabobservation" + b"\xdd"
                + struct.pack(">I", n - 32) + b"\x80" * (n - 32))
    limit = ServerConfig().max_instruction_chars
    return [junk_map, _act_with(_array(shape=[0] * 5000, data=b"")),
            P.pack({"type": "reset", "instruction": "w" * limit, "id": 2})]


def test_second_robot_stays_on_time_while_the_first_sends_the_worst_requests(
        net: TinyNet) -> None:
    """Robot A: the worst frames the limits allow, back to back, and a maximal instruction
    whose reset takes 500 ms (a slow text encoder, without using the CPU). Robot B: 10 Hz.
    Asserted on the server's own clocks against A's reset time, not the machine's speed: no
    request of B queued or took half as long as one of A's resets. Fails when sessions share
    one lock (a served policy holding a global lock in reset and act)."""
    reset_s = 0.5

    def on_reset(instruction: str) -> None:
        if instruction.startswith("w"):
            time.sleep(reset_s)

    config = ServerConfig(port=0)
    with ServerThread(make_served(net, on_reset=on_reset), config) as st:
        stop = threading.Event()
        sent = [0]

        def robot_a() -> None:
            with BridgeClient(st.url, timeout_s=10) as a:
                while not stop.is_set():
                    for payload in _worst_requests():
                        with contextlib.suppress(BridgeError):
                            a.request_raw(payload)
                        sent[0] += 1

        thread = threading.Thread(target=robot_a)
        thread.start()
        timings = []
        try:
            with BridgeClient(st.url, timeout_s=5) as b:
                b.reset("pick up the block")
                next_tick = time.monotonic()
                for obs in observations(32, 20):
                    timings.append(b.act(obs).server_timing)
                    next_tick += 0.1
                    time.sleep(max(next_tick - time.monotonic(), 0))
        finally:
            stop.set()
            thread.join(30)
        assert sent[0] >= 6, "robot A did not get its worst requests in"
        # B's 20 requests land at random moments of A's resets: behind a shared lock, the
        # longest would wait most of one (~450 ms); on their own, a few ms
        assert max(t.queue_ms for t in timings) < reset_s * 1e3 / 2
        assert max(t.total_ms for t in timings) < reset_s * 1e3 / 2


def test_metadata_and_health_document_their_keys(server: ServerThread) -> None:
    # docs/PROTOCOL.md lists each metadata key and /healthz counter; keep the lists true.
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    with BridgeClient(server.url) as client:
        wire = client.metadata.to_wire()
    for key in wire:
        assert f"| `{key}` |" in doc, f"metadata key {key!r} is not in the table"
    for key in server.server.health():
        assert f"`{key}`" in doc, f"/healthz key {key!r} is not documented"


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
        # docs/PROTOCOL.md: the header name is case-insensitive, its value matched exactly
        from websockets.sync.client import connect

        def status(headers: list[tuple[str, str]]) -> int:
            try:
                with connect(st.url, additional_headers=headers, proxy=None):
                    return 101
            except InvalidStatus as err:
                return err.response.status_code

        assert status([("authorization", "Bearer s3cret")]) == 101
        for value in ("bearer s3cret", "Bearer  s3cret", "Bearer s3cret2", "Bearer S3cret",
                      "Basic s3cret", "s3cret"):
            assert status([("Authorization", value)]) == 401, value
        assert status([("Authorization", "Bearer s3cret")] * 2) == 401


def test_client_times_out_on_a_slow_server(net: TinyNet) -> None:
    """The server holds its reply until the client has raised, so the timeout is the
    client's own and no machine speed enters the test: a client that waited for the reply
    gets it after 10 s and raises nothing (shown with a scratch client ignoring timeout_s)."""
    gate = threading.Event()
    with (ServerThread(make_served(net, gate=gate), ServerConfig(port=0)) as st,
          BridgeClient(st.url, timeout_s=0.2) as client):
        client.reset("x")
        start = time.monotonic()
        with pytest.raises(BridgeTimeout, match="no reply"):
            client.act(GOOD)
        assert time.monotonic() - start >= 0.2  # it waited its timeout
        gate.set()  # only now may the server answer
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
    assert len(hex_blocks) == 3
    assert P.unpack(hex_blocks[0]) == {"id": 1, "type": "reset",
                                       "instruction": "pick up the red block"}
    assert hex_blocks[0] == P.pack({"id": 1, "type": "reset",
                                    "instruction": "pick up the red block"})
    array = np.array([0.0, 1.0], dtype=np.float32)
    assert hex_blocks[1] == msgpack.packb(P.encode_ndarray(array), use_bin_type=True)
    # a reset with one image prompt: the bytes before its 3072 pixel bytes
    crop = np.arange(32 * 32 * 3, dtype=np.int64).astype(np.uint8).reshape(32, 32, 3)
    message = {"id": 3, "type": "reset", "instruction": "pick up the {image}",
               "prompt_images": [crop]}
    assert len(hex_blocks[2]) == 107 and "these 107 bytes are followed by the 3072" in doc
    assert hex_blocks[2] + crop.tobytes() == P.pack(message)
    decoded = P.unpack(hex_blocks[2] + crop.tobytes())
    np.testing.assert_array_equal(decoded["prompt_images"][0], crop)


def test_protocol_doc_examples_match_the_reference_checkpoint() -> None:
    # docs/PROTOCOL.md once showed [96, 96, 3] where rt1_full wants [64, 64, 3].
    from pathlib import Path

    from policy.checkpoint_hash import checkpoint_sha256

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "PROTOCOL.md").read_text()
    ckpt = root / "policy" / "pretrained" / "rt1_full"
    env = json.loads((ckpt / "env.json").read_text())
    shape = env["image_shape"]
    assert f'"image": {{"shape": {shape}, "dtype": "uint8"}}' in doc
    assert f"<ndarray uint8 {shape}>" in doc
    assert f"expected {shape}\"" in doc  # the error example
    camera = env["camera"]
    for field in ("eye", "target", "up", "fov_deg", "jitter_m"):
        assert f"| `{field}` | {camera[field]} |" in doc, field
    assert f"| `near`, `far` | {camera['near']}, {camera['far']} |" in doc
    assert f"| {camera['width']}, {camera['height']}, {camera['image_shape']} |" in doc
    assert checkpoint_sha256(ckpt) in doc
    for dim in json.loads((ckpt / "action_spec.json").read_text())["dims"]:
        rows = [line for line in doc.splitlines()
                if re.match(rf"\| [\d-]+ \| [^|]*\b{dim['name']}\b", line)]
        assert any(f"| {dim['unit']} | {dim['scale']} |" in row for row in rows), dim
    assert f"(default `{ServerConfig().max_instruction_chars}`)" in doc
    assert f"`control_hz` = {env['control_hz']}" in doc


def test_unanswered_ping_closes_the_connection_with_1011(net: TinyNet) -> None:
    # docs/PROTOCOL.md: a client that never answers pings is closed with code 1011. A raw
    # socket does the websocket handshake and then never reads, so never sends a pong.
    import base64
    import os
    import socket
    import struct

    config = ServerConfig(port=0, ping_interval_s=0.2, ping_timeout_s=0.2)
    with ServerThread(make_served(net), config) as st:
        host, port = st.url.removeprefix("ws://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            data = b""
            while chunk := sock.recv(1 << 16):  # until the server closes the connection
                data += chunk
    head, frames = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101")
    opcodes, close_codes, i = [], [], 0
    while i < len(frames):  # server frames are unmasked: opcode, length, payload
        opcode, n, i = frames[i] & 0x0F, frames[i + 1] & 0x7F, i + 2
        if n >= 126:
            width = 2 if n == 126 else 8
            n, i = int.from_bytes(frames[i:i + width], "big"), i + width
        opcodes.append(opcode)
        if opcode == 0x8:
            close_codes.append(struct.unpack(">H", frames[i:i + 2])[0])
        i += n
    assert opcodes[0] == 0x2  # the metadata
    assert 0x9 in opcodes  # a ping, never answered
    assert close_codes == [1011]


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


class VirtualClock:
    """Stands in for the `time` module of policy/bridge/robot.py: sleep advances the clock at
    once, so the control loop's pacing is checked exactly, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedRobot:
    """A Robot (policy/bridge/robot.py) that replays observations and records commands and
    the clock's time of each; `command_s[t]` is how long the arm takes to execute step t
    (on the virtual clock)."""

    def __init__(self, steps: int, clock: VirtualClock,
                 command_s: tuple[float, ...] = ()) -> None:
        self.obs = observations(20, steps)
        self.steps = steps
        self.clock = clock
        self.command_s = command_s or (0.0,) * steps
        self.commands: list[np.ndarray] = []
        self.times: list[float] = []
        self.t = 0

    def start_episode(self) -> str:
        self.t = 0
        self.commands = []
        self.times = []
        return "pick up the red block"

    def observe(self) -> dict:
        return self.obs[self.t]

    def command(self, action: np.ndarray) -> None:
        self.commands.append(action)
        self.times.append(self.clock.now)
        self.clock.sleep(self.command_s[self.t])
        self.t += 1

    def episode_status(self) -> tuple[bool, bool]:
        done = self.t >= self.steps
        return done, done and bool(self.commands[-1][0] < 0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    import policy.bridge.robot

    virtual = VirtualClock()
    monkeypatch.setattr(policy.bridge.robot, "time", virtual)
    return virtual


def test_control_loop_runs_at_the_rate_and_commands_the_served_actions(
        server: ServerThread, net: TinyNet, clock: VirtualClock) -> None:
    from policy.bridge.robot import control_loop

    robot = ScriptedRobot(steps=6, clock=clock)
    local = HistoryPolicy(net)
    local.reset("pick up the red block")
    with BridgeClient(server.url) as client:
        report = control_loop(robot, client, control_hz=20.0, episodes=1)
    (episode,) = report.episodes
    assert episode.steps == 6 and episode.timeouts == 0 and episode.late_steps == 0
    assert robot.times == pytest.approx([0.05 * i for i in range(6)])  # one per period
    assert episode.achieved_hz == pytest.approx(20.0)
    assert episode.success == bool(robot.commands[-1][0] < 0)
    expected = [local.select_action(o) for o in robot.obs]
    np.testing.assert_array_equal(np.stack(robot.commands), np.stack(expected))


def test_control_loop_counts_late_steps_without_bursting(server: ServerThread,
                                                         clock: VirtualClock) -> None:
    """A step that overruns the 50 ms period is late, and the clock re-anchors at its end:
    the next commands follow one period apart, not at once to catch up. Fails on a loop that
    keeps the old schedule (a scratch robot.py without the re-anchoring)."""
    from policy.bridge.robot import control_loop

    robot = ScriptedRobot(steps=4, clock=clock, command_s=(0.0, 0.12, 0.0, 0.0))
    with BridgeClient(server.url) as client:
        (episode,) = control_loop(robot, client, control_hz=20.0, episodes=1).episodes
    assert episode.late_steps == 1
    assert robot.times == pytest.approx([0.0, 0.05, 0.17, 0.22])
    assert episode.achieved_hz == pytest.approx(4 / 0.27)
    # an arm slower than the period: every step late, paced by the arm
    robot = ScriptedRobot(steps=4, clock=clock, command_s=(0.08,) * 4)
    with BridgeClient(server.url) as client:
        report = control_loop(robot, client, control_hz=20.0, episodes=2)
    for episode in report.episodes:
        assert episode.late_steps == episode.steps == 4
        assert episode.achieved_hz == pytest.approx(12.5)


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
