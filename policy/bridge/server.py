"""The bridge server: one loaded policy serving actions to robots over a websocket.

A robot's control loop connects, receives the metadata handshake (action spec, expected
observation, control rate, checkpoint hash), sends `reset` with the instruction and then one
`act` per control step. Every connection has its own session (frame history); all sessions
share one model, and inference runs on a single worker thread so the asyncio loop keeps
answering other robots, health checks and malformed requests while the model computes.
The schema is docs/PROTOCOL.md; the wire helpers are protocol.py.

This module itself does not import torch: `load_served_policy` imports the policy package
only when a checkpoint is loaded, so tests can serve any object with the Policy API's
`reset` / `select_action`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import protocol as P

log = logging.getLogger(__name__)

TOKEN_ENV = P.TOKEN_ENV
# Files whose bytes define a checkpoint's behaviour at inference: weights, model/tokenizer
# config, action layout and the normalization statistics (the silent-mismatch culprit).
HASHED_FILES = ("model.safetensors", "config.json", "action_spec.json", "stats.json")


class Session(Protocol):
    """One robot's view of the policy: its own instruction and frame history."""

    def reset(self, instruction: str) -> None: ...

    def select_action(self, observation: dict[str, Any]) -> np.ndarray: ...


@dataclass
class ServedPolicy:
    """Everything the server needs about the model it serves. `new_session` is called once per
    connection and must return an object whose history is independent of all others."""

    kind: str
    new_session: Callable[[], Session]
    action_spec: dict[str, Any]  # ActionSpec.to_dict()
    observation: dict[str, P.ArraySpec]
    state_names: tuple[str, ...]
    control_hz: float
    checkpoint_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerConfig:
    """Where and how to listen. Mirrors conf/serve.yaml's `server` block."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port (tests); the bound port is reported when ready
    token: str | None = None  # required for any non-loopback host; env ROBOTOK_BRIDGE_TOKEN
    max_message_bytes: int = 1 << 20  # larger requests get a `too_large` error reply
    # Frames beyond this are refused by websockets itself (close code 1009) so that a peer
    # cannot make us buffer unbounded data; between the two limits we answer politely.
    hard_max_message_bytes: int = 8 << 20
    ping_interval_s: float | None = 20.0  # keepalive; finds robots that vanished silently
    torch_threads: int = 1  # one thread: FINDINGS.md measured 17x slowdowns when oversubscribed

    def __post_init__(self) -> None:
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENV) or None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port={self.port}; expected 0..65535")
        if self.max_message_bytes <= 0:
            raise ValueError(f"server.max_message_bytes={self.max_message_bytes}; expected > 0")
        if self.hard_max_message_bytes < self.max_message_bytes:
            raise ValueError(f"server.hard_max_message_bytes={self.hard_max_message_bytes} is "
                             f"below max_message_bytes={self.max_message_bytes}")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"refusing to listen on non-loopback host {self.host!r} without a token: set "
                f"server.token or the {TOKEN_ENV} environment variable, or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: treat as reachable from outside
        return False


def checkpoint_sha256(directory: str | Path) -> str:
    """sha256 over the files in HASHED_FILES that exist, in that order, each preceded by its
    name and a NUL byte, so that renaming or dropping a file changes the hash too."""
    directory = Path(directory)
    digest = hashlib.sha256()
    found = False
    for name in HASHED_FILES:
        path = directory / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0")
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    if not found:
        raise FileNotFoundError(f"no checkpoint files {HASHED_FILES} in {directory}")
    return digest.hexdigest()


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class _Connection:
    session: Session
    instruction: str | None = None
    steps: int = 0


class PolicyServer:
    """Serves one `ServedPolicy` to any number of connections. Use `serve(stop)` inside an
    event loop, `run_server` from a script, or `ServerThread` from tests and benchmarks."""

    def __init__(self, served: ServedPolicy, config: ServerConfig | None = None) -> None:
        self.served = served
        self.config = config or ServerConfig()
        self.metadata = P.BridgeMetadata(
            policy_kind=served.kind, action_spec=served.action_spec,
            observation=served.observation, state_names=tuple(served.state_names),
            control_hz=float(served.control_hz), checkpoint_sha256=served.checkpoint_sha256,
            max_message_bytes=self.config.max_message_bytes, extra=served.extra)
        self._metadata_bytes = P.pack(self.metadata.to_wire())
        self._n_actions = len(served.action_spec["dims"])
        # One worker: the model is used by one request at a time, in arrival order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._connections: dict[int, _Connection] = {}
        self._ids = itertools.count()
        self._started = time.monotonic()
        self.requests_served = 0
        self.errors_sent = 0
        self.port: int | None = None

    @property
    def active_sessions(self) -> int:
        return len(self._connections)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "protocol_version": P.PROTOCOL_VERSION,
                "policy_kind": self.served.kind,
                "checkpoint_sha256": self.served.checkpoint_sha256,
                "sessions": self.active_sessions, "requests_served": self.requests_served,
                "errors_sent": self.errors_sent,
                "uptime_s": round(time.monotonic() - self._started, 3),
                "rss_bytes": rss_bytes()}

    # --- HTTP side: health checks and the token gate ------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == P.HEALTH_PATH:
            response = connection.respond(200, json.dumps(self.health()) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if self.config.token:
            presented = request.headers.get(P.TOKEN_HEADER, "")
            expected = f"{P.TOKEN_SCHEME} {self.config.token}"
            # Constant-time comparison: the token guards a robot, do not leak it by timing.
            if not hmac.compare_digest(presented.encode(), expected.encode()):
                log.warning("rejected connection from %s: missing or wrong token",
                            connection.remote_address)
                return connection.respond(
                    401, f"missing or wrong token: send header '{P.TOKEN_HEADER}: "
                         f"{P.TOKEN_SCHEME} <token>'\n")
        return None

    # --- websocket side ------------------------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        conn_id = next(self._ids)
        # On the inference thread: building a session may touch the model, and must not stall
        # the event loop that is answering other robots.
        self._connections[conn_id] = _Connection(session=await self._run(self.served.new_session))
        log.info("connection %d from %s opened", conn_id, websocket.remote_address)
        try:
            await websocket.send(self._metadata_bytes)
            async for message in websocket:
                reply = await self._dispatch(self._connections[conn_id], message)
                await websocket.send(P.pack(reply))
        except ConnectionClosed:
            pass  # a robot going away mid-episode is normal; its state is freed below
        finally:
            # Drop the session (and its frame history) as soon as the robot is gone.
            del self._connections[conn_id]
            log.info("connection %d closed", conn_id)

    async def _dispatch(self, conn: _Connection, message: str | bytes) -> dict[str, Any]:
        received = time.perf_counter()
        request_id = None
        try:
            if isinstance(message, str):
                raise P.ProtocolError(P.E_NOT_BINARY, "got a text frame; expected a binary "
                                                      "frame holding one msgpack map")
            if len(message) > self.config.max_message_bytes:
                raise P.ProtocolError(P.E_TOO_LARGE, f"message of {len(message)} bytes exceeds "
                                                     f"max_message_bytes="
                                                     f"{self.config.max_message_bytes}")
            request = P.unpack(message)
            request_id = request.get("id")
            kind = request["type"]
            if kind == P.ACT:
                reply = await self._act(conn, request, received)
            elif kind == P.RESET:
                reply = await self._reset(conn, request, received)
            else:
                raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}; "
                                                        f"expected {P.RESET!r} or {P.ACT!r}")
            self.requests_served += 1
        except P.ProtocolError as err:
            self.errors_sent += 1
            return P.error_message(err.code, err.message, request_id)
        if request_id is not None:
            reply["id"] = request_id
        return reply

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _reset(self, conn: _Connection, request: dict[str, Any],
                     received: float) -> dict[str, Any]:
        instruction = request.get("instruction")
        if "instruction" not in request:
            raise P.ProtocolError(P.E_MISSING_KEY, "reset message lacks key 'instruction'")
        if not isinstance(instruction, str) or not instruction.strip():
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' is {instruction!r}; "
                                                 "expected a non-empty string")
        decoded = time.perf_counter()
        started, infer_s = await self._run(self._reset_session, conn.session, instruction)
        conn.instruction, conn.steps = instruction, 0
        return {"type": P.RESET_DONE, "server_timing": {
            "decode_ms": (decoded - received) * 1e3, "queue_ms": (started - decoded) * 1e3,
            "infer_ms": infer_s * 1e3, "total_ms": (time.perf_counter() - received) * 1e3}}

    @staticmethod
    def _reset_session(session: Session, instruction: str) -> tuple[float, float]:
        started = time.perf_counter()  # on the worker thread, like _infer
        try:
            session.reset(instruction)
        except Exception as err:
            log.exception("policy reset failed")
            raise P.ProtocolError(P.E_POLICY, f"policy reset failed: {err!r}") from None
        return started, time.perf_counter() - started

    def _observation(self, request: dict[str, Any], instruction: str) -> dict[str, Any]:
        if "observation" not in request:
            raise P.ProtocolError(P.E_MISSING_KEY, "act message lacks key 'observation'")
        raw = request["observation"]
        if not isinstance(raw, dict):
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"act 'observation' is a "
                                                   f"{type(raw).__name__}; expected a map")
        observation: dict[str, Any] = {}
        for key, spec in self.served.observation.items():
            if key not in raw:
                raise P.ProtocolError(P.E_MISSING_KEY, f"observation lacks key {key!r}; "
                                                       f"expected keys "
                                                       f"{sorted(self.served.observation)}")
            observation[key] = spec.check(key, raw[key])
        # The instruction comes from `reset`, as the env's observations carry it.
        observation["instruction"] = instruction
        return observation

    async def _act(self, conn: _Connection, request: dict[str, Any],
                   received: float) -> dict[str, Any]:
        if conn.instruction is None:
            raise P.ProtocolError(P.E_NOT_RESET, "act before reset: send "
                                                 "{'type': 'reset', 'instruction': ...} first")
        observation = self._observation(request, conn.instruction)
        decoded = time.perf_counter()
        action, started, infer_s = await self._run(self._infer, conn.session, observation)
        action = np.asarray(action)
        if action.shape != (self._n_actions,) or not np.all(np.isfinite(action)):
            raise P.ProtocolError(P.E_POLICY, f"policy returned action of shape "
                                              f"{list(action.shape)} (finite: "
                                              f"{bool(np.all(np.isfinite(action)))}); expected "
                                              f"({self._n_actions},) finite")
        conn.steps += 1
        return {"type": P.ACTION, "action": action.astype(np.float32), "step": conn.steps,
                "server_timing": {"decode_ms": (decoded - received) * 1e3,
                                  "queue_ms": (started - decoded) * 1e3,
                                  "infer_ms": infer_s * 1e3,
                                  "total_ms": (time.perf_counter() - received) * 1e3}}

    @staticmethod
    def _infer(session: Session, observation: dict[str, Any]) -> tuple[np.ndarray, float, float]:
        # Runs on the worker thread; `started` marks the end of any wait behind other robots.
        started = time.perf_counter()
        try:
            action = session.select_action(observation)
        except Exception as err:
            log.exception("policy select_action failed")
            raise P.ProtocolError(P.E_POLICY, f"policy select_action failed: {err!r}") from None
        return action, started, time.perf_counter() - started

    # --- lifecycle -----------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event,
                    on_ready: Callable[[str], None] | None = None) -> None:
        """Listen until `stop` is set, then close every connection (code 1001) and return."""
        async with serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._process_request,
            max_size=self.config.hard_max_message_bytes,
            compression=None,  # images are incompressible noise to deflate; it only adds latency
            ping_interval=self.config.ping_interval_s,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            url = f"ws://{self.config.host}:{self.port}"
            log.info("serving %s policy %s on %s", self.served.kind,
                     self.served.checkpoint_sha256[:12], url)
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
            log.info("shutting down: closing %d connection(s)", self.active_sessions)
        self._executor.shutdown(wait=True)


def run_server(served: ServedPolicy, config: ServerConfig,
               ready_file: str | Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close connections and return (exit code 0).
    `ready_file`, if given, receives {"url", "port", "pid"} as JSON once listening, so that a
    supervisor or test can use port 0 and learn the bound port."""
    server = PolicyServer(served, config)

    def ready(url: str) -> None:
        print(f"robotok bridge listening on {url}", flush=True)
        if ready_file is not None:
            tmp = Path(f"{ready_file}.tmp")
            tmp.write_text(json.dumps({"url": url, "port": server.port, "pid": os.getpid()}))
            tmp.replace(ready_file)  # atomic: a reader never sees half a file

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(stop, ready)

    asyncio.run(main())


class ServerThread:
    """A PolicyServer on its own event loop in a background thread (tests, benchmarks).

    with ServerThread(served, ServerConfig(port=0)) as st:
        client = BridgeClient(st.url)
    """

    def __init__(self, served: ServedPolicy, config: ServerConfig | None = None) -> None:
        self.server = PolicyServer(served, config or ServerConfig(port=0))
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bridge-server", daemon=True)
        self.url = ""

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def body() -> None:
            self._stop = asyncio.Event()

            def on_ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await self.server.serve(self._stop, on_ready)

        try:
            self._loop.run_until_complete(body())
        except BaseException as err:  # surface start-up failures in the caller's thread
            self._error = err
            self._ready.set()
        finally:
            self._loop.close()

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"bridge server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"bridge server failed to start: {self._error!r}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
