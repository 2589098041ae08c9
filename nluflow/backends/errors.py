"""HTTP errors of the remote backends, as subclasses of the one tree in ``nluflow.errors``.

What to catch::

    BackendError (nluflow.errors)
    ├── HTTPError                     carries the evidence of one failed exchange (never raised itself)
    │   ├── HTTPStatusError           a 4xx other than 408/429: a bug or bad input; never retried
    │   │   └── AuthenticationError   401/403 that a token refresh did not cure, or a refused token request
    │   ├── ContractError             a 2xx answer that does not have the documented shape
    │   ├── TransientHTTPError        (also a TransientBackendError) 408/429/5xx or a transport error that
    │   │                             outlasted the retry budget, or was not retried because a retry could
    │   │                             start a second job
    │   └── MalformedResponseError    (also a TransientBackendError) a 2xx answer whose body is not JSON
    ├── TrainingOutcomeUnknownError   a train request's answer was lost and nluflow cannot find out what the
    │                                 server did (not retried: a retry could train a second time)
    ├── ServedModelMismatchError      the server serves another project's model (one server per project)
    └── TransientBackendError (nluflow.errors)   worth retrying at the task level

Every HTTP error carries the evidence (method, URL path, status, request id, a short body excerpt) with the
secrets redacted, and pickles with it (Prefect persists task exceptions). ``err.restated(message)`` is the
same error with a message that says more (``err.restated_as(Kind, message)`` changes its class too).
"""

from __future__ import annotations

from typing import Self, TypeVar

from nluflow.errors import BackendError, TransientBackendError


class HTTPError(BackendError):
    """The evidence of one failed HTTP exchange, shared by every HTTP error class.

    One ``__init__`` stores the evidence and one ``__reduce__`` pickles it (Prefect persists task errors);
    ``restated`` makes the same error, evidence and class kept, with a message that says more.
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
        self.message = message
        self.method = method
        self.url = url
        self.status = status
        self.request_id = request_id
        self.body_excerpt = body_excerpt
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, *self._evidence()))

    def _evidence(self) -> tuple[str, str, int | None, str | None, str]:
        return (self.method, self.url, self.status, self.request_id, self.body_excerpt)

    def restated(self, message: str) -> Self:
        """The same error (class and evidence) with ``message`` instead of its own."""
        return type(self)(message, *self._evidence())

    def restated_as(self, kind: type[_E], message: str) -> _E:
        """An error of class ``kind`` that carries this error's evidence and ``message``."""
        return kind(message, *self._evidence())


_E = TypeVar("_E", bound=HTTPError)


class HTTPStatusError(HTTPError):
    """The platform answered with a status that retrying cannot fix (400, 403, 404, 409, 422, ...)."""


class AuthenticationError(HTTPStatusError):
    """The credentials were refused (after one token refresh where the platform issues tokens)."""


class ContractError(HTTPError):
    """A successful answer did not have the documented shape (a missing field, a wrong type)."""


class TransientHTTPError(HTTPError, TransientBackendError):
    """A rate limit, server or transport error that outlasted the retry budget (or was unsafe to retry).

    Worth retrying later, at a higher level (the Prefect task), which re-runs the whole idempotent step.
    """


class MalformedResponseError(HTTPError, TransientBackendError):
    """A 2xx answer whose body could not be decoded as JSON; the request is retried where that is safe."""


class TrainingOutcomeUnknownError(BackendError):
    """A training request was sent, its answer was lost, and nothing can tell whether (or what) the server
    trained. Not transient on purpose: retrying the step would send the training again."""


class ServedModelMismatchError(BackendError):
    """The platform serves a model of another project: serving it from two projects would let each replace
    the other's model, so nothing is activated, rolled back or evaluated against it."""
