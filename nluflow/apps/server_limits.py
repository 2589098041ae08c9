"""Connection limits for nluflow's HTTP servers (``nluflow serve`` and ``nluflow relay``) under uvicorn.

Slow or idle clients must not hold connections for ever. What bounds each phase of a connection:

=====================  ==========================================================================  =========
phase                  bound                                                                       default
=====================  ==========================================================================  =========
request head           complete within ``header_timeout`` of the connection opening or of the      10 s
                       previous answer, else the connection is closed (nothing to answer yet)
request body           the apps answer 408 when the body has not arrived within their timeout      10 s
idle after an answer   uvicorn's ``timeout_keep_alive``                                            5 s
open connections       beyond ``max_connections`` a new request is answered 503 at once            1,000
                       (uvicorn's ``limit_concurrency``)
request head size      over ``max_header_bytes`` is a 400 (h11's incomplete-event limit)           16 KiB
=====================  ==========================================================================  =========

Why a protocol guard: uvicorn's h11 protocol (0.55 here) starts its keep-alive timer only *after* an answer,
and every received byte cancels it. A client that connects and sends nothing, or trickles its request head
a byte every few seconds, was never timed out: 3,000 unauthenticated connections stayed open as long as
their clients liked. :class:`HeaderDeadlineProtocol` adds the missing deadline and changes nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 1000
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """How long and how many: the bounds a server puts on its clients (see the module docstring)."""

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    keep_alive_timeout: int = KEEP_ALIVE_SECONDS
    max_connections: int = MAX_CONNECTIONS
    max_header_bytes: int = MAX_HEADER_BYTES

    def __post_init__(self) -> None:
        if not self.header_timeout > 0 or self.keep_alive_timeout < 1:
            raise ValueError("header_timeout must be > 0 s and keep_alive_timeout at least 1 s")
        if self.max_connections < 1 or self.max_header_bytes < 1024:
            raise ValueError("max_connections must be at least 1 and max_header_bytes at least 1024")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus: the next request head is due within ``header_timeout`` seconds.

    The deadline is set when the connection opens and again after every answer. When it passes while no
    request is being handled (nothing received, a head still incomplete, or the unread rest of a refused
    body still trickling in), the connection is closed. A request being handled is left alone: its body has
    the app's own timeout, and its answer sets a new deadline.
    """

    header_timeout: float = HEADER_TIMEOUT_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._set_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _set_head_deadline(self) -> None:
        self._cancel_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being handled
        # One debug line: a flood of idle connections must not become a flood of log lines.
        logger.debug(
            "%s: no complete request within %g s; connection closed",
            f"{self.client[0]}:{self.client[1]}" if self.client else "a client",
            self.header_timeout,
        )
        if self.conn.our_state not in (h11.ERROR, h11.CLOSED):
            # mid-message h11 refuses; closing the transport is all there is to do then
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def protocol_class(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """:class:`HeaderDeadlineProtocol` with its deadline set (uvicorn instantiates the class it is given)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})


def uvicorn_config(app: Any, *, limits: ServerLimits | None = None, **options: Any) -> Config:
    """A ``uvicorn.Config`` for ``app`` with :class:`ServerLimits` applied; ``options`` go to uvicorn."""
    limits = limits or ServerLimits()
    return Config(
        app,
        http=protocol_class(limits.header_timeout),
        timeout_keep_alive=limits.keep_alive_timeout,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        **options,
    )
