"""Credentials of the remote clients: a static header or query token, and OAuth2 client credentials."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nluflow.backends.errors import AuthenticationError, ContractError, HTTPStatusError
from nluflow.backends.http.redact import REDACTED, request_id_of

if TYPE_CHECKING:
    from nluflow.backends.http.session import HttpSession

logger = logging.getLogger("nluflow.backends.http")

# OAuth2 tokens are refreshed this long before ``expires_in`` runs out (or at half-life, if that is sooner).
TOKEN_REFRESH_MARGIN = 60.0


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


@dataclass(frozen=True)
class Token:
    header_value: str
    raw: str
    expires_at: float


class RefreshingTokenAuth:
    """A short-lived bearer token got for a long-lived credential, cached until shortly before it expires.

    A 401 invalidates the cached token so the next attempt fetches a new one (``HttpSession.send`` does
    that once per request). Subclasses say how a token is fetched (``_fetch``), through the session's
    retry layer, without auth.
    """

    can_refresh = True

    def __init__(self, session: HttpSession, credential: str) -> None:
        self._session = session
        self._credential = credential
        self._token: Token | None = None
        self._lock = threading.Lock()
        self.tokens_fetched = 0
        session.redactor.add(credential)

    def secrets(self) -> list[str]:
        token = self._token
        return [self._credential] + ([token.raw] if token else [])

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = self._current().header_value

    def _current(self) -> Token:
        with self._lock:
            token = self._token
            if token is None or self._session.clock() >= token.expires_at:
                token = self._fetch()
                self._session.redactor.add(token.raw)
                self.tokens_fetched += 1
                self._token = token
            return token

    def _fetch(self) -> Token:
        raise NotImplementedError

    def _request_token(
        self, url: str, field: str, refused: Callable[[HTTPStatusError], str], **body: Any
    ) -> tuple[dict[str, Any], str]:
        """POST ``body`` (``data``/``json_body``) to the token endpoint; its JSON answer and its ``field``.

        A refusal is an ``AuthenticationError`` with the message ``refused`` makes of it; an answer without
        the token is a ``ContractError`` naming the field that is missing.
        """
        try:
            response = self._session.request(
                "POST", url, retry_safe=True, expect_json=True, use_auth=False, **body
            )
        except HTTPStatusError as exc:
            raise exc.restated_as(AuthenticationError, refused(exc)) from None
        answer = response.json()
        raw = answer.get(field) if isinstance(answer, dict) else None
        if not isinstance(answer, dict) or not isinstance(raw, str) or not raw:
            shown = self._session.redactor.url(response.url)
            raise ContractError(
                f"the token endpoint POST {shown} answered without {field!r}; expected a JSON object with "
                f"the token in {field!r}",
                "POST",
                shown,
                response.status_code,
                request_id_of(response),
            )
        return answer, raw


class OAuth2ClientCredentials(RefreshingTokenAuth):
    """OAuth2 client-credentials tokens, cached until shortly before ``expires_in`` runs out."""

    def __init__(
        self,
        session: HttpSession,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
    ) -> None:
        super().__init__(session, client_secret)
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def _fetch(self) -> Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._credential,
        }
        if self.scope:
            form["scope"] = self.scope
        body, raw = self._request_token(
            self.token_url,
            "access_token",
            lambda exc: (
                f"the token endpoint refused the client credentials of client {self.client_id!r} "
                f"(HTTP {exc.status}: {exc.body_excerpt or 'no body'}); check the client id and secret in "
                "the block; nothing was sent to the platform"
            ),
            data=form,
        )
        token_type = str(body.get("token_type") or "Bearer")
        if token_type.lower() == "bearer":
            token_type = "Bearer"
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        margin = min(TOKEN_REFRESH_MARGIN, lifetime / 2.0)
        logger.debug("fetched an access token for client %s (expires in %.0f s)", self.client_id, lifetime)
        return Token(f"{token_type} {raw}", raw, self._session.clock() + lifetime - margin)
