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

This module never imports Prefect: :class:`PrefectApiEmitter` speaks plain HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nluflow import jsonsafe
from nluflow.errors import ConfigError
from nluflow.sources.base import LABEL_STUDIO_SLUG, SOURCE_SLUGS, is_source_ref
from nluflow.store import ID_PATTERN


class _LocalLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The relay's log lines stay local: marked so Prefect's API log handler (attached to ``nluflow`` loggers
    by ``PREFECT_LOGGING_EXTRA_LOGGERS``) skips them instead of warning that there is no flow run id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**kwargs.get("extra", {}), "send_to_api": False}
        return msg, kwargs


logger = _LocalLog(logging.getLogger(__name__), {})

EVENT_NAME = "nlu.dataset.annotated"
RESOURCE_PREFIX = "nluflow.dataset."
DEFAULT_SECRET_HEADER = "X-Relay-Secret"
DEFAULT_SIGNATURE_HEADER = "X-Nluflow-Signature"
DEFAULT_TIMESTAMP_HEADER = "X-Nluflow-Timestamp"
DEFAULT_SIGNATURE_TOLERANCE_SECONDS = 300  # Stripe's and Slack's window: a signed body is good for 5 minutes
DEFAULT_REPLAY_MEMORY = 10_000  # delivery keys remembered (an LRU): ~1-2 MB at most
# Query parameter names that can only mean a credential; the relay's routes take no query at all.
SECRET_QUERY_NAMES = frozenset({"secret", "token", "key", "api_key", "apikey", "password", "signature"})
BODY_TIMEOUT_SECONDS = 10.0  # a sender that trickles its body this long holds a connection for nothing
DEFAULT_SECRET_ENV = "NLUFLOW_RELAY_SECRET"
# Label Studio bodies are 3-8 KB per task; a bulk ANNOTATIONS_CREATED over thousands of tasks is megabytes.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MIN_SECRET_CHARS = 16
EMIT_TIMEOUT_SECONDS = 5.0
EMIT_CONNECT_TIMEOUT_SECONDS = 2.0
BODY_EXCERPT_CHARS = 200

# Label Studio actions that change the annotated data and start a retrain (deletions too: a deleted
# annotation or task must leave the training data).
CREATE_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTIONS = frozenset({"ANNOTATIONS_DELETED", "TASKS_DELETED"})
RETRAIN_ACTIONS = CREATE_ACTIONS | DELETE_ACTIONS

Emitter = Callable[[dict[str, Any]], object]
"""Receives one event (Prefect's event shape, JSON-ready); raises if it could not hand it on."""


# ------------------------------------------------------------------------------------------------ events


def resource_id(project: str) -> str:
    """The event resource of a project's dataset: ``nluflow.dataset.<project>``."""
    return f"{RESOURCE_PREFIX}{project}"


def annotated_event(
    project: str,
    data: str,
    new_examples: int,
    *,
    event_id: uuid.UUID | None = None,
    occurred: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``nlu.dataset.annotated`` event in Prefect's event shape, ready for ``POST /api/events``.

    ``data`` is what the retrain reads: a source block reference (``nluflow-label-studio-source/<name>``)
    or a path. ``extra`` adds payload fields (the relay adds ``action`` and ``removed_examples``).
    """
    return {
        "id": str(event_id or uuid.uuid4()),
        "occurred": (occurred or datetime.now(UTC)).isoformat(),
        "event": EVENT_NAME,
        "resource": {"prefect.resource.id": resource_id(project)},
        "related": [],
        "payload": {"project": project, "data": data, "new_examples": new_examples, **extra},
    }


def sign(body: bytes, secret: str, timestamp: int | str) -> str:
    """The ``X-Nluflow-Signature`` value of ``body`` sent at ``timestamp`` (Unix seconds, the
    ``X-Nluflow-Timestamp`` header): ``sha256=`` + hex HMAC-SHA256 of ``b"<timestamp>." + body`` with the
    shared secret. Signing the time with the body is what lets the relay refuse a stale or replayed copy."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The timestamp and signature headers of a generic delivery of ``body``, signed now (or at
    ``timestamp``)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {DEFAULT_TIMESTAMP_HEADER: ts, DEFAULT_SIGNATURE_HEADER: sign(body, secret, ts)}


