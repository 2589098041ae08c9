"""The retry decision, as small pure functions (no clock, no sleep, no network): tested as a table.

::

    parse_retry_after(header, now)      -> seconds asked for, or None (seconds or HTTP date, capped)
    backoff_delay(attempt, after, rng)  -> seconds to wait (the server's value, else capped exponential
                                           backoff with jitter)
    should_retry(status | exception)    -> bool (408, 429, >= 500, transport errors)
    decide(Attempt, options, draw)      -> Retry(delay) or GiveUp(reason)

A POST that may start a job is retried only when it is marked safe (an idempotency key, the same on every
attempt); otherwise only failures that prove the request was not processed (a refused connection, a 429).
"""

from __future__ import annotations

import datetime
import email.utils
import random
from dataclasses import dataclass
from enum import StrEnum

import httpx

from nluflow.backends.errors import MalformedResponseError, TransientHTTPError
from nluflow.backends.http.options import HttpOptions

RETRYABLE_STATUSES = frozenset({408, 429})
# Statuses whose Retry-After header is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_DEFAULTS = HttpOptions()


def parse_retry_after(value: str | None, now: float, cap: float = _DEFAULTS.max_retry_after) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header (delta-seconds or HTTP date), capped.

    ``now`` is the current wall-clock time (epoch seconds), used for the HTTP-date form. Returns None when
    the header is missing or cannot be read; a date in the past gives 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
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
    return min(max(seconds, 0.0), cap)


def backoff_delay(
    attempt: int, retry_after: float | None, rng: random.Random, options: HttpOptions = _DEFAULTS
) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0).

    The server's ``Retry-After`` wins when given (capped); otherwise capped exponential backoff with up to
    ``options.jitter`` of it taken off at random.
    """
    return _delay(attempt, retry_after, rng.random(), options)


def _delay(attempt: int, retry_after: float | None, draw: float, options: HttpOptions) -> float:
    if retry_after is not None:
        return min(max(retry_after, 0.0), options.max_retry_after)
    base = min(options.initial_backoff * (2.0 ** max(attempt, 0)), options.max_backoff)
    return base * (1.0 - options.jitter * draw)


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


class GiveUpReason(StrEnum):
    """Why a failed attempt is not retried."""

    NOT_RETRYABLE = "not-retryable"  # a client error (4xx but 408/429) or a configuration problem
    UNSAFE = "unsafe"  # the request may have been processed; resending could start a second job
    BUDGET = "budget"  # the retry budget is spent
    DEADLINE = "deadline"  # waiting once more would pass the longest time a request may take


@dataclass(frozen=True)
class Attempt:
    """What one failed attempt of a logical request came to: the facts the decision reads."""

    number: int  # 0 for the first send
    method: str
    outcome: int | BaseException  # the status code, or the transport error
    retry_after: float | None = None  # seconds the server asked for (already parsed and capped)
    elapsed: float = 0.0  # seconds since the first send
    idempotent: bool | None = None  # None: decided by the method (GET, PUT, DELETE, ... are)
    malformed: bool = False  # a 2xx whose body should have been JSON and is not

    @property
    def safe(self) -> bool:
        """Whether resending cannot do harm."""
        return self.idempotent if self.idempotent is not None else self.method.upper() in SAFE_METHODS


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class GiveUp:
    reason: GiveUpReason


def decide(attempt: Attempt, options: HttpOptions = _DEFAULTS, draw: float = 0.0) -> Retry | GiveUp:
    """Retry after how long, or give up and why. ``draw`` in [0, 1) is the jitter's random number."""
    outcome = attempt.outcome
    if not attempt.malformed and not should_retry(outcome):
        return GiveUp(GiveUpReason.NOT_RETRYABLE)
    if not attempt.safe and (attempt.malformed or not proves_not_processed(outcome)):
        return GiveUp(GiveUpReason.UNSAFE)
    if attempt.number >= options.max_retries:
        return GiveUp(GiveUpReason.BUDGET)
    delay = _delay(attempt.number, attempt.retry_after, draw, options)
    if options.max_elapsed is not None and attempt.elapsed + delay > options.max_elapsed:
        return GiveUp(GiveUpReason.DEADLINE)
    return Retry(delay)
