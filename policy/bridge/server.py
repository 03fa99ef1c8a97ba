"""The bridge server: one loaded policy serving actions to robots over a websocket.

A robot's control loop connects, receives the metadata handshake (action spec, expected
observation, control rate, checkpoint hash), sends `reset` with the instruction and then one
`act` per control step. Every connection has its own session (frame history) and its own
worker thread; all sessions share one model's weights. The asyncio loop only reads frames
(requests.py: bounded work, the id first) and writes replies, so one robot's slow request
never delays another robot's step, a health check or an error reply.
The schema is docs/PROTOCOL.md; the wire helpers are protocol.py.

This module itself does not import torch: `load_served_policy` imports the policy package
only when a checkpoint is loaded, so tests can serve any object with the Policy API's
`reset` / `select_action`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
import os
import signal
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
from .requests import (
    MAX_ID_CHARS,
    Envelope,
    RequestError,
    peek_id,
    peek_text_id,
    read_envelope,
)

log = logging.getLogger(__name__)

TOKEN_ENV = P.TOKEN_ENV


class Session(Protocol):
    """One robot's view of the policy: its own instruction and frame history. A session of a
    policy that reads image prompts (ServedPolicy.prompt_images set) is reset with
    ``reset(instruction, prompt_images)``: uint8 (n, S, S, 3), one image per slot of the
    instruction, or None for an instruction without slots; a text-only one with
    ``reset(instruction)``."""

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
    # The image prompts `reset` accepts (shape of one crop, how many); None: text only.
    prompt_images: P.PromptSpec | None = None


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
    # Keepalive: a ping every ping_interval_s; no pong within ping_timeout_s closes the
    # connection with code 1011, so a robot that vanished silently is dropped within 40 s.
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    # The env's instructions are at most 256 characters (envs/tabletop.py); longer text only
    # costs the text encoder time and memory (1e6 characters took 750 ms and 53 MB).
    max_instruction_chars: int = 256
    # Each connection holds a worker thread and a session; more are refused with HTTP 503.
    max_connections: int = 16
    # One thread: oversubscribed processes ran 17x slower
    # (docs/experiments/2026-11-28-prototype.md).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        self.token = check_listen(self.host, self.port, self.token, TOKEN_ENV)
        if self.max_message_bytes <= 0:
            raise ValueError(f"server.max_message_bytes={self.max_message_bytes}; expected > 0")
        for name in ("max_instruction_chars", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"server.{name}={getattr(self, name)}; expected >= 1")
        if self.hard_max_message_bytes < self.max_message_bytes:
            raise ValueError(f"server.hard_max_message_bytes={self.hard_max_message_bytes} is "
                             f"below max_message_bytes={self.max_message_bytes}")


def check_listen(host: str, port: int, token: str | None, token_env: str) -> str | None:
    """The token to require (`token`, else the `token_env` variable, else None); raises
    ValueError for a port outside 0..65535 or a non-loopback host without a token."""
    token = token if token is not None else (os.environ.get(token_env) or None)
    if not 0 <= port <= 65535:
        raise ValueError(f"server.port={port}; expected 0..65535")
    if not is_loopback(host) and not token:
        raise ValueError(
            f"refusing to listen on non-loopback host {host!r} without a token: set "
            f"server.token or the {token_env} environment variable, or bind 127.0.0.1")
    return token


def largest_requests(metadata: P.BridgeMetadata) -> dict[str, int]:
    """Bytes of the largest valid `reset` (the longest instruction of 4-byte characters, a
    maximal string id and, for a policy that reads image prompts, max_images images) and the
    largest valid `act` (every observation array) this metadata allows."""
    def arrays(specs: list[P.ArraySpec]) -> list[np.ndarray]:
        return [np.zeros(spec.shape, spec.dtype) for spec in specs]

    request_id = "i" * MAX_ID_CHARS
    reset: dict[str, Any] = {"id": request_id, "type": P.RESET,
                             "instruction": "\U0001f916" * (metadata.max_instruction_chars or 1)}
    prompt = metadata.prompt_images
    if prompt is not None:
        reset[P.PROMPT_IMAGES] = arrays([prompt.image] * prompt.max_images)
    act = {"id": request_id, "type": P.ACT,
           "observation": dict(zip(metadata.observation,
                                   arrays(list(metadata.observation.values())), strict=True))}
    return {P.RESET: len(P.pack(reset)), P.ACT: len(P.pack(act))}


def check_message_limit(metadata: P.BridgeMetadata) -> None:
    """Refuse a max_message_bytes that would answer a valid request with `too_large`."""
    prompt = metadata.prompt_images
    holds = {P.RESET: "the longest instruction", P.ACT: f"the observation "
                                                       f"{sorted(metadata.observation)}"}
    if prompt is not None:
        holds[P.RESET] += (f" and {prompt.max_images} prompt images of {prompt.dtype} "
                           f"{list(prompt.shape)}")
    for kind, size in largest_requests(metadata).items():
        if size > metadata.max_message_bytes:
            raise ValueError(f"server.max_message_bytes={metadata.max_message_bytes} cannot "
                             f"hold a valid {kind!r} request: {holds[kind]} take {size} "
                             "bytes; raise server.max_message_bytes")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: treat as reachable from outside
        return False


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
    # One thread per connection: a slow request (a long reset, a stalled model call) holds
    # up only the robot that sent it; a connection has at most one request in flight.
    worker: ThreadPoolExecutor
    instruction: str | None = None  # None: no episode (never reset, or the last reset failed)
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
            max_message_bytes=self.config.max_message_bytes,
            max_instruction_chars=self.config.max_instruction_chars,
            prompt_images=served.prompt_images, extra=served.extra)
        check_message_limit(self.metadata)
        self._metadata_bytes = P.pack(self.metadata.to_wire())
        self._n_actions = len(served.action_spec["dims"])
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
            # Exactly one header: with two, which one counts would be ambiguous.
            values = request.headers.get_all(P.TOKEN_HEADER)
            presented = values[0] if len(values) == 1 else ""
            expected = f"{P.TOKEN_SCHEME} {self.config.token}"
            # Constant-time comparison: the token guards a robot, do not leak it by timing.
            if not hmac.compare_digest(presented.encode(), expected.encode()):
                log.warning("rejected connection from %s: missing or wrong token",
                            connection.remote_address)
                return connection.respond(
                    401, f"missing or wrong token: send header '{P.TOKEN_HEADER}: "
                         f"{P.TOKEN_SCHEME} <token>'\n")
        if self.active_sessions >= self.config.max_connections:
            return connection.respond(
                503, f"server has {self.active_sessions} open connections; "
                     f"max_connections={self.config.max_connections}\n")
        return None

    # --- websocket side ------------------------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        conn_id = next(self._ids)
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"policy-{conn_id}")
        try:
            # On the connection's worker: building a session may touch the model.
            session = await self._run(worker, self.served.new_session)
            conn = self._connections[conn_id] = _Connection(session=session, worker=worker)
            log.info("connection %d from %s opened", conn_id, websocket.remote_address)
            await websocket.send(self._metadata_bytes)
            async for message in websocket:
                await websocket.send(P.pack(await self._dispatch(conn, message)))
        except ConnectionClosed:
            pass  # a robot going away mid-episode is normal; its state is freed below
        finally:
            # Drop the session (and its frame history) as soon as the robot is gone; a call
            # still running finishes on the worker, which then exits.
            self._connections.pop(conn_id, None)
            worker.shutdown(wait=False)
            log.info("connection %d closed", conn_id)

    async def _dispatch(self, conn: _Connection, message: str | bytes) -> dict[str, Any]:
        received = time.perf_counter()
        request_id: Any = P.NO_ID
        try:
            if isinstance(message, str):
                request_id = peek_text_id(message)
                raise P.ProtocolError(P.E_NOT_BINARY, "got a text frame; expected a binary "
                                                      "frame holding one msgpack map")
            if len(message) > self.config.max_message_bytes:
                request_id = peek_id(message)
                raise P.ProtocolError(P.E_TOO_LARGE, f"message of {len(message)} bytes exceeds "
                                                     f"max_message_bytes="
                                                     f"{self.config.max_message_bytes}")
            envelope = read_envelope(message)  # the id first: every later error carries it
            request_id = envelope.request_id
            kind = envelope.kind()
            if kind == P.ACT:
                reply = await self._act(conn, envelope, received)
            elif kind == P.RESET:
                reply = await self._reset(conn, envelope, received)
            else:
                raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown message type {P.brief(kind)}; "
                                                        f"expected {P.RESET!r} or {P.ACT!r}")
            self.requests_served += 1
        except RequestError as err:
            self.errors_sent += 1
            return P.error_message(err.code, err.message, err.request_id)
        except P.ProtocolError as err:
            self.errors_sent += 1
            return P.error_message(err.code, err.message, request_id)
        if request_id is not P.NO_ID:
            reply["id"] = request_id
        return reply

    @staticmethod
    async def _run(worker: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    @staticmethod
    def _timing(received: float, decoded: float, started: float,
                infer_s: float) -> dict[str, float]:
        return {"decode_ms": (decoded - received) * 1e3, "queue_ms": (started - decoded) * 1e3,
                "infer_ms": infer_s * 1e3, "total_ms": (time.perf_counter() - received) * 1e3}

    async def _reset(self, conn: _Connection, envelope: Envelope,
                     received: float) -> dict[str, Any]:
        # A reset refused here leaves the running episode as it was.
        instruction = envelope.instruction(self.config.max_instruction_chars)
        prompt = self.served.prompt_images
        images = envelope.prompt_images(prompt, instruction)
        decoded = time.perf_counter()
        try:
            started, infer_s = await self._run(conn.worker, self._reset_session, conn.session,
                                               instruction, images, prompt is not None)
        except P.ProtocolError:
            # The policy failed half-way: its history is unknown, so the episode is over and
            # `act` answers not_reset until a reset succeeds.
            conn.instruction, conn.steps = None, 0
            raise
        conn.instruction, conn.steps = instruction, 0
        return {"type": P.RESET_DONE,
                "server_timing": self._timing(received, decoded, started, infer_s)}

    @staticmethod
    def _reset_session(session: Session, instruction: str, images: np.ndarray | None,
                       reads_prompts: bool) -> tuple[float, float]:
        started = time.perf_counter()  # on the worker thread, like _infer
        try:
            if reads_prompts:
                session.reset(instruction, images)  # type: ignore[call-arg]
            else:
                session.reset(instruction)
        except Exception as err:
            log.exception("policy reset failed")
            raise P.ProtocolError(P.E_POLICY, f"policy reset failed: {err!r}") from None
        return started, time.perf_counter() - started

    async def _act(self, conn: _Connection, envelope: Envelope,
                   received: float) -> dict[str, Any]:
        if conn.instruction is None:
            raise P.ProtocolError(P.E_NOT_RESET, "act before a successful reset: send "
                                                 "{'type': 'reset', 'instruction': ...} first")
        observation: dict[str, Any] = envelope.observation(self.served.observation)
        # The instruction comes from `reset`, as the env's observations carry it.
        observation["instruction"] = conn.instruction
        decoded = time.perf_counter()
        action, started, infer_s = await self._run(conn.worker, self._infer, conn.session,
                                                   observation)
        action = np.asarray(action)
        if action.shape != (self._n_actions,) or not np.all(np.isfinite(action)):
            raise P.ProtocolError(P.E_POLICY, f"policy returned action of shape "
                                              f"{list(action.shape)} (finite: "
                                              f"{bool(np.all(np.isfinite(action)))}); expected "
                                              f"({self._n_actions},) finite")
        conn.steps += 1
        return {"type": P.ACTION, "action": action.astype(np.float32), "step": conn.steps,
                "server_timing": self._timing(received, decoded, started, infer_s)}

    @staticmethod
    def _infer(session: Session, observation: dict[str, Any]) -> tuple[np.ndarray, float, float]:
        # Runs on the connection's worker; `started` marks the end of the hand-over.
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
            ping_timeout=self.config.ping_timeout_s,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            url = f"ws://{self.config.host}:{self.port}"
            log.info("serving %s policy %s on %s", self.served.kind,
                     self.served.checkpoint_sha256[:12], url)
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
            log.info("shutting down: closing %d connection(s)", self.active_sessions)


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