# ------------------------------------------------------------------------------------------------ config


class LabelStudioRoute(BaseModel):
    """Where the annotations of one Label Studio project go: an nluflow project and the source it reads.

    ``source`` names the ``LabelStudioSource`` block the retrain exports the project through: a block name
    (``bookings``, read as ``nluflow-label-studio-source/bookings``) or a full source reference. ``data`` (a
    path) is still accepted instead, for data that something else exports; give exactly one of the two.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(pattern=ID_PATTERN, description="The nluflow project to retrain.")
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Source block: '<name>' of a LabelStudioSource, or '<source-slug>/<name>'.",
    )
    data: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A data path handed to the retrain instead of a source (e.g. where an export lands).",
    )

    @field_validator("source")
    @classmethod
    def _source_reference(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ref = value if "/" in value else f"{LABEL_STUDIO_SLUG}/{value}"
        if not is_source_ref(ref):
            raise ValueError(
                f"{value!r} is not a source block; expected a block name or "
                f"'<{'|'.join(SOURCE_SLUGS)}>/<block-name>'"
            )
        return ref

    @model_validator(mode="after")
    def _one_target(self) -> LabelStudioRoute:
        if (self.source is None) == (self.data is None):
            raise ValueError("give exactly one of 'source' (a LabelStudioSource block) and 'data' (a path)")
        return self

    @property
    def target(self) -> str:
        """What the retrain's ``data`` gets: the source reference, or the path."""
        return self.source or self.data or ""


class RelayConfig(BaseModel):
    """The relay's shared secret, header names, size limit and Label Studio project routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretStr = Field(description="Shared secret: the header value, and the HMAC key.")
    header: str = Field(
        default=DEFAULT_SECRET_HEADER,
        pattern=r"^[A-Za-z0-9_-]+$",  # the names Label Studio accepts for custom webhook headers
        description="Header carrying the shared secret.",
    )
    signature_header: str = Field(
        default=DEFAULT_SIGNATURE_HEADER,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Header carrying the HMAC-SHA256 signature of generic payloads.",
    )
    timestamp_header: str = Field(
        default=DEFAULT_TIMESTAMP_HEADER,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Header carrying the Unix time (seconds) a generic payload was signed at.",
    )
    signature_tolerance_seconds: int = Field(
        default=DEFAULT_SIGNATURE_TOLERANCE_SECONDS,
        gt=0,
        description="How far a generic payload's signed timestamp may be from the relay's clock.",
    )
    replay_memory: int = Field(
        default=DEFAULT_REPLAY_MEMORY,
        gt=0,
        description="Delivery keys remembered to refuse replays (an LRU; bounded memory, lost on restart).",
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0, description="Largest accepted body.")
    label_studio: dict[str, LabelStudioRoute] = Field(
        default_factory=dict, description="Label Studio project id → nluflow project and data location."
    )

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"the shared secret must have at least {MIN_SECRET_CHARS} characters")
        return value

    @field_validator("label_studio", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        # YAML reads `1:` as an int key; Label Studio ids arrive as ints in JSON too. Compare as text.
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        return value

    @classmethod
    def from_file(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> RelayConfig:
        """Read a YAML/JSON config; the secret comes from the environment variable named by ``secret_env``.

        The file never holds the secret (so it can live in the repo)::

            secret_env: NLUFLOW_RELAY_SECRET      # default
            header: X-Relay-Secret                # default
            label_studio:
              1: {project: bookings, source: bookings}   # LabelStudioSource block 'bookings'
              2: {project: support, source: nluflow-label-studio-source/support-ls}
        """
        env = os.environ if environ is None else environ
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read the relay config ({exc.strerror}); relay not started"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON ({exc}); relay not started") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: found a {type(raw).__name__}, expected a mapping (label_studio, header, ...); "
                "relay not started"
            )
        if "secret" in raw:
            raise ConfigError(
                f"{path}: found a 'secret' key; the secret must not be written in a file: put it in "
                f"the environment variable named by 'secret_env' (default {DEFAULT_SECRET_ENV}); "
                "relay not started"
            )
        secret_env = str(raw.pop("secret_env", DEFAULT_SECRET_ENV))
        secret = env.get(secret_env)
        if not secret:
            raise ConfigError(
                f"{path}: environment variable {secret_env} is not set; expected the shared secret "
                f"(at least {MIN_SECRET_CHARS} characters) also configured on the webhook; relay not started"
            )
        try:
            return cls.model_validate({**raw, "secret": secret})
        except ValidationError as exc:
            raise ConfigError(f"{path}: {_problems(exc)}; relay not started") from None


def _problems(exc: ValidationError) -> str:
    """Validation errors as ``field: message`` without the input values (they may hold secrets)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ emitter


