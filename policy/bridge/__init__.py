"""The robot bridge: serve a checkpoint's actions to robots over a websocket.

protocol.py  wire format (msgpack, numpy arrays as raw bytes), torch-free
client.py    the robot-side client, torch-free (numpy, msgpack, websockets only)
server.py    the server: one model, one session per connection, /healthz, token gate
robot.py     a simulated robot driven through the bridge at a fixed control rate

Importing this package stays torch-free so robot computers can use the client; the server
imports the policy package only when it loads a checkpoint.
"""

from .client import (
    ActionSpecMismatch,
    ActResult,
    BridgeClient,
    BridgeError,
    BridgeTimeout,
    ServerMismatch,
)
from .protocol import PROTOCOL_VERSION, BridgeMetadata, PromptSpec, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "ActResult",
    "ActionSpecMismatch",
    "BridgeClient",
    "BridgeError",
    "BridgeMetadata",
    "BridgeTimeout",
    "PromptSpec",
    "ProtocolError",
    "ServerMismatch",
]
