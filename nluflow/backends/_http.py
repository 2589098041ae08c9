"""The one HTTP layer of the remote backends: timeouts, retries, auth, redaction, polling.

The retry decision is three small pure functions, so each can be tested on its own::

    parse_retry_after(header, now)      -> seconds asked for, or None (seconds or HTTP date, capped)
    backoff_delay(attempt, after, rng)  -> seconds to wait (the server's value, else capped exponential
                                           backoff with jitter)
    should_retry(status | exception)    -> bool (408, 429, >= 500, transport errors)

``request_with_retries`` applies them: a 4xx other than 408/429 fails at once with a typed
``HTTPStatusError`` that carries the evidence (status, request id, a short body excerpt, secrets redacted);
retryable failures are retried with backoff, then raise ``TransientHTTPError`` (a ``TransientBackendError``).
A POST that may start a job is retried only when it carries an idempotency key (the same key on every
attempt) or when the caller marks it safe; otherwise only failures that prove the request was not processed
(a refused connection, a 429) are retried, and the backend decides what to do (e.g. look for a running job).

Nothing here sleeps or reads the clock directly: clients take ``transport``, ``sleep`` and ``clock``.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import httpx

from nluflow.backends.base import JobState, JobStatus
from nluflow.backends.errors import (
    AuthenticationError,
    ContractError,
    HTTPStatusError,
    MalformedResponseError,
    TransientHTTPError,
)
from nluflow.errors import BackendError, TrainingFailedError

logger = logging.getLogger("nluflow.backends.http")

# Timeouts (seconds). Connect short: an unreachable host should fail fast; read long enough for a busy API.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 60.0
POOL_TIMEOUT = 10.0

# Retries: attempts after the first one, and the backoff bounds (seconds).
MAX_RETRIES = 4
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Share of a computed backoff taken off at random, so clients that failed together do not retry together.
JITTER = 0.25
# The longest Retry-After we honour; a server asking for more is retried after this long.
MAX_RETRY_AFTER = 120.0

# OAuth2 tokens are refreshed this long before ``expires_in`` runs out (or at half-life, if that is sooner).
TOKEN_REFRESH_MARGIN = 60.0

# Characters of a response body kept as evidence in an error.
BODY_EXCERPT_CHARS = 300

# Polling between status calls (seconds): first wait, growth factor, longest wait.
POLL_FIRST_DELAY = 1.0
POLL_FACTOR = 1.5
POLL_MAX_DELAY = 30.0

RETRYABLE_STATUSES = frozenset({408, 429})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-correlation-id", "x-amzn-requestid", "traceparent")
REQUEST_ID_FIELDS = ("traceId", "requestId", "request_id", "trace_id")

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def default_timeout(read: float = READ_TIMEOUT) -> httpx.Timeout:
    """Explicit connect/read/write/pool timeouts; ``read`` is raised for calls that train synchronously."""
    return httpx.Timeout(connect=CONNECT_TIMEOUT, read=read, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT)


def make_client(
    base_url: str,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """An httpx client with explicit timeouts and no redirects (a redirect could carry credentials away)."""
    _install_log_redaction()
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        transport=transport,
        timeout=timeout or default_timeout(),
        headers=dict(headers or {}),
        follow_redirects=False,
    )


# ------------------------------------------------------------------------------------------- retry decision


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header (delta-seconds or HTTP date), capped.

    ``now`` is the current wall-clock time (epoch seconds), used for the HTTP-date form. Returns None when
    the header is missing or cannot be read; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" (zone unknown); HTTP dates are GMT, so read it as such
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0).

    The server's ``Retry-After`` wins when given (capped); otherwise capped exponential backoff with up to
    ``JITTER`` of it taken off at random.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    base = min(INITIAL_BACKOFF * (2.0 ** max(attempt, 0)), MAX_BACKOFF)
    return base * (1.0 - JITTER * rng.random())


def should_retry(outcome: int | BaseException) -> bool:
    """Whether a status code or an exception is worth retrying: 408, 429, >= 500 and transport errors only.

    Transport errors that mean a bug rather than bad luck (an unsupported URL scheme, a malformed request)
    are not retried.
    """
    if isinstance(outcome, bool):  # bool is an int; never a status
        return False
    if isinstance(outcome, int):
        return outcome in RETRYABLE_STATUSES or outcome >= 500
    if isinstance(outcome, MalformedResponseError | TransientHTTPError):
        return True
    return isinstance(
        outcome, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError
    )


def proves_not_processed(outcome: int | BaseException) -> bool:
    """Failures after which the server certainly did not act on the request, so even a POST may be resent."""
    if isinstance(outcome, bool):
        return False
    if isinstance(outcome, int):
        return outcome == 429
    return isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)


# -------------------------------------------------------------------------------------------- redaction

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


def _install_log_redaction() -> None:
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


# ------------------------------------------------------------------------------------------------- auth


class Auth(Protocol):
    """Adds credentials to a request; ``refresh`` says whether a 401 may be cured by new credentials."""

    can_refresh: bool

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None: ...

    def invalidate(self) -> None: ...

    def secrets(self) -> list[str]: ...


class HeaderAuth:
    """A static credential in a header: ``X-API-Key: <key>``, ``Authorization: <token>``, or a bearer JWT."""

    can_refresh = False

    def __init__(self, header: str, value: str, prefix: str = "") -> None:
        self.header = header
        self._value = value
        self._prefix = prefix

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers[self.header] = f"{self._prefix}{self._value}"

    def invalidate(self) -> None:
        return None

    def secrets(self) -> list[str]:
        return [self._value]

    def __repr__(self) -> str:
        return f"HeaderAuth(header={self.header!r}, value={REDACTED!r})"


def api_key_auth(key: str, header: str = "X-API-Key") -> HeaderAuth:
    return HeaderAuth(header, key)


def bearer_auth(token: str) -> HeaderAuth:
    """``Authorization: Bearer <token>`` (e.g. a Rasa JWT)."""
    return HeaderAuth("Authorization", token, prefix="Bearer ")


class QueryTokenAuth:
    """A static token in the query string (Rasa's ``?token=``)."""

    can_refresh = False

    def __init__(self, value: str, param: str = "token") -> None:
        self.param = param
        self._value = value

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        params[self.param] = self._value

    def invalidate(self) -> None:
        return None

    def secrets(self) -> list[str]:
        return [self._value]

    def __repr__(self) -> str:
        return f"QueryTokenAuth(param={self.param!r}, value={REDACTED!r})"


@dataclass
class _Token:
    header_value: str
    raw: str
    expires_at: float


class OAuth2ClientCredentials:
    """OAuth2 client-credentials tokens, cached until shortly before ``expires_in`` runs out.

    A 401 invalidates the cached token so the next attempt fetches a new one (``request_with_retries`` does
    that once per request). The token request itself goes through the same retry layer, without auth.
    """

    can_refresh = True

    def __init__(
        self,
        session: HttpSession,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
    ) -> None:
        self._session = session
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self.tokens_fetched = 0
        session.redactor.add(client_secret)

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def secrets(self) -> list[str]:
        token = self._token
        return [self._client_secret] + ([token.raw] if token else [])

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = self._current().header_value

    def _current(self) -> _Token:
        with self._lock:
            token = self._token
            if token is None or self._session.clock() >= token.expires_at:
                token = self._fetch()
                self._token = token
            return token

    def _fetch(self) -> _Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        if self.scope:
            form["scope"] = self.scope
        try:
            response = self._session.request(
                "POST", self.token_url, data=form, retry_safe=True, expect_json=True, use_auth=False
            )
        except HTTPStatusError as exc:
            raise AuthenticationError(
                f"the token endpoint refused the client credentials of client {self.client_id!r} "
                f"(HTTP {exc.status}: {exc.body_excerpt or 'no body'}); check the client id and secret in "
                "the block; nothing was sent to the platform",
                exc.method,
                exc.url,
                exc.status,
                exc.request_id,
                exc.body_excerpt,
            ) from None
        body = response.json()
        raw = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(raw, str) or not raw:
            raise ContractError(
                f"the token endpoint {self._session.redactor.url(response.url)} answered without an "
                "'access_token'; expected an OAuth2 token response {access_token, token_type, expires_in}",
                "POST",
                self._session.redactor.url(response.url),
                response.status_code,
                request_id_of(response),
            )
        self._session.redactor.add(raw)
        token_type = str(body.get("token_type") or "Bearer")
        if token_type.lower() == "bearer":
            token_type = "Bearer"
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        margin = min(TOKEN_REFRESH_MARGIN, lifetime / 2.0)
        self.tokens_fetched += 1
        logger.debug("fetched an access token for client %s (expires in %.0f s)", self.client_id, lifetime)
        return _Token(f"{token_type} {raw}", raw, self._session.clock() + lifetime - margin)


# ---------------------------------------------------------------------------------------------- requests


def _evidence(
    method: str, url: str, response: httpx.Response, redact: Callable[[str], str]
) -> tuple[str, str, int, str | None, str]:
    return method, url, response.status_code, request_id_of(response), body_excerpt(response, redact)


def request_with_retries(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    auth: Auth | None = None,
    retry_safe: bool | None = None,
    idempotency_key: str | None = None,
    idempotency_header: str = IDEMPOTENCY_HEADER,
    expect_json: bool = False,
    classify: Callable[[httpx.Response], BaseException | None] | None = None,
    max_retries: int = MAX_RETRIES,
    sleep: Sleep = time.sleep,
    wall_clock: Clock = time.time,
    rng: random.Random | None = None,
    redactor: Redactor | None = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: httpx.Timeout | None = None,
    json_body: Any = None,
    content: bytes | str | None = None,
    data: Mapping[str, Any] | None = None,
    files: Mapping[str, Any] | None = None,
) -> httpx.Response:
    """Send one logical request, retrying what is worth retrying; return the 2xx response.

    - ``retry_safe``: whether resending cannot do harm. Default: true for GET/PUT/DELETE and for any request
      with an ``idempotency_key`` (sent in ``idempotency_header``, the same on every attempt), else false.
      An unsafe request is resent only after failures that prove it was not processed.
    - ``expect_json``: the 2xx body must be JSON; a garbled one is retried like a 5xx (if safe).
    - ``classify``: a hook that turns a platform-specific answer into an exception before the generic rules
      (e.g. Rasa's 500 ``TrainingError`` is a failed training, not a server hiccup).
    - A 401 with refreshable auth invalidates the token and is retried once, outside the retry budget.
    """
    redact = redactor if redactor is not None else Redactor()
    if auth is not None:
        for secret in auth.secrets():
            redact.add(secret)
    rng = rng or random.Random()
    method = method.upper()
    safe = retry_safe if retry_safe is not None else (method in SAFE_METHODS or idempotency_key is not None)
    attempt = 0
    refreshed = False
    while True:
        req_headers = dict(headers or {})
        req_params = dict(params or {})
        if auth is not None:
            auth.apply(req_headers, req_params)
        if idempotency_key is not None:
            req_headers[idempotency_header] = idempotency_key
        shown_url = redact.url(client.build_request(method, url).url)
        try:
            response = client.request(
                method,
                url,
                params=req_params or None,
                headers=req_headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                json=json_body,
                content=content,
                data=data,
                files=files,
            )
        except httpx.TransportError as exc:
            kind = type(exc).__name__
            if not should_retry(exc):
                raise BackendError(
                    f"{method} {shown_url} could not be sent ({kind}: {redact(str(exc))}); this is a "
                    "configuration problem (check the URL in the block), so it is not retried"
                ) from None
            if not safe and not proves_not_processed(exc):
                raise TransientHTTPError(
                    f"{method} {shown_url} failed with {kind} after the request may have reached the server; "
                    "it was not resent here because that could start a second job; the caller checks for "
                    "a running job before submitting again",
                    method,
                    shown_url,
                ) from None
            if attempt >= max_retries:
                raise TransientHTTPError(
                    f"{method} {shown_url} failed with {kind} on {attempt + 1} attempts; gave up after the "
                    f"retry budget ({max_retries} retries); the step can be retried later",
                    method,
                    shown_url,
                ) from None
            delay = backoff_delay(attempt, None, rng)
            logger.warning(
                "%s %s failed (%s); retry %d/%d in %.2f s",
                method,
                shown_url,
                kind,
                attempt + 1,
                max_retries,
                delay,
            )
            sleep(delay)
            attempt += 1
            continue

        status = response.status_code
        if classify is not None:
            mapped = classify(response)
            if mapped is not None:
                raise mapped
        if status == 401 and auth is not None and auth.can_refresh and not refreshed:
            logger.info("%s %s answered 401; refreshing the access token once", method, shown_url)
            auth.invalidate()
            refreshed = True
            continue
        malformed = False
        if 200 <= status < 300:
            if not expect_json:
                return response
            try:
                response.json()
                return response
            except (ValueError, UnicodeDecodeError):
                malformed = True
            if not safe or attempt >= max_retries:
                raise MalformedResponseError(
                    f"{method} {shown_url} answered {status} with a body that is not JSON "
                    f"({body_excerpt(response, redact)!r}); expected a JSON document; "
                    + (
                        "not resent because that could start a second job"
                        if not safe
                        else f"gave up after the retry budget ({max_retries} retries)"
                    ),
                    *_evidence(method, shown_url, response, redact),
                )
        elif not should_retry(status):
            evidence = _evidence(method, shown_url, response, redact)
            rid = f", request id {evidence[3]}" if evidence[3] else ""
            text = (
                f"{method} {shown_url} answered {status}{rid}: {evidence[4] or 'no body'}; "
                "a client error is not retried"
            )
            if status in (401, 403):
                hint = " (a fresh token was refused too)" if refreshed else ""
                raise AuthenticationError(text + "; check the credentials in the block" + hint, *evidence)
            raise HTTPStatusError(text, *evidence)
        elif not safe and not proves_not_processed(status):
            raise TransientHTTPError(
                f"{method} {shown_url} answered {status}; not resent here because the request may have been "
                "processed and resending could start a second job",
                *_evidence(method, shown_url, response, redact),
            )
        elif attempt >= max_retries:
            raise TransientHTTPError(
                f"{method} {shown_url} answered {status} on {attempt + 1} attempts; gave up after the retry "
                f"budget ({max_retries} retries); the step can be retried later",
                *_evidence(method, shown_url, response, redact),
            )
        after = None
        if status in (429, 503):
            after = parse_retry_after(response.headers.get("Retry-After"), wall_clock())
        delay = backoff_delay(attempt, after, rng)
        logger.warning(
            "%s %s answered %s; retry %d/%d in %.2f s%s",
            method,
            shown_url,
            f"{status} with a body that is not JSON" if malformed else status,
            attempt + 1,
            max_retries,
            delay,
            " (Retry-After)" if after is not None else "",
        )
        sleep(delay)
        attempt += 1


@dataclass
class HttpSession:
    """An httpx client with everything the retry layer needs, injected (transport, sleep, clocks, rng)."""

    client: httpx.Client
    auth: Auth | None = None
    sleep: Sleep = time.sleep
    clock: Clock = time.monotonic
    wall_clock: Clock = time.time
    rng: random.Random = field(default_factory=random.Random)
    redactor: Redactor = field(default_factory=Redactor)
    max_retries: int = MAX_RETRIES

    def __repr__(self) -> str:
        return f"HttpSession(base_url={self.redactor.url(self.client.base_url)!r}, auth={self.auth!r})"

    def request(
        self,
        method: str,
        url: str,
        *,
        use_auth: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        auth = self.auth if use_auth else None
        if auth is not None:
            for secret in auth.secrets():
                self.redactor.add(secret)
        return request_with_retries(
            self.client,
            method,
            url,
            auth=auth,
            max_retries=kwargs.pop("max_retries", self.max_retries),
            sleep=self.sleep,
            wall_clock=self.wall_clock,
            rng=self.rng,
            redactor=self.redactor,
            **kwargs,
        )

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send a request and return its decoded JSON body."""
        return self.request(method, url, expect_json=True, **kwargs).json()

    def close(self) -> None:
        self.client.close()


def require(body: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``body[key]`` if present and of the expected type, else a ``ContractError`` saying what was found."""
    if not isinstance(body, dict):
        raise ContractError(f"{what}: expected a JSON object, found {type(body).__name__}")
    value = body.get(key)
    if not isinstance(value, kind):
        found = "nothing" if key not in body else f"{type(value).__name__} {json.dumps(value)[:60]}"
        raise ContractError(
            f"{what}: expected field {key!r}, found {found}; the platform's API may have changed"
        )
    return value


# ------------------------------------------------------------------------------------------------ polling


def wait_for_job(
    status: Callable[[], JobStatus],
    *,
    max_wait: float,
    what: str,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    on_progress: Callable[[float, str], None] | None = None,
    first_delay: float = POLL_FIRST_DELAY,
    factor: float = POLL_FACTOR,
    max_delay: float = POLL_MAX_DELAY,
) -> JobStatus:
    """Poll ``status`` with growing waits until the job ends; return the final status if it succeeded.

    A job that fails or is cancelled, or that has not ended within ``max_wait`` seconds, raises
    ``TrainingFailedError`` with the last state and the platform's reason.
    """
    deadline = clock() + max_wait
    delay = first_delay
    while True:
        current = status()
        if on_progress is not None:
            on_progress(current.progress, current.message or current.state.value)
        if current.state is JobState.SUCCEEDED:
            return current
        if current.state.terminal:
            raise TrainingFailedError(
                f"{what} ended {current.state.value}: {current.message or 'no reason given'}; "
                "no model was produced"
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise TrainingFailedError(
                f"{what} did not finish within {max_wait:.0f} s (last state {current.state.value}, "
                f"{current.progress:.0%}); it was left running on the platform and no model was produced"
            )
        sleep(min(delay, remaining))
        delay = min(delay * factor, max_delay)