class PrefectApiEmitter:
    """Posts events as a JSON list to ``{api_url}/events`` (Prefect's ``POST /api/events``), plain httpx.

    ``api_url`` is what ``PREFECT_API_URL`` holds (``http://127.0.0.1:4200/api``, or a Cloud workspace URL).
    ``api_key`` is sent as a bearer token (Prefect Cloud); ``auth_string`` (``user:password``, the server's
    ``PREFECT_SERVER_API_AUTH_STRING``) as basic auth and wins over the key, as in Prefect's own client.
    Raises ``httpx.HTTPError`` (transport error, or a non-2xx answer with a body excerpt).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        auth_string: str | None = None,
        timeout: float = EMIT_TIMEOUT_SECONDS,
    ) -> None:
        self.url = api_url.rstrip("/") + "/events"
        self._api_key = api_key
        self._auth_string = auth_string
        self._transport = transport
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, EMIT_CONNECT_TIMEOUT_SECONDS))

    def __repr__(self) -> str:  # never the key
        return f"PrefectApiEmitter({self.url!r})"

    def __call__(self, event: dict[str, Any]) -> None:
        self.emit([event])

    def emit(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Send ``events`` in one request; the server answers 204 when it has accepted them."""
        headers = {"Content-Type": "application/json"}
        auth: httpx.Auth | None = None
        if self._auth_string:
            user, _, password = self._auth_string.partition(":")
            auth = httpx.BasicAuth(user, password)
        elif self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        with httpx.Client(transport=self._transport, timeout=self._timeout, auth=auth) as client:
            response = client.post(self.url, content=json.dumps(list(events)), headers=headers)
        if response.status_code >= 300:
            excerpt = " ".join(response.text.split())[:BODY_EXCERPT_CHARS]
            raise httpx.HTTPStatusError(
                f"POST {self.url} answered HTTP {response.status_code}: {excerpt}; "
                "the events were not accepted",
                request=response.request,
                response=response,
            )


# ------------------------------------------------------------------------------------------------ the app


