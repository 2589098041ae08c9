"""A small webhook relay: annotation-tool webhooks in, ``nlu.dataset.annotated`` Prefect events out.

Self-hosted Prefect has no incoming webhooks, but ``POST /api/events`` with a JSON list of events fires
deployment triggers. The relay sits between an annotation tool and that endpoint::

    Label Studio ──POST /hooks/label-studio──┐
                                             ├─► verify secret ─► map ─► emitter(event) ─► POST {api}/events
    a script/CI  ──POST /hooks/generic───────┘      (+ HMAC for generic senders)

Routes:

* ``POST /hooks/label-studio`` — Label Studio webhooks. ``ANNOTATION_CREATED``, ``ANNOTATIONS_CREATED``,
  ``ANNOTATION_UPDATED``, ``ANNOTATIONS_DELETED`` and ``TASKS_DELETED`` become one event each (a deletion
  changes the training data too); every other action is acknowledged (200) and counted, nothing is emitted.
  Label Studio (1.23) signs nothing: the only authenticity is a custom header configured on the webhook
  (``X-Relay-Secret`` by default), compared in constant time.
* ``POST /hooks/generic`` — ``{"project": ..., "data": ..., "new_examples": ...}`` from scripts; needs the
  same header **and** ``X-Nluflow-Timestamp: <Unix seconds>`` with
  ``X-Nluflow-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`` (as Stripe and Slack sign
  webhooks): a delivery signed more than 5 minutes away from the relay's clock
  (``signature_tolerance_seconds``) is refused (403), and so is a signed delivery seen before (409).
* ``GET /healthz`` — liveness and the outcome counters (no secrets).

Replays: Label Studio deliveries are de-duplicated by annotation id and ``updated_at`` (deleted ids for
deletions): a delivery whose every annotation was already emitted in that state is acknowledged (200,
counted ``ignored:replay``) and emits nothing; an update (new ``updated_at``) emits. Generic deliveries are
remembered by signature. The memory is an LRU of the newest ``replay_memory`` keys (default 10,000) per
relay process: bounded, and forgotten on restart (a replay after a restart, or after more than
``replay_memory`` newer keys, emits again; the generic timestamp still bounds that to 5 minutes).

Answers: 202 emitted; 200 acknowledged and ignored; 400 malformed JSON, or a secret in the URL's query;
401 secret, timestamp or signature missing; 403 secret or signature wrong, or timestamp stale; 404 Label
Studio project not mapped; 409 a signed generic delivery seen before; 413 body too large; 422 JSON of the
wrong shape; 503 the emitter failed. On every 4xx/5xx nothing was emitted. The secret never appears in an
answer or a log line: answers name the header, never its value; a URL whose query carries the secret is
refused, and :class:`QueryRedactor` keeps query strings out of uvicorn's access log.

The Label Studio project id is mapped to an nluflow project and a ``LabelStudioSource`` block by
:class:`RelayConfig`; the event's ``data`` is that block reference, so the triggered retrain exports the
project itself. Nothing is read from Label Studio here. Label Studio does not retry a webhook, so a lost
one is caught by the next scheduled retrain of the same source. Every emission is logged at INFO; the
relay's records are marked local (``send_to_api=False``) so Prefect's API log handler does not warn that
they have no flow run.

This module never imports Prefect: :class:`PrefectApiEmitter` speaks plain HTTP. The relay's parts:
``relay_config`` (:class:`RelayConfig`), ``relay_hooks`` (what a webhook body means), ``relay_events`` (the
event, the signature, the emitter); this module is the app (:class:`_Relay`, one method per route) and
re-exports what its callers use.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nluflow import jsonsafe
from nluflow.apps.relay_config import LabelStudioRoute, RelayConfig, validation_problems
from nluflow.apps.relay_events import (
    EVENT_NAME,
    RESOURCE_PREFIX,
    Emitter,
    PrefectApiEmitter,
    annotated_event,
    resource_id,
    sign,
    signed_headers,
)
from nluflow.apps.relay_hooks import GenericPayload, Reject, parse_label_studio

__all__ = [  # the relay's public face: the app, and the config and event helpers its callers use
    "EVENT_NAME",
    "RESOURCE_PREFIX",
    "Emitter",
    "LabelStudioRoute",
    "PrefectApiEmitter",
    "QueryRedactor",
    "RelayConfig",
    "RelayStats",
    "ReplayMemory",
    "annotated_event",
    "create_app",
    "resource_id",
    "sign",
    "signed_headers",
]


class _LocalLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The relay's log lines stay local: marked so Prefect's API log handler (attached to ``nluflow`` loggers
    by ``PREFECT_LOGGING_EXTRA_LOGGERS``) skips them instead of warning that there is no flow run id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**kwargs.get("extra", {}), "send_to_api": False}
        return msg, kwargs


logger = _LocalLog(logging.getLogger(__name__), {})

# Query parameter names that can only mean a credential; the relay's routes take no query at all.
SECRET_QUERY_NAMES = frozenset({"secret", "token", "key", "api_key", "apikey", "password", "signature"})
BODY_TIMEOUT_SECONDS = 10.0  # a sender that trickles its body this long holds a connection for nothing


class RelayStats:
    """Outcome counters: ``emitted``, ``ignored:<ACTION>``, ``rejected:<status>``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, key: str) -> None:
        self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class ReplayMemory:
    """The keys of deliveries already emitted, the newest ``capacity`` of them (an LRU): bounded memory.

    A delivery is a replay when every one of its keys was seen. Keys are claimed before the event is
    emitted (no ``await`` between the check and the claim, so two concurrent copies cannot both pass) and
    released if the emission fails, so the sender's retry still emits.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def claim(self, keys: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]] | None:
        """``None`` if all ``keys`` were seen (a replay); otherwise the keys newly remembered."""
        if keys and all(key in self._keys for key in keys):
            for key in keys:
                self._keys.move_to_end(key)
            return None
        new = [key for key in dict.fromkeys(keys) if key not in self._keys]
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return new

    def release(self, keys: Sequence[tuple[str, ...]]) -> None:
        for key in keys:
            self._keys.pop(key, None)


class QueryRedactor(logging.Filter):
    """Keeps query strings out of uvicorn's access log (``GET /hooks/generic?[query redacted]``): a secret
    put in a URL by mistake is refused by the relay, and must not be written to a log either."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.split("?", 1)[0] + "?[query redacted]" if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        return True


