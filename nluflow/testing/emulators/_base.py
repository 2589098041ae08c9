"""What every emulator shares: fault injection, request recording, job bookkeeping, and a uvicorn runner.

Faults are injected per endpoint (a name each emulator gives its routes) and consumed one per request::

    emulator.faults.inject("train", Fault.RATE_LIMIT)          # the next train request gets a 429
    emulator.faults.inject("status", Fault.SERVER_ERROR, times=3)
    emulator.outcome = JobOutcome.FAIL                          # the next training job ends failed

Some faults strike *before* the request is processed (429, 500, 503, 401: the server did nothing), others
*after* it (502 from a proxy, a slow answer, a dropped connection, a garbled body: the server did the work and
the client never learnt it). The second kind is what makes a retried "start training" request dangerous;
``jobs_started`` counts the trainings an emulator really started, so tests can prove none ran twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import uvicorn

from nluflow.data.schema import Dataset
from nluflow.testing.emulators._model import Loader, Predictor, Trainer, load_local, train_local

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


class JobOutcome(StrEnum):
    """How the next training job ends."""

    SUCCEED = "succeed"
    FAIL = "job FAILED"
    CANCEL = "job CANCELLED"
    ERROR = "job error"
    NEVER_FINISH = "job never finishes"


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


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str


def routes(*table: tuple[str, str, str]) -> list[Route]:
    """``(method, path regex, endpoint name)`` triples; the first match names a request's endpoint."""
    return [Route(m, re.compile(p), e) for m, p, e in table]


ErrorBody = Callable[[int, str, str], tuple[bytes, str]]


@dataclass
class FaultInjector:
    """ASGI middleware: names each request's endpoint, records it, applies the next fault queued for it."""

    app: ASGIApp
    table: list[Route]
    plan: FaultPlan
    settings: EmulatorSettings
    error_body: ErrorBody
    on_token_expired: Callable[[], None] = lambda: None
    recorded: list[RecordedRequest] = field(default_factory=list)

    def endpoint_of(self, method: str, path: str) -> str | None:
        for route in self.table:
            if route.method == method and route.pattern.fullmatch(path):
                return route.endpoint
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        endpoint = self.endpoint_of(method, path)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.recorded.append(
            RecordedRequest(endpoint, method, path, scope.get("query_string", b"").decode(), headers, body)
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        fault = self.plan.take(endpoint) if endpoint else None
        if fault is None:
            await self.app(scope, replay, send)
            return
        if not fault.after_processing:
            await self._refuse(fault, send)
            return
        status, out_headers, out_body = await self._capture(scope, replay)
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


def json_error(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


# --------------------------------------------------------------------------------------------- serving


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


# ------------------------------------------------------------------------------------------- training jobs


class JobPhase(StrEnum):
    """An emulator's internal job states; each emulator maps them to its platform's words."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass
class TrainingJob:
    """One training job of an emulator, trained in a background thread with the local model."""

    id: str
    dataset: Dataset
    seed: int
    outcome: JobOutcome
    meta: dict[str, Any] = field(default_factory=dict)
    phase: JobPhase = JobPhase.QUEUED
    progress: float = 0.0
    epochs: list[dict[str, float]] = field(default_factory=list)
    model: Predictor | None = None
    model_dir: Path | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Emulator:
    """Base of the platform emulators: faults, recorded requests, jobs, and the local model behind them."""

    name = "emulator"
    table: ClassVar[list[Route]] = []

    def __init__(
        self,
        *,
        trainer: Trainer = train_local,
        loader: Loader = load_local,
        settings: EmulatorSettings | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.trainer = trainer
        self.loader = loader
        self.settings = settings or EmulatorSettings()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"nluflow-{self.name}-"))
        self.faults = FaultPlan()
        self.outcome = JobOutcome.SUCCEED
        self.jobs: dict[str, TrainingJob] = {}
        self.jobs_started = 0
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._injector = FaultInjector(
            self.build_app(), self.table, self.faults, self.settings, self.error_body, self.expire_tokens
        )

    # --- what each platform defines
    def build_app(self) -> ASGIApp:
        raise NotImplementedError

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        return json.dumps({"status": status, "title": title, "detail": detail}).encode(), "application/json"

    def expire_tokens(self) -> None:
        """Called when a 401 'token expired' fault fires: emulators that issue tokens revoke them."""

    # --- shared
    @property
    def app(self) -> ASGIApp:
        return self._injector

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._injector.recorded

    def recorded(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def serve(self) -> ServedApp:
        return ServedApp(self.app, on_stop=self.release_jobs)

    def release_jobs(self) -> None:
        """End the jobs still running (e.g. the ones told never to finish): the server is going away."""
        with self.lock:
            for job in self.jobs.values():
                if not job.done.is_set():
                    job.error = "the server shut down"
                    job.phase = JobPhase.ERROR
                    job.finished_at = time.time()
                    job.done.set()

    def new_id(self, prefix: str = "") -> str:
        return f"{prefix}{next(self._ids):06d}"

    def start_job(self, dataset: Dataset, seed: int, job_id: str | None = None, **meta: Any) -> TrainingJob:
        """Start training in a background thread; the next ``outcome`` decides how the job ends."""
        with self.lock:
            outcome, self.outcome = self.outcome, JobOutcome.SUCCEED
            job = TrainingJob(job_id or self.new_id("job-"), dataset, seed, outcome, dict(meta))
            self.jobs[job.id] = job
            self.jobs_started += 1
        threading.Thread(target=self._run, args=(job,), name=f"{self.name}-{job.id}", daemon=True).start()
        return job

    def _run(self, job: TrainingJob) -> None:
        job.phase = JobPhase.RUNNING
        job.progress = 0.1
        try:
            model = self.trainer(job.dataset, job.seed)
            steps = 4
            for epoch in range(1, steps + 1):
                time.sleep(self.settings.job_min_seconds / steps)
                loss = round(1.0 / (epoch + 1), 4)
                job.epochs.append(
                    {"epoch": epoch, "loss": loss, "val_loss": round(loss * 1.1, 4), "accuracy": 1 - loss / 2}
                )
                job.progress = 0.1 + 0.8 * epoch / steps
                if job.outcome is JobOutcome.NEVER_FINISH and epoch == 2:
                    return  # stays RUNNING for ever
            if job.outcome is JobOutcome.SUCCEED:
                model_dir = self.workdir / "models" / job.id
                model_dir.mkdir(parents=True, exist_ok=True)
                model.save(model_dir)
                job.model, job.model_dir = model, model_dir
                job.progress = 1.0
                job.phase = JobPhase.SUCCEEDED
            elif job.outcome is JobOutcome.FAIL:
                job.error = "training diverged: loss is NaN after epoch 2"
                job.phase = JobPhase.FAILED
            elif job.outcome is JobOutcome.CANCEL:
                job.error = "cancelled by an operator"
                job.phase = JobPhase.CANCELLED
            else:
                job.error = "worker lost: the training pod was evicted"
                job.phase = JobPhase.ERROR
        except Exception as exc:  # a bad dataset: the job fails like on the platform
            job.error = f"{type(exc).__name__}: {exc}"
            job.phase = JobPhase.FAILED
        finally:
            if job.phase is not JobPhase.RUNNING:
                job.finished_at = time.time()
                job.done.set()

    def model_of(self, job_id: str) -> Predictor | None:
        job = self.jobs.get(job_id)
        return job.model if job else None
