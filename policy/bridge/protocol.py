"""The robot bridge's wire format: msgpack messages with numpy arrays as raw bytes.

Shared by the server (which needs torch) and the client (which must not): this module imports
only the standard library, numpy and msgpack, so it can be copied onto a robot computer next
to client.py. docs/PROTOCOL.md is the language-neutral description of the same schema; keep
the two in step (bump PROTOCOL_VERSION on any incompatible change).

Arrays never travel as pickle (unpickling runs a peer's code): an array is the map
``{"__ndarray__": true, "dtype": "float32", "shape": [8], "data": <raw little-endian bytes>}``
and only plain numeric dtypes are accepted on decode, so a peer can never make us build
Python objects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

# Message "type" values. Client -> server: RESET, ACT. Server -> client: METADATA (first
# message on every connection), RESET_DONE, ACTION, ERROR.
METADATA = "metadata"
RESET = "reset"
RESET_DONE = "reset_done"
ACT = "act"
ACTION = "action"
ERROR = "error"

# Error codes carried by ERROR replies (docs/PROTOCOL.md lists what each one means).
E_NOT_BINARY = "not_binary"
E_NOT_MSGPACK = "not_msgpack"
E_TOO_LARGE = "too_large"
E_BAD_MESSAGE = "bad_message"
E_UNKNOWN_TYPE = "unknown_type"
E_MISSING_KEY = "missing_key"
E_BAD_NDARRAY = "bad_ndarray"
E_BAD_DTYPE = "bad_dtype"
E_BAD_SHAPE = "bad_shape"
E_BAD_VALUE = "bad_value"
E_NOT_RESET = "not_reset"
E_POLICY = "policy_error"
ERROR_CODES = (
    E_NOT_BINARY, E_NOT_MSGPACK, E_TOO_LARGE, E_BAD_MESSAGE, E_UNKNOWN_TYPE, E_MISSING_KEY,
    E_BAD_NDARRAY, E_BAD_DTYPE, E_BAD_SHAPE, E_BAD_VALUE, E_NOT_RESET, E_POLICY,
)

# Multimodal prompts: each PROMPT_SLOT in a reset's instruction stands for one image of its
# PROMPT_IMAGES array, in order (the same marker as envs.spec.PROMPT_SLOT; this module stays
# free of envs). A server announces the image shape in metadata, or nil for text only.
PROMPT_IMAGES = "prompt_images"
PROMPT_SLOT = "{image}"
# Object boxes (envs.spec.OBJECT_BOXES), for a policy with object-centric tokens: float32
# (K, 4) rows [u0, v0, u1, v1] of the image, a whole NaN row for each empty slot; the one
# observation whose floats may be NaN (whole rows only).
OBJECT_BOXES = "object_boxes"
NAN_ROWS_ALLOWED = frozenset({OBJECT_BOXES})

NDARRAY_TAG = "__ndarray__"
# Plain numeric dtypes only: no object, string or structured dtypes ever come off the wire.
ALLOWED_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
})

# HTTP header a client sends during the websocket handshake when the server requires a token.
TOKEN_HEADER = "Authorization"
TOKEN_SCHEME = "Bearer"
TOKEN_ENV = "ROBOTOK_BRIDGE_TOKEN"  # where server and robot script read the token by default
HEALTH_PATH = "/healthz"

# Marks "the request had no id" (a request may carry `id: nil`, which is echoed as nil).
NO_ID: Any = type("NoId", (), {"__repr__": lambda self: "NO_ID"})()
MAX_NDIM = 32  # an array map with more dimensions is refused (numpy's own limit is 64)


class ProtocolError(ValueError):
    """A message that does not follow the schema; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: error messages never echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --- arrays ---------------------------------------------------------------------------------


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return encode_ndarray(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} over the bridge; expected msgpack "
                    "types or numpy arrays")


def encode_ndarray(array: np.ndarray) -> dict[str, Any]:
    """The wire map of one array: dtype name, shape and C-ordered little-endian bytes."""
    name = array.dtype.name
    if name not in ALLOWED_DTYPES:
        raise TypeError(f"array dtype {name!r} cannot be sent; expected one of "
                        f"{sorted(ALLOWED_DTYPES)}")
    # The wire is little-endian by definition, so a peer in another language never guesses.
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {NDARRAY_TAG: True, "dtype": name, "shape": list(array.shape),
            "data": np.ascontiguousarray(little).tobytes()}


