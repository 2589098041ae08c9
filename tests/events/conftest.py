"""Fixtures of the events suite: Label Studio captures and local HTTP servers.

Tests that need a Prefect API ask for ``prefect_api``: the session's one harness (tests/conftest.py).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# Client log records outside a flow run are expected here (events, deployments made by the tests).
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

LABEL_STUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "label-studio"


@pytest.fixture(scope="session")
def label_studio() -> Path:
    """The captured Label Studio 1.23.2 webhooks and exports (copies kept in the repo)."""
    return LABEL_STUDIO


def free_port() -> int:
    """A port nothing listens on (for 'connection refused')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny HTTP receiver: records every request and answers ``status``."""

    status: int = 200
    requests: list[Received] = field(default_factory=list)

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            self.requests.append(
                Received(request.method, request.url.path, dict(request.headers), await request.body())
            )
            return Response(b"" if self.status == 204 else b"ok", status_code=self.status)

        return Starlette(routes=[Route("/{path:path}", record, methods=["POST", "GET"])])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """A running receiver and its base URL."""
    recv = Receiver()
    with serve(recv.app()) as url:
        yield recv, url
