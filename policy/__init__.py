"""robotok's learning side: tokenizers, the RT-1 and Gato policies, and the Policy API.

Names are imported lazily (PEP 562) so that light modules such as the robot bridge's client,
which needs only numpy, msgpack and websockets, can live in this package without importing
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Policy": "policy.base",
    "PolicyConfig": "policy.base",
    "make_policy": "policy.base",
    "register_policy": "policy.registry",
    "RT1Config": "policy.rt1",
    "RT1Policy": "policy.rt1",
    "GatoConfig": "policy.gato",
    "GatoPolicy": "policy.gato",
    "TextEncoder": "policy.text",
    "get_text_encoder": "policy.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'policy' has no attribute {name!r}")