def decode_ndarray(obj: dict[str, Any]) -> np.ndarray:
    """Rebuild an array from its wire map, or raise ProtocolError naming what is wrong."""
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not (isinstance(dtype, str) and dtype in ALLOWED_DTYPES):
        raise ProtocolError(E_BAD_NDARRAY, f"array dtype {brief(dtype)} is not allowed; expected "
                                           f"one of {sorted(ALLOWED_DTYPES)}")
    if not (isinstance(shape, list | tuple) and len(shape) <= MAX_NDIM
            and all(type(s) is int and s >= 0 for s in shape)):
        raise ProtocolError(E_BAD_NDARRAY, f"array shape {brief(shape)} is not a list of at most "
                                           f"{MAX_NDIM} non-negative integers")
    if not isinstance(data, bytes):
        raise ProtocolError(E_BAD_NDARRAY, f"array data is {type(data).__name__}; expected "
                                           "msgpack bin (raw bytes)")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * np_dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(E_BAD_NDARRAY, f"array data has {len(data)} bytes; shape {shape} "
                                           f"of {dtype} needs {expected}")
    # Copy into a writable, native-order array: torch.from_numpy warns on read-only buffers.
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).astype(dtype, copy=True)


def _decode_hook(obj: dict[str, Any]) -> Any:
    if obj.get(NDARRAY_TAG) is True:
        return decode_ndarray(obj)
    return obj


