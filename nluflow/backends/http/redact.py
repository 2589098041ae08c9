"""Redaction of secrets from every text kept as evidence or logged, and the evidence of an HTTP answer."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import httpx

# Characters of a response body kept as evidence in an error.
BODY_EXCERPT_CHARS = 300
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-correlation-id", "x-amzn-requestid", "traceparent")
REQUEST_ID_FIELDS = ("traceId", "requestId", "request_id", "trace_id")

_SENSITIVE_KEYS = r"(?:token|access_token|refresh_token|api_key|apikey|client_secret|password|secret|jwt)"
_QUERY_SECRET = re.compile(rf"(?i)(\b{_SENSITIVE_KEYS}=)([^&\s\"'#]+)")
_JSON_SECRET = re.compile(rf"(?i)(\"{_SENSITIVE_KEYS}\"\s*:\s*\")([^\"]*)(\")")
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
REDACTED = "[REDACTED]"


class Redactor:
    """Removes known secrets (and anything that looks like a credential) from text kept as evidence."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        # Very short values would redact ordinary words; they are not credentials anyway.
        if not secret or len(secret) < 4:
            return
        if self is not _LOG_REDACTOR:
            _LOG_REDACTOR.add(secret)
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            if form not in self._secrets:
                self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _QUERY_SECRET.sub(rf"\1{REDACTED}", text)
        text = _JSON_SECRET.sub(rf"\1{REDACTED}\3", text)
        return _AUTH_VALUE.sub(rf"\1 {REDACTED}", text)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secret forms)"

    def url(self, url: str | httpx.URL) -> str:
        """The URL without credentials: userinfo dropped, sensitive query values redacted."""
        parts = urlsplit(str(url))
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return self(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")))


# Every secret any session has seen, for the filter on httpx's own loggers (they log full URLs, query
# tokens included, at INFO). Process-wide on purpose: a record does not say which client made it.
_LOG_REDACTOR = Redactor()


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        record.msg, record.args = _LOG_REDACTOR(message), ()
        return True


def install_log_redaction() -> None:
    """Redact every secret any client has seen from httpx's and httpcore's own log records."""
    for name in ("httpx", "httpcore"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in target.filters):
            target.addFilter(_RedactingFilter())


def request_id_of(response: httpx.Response) -> str | None:
    """The server's request id, from a header or from the error body (e.g. RFC 7807 ``traceId``)."""
    for header in REQUEST_ID_HEADERS:
        value = response.headers.get(header)
        if value:
            return str(value)
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(body, dict):
        for key in REQUEST_ID_FIELDS:
            value = body.get(key)
            if isinstance(value, str | int) and str(value):
                return str(value)
    return None


def body_excerpt(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """The start of the body as text, one line, secrets redacted."""
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return "<binary body>"
    text = redact(" ".join(text.split()))
    if len(text) > BODY_EXCERPT_CHARS:
        text = text[:BODY_EXCERPT_CHARS] + "…"
    return text
