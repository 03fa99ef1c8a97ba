"""A bridge server on its own event loop in a background thread, for tests and benchmarks.

A robot deployment runs `scripts/serve.py` (server.run_server) instead; this helper lets a
test start a PolicyServer on port 0 in-process, learn its URL and stop it again.
"""

from __future__ import annotations

import asyncio
import threading

from .server import PolicyServer, ServedPolicy, ServerConfig


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
