"""HTTP errors of the remote backends, as subclasses of the one tree in ``nluflow.errors``.

What to catch::

    BackendError (nluflow.errors)
    ├── HTTPStatusError               a 4xx other than 408/429: a bug or bad input; never retried
    │   └── AuthenticationError       401/403 that a token refresh did not cure, or a refused token request
    ├── ContractError                 a 2xx answer that does not have the documented shape
    ├── TrainingOutcomeUnknownError   a train request's answer was lost and nluflow cannot find out what the
    │                                 server did (not retried: a retry could train a second time)
    ├── ServedModelMismatchError      the server serves another project's model (one server per project)
    └── TransientBackendError (nluflow.errors)
        ├── TransientHTTPError        408/429/5xx or a transport error that outlasted the retry budget,
        │                             or that was not retried because a retry could start a second job
        └── MalformedResponseError    a 2xx answer whose body is not JSON (a truncated or garbled reply)

Every HTTP error carries the evidence (method, URL path, status, request id, a short body excerpt) with the
secrets redacted, and pickles with it (Prefect persists task exceptions).
"""

from __future__ import annotations

from nluflow.errors import BackendError, TransientBackendError


class _Evidence:
    """The evidence of one failed HTTP exchange, shared by the HTTP error classes."""

    message: str
    method: str
    url: str
    status: int | None
    request_id: str | None
    body_excerpt: str

    def _store(
        self,
        message: str,
        method: str,
        url: str,
        status: int | None,
        request_id: str | None,
        body_excerpt: str,
    ) -> None:
        self.message = message
        self.method = method
        self.url = url
        self.status = status
        self.request_id = request_id
        self.body_excerpt = body_excerpt

    def _args(self) -> tuple[object, ...]:
        return (self.message, self.method, self.url, self.status, self.request_id, self.body_excerpt)


class HTTPStatusError(_Evidence, BackendError):
    """The platform answered with a status that retrying cannot fix (400, 403, 404, 409, 422, ...)."""

    def __init__(
        self,
        message: str,
        method: str = "",
        url: str = "",
        status: int | None = None,
        request_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        self._store(message, method, url, status, request_id, body_excerpt)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), self._args())


class AuthenticationError(HTTPStatusError):
    """The credentials were refused (after one token refresh where the platform issues tokens)."""


class ContractError(_Evidence, BackendError):
    """A successful answer did not have the documented shape (a missing field, a wrong type)."""

    def __init__(
        self,
        message: str,
        method: str = "",
        url: str = "",
        status: int | None = None,
        request_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        self._store(message, method, url, status, request_id, body_excerpt)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), self._args())


class TransientHTTPError(_Evidence, TransientBackendError):
    """A rate limit, server or transport error that outlasted the retry budget (or was unsafe to retry).

    Worth retrying later, at a higher level (the Prefect task), which re-runs the whole idempotent step.
    """

    def __init__(
        self,
        message: str,
        method: str = "",
        url: str = "",
        status: int | None = None,
        request_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        self._store(message, method, url, status, request_id, body_excerpt)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), self._args())


class MalformedResponseError(_Evidence, TransientBackendError):
    """A 2xx answer whose body could not be decoded as JSON; the request is retried where that is safe."""

    def __init__(
        self,
        message: str,
        method: str = "",
        url: str = "",
        status: int | None = None,
        request_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        self._store(message, method, url, status, request_id, body_excerpt)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), self._args())


class TrainingOutcomeUnknownError(BackendError):
    """A training request was sent, its answer was lost, and nothing can tell whether (or what) the server
    trained. Not transient on purpose: retrying the step would send the training again."""


class ServedModelMismatchError(BackendError):
    """The platform serves a model of another project: serving it from two projects would let each replace
    the other's model, so nothing is activated, rolled back or evaluated against it."""
