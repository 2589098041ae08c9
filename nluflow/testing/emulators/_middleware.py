"""The ASGI layer of the emulators: route table rows, the auth gate and the fault injector (middleware).

Each emulator declares its routes once, as :class:`Endpoint` rows (method, path, handler, fault name). The app
serves them; in front of it :class:`AuthGate` applies the platform's credentials check to every non-public
route, and :class:`FaultInjector` records each request and fires the faults queued for its endpoint. Both
find a request's endpoint with the app's own route matching. Handlers may raise :class:`Refused` to answer.

Some faults strike *before* the request is processed (429, 500, 503, 401: the server did nothing), others
*after* it (502 from a proxy, a slow answer, a dropped connection, a garbled body: the server did the work and
the client never learnt it). The second kind is what makes a retried "start training" request dangerous.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Fault(StrEnum):
    """One injected HTTP fault."""

    RATE_LIMIT = "429 + Retry-After"
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    SLOW = "slow (beyond timeout)"
    DROP = "dropped connection"
    TOKEN_EXPIRED = "401 token expired"
    MALFORMED_JSON = "malformed JSON"

    @property
    def after_processing(self) -> bool:
        """Whether the server did the work before the fault hit (so the client cannot know it happened)."""
        return self in (Fault.BAD_GATEWAY, Fault.SLOW, Fault.DROP, Fault.MALFORMED_JSON)


class FaultPlan:
    """Faults waiting for their endpoint, consumed one per request (thread-safe)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {}
        self._lock = threading.Lock()
        self.fired: list[tuple[str, Fault]] = []

    def inject(self, endpoint: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._queues.setdefault(endpoint, deque()).extend([fault] * times)

    def take(self, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._queues.get(endpoint)
            if not queue:
                return None
            fault = queue.popleft()
            self.fired.append((endpoint, fault))
            return fault

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()
            self.fired.clear()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it (for the recorded-contract checks)."""

    endpoint: str | None
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class EmulatorSettings:
    """Knobs shared by every emulator."""

    retry_after_seconds: int = 1
    slow_seconds: float = 2.0
    # How long a job stays "running" after its model is trained, so polling sees intermediate states.
    job_min_seconds: float = 0.2


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One route of an emulator, declared once: the app serves it; the fault injector and auth gate read it.

    ``path`` is a Starlette path template (``/jobs/{job_id}``); the handler reads path parameters from
    ``request.path_params``. ``fault`` is the name faults are injected under and requests are recorded with
    (None: no faults, recorded without a name); a ``public`` route needs no credentials.
    """

    method: str
    path: str
    handler: Handler
    fault: str | None = None
    public: bool = False


class Refused(Exception):
    """Raised by a route handler's checks: ``response`` is the platform's refusal; the route answers it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def answering(handler: Handler) -> Handler:
    """``handler`` as a route endpoint: a :class:`Refused` it raises becomes the answer."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as refused:
            return refused.response

    return endpoint


ErrorBody = Callable[[int, str, str], tuple[bytes, str]]
EndpointOf = Callable[[Scope], "Endpoint | None"]


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands the already-read body over once, then reports a disconnect."""
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


@dataclass
class AuthGate:
    """ASGI middleware: a request for a non-public endpoint passes only if ``authenticate`` lets it.

    ``authenticate`` gets the request and its body (read here, handed on unchanged) and answers None (go on)
    or the platform's refusal. Unknown paths go straight on, so they get the app's own 404/405.
    """

    app: ASGIApp
    endpoint_of: EndpointOf
    authenticate: Callable[[Request, bytes], Response | None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoint_of(scope) if scope["type"] == "http" else None
        if endpoint is None or endpoint.public:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        denied = self.authenticate(Request(scope, _replay(body)), body)
        if denied is not None:
            await denied(scope, _replay(body), send)
            return
        await self.app(scope, _replay(body), send)


@dataclass
class FaultInjector:
    """ASGI middleware: names each request's endpoint, records it, applies the next fault queued for it."""

    app: ASGIApp
    endpoint_of: EndpointOf
    plan: FaultPlan
    settings: EmulatorSettings
    error_body: ErrorBody
    on_token_expired: Callable[[], None] = lambda: None
    recorded: list[RecordedRequest] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = self.endpoint_of(scope)
        endpoint = matched.fault if matched is not None else None
        body = await _read_body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode()
        self.recorded.append(RecordedRequest(endpoint, scope["method"], scope["path"], query, headers, body))
        fault = self.plan.take(endpoint) if endpoint else None
        if fault is None:
            await self.app(scope, _replay(body), send)
        elif not fault.after_processing:
            await self._refuse(fault, send)
        else:
            await self._after(fault, scope, _replay(body), send)

    async def _after(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the app do the work, then spoil its answer."""
        status, out_headers, out_body = await self._capture(scope, receive)
        if fault is Fault.BAD_GATEWAY:
            await _respond(send, 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        elif fault is Fault.SLOW:
            await asyncio.sleep(self.settings.slow_seconds)
            await _send_raw(send, status, out_headers, out_body)
        elif fault is Fault.MALFORMED_JSON:
            # A garbled reply: the body cut in half (an empty 204 has nothing to garble and goes through).
            cut = out_body[: len(out_body) // 2] if status not in (204, 304) else out_body
            await _send_raw(send, status, out_headers, cut)
        else:  # Fault.DROP
            _drop(send)

    async def _capture(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        return status, headers, b"".join(chunks)

    async def _refuse(self, fault: Fault, send: Send) -> None:
        if fault is Fault.RATE_LIMIT:
            body, ctype = self.error_body(429, "Too Many Requests", "rate limit exceeded; retry later")
            await _respond(send, 429, body, ctype, {"retry-after": str(self.settings.retry_after_seconds)})
        elif fault is Fault.TOKEN_EXPIRED:
            self.on_token_expired()
            body, ctype = self.error_body(401, "Unauthorized", "the access token has expired")
            await _respond(send, 401, body, ctype)
        else:
            code = {Fault.SERVER_ERROR: 500, Fault.UNAVAILABLE: 503}[fault]
            title = {500: "Internal Server Error", 503: "Service Unavailable"}[code]
            body, ctype = self.error_body(code, title, f"injected fault: {fault.value}")
            await _respond(send, code, body, ctype)


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await _send_raw(send, status, headers, body)


async def _send_raw(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _drop(send: Send) -> None:
    """Close the connection without a response (uvicorn's h11 cycle exposes its transport)."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionResetError("injected fault: connection dropped")
    transport.abort()
    cycle.disconnected = True  # type: ignore[union-attr]
