"""Slow and idle clients against a real uvicorn server with nluflow's connection limits (the relay app).

Before :mod:`nluflow.apps.server_limits`, uvicorn's h11 protocol timed out nothing until a first answer, and
any byte cancelled its keep-alive timer: 3,000 unauthenticated connections that sent nothing (or one header
byte at a time) were held as long as their clients liked. Each test gives the server a short head deadline
and waits at most ``WAIT`` seconds for the server to hang up: a connection still open then fails the test.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from flows import events
from nluflow.apps import serve
from nluflow.apps.relay import LabelStudioRoute, RelayConfig, create_app
from nluflow.apps.server_limits import HeaderDeadlineProtocol, ServerLimits, protocol_class, uvicorn_config
from nluflow.store import ModelStore

from .conftest import real_server

SECRET = "s3cret-relay-token-for-tests"
LIMITS = ServerLimits(header_timeout=0.5, keep_alive_timeout=30)  # keep-alive long: the head deadline acts
WAIT = 30.0  # far beyond the deadline: only a connection held open for good fails


@pytest.fixture
def emitted() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def port(emitted: list[dict[str, Any]]) -> Iterator[int]:
    config = RelayConfig(secret=SECRET, label_studio={"7": LabelStudioRoute(project="bot", source="bot")})
    with real_server(create_app(config, emitted.append), LIMITS) as p:
        yield p


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, wait: float | None = None) -> tuple[bool, bytes]:
    """(closed by the server within ``wait`` (default ``WAIT``) s, the bytes it sent before)."""
    received = b""
    sock.settimeout(WAIT if wait is None else wait)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def trickle(sock: socket.socket, first: bytes, byte: bytes = b"X-Slow: 1\r\n") -> bool:
    """Send ``first``, then ``byte`` every 0.1 s; True once the server closed the connection (within WAIT)."""
    sock.sendall(first)
    deadline = time.monotonic() + WAIT
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
        try:
            sock.sendall(byte)
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def get_healthz(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        closed, answer = read_until_closed(sock)
    assert closed
    return answer


def test_connections_that_send_nothing_are_closed_and_requests_still_served(port: int) -> None:
    idle = [connect(port) for _ in range(200)]
    try:
        assert get_healthz(port).startswith(b"HTTP/1.1 200")  # the idle crowd does not block real clients
        deadline = time.monotonic() + WAIT
        results = [read_until_closed(sock, max(deadline - time.monotonic(), 0.01)) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
    assert all(closed for closed, _ in results), sum(not c for c, _ in results)
    assert all(data == b"" for _, data in results)  # no request, so no answer: just a closed connection


def test_a_request_head_trickled_a_header_at_a_time_is_closed(port: int) -> None:
    with connect(port) as sock:
        assert trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")


def test_a_kept_alive_connection_that_trickles_its_next_head_is_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert trickle(sock, b"GET /healthz HTTP/1.1\r\n")


def test_the_unread_body_of_a_refused_request_cannot_hold_the_connection(
    port: int, emitted: list[dict[str, Any]]
) -> None:
    head = (
        b"POST /hooks/label-studio HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    with connect(port) as sock:
        sock.sendall(head)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 401")  # no secret: answered before the body
        assert trickle(sock, b"", byte=b" ")
    assert emitted == []


def test_beyond_max_connections_a_request_is_answered_503_at_once(emitted: list[dict[str, Any]]) -> None:
    config = RelayConfig(secret=SECRET, label_studio={})
    with real_server(create_app(config, emitted.append), ServerLimits(max_connections=5)) as p:
        idle = [connect(p) for _ in range(6)]
        try:
            time.sleep(0.2)  # let the server accept them
            assert get_healthz(p).startswith(b"HTTP/1.1 503")
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + WAIT  # the server notices the hang-ups, then serves again
        while not (answer := get_healthz(p)).startswith(b"HTTP/1.1 200") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]


def test_a_client_that_hangs_up_mid_body_is_one_log_line_on_a_real_server(
    port: int, emitted: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    head = (
        b"POST /hooks/label-studio HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        + f"X-Relay-Secret: {SECRET}\r\nContent-Length: 400\r\n\r\n".encode()
    )
    with caplog.at_level(logging.INFO):
        with connect(port) as sock:
            sock.sendall(head + b'{"action": "A')
        deadline = time.monotonic() + WAIT
        while "rejected:400" not in get_healthz(port).decode() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    lines = [r for r in caplog.records if r.name != "uvicorn.access"]
    assert [r.getMessage() for r in lines if "disconnected" in r.getMessage()] == [
        "/hooks/label-studio from 127.0.0.1: HTTP 400, the client disconnected after 13 bytes of its body; "
        "nothing emitted"
    ]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert emitted == []


def test_limits_reach_uvicorns_config() -> None:
    config = uvicorn_config(object(), limits=ServerLimits(3.0, 7, 50, 8192), host="127.0.0.1", port=1)
    assert (config.timeout_keep_alive, config.limit_concurrency, config.h11_max_incomplete_event_size) == (
        7,
        50,
        8192,
    )
    assert isinstance(config.http, type) and issubclass(config.http, HeaderDeadlineProtocol)
    assert config.http.header_timeout == 3.0
    assert protocol_class(1.5).header_timeout == 1.5 and HeaderDeadlineProtocol.header_timeout == 10.0


@pytest.mark.parametrize(
    "bad",
    [
        {"header_timeout": 0},
        {"keep_alive_timeout": 0},
        {"max_connections": 0},
        {"max_header_bytes": 10},
    ],
)
def test_limits_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerLimits(**bad)


def test_the_serve_and_relay_commands_use_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``nluflow serve`` and ``nluflow relay`` build their uvicorn config through ``uvicorn_config``."""
    seen: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.append(self.config.http))
    events.serve_relay("127.0.0.1", 1, RelayConfig(secret=SECRET, label_studio={}), emitter=lambda e: None)
    serve.run("127.0.0.1", 1, "bot", ModelStore.local(tmp_path, create=True))
    assert len(seen) == 2 and all(issubclass(h, HeaderDeadlineProtocol) for h in seen)
