"""One logical HTTP request: send once, decide, wait, send again; or raise one typed error.

``send_once`` sends a request once and returns its response (any status) or the transport error that stopped
it. ``HttpSession.send`` loops: a 2xx (with a JSON body where one is expected) is returned; a platform's
own ``classify`` hook may turn an answer into an error first; a 401 with refreshable auth refreshes the token
once, outside the retry budget; anything else is judged by the pure ``retry.decide`` (retry after N
seconds, or give up with a reason), and giving up raises the error of ``nluflow.backends.errors`` that
carries the evidence (status, request id, a short body excerpt, secrets redacted).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from nluflow.backends.base import ClosingClient
from nluflow.backends.errors import (
    AuthenticationError,
    ContractError,
    HTTPError,
    HTTPStatusError,
    MalformedResponseError,
    TransientHTTPError,
)
from nluflow.backends.http.auth import Auth
from nluflow.backends.http.options import Clock, HttpOptions, Sleep
from nluflow.backends.http.redact import Redactor, body_excerpt, install_log_redaction, request_id_of
from nluflow.backends.http.retry import (
    RETRY_AFTER_STATUSES,
    Attempt,
    GiveUp,
    GiveUpReason,
    decide,
    parse_retry_after,
)
from nluflow.errors import BackendError

logger = logging.getLogger("nluflow.backends.http")

IDEMPOTENCY_HEADER = "Idempotency-Key"

Classify = Callable[[httpx.Response], BaseException | None]


def make_client(
    base_url: str, options: HttpOptions | None = None, headers: Mapping[str, str] | None = None
) -> httpx.Client:
    """An httpx client with explicit timeouts and no redirects (a redirect could carry credentials away)."""
    options = options or HttpOptions()
    install_log_redaction()
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        transport=options.transport,
        timeout=options.timeout,
        headers=options.client_headers(headers),
        verify=options.verify,
        follow_redirects=False,
    )


@dataclass(frozen=True)
class Request:
    """One logical request as the caller describes it; every attempt sends it unchanged.

    - ``retry_safe``: whether resending cannot do harm. Default: true for GET/PUT/DELETE and for any request
      with an ``idempotency_key`` (sent in ``idempotency_header``, the same on every attempt), else false.
      An unsafe request is resent only after failures that prove it was not processed.
    - ``expect_json``: the 2xx body must be JSON; a garbled one is retried like a 5xx (if safe).
    - ``classify``: a hook that turns a platform-specific answer into an exception before the generic rules
      (e.g. Rasa's 500 ``TrainingError`` is a failed training, not a server hiccup).
    """

    method: str
    url: str
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    json_body: Any = None
    content: bytes | str | None = None
    data: Mapping[str, Any] | None = None
    files: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | None = None
    retry_safe: bool | None = None
    idempotency_key: str | None = None
    idempotency_header: str = IDEMPOTENCY_HEADER
    expect_json: bool = False
    classify: Classify | None = None
    use_auth: bool = True

    @property
    def idempotent(self) -> bool | None:
        """Whether resending is safe, when the caller or an idempotency key says so (else the method does)."""
        if self.retry_safe is not None:
            return self.retry_safe
        return True if self.idempotency_key is not None else None


def send_once(
    client: httpx.Client, request: Request, auth: Auth | None
) -> httpx.Response | httpx.TransportError:
    """Send ``request`` once: its response, whatever the status, or the transport error that stopped it."""
    headers = dict(request.headers or {})
    params = dict(request.params or {})
    if auth is not None:
        auth.apply(headers, params)
    if request.idempotency_key is not None:
        headers[request.idempotency_header] = request.idempotency_key
    try:
        return client.request(
            request.method,
            request.url,
            params=params or None,
            headers=headers,
            timeout=request.timeout if request.timeout is not None else httpx.USE_CLIENT_DEFAULT,
            json=request.json_body,
            content=request.content,
            data=request.data,
            files=request.files,
        )
    except httpx.TransportError as exc:
        return exc


def accepted(response: httpx.Response, expect_json: bool) -> bool:
    """A 2xx answer, with a JSON body where one is expected."""
    if not 200 <= response.status_code < 300:
        return False
    if not expect_json:
        return True
    try:
        response.json()
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@dataclass(frozen=True)
class _GaveUp:
    """A failed attempt the decision gave up on, with what its error message needs."""

    request: Request
    url: str  # redacted
    result: httpx.Response | httpx.TransportError
    reason: GiveUpReason
    attempt: Attempt
    refreshed: bool


class HttpSession(ClosingClient):
    """An httpx client with the retry layer around it; everything it needs comes from one ``HttpOptions``."""

    def __init__(
        self,
        client: httpx.Client,
        options: HttpOptions | None = None,
        auth: Auth | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.client = client
        self.options = options or HttpOptions()
        self.auth = auth
        self.redactor = redactor if redactor is not None else Redactor()
        self.rng = self.options.rng or random.Random()

    @classmethod
    def open(
        cls,
        base_url: str,
        options: HttpOptions | None = None,
        *,
        auth: Auth | None = None,
        headers: Mapping[str, str] | None = None,
        redactor: Redactor | None = None,
    ) -> HttpSession:
        """A session on a new client for ``base_url``."""
        return cls(make_client(base_url, options, headers), options, auth=auth, redactor=redactor)

    @property
    def sleep(self) -> Sleep:
        return self.options.sleep

    @property
    def clock(self) -> Clock:
        return self.options.clock

    @property
    def wall_clock(self) -> Clock:
        return self.options.wall_clock

    def __repr__(self) -> str:
        return f"HttpSession(base_url={self.redactor.url(self.client.base_url)!r}, auth={self.auth!r})"

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, url: str, **fields: Any) -> httpx.Response:
        """Send one logical request (``fields`` are those of ``Request``); return the accepted response."""
        return self.send(Request(method.upper(), url, **fields))

    def json(self, method: str, url: str, **fields: Any) -> Any:
        """Send a request and return its decoded JSON body."""
        return self.request(method, url, expect_json=True, **fields).json()

    def send(self, request: Request) -> httpx.Response:
        """Send until accepted; retry what ``decide`` says to retry; else raise the typed error."""
        auth = self.auth if request.use_auth else None
        for secret in auth.secrets() if auth is not None else ():
            self.redactor.add(secret)
        url = self.redactor.url(self.client.build_request(request.method, request.url).url)
        started, number, refreshed = self.clock(), 0, False
        while True:
            result = send_once(self.client, request, auth)
            if isinstance(result, httpx.Response):
                mapped = request.classify(result) if request.classify is not None else None
                if mapped is not None:
                    raise mapped
                if result.status_code == 401 and auth is not None and auth.can_refresh and not refreshed:
                    logger.info("%s %s answered 401; refreshing the access token once", request.method, url)
                    auth.invalidate()
                    refreshed = True
                    continue
                if accepted(result, request.expect_json):
                    return result
            attempt = self._attempt(request, result, number, started)
            decision = decide(attempt, self.options, self.rng.random())
            if isinstance(decision, GiveUp):
                raise self._error(_GaveUp(request, url, result, decision.reason, attempt, refreshed))
            self._log_retry(url, attempt, decision.delay)
            self.sleep(decision.delay)
            number += 1

    def _attempt(
        self, request: Request, result: httpx.Response | httpx.TransportError, number: int, started: float
    ) -> Attempt:
        elapsed = self.clock() - started
        if not isinstance(result, httpx.Response):
            return Attempt(number, request.method, result, elapsed=elapsed, idempotent=request.idempotent)
        status = result.status_code
        after = None
        if status in RETRY_AFTER_STATUSES:
            header = result.headers.get("Retry-After")
            after = parse_retry_after(header, self.wall_clock(), self.options.max_retry_after)
        return Attempt(
            number,
            request.method,
            status,
            retry_after=after,
            elapsed=elapsed,
            idempotent=request.idempotent,
            malformed=200 <= status < 300,
        )

    def _log_retry(self, url: str, attempt: Attempt, delay: float) -> None:
        budget = f"retry {attempt.number + 1}/{self.options.max_retries} in {delay:.2f} s"
        if isinstance(attempt.outcome, BaseException):
            what = f"failed ({type(attempt.outcome).__name__})"
        elif attempt.malformed:
            what = f"answered {attempt.outcome} with a body that is not JSON"
        else:
            what = f"answered {attempt.outcome}"
        after = " (Retry-After)" if attempt.retry_after is not None else ""
        logger.warning("%s %s %s; %s%s", attempt.method, url, what, budget, after)

    def _error(self, gave_up: _GaveUp) -> BackendError:
        if isinstance(gave_up.result, httpx.Response):
            return self._status_error(gave_up, gave_up.result)
        return self._transport_error(gave_up, gave_up.result)

    def _transport_error(self, gave_up: _GaveUp, exc: httpx.TransportError) -> BackendError:
        method, url, kind = gave_up.request.method, gave_up.url, type(exc).__name__
        tries = gave_up.attempt.number + 1
        if gave_up.reason is GiveUpReason.NOT_RETRYABLE:
            return BackendError(
                f"{method} {url} could not be sent ({kind}: {self.redactor(str(exc))}); this is a "
                "configuration problem (check the URL in the block), so it is not retried"
            )
        if gave_up.reason is GiveUpReason.UNSAFE:
            text = (
                f"{method} {url} failed with {kind} after the request may have reached the server; it was "
                "not resent here because that could start a second job; the caller checks for a running "
                "job before submitting again"
            )
        else:
            text = f"{method} {url} failed with {kind} on {tries} attempts; {self._spent(gave_up)}"
        return TransientHTTPError(text, method, url)

    def _spent(self, gave_up: _GaveUp) -> str:
        """Why retrying stopped, for a request that was retried as long as allowed."""
        if gave_up.reason is GiveUpReason.DEADLINE:
            return (
                f"gave up after {gave_up.attempt.elapsed:.0f} s, the longest a request may take "
                f"({self.options.max_elapsed:g} s); the step can be retried later"
            )
        budget = self.options.max_retries
        return f"gave up after the retry budget ({budget} retries); the step can be retried later"

    def _status_error(self, gave_up: _GaveUp, response: httpx.Response) -> HTTPError:
        method, url, status = gave_up.request.method, gave_up.url, response.status_code
        excerpt = body_excerpt(response, self.redactor)
        evidence = (method, url, status, request_id_of(response), excerpt)
        tries = gave_up.attempt.number + 1
        if gave_up.attempt.malformed:
            why = (
                "not resent because that could start a second job"
                if gave_up.reason is GiveUpReason.UNSAFE
                else self._spent(gave_up).removesuffix("; the step can be retried later")
            )
            text = (
                f"{method} {url} answered {status} with a body that is not JSON ({excerpt!r}); "
                f"expected a JSON document; {why}"
            )
            return MalformedResponseError(text, *evidence)
        if gave_up.reason is GiveUpReason.NOT_RETRYABLE:
            rid = f", request id {evidence[3]}" if evidence[3] else ""
            text = (
                f"{method} {url} answered {status}{rid}: {excerpt or 'no body'}; "
                "a client error is not retried"
            )
            if status in (401, 403):
                hint = " (a fresh token was refused too)" if gave_up.refreshed else ""
                return AuthenticationError(text + "; check the credentials in the block" + hint, *evidence)
            return HTTPStatusError(text, *evidence)
        if gave_up.reason is GiveUpReason.UNSAFE:
            text = (
                f"{method} {url} answered {status}; not resent here because the request may have been "
                "processed and resending could start a second job"
            )
        else:
            text = f"{method} {url} answered {status} on {tries} attempts; {self._spent(gave_up)}"
        return TransientHTTPError(text, *evidence)


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