class RelayStats:
    """Outcome counters: ``emitted``, ``ignored:<ACTION>``, ``rejected:<status>``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, key: str) -> None:
        self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class _Reject(Exception):
    """An answer other than 'emitted'; ``status`` < 300 means acknowledged and ignored."""

    def __init__(self, status: int, message: str, counter: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.counter = counter


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


@dataclass(frozen=True)
class _LabelStudioHook:
    action: str
    project_id: str
    new_examples: int
    removed: int = 0
    keys: tuple[tuple[str, ...], ...] = ()  # de-duplication keys; empty: the delivery cannot be told apart


def _delivery_keys(
    project_id: str, items: Sequence[Mapping[str, Any]], kind: str
) -> tuple[tuple[str, ...], ...]:
    """One key per item: ``(annotation, project, id, updated_at)`` for created/updated annotations (the same
    annotation in the same state is the same data), ``(kind, project, id)`` for deleted ones. Empty when an
    item lacks what identifies it: such a delivery is never taken for a replay."""
    keys: list[tuple[str, ...]] = []
    for item in items:
        item_id = item.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, int | str):
            return ()
        if kind == "annotation":
            updated = item.get("updated_at")
            if not isinstance(updated, str) or not updated:
                return ()
            keys.append((kind, project_id, str(item_id), updated))
        else:
            keys.append((kind, project_id, str(item_id)))
    return tuple(keys)


class _GenericPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(pattern=ID_PATTERN)
    data: str = Field(min_length=1, max_length=4096)
    new_examples: int = Field(default=0, ge=0)


def _label_studio_project_id(body: Mapping[str, Any], annotation: object) -> str | None:
    project = body.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    if project is None and isinstance(annotation, Mapping):
        project = annotation.get("project")
    if isinstance(project, bool) or not isinstance(project, int | str) or str(project) == "":
        return None
    return str(project)


def _parse_label_studio(body: object) -> _LabelStudioHook:
    """What a Label Studio webhook body means for retraining (raises ``_Reject`` otherwise).

    ``new_examples`` counts annotations created and not cancelled (a skipped task adds no example);
    an ``ANNOTATION_UPDATED`` re-labels an existing example: 0 new, but the data changed, so it is emitted.
    """
    if not isinstance(body, Mapping):
        raise _Reject(422, f"found a JSON {type(body).__name__}, expected a Label Studio webhook object")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise _Reject(422, "found no 'action', expected a Label Studio webhook (e.g. ANNOTATION_CREATED)")
    if action not in RETRAIN_ACTIONS:
        shown = action if len(action) <= 60 else action[:59] + "…"  # a bomb is never echoed whole
        raise _Reject(
            200,
            f"action {shown} does not start a retrain (only {', '.join(sorted(RETRAIN_ACTIONS))}); ignored",
            f"ignored:{shown}",
        )
    if action in DELETE_ACTIONS:
        return _parse_deletion(body, action)
    # ANNOTATIONS_CREATED carries a list under the singular key 'annotation' (Label Studio 1.23).
    annotation = body.get("annotation", body.get("annotations"))
    items = annotation if isinstance(annotation, list) else [annotation]
    if not items or not all(isinstance(item, Mapping) for item in items):
        raise _Reject(422, f"{action}: found no annotation object(s) under 'annotation'; nothing emitted")
    project_id = _label_studio_project_id(body, items[0])
    if project_id is None:
        raise _Reject(422, f"{action}: found no project id ('project.id'); nothing emitted")
    created = sum(1 for item in items if not item.get("was_cancelled"))
    keys = _delivery_keys(project_id, items, "annotation")
    if action == "ANNOTATION_UPDATED":
        return _LabelStudioHook(action, project_id, 0, keys=keys)
    if created == 0:
        raise _Reject(
            200,
            f"{action}: only skipped (cancelled) annotations, no new example; ignored",
            f"ignored:{action}",
        )
    return _LabelStudioHook(action, project_id, created, keys=keys)


def _parse_deletion(body: Mapping[str, Any], action: str) -> _LabelStudioHook:
    """``ANNOTATIONS_DELETED`` (``annotations: [{"id"}]``) or ``TASKS_DELETED`` (``tasks: [{"id"}]``, and
    ``project`` as a bare id in 1.23.2): 0 new examples, ``removed`` deleted items; the data changed."""
    key = "annotations" if action == "ANNOTATIONS_DELETED" else "tasks"
    items = body.get(key)
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise _Reject(422, f"{action}: found no list of deleted items under {key!r}; nothing emitted")
    project_id = _label_studio_project_id(body, None)
    if project_id is None:
        raise _Reject(422, f"{action}: found no project id ('project'); nothing emitted")
    kind = "deleted-annotation" if action == "ANNOTATIONS_DELETED" else "deleted-task"
    return _LabelStudioHook(
        action, project_id, 0, removed=len(items), keys=_delivery_keys(project_id, items, kind)
    )


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
            raise _Reject(
                400,
                "the URL's query string carries a secret (or a parameter named like one); the relay takes no "
                f"query: send the shared secret only in header {self.config.header}, and rotate a secret "
                "that was put in a URL",
            )

    def check_secret(self, request: Request) -> None:
        given = request.headers.get(self.config.header)
        if given is None:
            raise _Reject(401, f"missing header {self.config.header}: expected the relay's shared secret")
        if not hmac.compare_digest(given.encode(), self._secret):
            raise _Reject(403, f"header {self.config.header} does not match the relay's shared secret")

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Reject(400, "Content-Length is not a number")
            if int(declared) > limit:
                raise _Reject(413, f"body of {int(declared)} bytes, expected at most {limit}")
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:  # a sender without (or lying about) Content-Length
                        raise _Reject(413, f"body larger than {limit} bytes")
        except TimeoutError:
            raise _Reject(
                408, f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s ({len(body)} bytes came)"
            ) from None
        except ClientDisconnect:  # one warning line, not a traceback per dropped connection
            raise _Reject(400, f"the client disconnected after {len(body)} bytes of its body") from None
        return bytes(body)

    def check_signature(self, request: Request, body: bytes) -> str:
        """Check timestamp and signature; returns the signature (the delivery's replay key)."""
        ts_name, name = self.config.timestamp_header, self.config.signature_header
        stamp = request.headers.get(ts_name)
        if stamp is None:
            raise _Reject(
                401, f"missing header {ts_name}: expected the Unix time (seconds) the body was signed at"
            )
        stamp = stamp.strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise _Reject(400, f"header {ts_name} is not a Unix time in whole seconds")
        given = request.headers.get(name)
        if given is None:
            raise _Reject(
                401, f"missing header {name}: expected sha256=<hex HMAC-SHA256 of '<timestamp>.<body>'>"
            )
        expected = sign(body, self.config.secret.get_secret_value(), stamp)
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            raise _Reject(403, f"header {name} does not match the HMAC-SHA256 of '<{ts_name}>.<body>'")
        age = int(time.time()) - int(stamp)
        limit = self.config.signature_tolerance_seconds
        if abs(age) > limit:
            when = f"{age} s ago" if age > 0 else f"{-age} s in the future"
            raise _Reject(
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
            raise _Reject(400, f"malformed JSON: {exc}") from None
        except RecursionError:
            raise _Reject(400, "malformed JSON: nested too deeply to read; expected a JSON object") from None
        except (UnicodeDecodeError, ValueError) as exc:
            where = (
                f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            )
            raise _Reject(400, f"malformed JSON{where}: expected a JSON object") from None
        place = jsonsafe.lone_surrogate(document)
        if place is not None:
            shown = place if len(place) <= 80 else place[:79] + "…"
            raise _Reject(
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
            raise _Reject(
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
            hook = _parse_label_studio(self.parse_json(await self.read_body(request)))
            route = self.config.label_studio.get(hook.project_id)
            if route is None:
                raise _Reject(
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
                raise _Reject(
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
                raise _Reject(
                    422, f"found a JSON {type(raw).__name__}, expected {{project, data, new_examples}}"
                )
            try:
                payload = _GenericPayload.model_validate(raw)
            except ValidationError as exc:
                raise _Reject(422, _problems(exc)) from None
            try:
                return await self.emit_once(
                    [("generic", signature)],
                    lambda: self.emit(payload.project, payload.data, payload.new_examples, "generic"),
                )
            except _Replay:
                raise _Reject(
                    409,
                    f"this signed delivery (same {self.config.timestamp_header} and body) was already "
                    "accepted: a replay; sign each new delivery with its own timestamp",
                ) from None

        return await self.answer(request, handle)

    async def answer(self, request: Request, handle: Callable[[], Awaitable[JSONResponse]]) -> JSONResponse:
        try:
            return await handle()
        except _Reject as reject:
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
