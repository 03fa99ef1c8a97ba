"""Reading one request frame on the server: the id first, then only what the schema needs.

An earlier server sent error replies without the request's `id` (it read the id only after the
whole frame had decoded) and a frame of a million empty maps costing 350 ms of event-loop
time in msgpack's object hook. So a frame is read in two steps, both with bounded work:

1. `read_envelope` walks the top-level map with msgpack's streaming Unpacker, *skipping*
   every value in C except the `id` (a scalar), recording where each value lies. Whatever
   fails later, the reply can carry the id; when even this step fails, the id is carried
   if it came before the failure.
2. `Envelope.kind / instruction / prompt_images / observation` decode only the values the
   schema asks for, checking each value's msgpack type from its first byte before building
   anything, so a peer can never make the server build objects it will not use.

Everything here is torch-free and runs on the event loop; docs/PROTOCOL.md lists the limits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from . import protocol as P

MAX_KEYS = 64  # entries in the request map and in `observation`
MAX_NDIM = 32  # dimensions of an array (numpy's own limit is 64; images have 3)
MAX_ID_CHARS = 256  # a string id; the reply echoes it, so it is bounded too
ID_EXPECTED = ("expected nil, a boolean, an integer, a float or a string of at most "
               f"{MAX_ID_CHARS} characters")
MAX_TEXT_PEEK = 64 * 1024  # a text frame is searched for a JSON id only up to this length
SCALAR_KINDS = ("nil", "bool", "int", "float")
ID_KINDS = (*SCALAR_KINDS, "str")
_NDARRAY_KEYS = (P.NDARRAY_TAG, "dtype", "shape", "data")


def _kind_of(byte: int) -> str:
    """The msgpack type a value has, from its first byte (msgpack spec, "formats")."""
    if byte <= 0x7F or byte >= 0xE0 or 0xCC <= byte <= 0xD3:
        return "int"
    if 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF):
        return "map"
    if 0x90 <= byte <= 0x9F or byte in (0xDC, 0xDD):
        return "array"
    if 0xA0 <= byte <= 0xBF or 0xD9 <= byte <= 0xDB:
        return "str"
    if 0xC4 <= byte <= 0xC6:
        return "bin"
    if 0xC7 <= byte <= 0xC9 or 0xD4 <= byte <= 0xD8:
        return "ext"
    return {0xC0: "nil", 0xC2: "bool", 0xC3: "bool", 0xCA: "float", 0xCB: "float"}.get(
        byte, "invalid")


class RequestError(P.ProtocolError):
    """A ProtocolError that knows whether the request's id could be read, and its value."""

    def __init__(self, code: str, message: str, request_id: Any = P.NO_ID) -> None:
        super().__init__(code, message)
        self.request_id = request_id


