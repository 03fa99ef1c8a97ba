"""The robot-side bridge client: send observations, get actions, nothing else.

Runs on a robot computer, so it imports only numpy, msgpack and websockets (synchronous API)
besides this package's torch-free protocol.py. To use it outside robotok, copy client.py and
protocol.py into one folder and `import client`.

    with BridgeClient("ws://127.0.0.1:8765", expected_action_spec=spec.to_dict()) as bridge:
        bridge.reset("pick up the red block")
        while running:
            action = bridge.select_action({"image": rgb_uint8, "state": state_float32})

A server whose policy reads image prompts announces them (``bridge.metadata.prompt_images``:
the shape of one crop, how many at most); its instructions may then show an object by image,
with one crop per "{image}" slot: ``bridge.reset("pick up the {image}", [crop_uint8])``.

Every call has a timeout; a server whose action spec differs from what the caller was built
for is refused at connect with an error naming the first difference.
"""

from __future__ import annotations

import inspect
import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

if __package__:
    from . import protocol as P
else:  # copied onto a robot computer next to protocol.py, outside the robotok package
    import protocol as P  # type: ignore[no-redef]


class BridgeError(RuntimeError):
    """The server answered with an error reply; `code` is one of protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class BridgeTimeout(TimeoutError):
    """The server did not answer within the client's timeout."""


class ServerMismatch(ValueError):
    """The server is not what the caller was built for (protocol version, checkpoint)."""


class ActionSpecMismatch(ServerMismatch):
    """The served model's action spec differs from the one the caller expects."""


@dataclass(frozen=True)
class ActResult:
    """One control step's answer: the action plus where the time went."""

    action: np.ndarray  # float32 (len(action_spec),), normalized units
    step: int  # 1-based step count since the last reset on this connection
    server_timing: P.ServerTiming
    round_trip_ms: float  # measured here: encode + send + server + receive + decode


def _as_spec_dict(spec: Any) -> dict[str, Any]:
    # Accept envs.spec.ActionSpec (without importing envs, which may pull heavy packages) or
    # its to_dict() form.
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, dict) or "dims" not in spec:
        raise TypeError(f"expected_action_spec is {spec!r}; expected an ActionSpec or its "
                        "to_dict() form {'dims': [...]}")
    return spec


