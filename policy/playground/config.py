"""Where the playground listens and who may open it: conf/play.yaml's `server` block.

Loopback by default. Any other address needs a token, as the bridge's server does
(policy/bridge/server.py): the page then asks for it (any user name, the token as password).
"""

from __future__ import annotations

from dataclasses import dataclass

from policy.bridge.server import check_listen

TOKEN_ENV = "ROBOTOK_PLAY_TOKEN"


@dataclass
class PlayServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860  # 0 picks a free port
    token: str | None = None  # required off loopback; None: the ROBOTOK_PLAY_TOKEN variable
    # Each open tab holds its own envs, policy histories and recorded frames (~25 MB).
    max_sessions: int = 4
    # One thread: simulation and model share the process, and oversubscribed processes ran
    # 17x slower (docs/experiments/2026-11-28-prototype.md).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("max_sessions", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"server.{name}={getattr(self, name)}; expected >= 1")
        self.token = check_listen(self.host, self.port, self.token, TOKEN_ENV)