class _Cursor:
    """msgpack values one at a time from `payload`, each type known before it is built."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, timestamp=0,
                                          max_buffer_size=max(len(payload), 1))
        self._unpacker.feed(payload)

    @property
    def offset(self) -> int:
        return self._unpacker.tell()

    def kind(self) -> str:
        if self.offset >= len(self.payload):
            raise P.ProtocolError(P.E_NOT_MSGPACK, f"frame of {len(self.payload)} bytes is not "
                                                   "valid msgpack: it ends inside a value")
        kind = _kind_of(self.payload[self.offset])
        if kind == "invalid":
            raise P.ProtocolError(P.E_NOT_MSGPACK, f"frame is not valid msgpack: byte "
                                                   f"{self.offset} is 0x"
                                                   f"{self.payload[self.offset]:02x}, which "
                                                   "starts no value")
        return kind

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except Exception as err:  # msgpack raises several unrelated exception types
            raise P.ProtocolError(P.E_NOT_MSGPACK, f"frame is not valid msgpack at byte "
                                                   f"{self.offset} of {len(self.payload)}: "
                                                   f"{err!r}") from None

    def value(self) -> Any:
        return self._call(self._unpacker.unpack)

    def skip(self) -> None:
        self._call(self._unpacker.skip)

    def map_len(self) -> int:
        return self._call(self._unpacker.read_map_header)

    def array_len(self) -> int:
        return self._call(self._unpacker.read_array_header)

    def scalar(self, what: str, kinds: tuple[str, ...], code: str, expected: str) -> Any:
        """The next value if its msgpack type is one of `kinds`, else a ProtocolError
        naming `what`, the type received and `expected`; containers are never built."""
        kind = self.kind()
        if kind not in kinds:
            got = "a msgpack extension" if kind == "ext" else f"a msgpack {kind}"
            raise P.ProtocolError(code, f"{what} is {got}; expected {expected}")
        return self.value()


def _describe_id(cursor: _Cursor) -> str:
    kind = cursor.kind()
    if kind == "ext":
        ext = cursor.value()
        if isinstance(ext, msgpack.Timestamp):
            return "a msgpack extension (type -1, a timestamp)"
        return f"a msgpack extension (type {ext.code})"
    return f"a msgpack {kind}"


@dataclass
class Envelope:
    """A request frame whose id has been read and whose top-level values are located."""

    payload: bytes
    request_id: Any  # P.NO_ID when the request has no "id" key
    spans: dict[str, tuple[int, int]]  # top-level string key -> value's byte range

    def _cursor(self, key: str) -> _Cursor:
        start, end = self.spans[key]
        return _Cursor(self.payload[start:end])

    def kind(self) -> str:
        if "type" not in self.spans:
            raise P.ProtocolError(P.E_MISSING_KEY, f"message has no 'type' key; keys: "
                                                   f"{P.brief(sorted(self.spans), 200)}")
        return self._cursor("type").scalar("message 'type'", ("str",), P.E_BAD_MESSAGE,
                                           f"a string, {P.RESET!r} or {P.ACT!r}")

    def instruction(self, max_chars: int) -> str:
        if "instruction" not in self.spans:
            raise P.ProtocolError(P.E_MISSING_KEY, "reset message lacks key 'instruction'")
        expected = f"a non-empty string of at most {max_chars} characters"
        cursor = self._cursor("instruction")
        kind = cursor.kind()
        if kind != "str":
            got = P.brief(cursor.value()) if kind in SCALAR_KINDS else f"a msgpack {kind}"
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' is {got}; expected "
                                                 f"{expected}")
        # UTF-8 needs at most 4 bytes a character: refuse a long string before decoding it.
        if len(cursor.payload) > 4 * max_chars + 5:
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' is "
                                                 f"{len(cursor.payload)} bytes long; expected "
                                                 f"{expected}")
        text = cursor.value()
        if len(text) > max_chars:
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' has {len(text)} "
                                                 f"characters; expected {expected}")
        if not text.strip():
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' is {P.brief(text)}; "
                                                 f"expected {expected}")
        return text

    def prompt_images(self, spec: P.PromptSpec | None, instruction: str) -> np.ndarray | None:
        """`reset`'s images, one per slot of `instruction`, stacked (n, *spec.shape); None for
        an instruction without slots. `spec` None: the policy reads text only, so slots and
        images are both refused. The count is checked against the slots and `max_images`
        before any image is decoded; nil or an empty array count as no images."""
        key = P.PROMPT_IMAGES
        cursor: _Cursor | None = None
        sent, got = 0, "is absent"
        if key in self.spans:
            cursor = self._cursor(key)
            kind = cursor.kind()
            got = "is nil"
            if kind == "array":
                sent = cursor.array_len()
                got = f"has {sent} image(s)"
            elif kind != "nil":
                slot = spec.slot if spec is not None else P.PROMPT_SLOT
                raise P.ProtocolError(P.E_BAD_MESSAGE, f"reset {key!r} is a msgpack {kind}; "
                                                       "expected an array of ndarray maps, one "
                                                       f"per {slot!r} in the instruction")
        if spec is None:
            slots = instruction.count(P.PROMPT_SLOT)
            text_only = (f"this server's policy reads text prompts only (metadata {key!r} is "
                         "nil)")
            if slots:
                raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' "
                                                     f"{P.brief(instruction)} shows {slots} "
                                                     f"object(s) by image ({P.PROMPT_SLOT!r}); "
                                                     f"{text_only}")
            if sent:
                raise P.ProtocolError(P.E_BAD_VALUE, f"reset {key!r} has {sent} image(s); "
                                                     f"{text_only}: send none")
            return None
        slots = spec.slots(instruction)
        image = spec.image
        one = f"one {image.dtype} {list(image.shape)} image per {spec.slot!r}, in order"
        if slots > spec.max_images:
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset 'instruction' {P.brief(instruction)} "
                                                 f"has {slots} {spec.slot!r} slots; expected at "
                                                 f"most {spec.max_images} (metadata {key!r} "
                                                 "max_images)")
        if sent > spec.max_images:
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset {key!r} has {sent} images; expected at "
                                                 f"most {spec.max_images} (metadata {key!r} "
                                                 f"max_images), {one}")
        if sent != slots:
            raise P.ProtocolError(P.E_BAD_VALUE, f"reset {key!r} {got}; the instruction "
                                                 f"{P.brief(instruction)} has {slots} "
                                                 f"{spec.slot!r} slot(s): expected {one}")
        if not slots:
            return None
        assert cursor is not None
        images = []
        for i in range(sent):
            what = f"reset {key!r}[{i}]"
            images.append(image.check(what, _ndarray(cursor, what, image), what))
        return np.stack(images)

    def observation(self, specs: dict[str, P.ArraySpec]) -> dict[str, np.ndarray]:
        """The arrays `specs` names, each checked against its spec; other keys are skipped."""
        if "observation" not in self.spans:
            raise P.ProtocolError(P.E_MISSING_KEY, "act message lacks key 'observation'")
        cursor = self._cursor("observation")
        if cursor.kind() != "map":
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"act 'observation' is a msgpack "
                                                   f"{cursor.kind()}; expected a map")
        n = cursor.map_len()
        if n > MAX_KEYS:
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"act 'observation' has {n} keys; expected "
                                                   f"at most {MAX_KEYS}")
        observation: dict[str, np.ndarray] = {}
        for _ in range(n):
            key = cursor.value() if cursor.kind() == "str" else cursor.skip()
            if key in specs and key not in observation:
                what = f"observation[{key!r}]"
                observation[key] = specs[key].check(key, _ndarray(cursor, what, specs[key]),
                                                    what)
            else:
                cursor.skip()
        for key in specs:
            if key not in observation:
                raise P.ProtocolError(P.E_MISSING_KEY, f"observation lacks key {key!r}; "
                                                       f"expected keys {sorted(specs)}")
        return observation


def _ndarray(cursor: _Cursor, what: str, spec: P.ArraySpec) -> np.ndarray:
    """One array map, read field by field with every size checked before it is built;
    `what` names it in error messages (e.g. ``observation['image']``)."""
    expected = f"an ndarray map of {spec.dtype} {list(spec.shape)}"
    kind = cursor.kind()
    if kind != "map":
        got = P.brief(cursor.value()) if kind in SCALAR_KINDS else f"a msgpack {kind}"
        raise P.ProtocolError(P.E_BAD_NDARRAY, f"{what} is {got}; expected {expected}")
    n = cursor.map_len()
    if n > MAX_KEYS:
        raise P.ProtocolError(P.E_BAD_NDARRAY, f"{what} map has {n} keys; expected {expected}")
    fields: dict[str, Any] = {}
    for _ in range(n):
        field = cursor.value() if cursor.kind() == "str" else cursor.skip()
        if field == P.NDARRAY_TAG:
            fields[field] = cursor.scalar(f"{what}[{field!r}]", ("bool",), P.E_BAD_NDARRAY,
                                          "true")
        elif field == "dtype":
            fields[field] = cursor.scalar(f"{what} dtype", ("str",), P.E_BAD_NDARRAY,
                                          f"one of {sorted(P.ALLOWED_DTYPES)}")
        elif field == "data":
            fields[field] = cursor.scalar(f"{what} data", ("bin",), P.E_BAD_NDARRAY,
                                          "msgpack bin (raw bytes)")
        elif field == "shape":
            fields[field] = _shape(cursor, what)
        else:
            cursor.skip()
    if fields.get(P.NDARRAY_TAG) is not True:
        raise P.ProtocolError(P.E_BAD_NDARRAY, f"{what} lacks '{P.NDARRAY_TAG}': true; "
                                               f"expected {expected}")
    missing = [k for k in _NDARRAY_KEYS if k not in fields]
    if missing:
        raise P.ProtocolError(P.E_BAD_NDARRAY, f"{what} lacks {missing}; expected keys "
                                               f"{list(_NDARRAY_KEYS)}")
    try:
        return P.decode_ndarray(fields)
    except P.ProtocolError as err:
        raise P.ProtocolError(err.code, f"{what}: {err.message}") from None


def _shape(cursor: _Cursor, what: str) -> list[int]:
    if cursor.kind() != "array":
        cursor.skip()
        raise P.ProtocolError(P.E_BAD_NDARRAY, f"{what} shape is not an array; expected a "
                                               "list of non-negative integers")
    n = cursor.array_len()
    if n > MAX_NDIM:
        raise P.ProtocolError(P.E_BAD_NDARRAY, f"{what} shape has {n} dimensions; expected "
                                               f"at most {MAX_NDIM}")
    return [cursor.scalar(f"{what} shape[{i}]", ("int", "float", "bool", "str", "nil"),
                          P.E_BAD_NDARRAY, "a non-negative integer") for i in range(n)]


def read_envelope(payload: bytes) -> Envelope:
    """Read the request map's id and locate its values; RequestError carries the id when it
    was read before the failure (a frame that is not a map at all has none)."""
    cursor = _Cursor(payload)
    request_id: Any = P.NO_ID
    try:
        kind = cursor.kind()
        if kind != "map":
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"message is a msgpack {kind}; expected a "
                                                   "map with a 'type' key")
        n = cursor.map_len()
        spans: dict[str, tuple[int, int]] = {}
        for _ in range(min(n, MAX_KEYS)):
            key = cursor.value() if cursor.kind() == "str" else cursor.skip()
            start = cursor.offset
            if key == "id" and "id" not in spans:
                value = cursor.value() if cursor.kind() in ID_KINDS else P.NO_ID
                if value is P.NO_ID or (isinstance(value, str) and len(value) > MAX_ID_CHARS):
                    got = (f"a string of {len(value)} characters" if isinstance(value, str)
                           else _describe_id(cursor))
                    raise P.ProtocolError(P.E_BAD_VALUE, f"request 'id' is {got}; {ID_EXPECTED}")
                request_id = value
            elif isinstance(key, str) and key in spans:
                raise P.ProtocolError(P.E_BAD_MESSAGE, f"key {P.brief(key)} appears twice in "
                                                       "the request map")
            else:
                cursor.skip()
            if isinstance(key, str):
                spans[key] = (start, cursor.offset)
        if n > MAX_KEYS:
            raise P.ProtocolError(P.E_BAD_MESSAGE, f"request map has {n} keys; expected at "
                                                   f"most {MAX_KEYS}")
        if cursor.offset != len(payload):
            raise P.ProtocolError(P.E_NOT_MSGPACK, f"{len(payload) - cursor.offset} bytes "
                                                   "follow the request map; expected one map "
                                                   "per frame")
    except P.ProtocolError as err:
        raise RequestError(err.code, err.message, request_id) from None
    return Envelope(payload, request_id, spans)


def peek_id(payload: bytes) -> Any:
    """The request id of a frame the server will not serve (too large, text), or NO_ID."""
    try:
        return read_envelope(payload).request_id
    except RequestError as err:
        return err.request_id


def peek_text_id(text: str) -> Any:
    """The id of a text frame (never msgpack: no map can start with a valid UTF-8 byte)
    that holds a JSON object with a scalar "id", as a client sending JSON by mistake would;
    NO_ID otherwise."""
    if len(text) > MAX_TEXT_PEEK or not text.lstrip().startswith("{"):
        return P.NO_ID
    try:
        value = json.loads(text).get("id", P.NO_ID)
    except (ValueError, RecursionError):
        return P.NO_ID
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    return P.NO_ID