class _Replay(Exception):
    """Every key of a delivery was already emitted; each route says what that answers."""


class _Relay:
    def __init__(self, config: RelayConfig, emitter: Emitter, stats: RelayStats) -> None:
        self.config = config
        self.emitter = emitter
        self.stats = stats
        self._secret = config.secret.get_secret_value().encode()
        self.seen = ReplayMemory(config.replay_memory)

    # -- checks, cheapest first: the URL and the secret header need no body
    def check_query(self, request: Request) -> None:
        """Refuse a credential in the URL: URLs end up in access logs, proxies and browser histories."""
        secret = self.config.secret.get_secret_value()
        raw = request.scope.get("query_string", b"").decode("latin-1")
        params = request.query_params.multi_items()
        if secret in raw or any(
            name.strip().lower() in SECRET_QUERY_NAMES or secret in name or secret in value
            for name, value in params
        ):
            raise Reject(
                400,
                "the URL's query string carries a secret (or a parameter named like one); the relay takes no "
                f"query: send the shared secret only in header {self.config.header}, and rotate a secret "
                "that was put in a URL",
            )

    def check_secret(self, request: Request) -> None:
        given = request.headers.get(self.config.header)
        if given is None:
            raise Reject(401, f"missing header {self.config.header}: expected the relay's shared secret")
        if not hmac.compare_digest(given.encode(), self._secret):
            raise Reject(403, f"header {self.config.header} does not match the relay's shared secret")

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Reject(400, "Content-Length is not a number")
            if int(declared) > limit:
                raise Reject(413, f"body of {int(declared)} bytes, expected at most {limit}")
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:  # a sender without (or lying about) Content-Length
                        raise Reject(413, f"body larger than {limit} bytes")
        except TimeoutError:
            raise Reject(
                408, f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s ({len(body)} bytes came)"
            ) from None
        except ClientDisconnect:  # one warning line, not a traceback per dropped connection
            raise Reject(400, f"the client disconnected after {len(body)} bytes of its body") from None
        return bytes(body)

    def check_signature(self, request: Request, body: bytes) -> str:
        """Check timestamp and signature; returns the signature (the delivery's replay key)."""
        ts_name, name = self.config.timestamp_header, self.config.signature_header
        stamp = request.headers.get(ts_name)
        if stamp is None:
            raise Reject(
                401, f"missing header {ts_name}: expected the Unix time (seconds) the body was signed at"
            )
        stamp = stamp.strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise Reject(400, f"header {ts_name} is not a Unix time in whole seconds")
        given = request.headers.get(name)
        if given is None:
            raise Reject(
                401, f"missing header {name}: expected sha256=<hex HMAC-SHA256 of '<timestamp>.<body>'>"
            )
        expected = sign(body, self.config.secret.get_secret_value(), stamp)
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            raise Reject(403, f"header {name} does not match the HMAC-SHA256 of '<{ts_name}>.<body>'")
        age = int(time.time()) - int(stamp)
        limit = self.config.signature_tolerance_seconds
        if abs(age) > limit:
            when = f"{age} s ago" if age > 0 else f"{-age} s in the future"
            raise Reject(
                403,
                f"header {ts_name} says the body was signed {when}, expected within {limit} s of the relay's "
                "clock: a stale or replayed delivery (sign each delivery when sending it; check the clocks)",
            )
        return expected

    async def emit_once(
        self, keys: Sequence[tuple[str, ...]], emit: Callable[[], Awaitable[JSONResponse]]
    ) -> JSONResponse:
        """Emit unless ``keys`` were all seen; forget the claimed keys if the emission fails."""
        claimed = self.seen.claim(keys) if keys else []
        if claimed is None:
            raise _Replay
        try:
            return await emit()
        except BaseException:
            self.seen.release(claimed)
            raise

    @staticmethod
    def parse_json(body: bytes) -> Any:
        """The body as JSON; 400 for anything a JSON object of valid Unicode text is not.

        Refused besides syntax errors: nesting too deep to read, integers over 4,300 digits (refused before
        conversion) and strings with an unpaired UTF-16 surrogate (``"\\ud800"``), which no UTF-8 answer,
        log line or event can carry (an ``action`` holding one was a plain-text 500).
        """
        try:
            document = jsonsafe.loads(body)
        except jsonsafe.NumberTooLong as exc:
            raise Reject(400, f"malformed JSON: {exc}") from None
        except RecursionError:
            raise Reject(400, "malformed JSON: nested too deeply to read; expected a JSON object") from None
        except (UnicodeDecodeError, ValueError) as exc:
            where = (
                f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            )
            raise Reject(400, f"malformed JSON{where}: expected a JSON object") from None
        place = jsonsafe.lone_surrogate(document)
        if place is not None:
            shown = place if len(place) <= 80 else place[:79] + "…"
            raise Reject(
                400,
                f"malformed JSON: the string at {shown} holds an unpaired UTF-16 surrogate (such as \\ud800 "
                "without its pair); expected valid Unicode text",
            )
        return document

    async def emit(
        self, project: str, data: str, new_examples: int, source: str, **extra: Any
    ) -> JSONResponse:
        event = annotated_event(project, data, new_examples, **extra)
        try:
            await run_in_threadpool(self.emitter, event)
        except Exception as exc:
            logger.error(
                "%s: could not emit %s for project %r (%s: %s); nothing was emitted, the sender may retry",
                source,
                EVENT_NAME,
                project,
                type(exc).__name__,
                self.redact(str(exc)),
            )
            raise Reject(
                503, f"could not hand the event to Prefect ({type(exc).__name__}); retry later"
            ) from None
        self.stats.add("emitted")
        removed = extra.get("removed_examples", 0)
        logger.info(
            "%s → %s %s for project %r (%d new example%s%s, data %s)",
            source,
            EVENT_NAME,
            event["id"],
            project,
            new_examples,
            "" if new_examples == 1 else "s",
            f", {removed} removed" if removed else "",
            data,
        )
        return JSONResponse(
            {
                "status": "emitted",
                "event": EVENT_NAME,
                "id": event["id"],
                "project": project,
                "new_examples": new_examples,
            },
            status_code=202,
        )

    def redact(self, text: str) -> str:
        return text.replace(self.config.secret.get_secret_value(), "[REDACTED]")

    # -- routes
    async def label_studio(self, request: Request) -> JSONResponse:
        async def handle() -> JSONResponse:
            self.check_query(request)
            self.check_secret(request)
            hook = parse_label_studio(self.parse_json(await self.read_body(request)))
            route = self.config.label_studio.get(hook.project_id)
            if route is None:
                raise Reject(
                    404,
                    f"{hook.action}: Label Studio project {hook.project_id} is not mapped; "
                    "add it under 'label_studio' in the relay config",
                )
            source = f"label-studio {hook.action} (project {hook.project_id})"
            try:
                return await self.emit_once(
                    hook.keys,
                    lambda: self.emit(
                        route.project,
                        route.target,
                        hook.new_examples,
                        source,
                        action=hook.action,
                        removed_examples=hook.removed,
                    ),
                )
            except _Replay:
                raise Reject(
                    200,
                    f"{hook.action}: a replay (every annotation in it was already emitted in this state, "
                    "same id and updated_at); acknowledged, nothing emitted",
                    "ignored:replay",
                ) from None

        return await self.answer(request, handle)

    async def generic(self, request: Request) -> JSONResponse:
        async def handle() -> JSONResponse:
            self.check_query(request)
            self.check_secret(request)
            body = await self.read_body(request)
            signature = self.check_signature(request, body)
            raw = self.parse_json(body)
            if not isinstance(raw, dict):
                raise Reject(
                    422, f"found a JSON {type(raw).__name__}, expected {{project, data, new_examples}}"
                )
            try:
                payload = GenericPayload.model_validate(raw)
            except ValidationError as exc:
                raise Reject(422, validation_problems(exc)) from None
            try:
                return await self.emit_once(
                    [("generic", signature)],
                    lambda: self.emit(payload.project, payload.data, payload.new_examples, "generic"),
                )
            except _Replay:
                raise Reject(
                    409,
                    f"this signed delivery (same {self.config.timestamp_header} and body) was already "
                    "accepted: a replay; sign each new delivery with its own timestamp",
                ) from None

        return await self.answer(request, handle)

    async def answer(self, request: Request, handle: Callable[[], Awaitable[JSONResponse]]) -> JSONResponse:
        try:
            return await handle()
        except Reject as reject:
            # backslashreplace: whatever a message quotes, the JSON answer and the log line can encode it
            message = self.redact(reject.message).encode("utf-8", "backslashreplace").decode("utf-8")
            if reject.status < 300:
                self.stats.add(reject.counter or "ignored")
                logger.debug("%s: %s", request.url.path, message)
                return JSONResponse({"status": "ignored", "detail": message}, status_code=reject.status)
            self.stats.add(f"rejected:{reject.status}")
            client = request.client.host if request.client else "?"
            logger.warning(
                "%s from %s: HTTP %d, %s; nothing emitted", request.url.path, client, reject.status, message
            )
            return JSONResponse(
                {"status": "rejected", "detail": f"{message}; nothing was emitted"}, status_code=reject.status
            )

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "counts": self.stats.snapshot()})


def create_app(config: RelayConfig, emitter: Emitter, stats: RelayStats | None = None) -> Starlette:
    """The relay as an ASGI app; ``app.state.stats`` holds the outcome counters."""
    relay = _Relay(config, emitter, stats if stats is not None else RelayStats())
    app = Starlette(
        routes=[
            Route("/hooks/label-studio", relay.label_studio, methods=["POST"]),
            Route("/hooks/generic", relay.generic, methods=["POST"]),
            Route("/healthz", relay.healthz, methods=["GET"]),
        ]
    )
    app.state.stats = relay.stats
    return app
