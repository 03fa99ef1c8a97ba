"""The one sha256 of a checkpoint directory: evaluation reports, model cards and the bridge.

Evaluation writes it into eval_info.json and report.md, the bridge server announces it in
its handshake and /healthz, and a robot's `expected_checkpoint_sha256` is compared with it,
so a hash copied from a report is the hash the bridge checks. Needs no torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files whose bytes define a checkpoint's behaviour at inference: weights, model/tokenizer
# config, action layout and the normalization statistics (the silent-mismatch culprit).
HASHED_FILES = ("model.safetensors", "config.json", "action_spec.json", "stats.json")


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
