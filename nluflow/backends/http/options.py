"""The HTTP plumbing every remote client shares, as one frozen options object, and its named defaults.

A backend takes one :class:`HttpOptions` instead of eight keyword arguments (timeouts, retry budget, backoff,
transport, sleep, clocks, random source); a block builds it from its fields, a test from a MockTransport and
a fake clock. ``options.replace(...)`` gives a changed copy.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

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

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def default_timeout(read: float = READ_TIMEOUT) -> httpx.Timeout:
    """Explicit connect/read/write/pool timeouts; ``read`` is raised for calls that train synchronously."""
    return httpx.Timeout(connect=CONNECT_TIMEOUT, read=read, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT)


@dataclass(frozen=True)
class HttpOptions:
    """How a remote client talks HTTP: timeouts, retry budget and backoff, TLS, headers, and the injected
    transport, sleep, clocks and random source (tests pass fakes; production takes the defaults)."""

    timeout: httpx.Timeout = field(default_factory=default_timeout)
    max_retries: int = MAX_RETRIES
    initial_backoff: float = INITIAL_BACKOFF
    max_backoff: float = MAX_BACKOFF
    jitter: float = JITTER
    max_retry_after: float = MAX_RETRY_AFTER
    # The longest a logical request may spend on retries (seconds); None: only the retry budget counts.
    max_elapsed: float | None = None
    verify: bool | str = True
    headers: Mapping[str, str] = field(default_factory=dict)
    user_agent: str | None = None
    transport: httpx.BaseTransport | None = None
    sleep: Sleep = time.sleep
    clock: Clock = time.monotonic
    wall_clock: Clock = time.time
    rng: random.Random | None = None

    def replace(self, **changes: Any) -> HttpOptions:
        """A copy with ``changes`` applied (the options themselves never change)."""
        return dataclasses.replace(self, **changes)

    def with_read_timeout(self, read: float) -> HttpOptions:
        """A copy whose read timeout is ``read`` seconds (other timeouts kept)."""
        return self.replace(timeout=self.timeout_with_read(read))

    def timeout_with_read(self, read: float) -> httpx.Timeout:
        """These options' timeouts with the read timeout set to ``read`` seconds."""
        t = self.timeout
        return httpx.Timeout(connect=t.connect, read=read, write=t.write, pool=t.pool)

    def client_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers every request of a client carries: the options', the client's own, the user agent."""
        headers = {**self.headers, **(extra or {})}
        if self.user_agent:
            headers["User-Agent"] = self.user_agent
        return headers
