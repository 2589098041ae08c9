"""Helpers of the hostile-input suite: a real uvicorn server on 127.0.0.1 with nluflow's connection limits."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from nluflow.apps.server_limits import ServerLimits, uvicorn_config

# nluflow's warnings outside a flow run are expected here (loaders, serve): Prefect must not warn about them.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@contextmanager
def real_server(app: Any, limits: ServerLimits | None = None, *, lifespan: str = "off") -> Iterator[int]:
    """Run ``app`` as ``nluflow serve``/``relay`` run it (uvicorn + :mod:`nluflow.apps.server_limits`) on a
    free 127.0.0.1 port in a thread; yields the port. ``log_config=None`` lets uvicorn's records reach
    caplog."""
    config = uvicorn_config(
        app, limits=limits, host="127.0.0.1", port=0, lifespan=lifespan, log_config=None, log_level="info"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