def pack(message: dict[str, Any]) -> bytes:
    """Serialize one message (a map with a "type" key) to msgpack bytes."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse one message, raising ProtocolError for bytes that are not a msgpack map."""
    try:
        message = msgpack.unpackb(payload, object_hook=_decode_hook, raw=False,
                                  strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises several unrelated exception types
        raise ProtocolError(E_NOT_MSGPACK, f"payload of {len(payload)} bytes is not valid "
                                           f"msgpack: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError(E_BAD_MESSAGE, f"message is a {type(message).__name__}; expected "
                                           "a map with a 'type' key")
    if not isinstance(message.get("type"), str):
        raise ProtocolError(E_MISSING_KEY, f"message has no string 'type' key; keys: "
                                           f"{sorted(map(str, message))}")
    return message


def error_message(code: str, message: str, request_id: Any = NO_ID) -> dict[str, Any]:
    """An error reply; it carries `id` whenever the request's id could be read (nil too)."""
    reply: dict[str, Any] = {"type": ERROR, "code": code, "message": message}
    if request_id is not NO_ID:
        reply["id"] = request_id
    return reply


# --- metadata -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """The shape and dtype one observation key must have."""

    shape: tuple[int, ...]
    dtype: str

    def check(self, key: str, value: Any, what: str | None = None) -> np.ndarray:
        """Return `value` if it matches, else raise ProtocolError naming key, got, expected.
        `what` names the value in messages (default ``observation['<key>']``)."""
        what = what or f"observation[{key!r}]"
        if not isinstance(value, np.ndarray):
            raise ProtocolError(E_BAD_NDARRAY, f"{what} is a {type(value).__name__}; expected "
                                               f"an ndarray map of {self.dtype} "
                                               f"{list(self.shape)}")
        if value.dtype.name != self.dtype:
            raise ProtocolError(E_BAD_DTYPE, f"{what} has dtype {value.dtype.name}; expected "
                                             f"{self.dtype}")
        if tuple(value.shape) != self.shape:
            raise ProtocolError(E_BAD_SHAPE, f"{what} has shape {list(value.shape)}; expected "
                                             f"{list(self.shape)}")
        if value.dtype.kind == "f":
            ok = np.isfinite(value)
            if key in NAN_ROWS_ALLOWED:  # a NaN row is "no object" (whole rows only)
                ok |= np.isnan(value).all(axis=-1, keepdims=True)
            if not np.all(ok):
                raise ProtocolError(E_BAD_VALUE, f"{what} has non-finite values" + (
                    " (only whole NaN rows, for no object, are allowed)"
                    if key in NAN_ROWS_ALLOWED else ""))
        return value


@dataclass(frozen=True)
class PromptSpec:
    """The image prompts a server's policy reads: `reset` may carry one image of `shape` and
    `dtype` per `slot` marker in its instruction, at most `max_images` of them."""

    shape: tuple[int, ...]  # one image, (S, S, 3)
    dtype: str
    max_images: int
    slot: str = PROMPT_SLOT

    @property
    def image(self) -> ArraySpec:
        return ArraySpec(tuple(self.shape), self.dtype)

    def slots(self, instruction: str) -> int:
        """How many images `instruction` refers to."""
        return instruction.count(self.slot)

    def to_wire(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "max_images": self.max_images,
                "slot": self.slot}

    @classmethod
    def from_wire(cls, wire: Any) -> PromptSpec | None:
        """None for nil or an absent key (a text-only policy, or a server from before image
        prompts existed)."""
        if wire is None:
            return None
        return cls(shape=tuple(int(s) for s in wire["shape"]), dtype=str(wire["dtype"]),
                   max_images=int(wire["max_images"]), slot=str(wire.get("slot", PROMPT_SLOT)))


@dataclass(frozen=True)
class BridgeMetadata:
    """What the server tells every client on connect, so it can refuse a model it was not
    built for: the action layout with units, the observation it expects, the control rate and
    the checkpoint's hash."""

    policy_kind: str
    action_spec: dict[str, Any]  # envs.spec.ActionSpec.to_dict(): {"dims": [{name, low, ...}]}
    observation: dict[str, ArraySpec]  # required observation keys
    state_names: tuple[str, ...]
    control_hz: float
    checkpoint_sha256: str
    max_message_bytes: int
    max_instruction_chars: int | None = None  # None: a server from before the limit existed
    # The image prompts `reset` accepts; None: the policy reads text only (or the server is
    # from before image prompts), so an instruction with PROMPT_SLOT is refused.
    prompt_images: PromptSpec | None = None
    protocol_version: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. camera, renderer, task

    @property
    def action_names(self) -> list[str]:
        return [d["name"] for d in self.action_spec["dims"]]

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["type"] = METADATA
        wire["observation"] = {k: {"shape": list(v.shape), "dtype": v.dtype}
                               for k, v in self.observation.items()}
        wire["state_names"] = list(self.state_names)
        wire[PROMPT_IMAGES] = None if self.prompt_images is None else self.prompt_images.to_wire()
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> BridgeMetadata:
        try:
            if wire["type"] != METADATA:
                raise ProtocolError(E_BAD_MESSAGE, f"first message has type {wire['type']!r};"
                                                   f" expected {METADATA!r}")
            return cls(
                policy_kind=str(wire["policy_kind"]),
                action_spec=dict(wire["action_spec"]),
                observation={k: ArraySpec(tuple(v["shape"]), str(v["dtype"]))
                             for k, v in wire["observation"].items()},
                state_names=tuple(wire["state_names"]),
                control_hz=float(wire["control_hz"]),
                checkpoint_sha256=str(wire["checkpoint_sha256"]),
                max_message_bytes=int(wire["max_message_bytes"]),
                max_instruction_chars=(None if wire.get("max_instruction_chars") is None
                                       else int(wire["max_instruction_chars"])),
                prompt_images=PromptSpec.from_wire(wire.get(PROMPT_IMAGES)),
                protocol_version=int(wire["protocol_version"]),
                extra=dict(wire.get("extra") or {}),
            )
        except KeyError as err:
            raise ProtocolError(E_MISSING_KEY, f"metadata lacks key {err}") from None


def action_spec_mismatch(served: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """A sentence naming the first difference between two action specs (ActionSpec.to_dict()
    form), or None when they agree. Torch-free twin of envs.spec.ActionSpec.mismatch."""
    got = served.get("dims", [])
    want = expected.get("dims", [])
    got_names = [d.get("name") for d in got]
    want_names = [d.get("name") for d in want]
    if got_names != want_names:
        return f"server action dimensions {got_names} != expected {want_names}"
    for g, w in zip(got, want, strict=True):
        for key in ("low", "high", "unit", "scale"):
            if key in w and g.get(key) != w[key]:
                return (f"action dimension {w['name']!r}: server {key}={g.get(key)!r} != "
                        f"expected {key}={w[key]!r}")
    return None


@dataclass(frozen=True)
class ServerTiming:
    """Milliseconds the server spent on one request: decoding + validating, waiting for the
    model (behind other robots' steps, plus the hand-over to the inference thread), inference,
    and from receipt to reply."""

    decode_ms: float
    queue_ms: float
    infer_ms: float
    total_ms: float

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ServerTiming:
        def get(key: str) -> float:
            return float(wire.get(key, math.nan))

        return cls(get("decode_ms"), get("queue_ms"), get("infer_ms"), get("total_ms"))
