"""Serving an emulator (or any ASGI app) with uvicorn on 127.0.0.1 in a thread, for tests and by hand."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn

from nluflow.testing.emulators._middleware import ASGIApp


class ServedApp:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread; ``stop()`` ends it."""

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, on_stop: Callable[[], None] | None = None
    ) -> None:
        self._on_stop = on_stop
        # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then (else Nagle's algorithm
        # and delayed ACKs add ~40 ms to every request).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
            http="h11",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"emulator-{self.port}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator on {self.url} did not start within {timeout:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._on_stop is not None:
            self._on_stop()  # e.g. end jobs that would never finish, so open requests can return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(app: ASGIApp, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port of ``host`` for the duration of the block; yields the base URL."""
    served = ServedApp(app, host).start()
    try:
        yield served.url
    finally:
        served.stop()