# A robot talks to its server directly, never through HTTP(S)_PROXY from the environment;
# websockets >= 15 would otherwise honour it (older versions have no `proxy` argument).
_NO_PROXY: dict[str, Any] = (
    {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {})


class BridgeClient:
    """A synchronous connection to a bridge server (one robot, one episode at a time)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 2.0,
                 open_timeout_s: float = 5.0, expected_action_spec: Any = None,
                 expected_checkpoint_sha256: str | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        headers = {P.TOKEN_HEADER: f"{P.TOKEN_SCHEME} {token}"} if token else None
        self._ids = itertools.count(1)
        try:
            self._ws: ClientConnection = connect(
                url, additional_headers=headers, open_timeout=open_timeout_s,
                compression=None,  # the server does not compress; skip the negotiation
                max_size=None,  # the server bounds its replies; do not fail on a big metadata
                **_NO_PROXY)
            # We hold the connection across calls instead of in a `with` block; entering it
            # marks it as managed (websockets >= 17 warns otherwise), and works on 13+ too.
            self._ws.__enter__()
        except TimeoutError as err:
            raise BridgeTimeout(f"no websocket handshake with {url} within "
                                f"{open_timeout_s} s") from err
        try:
            self.metadata = P.BridgeMetadata.from_wire(self._receive(self.timeout_s))
            if self.metadata.protocol_version != P.PROTOCOL_VERSION:
                raise ServerMismatch(
                    f"server speaks protocol version {self.metadata.protocol_version}; this "
                    f"client speaks {P.PROTOCOL_VERSION}")
            if expected_action_spec is not None:
                problem = P.action_spec_mismatch(self.metadata.action_spec,
                                                 _as_spec_dict(expected_action_spec))
                if problem:
                    raise ActionSpecMismatch(f"server at {url} serves a different action spec: "
                                             f"{problem}")
            if (expected_checkpoint_sha256 is not None
                    and expected_checkpoint_sha256 != self.metadata.checkpoint_sha256):
                raise ServerMismatch(
                    f"server at {url} serves checkpoint {self.metadata.checkpoint_sha256}; "
                    f"expected {expected_checkpoint_sha256}")
        except BaseException:
            self._ws.close()
            raise

    # --- plumbing ------------------------------------------------------------------------------

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        try:
            payload = self._ws.recv(timeout=timeout_s)
        except TimeoutError as err:
            raise BridgeTimeout(f"no reply from {self.url} within {self.timeout_s} s") from err
        except ConnectionClosed as err:
            raise ConnectionError(f"connection to {self.url} closed: {err}") from err
        if isinstance(payload, str):
            raise P.ProtocolError(P.E_NOT_BINARY, "server sent a text frame")
        return P.unpack(payload)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and return the server's reply; error replies raise BridgeError.
        With an "id" in `message`, replies to earlier requests that timed out are skipped."""
        return self.request_raw(P.pack(message), message.get("id"))

    def request_raw(self, payload: bytes | str, request_id: Any = None) -> dict[str, Any]:
        """Send pre-encoded bytes (or a text frame) and return the reply, raising BridgeError on
        an error reply. For tools and tests that exercise the server's input checks."""
        try:
            self._ws.send(payload)
        except ConnectionClosed as err:
            raise ConnectionError(f"connection to {self.url} is closed: {err}") from err
        deadline = time.monotonic() + self.timeout_s
        reply = self._receive(self.timeout_s)
        # The server answers in order, so a reply with another id belongs to a request we gave
        # up on; acting on it would apply a stale action. An error reply without "id" answers
        # a frame whose id the server could not read (docs/PROTOCOL.md): with one request in
        # flight, it is ours.
        while request_id is not None and "id" in reply and reply["id"] != request_id:
            reply = self._receive(max(deadline - time.monotonic(), 0.0))
        if reply["type"] == P.ERROR:
            raise BridgeError(str(reply.get("code")), str(reply.get("message")))
        return reply

    # --- the Policy-like API -------------------------------------------------------------------

    def reset(self, instruction: str, prompt_images: Any = None) -> None:
        """Start an episode: clears this connection's frame history on the server.

        `prompt_images`: for an instruction that shows objects by image (each "{image}" in
        it, metadata.prompt_images.slot), one array per slot in order, each of the dtype and
        shape metadata.prompt_images announces: a sequence of (S, S, 3) arrays or one
        (n, S, S, 3) array. None sends no images. The server checks them: a wrong count,
        shape or dtype, or images for a policy that reads text only, raise BridgeError.
        """
        # "id" first: a server that cannot read the rest of a frame still finds it.
        message: dict[str, Any] = {"id": next(self._ids), "type": P.RESET,
                                   "instruction": instruction}
        if prompt_images is not None:
            message[P.PROMPT_IMAGES] = [np.asarray(image) for image in prompt_images]
        reply = self.request(message)
        if reply["type"] != P.RESET_DONE:
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"reply to reset has type {reply['type']!r}")

    def act(self, observation: dict[str, Any]) -> ActResult:
        """One control step. `observation` holds at least the keys in metadata.observation with
        the listed dtype and shape (extra keys, e.g. the env's 'instruction', are not sent)."""
        wire = {k: observation[k] for k in self.metadata.observation if k in observation}
        start = time.perf_counter()
        reply = self.request({"id": next(self._ids), "type": P.ACT, "observation": wire})
        round_trip_ms = (time.perf_counter() - start) * 1e3
        if reply["type"] != P.ACTION:
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"reply to act has type {reply['type']!r}")
        return ActResult(action=reply["action"], step=int(reply["step"]),
                         server_timing=P.ServerTiming.from_wire(reply["server_timing"]),
                         round_trip_ms=round_trip_ms)

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Same call as Policy.select_action, so a control loop can use either."""
        return self.act(observation).action

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
