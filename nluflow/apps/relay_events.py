"""The relay's output: ``nlu.dataset.annotated`` events in Prefect's shape, the signature of generic
deliveries, and :class:`PrefectApiEmitter` (plain HTTP to ``POST /api/events``, no Prefect import)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

EVENT_NAME = "nlu.dataset.annotated"
RESOURCE_PREFIX = "nluflow.dataset."
DEFAULT_SIGNATURE_HEADER = "X-Nluflow-Signature"
DEFAULT_TIMESTAMP_HEADER = "X-Nluflow-Timestamp"
EMIT_TIMEOUT_SECONDS = 5.0
EMIT_CONNECT_TIMEOUT_SECONDS = 2.0
BODY_EXCERPT_CHARS = 200

Emitter = Callable[[dict[str, Any]], object]
"""Receives one event (Prefect's event shape, JSON-ready); raises if it could not hand it on."""


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
