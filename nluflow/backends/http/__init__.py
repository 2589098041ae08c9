"""The one HTTP layer of the remote backends (and the Label Studio source): options, retries, auth, redaction,
polling. httpx's own split is the model: each concern is one small module.

- ``options``: ``HttpOptions``, the one frozen plumbing object (timeouts, retry budget, backoff, TLS, headers,
  injected transport, sleep, clocks, random source) and its named defaults.
- ``retry``: the pure retry decision (``decide``: retry after N seconds, or give up and why), tested as a
  table.
- ``session``: ``send_once`` (one request, one response or transport error) and ``HttpSession``, the loop.
- ``auth``: static header/query credentials and OAuth2 client credentials.
- ``redact``: secrets out of every message, log line and evidence.
- ``polling``: ``wait_for_job``.

Nothing here sleeps or reads the clock directly: every client takes them from its ``HttpOptions``.
"""

from nluflow.backends.http.auth import (
    Auth,
    HeaderAuth,
    OAuth2ClientCredentials,
    QueryTokenAuth,
    api_key_auth,
    bearer_auth,
)
from nluflow.backends.http.options import HttpOptions, default_timeout
from nluflow.backends.http.polling import PollSchedule, wait_for_job
from nluflow.backends.http.redact import Redactor, install_log_redaction
from nluflow.backends.http.session import HttpSession, Request, make_client, require, send_once

__all__ = [
    "Auth",
    "HeaderAuth",
    "HttpOptions",
    "HttpSession",
    "OAuth2ClientCredentials",
    "PollSchedule",
    "QueryTokenAuth",
    "Redactor",
    "Request",
    "api_key_auth",
    "bearer_auth",
    "default_timeout",
    "install_log_redaction",
    "make_client",
    "require",
    "send_once",
    "wait_for_job",
]
