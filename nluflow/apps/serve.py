"""``nluflow serve``: a Rasa-compatible HTTP server of a project's active model, with hot swap.

Routes (Rasa Open Source 3.x shapes, see ``shared/specs/rasa/README.md``)::

    GET  /               "Hello from nluflow: <version>"                          no auth
    GET  /version        {version, minimum_compatible_version, server, api}       no auth
    GET  /status         {model_id, model_file, num_active_training_jobs: 0,      auth; 409 with no model
                          manifest_sha256, project, activated_at, loaded_at, refused}
    POST /model/parse    {"text": ...} -> {text, intent{name, confidence},        auth; 409 with no model
                          entities[{start, end, value, entity, extractor}],
                          text_tokens[[start, end]], intent_ranking[{name, confidence}]}

Every answer to ``/model/parse`` and ``/status`` carries the serving model's id in the ``X-Nluflow-Model``
header. Every error has Rasa's ``ErrorResponse`` body ``{version, status: "failure", message, reason,
details, help, code}``: 400 ``BadRequest`` (body not JSON, JSON nested too deeply or with an integer over
4,300 digits, no ``text`` string, a ``text`` with an unpaired surrogate such as ``"\\ud800"``), 401
``NotAuthenticated`` (token missing or wrong), 404 ``NotFound``, 405 ``MethodNotAllowed``, 408
``RequestTimeout`` (the body took over 10 s to arrive), 409 ``Conflict`` (no model loaded), 413
``PayloadTooLarge``, 500 ``ParsingError`` (an unexpected failure; its details go to the server log only).

Auth: with a token configured, a request passes with ``?token=<token>`` (like Rasa) or
``Authorization: Bearer <token>`` (the plain token, not a JWT); without one, the server is open.
Tokens are compared in constant time and never appear in answers; the access log, when enabled,
shows ``token=***``.

Hot swap (:mod:`nluflow.apps.serve_watcher`): an :class:`ActiveModelWatcher` thread polls the store's
``active.json`` (every second by default). When the pointer names another model, the watcher copies the
model's files into a private folder, checks every sha256 against the manifest and the manifest's own sha256
against the pointer, loads the model from those very bytes, runs one warm-up parse, and only then replaces
one reference. Requests never wait for a load: each batch of requests takes the reference once and answers
with that model, so an answer is always whole, from the old model or the new one. A model that fails any
check is refused, logged, and retried with a growing delay; the previous model keeps serving.

Throughput (:mod:`nluflow.apps.serve_batching`): parses run on one inference thread. Requests that arrive
while a batch is being parsed form the next batch (up to ``max_batch``), so a busy server amortises the
per-call cost of the featurisers without delaying a lone request.

The app is :class:`_Server` (state, checks, and one method per route) wired by a short :func:`create_app`;
:class:`ServeOptions` carries every setting, checked when it is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nluflow import __version__, jsonsafe
from nluflow.apps.serve_batching import DEFAULT_MAX_BATCH, NoModelError, ParseBatcher
from nluflow.apps.serve_watcher import DEFAULT_POLL_SECONDS, ActiveModelWatcher, Loader, check_poll
from nluflow.backends.base import Parse
from nluflow.errors import ConfigError
from nluflow.models.tokenize import tokenize
from nluflow.store import ModelStore, check_id

if TYPE_CHECKING:
    from nluflow.apps.server_limits import ServerLimits  # imports uvicorn: only when running

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5005  # Rasa's default port, so existing clients find the server
# An utterance is a few hundred bytes; 64 KiB leaves room for long texts and stops abusive bodies early.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 10.0  # a client that trickles its body this long holds a connection for nothing
MIN_MAX_BODY_BYTES = 1024
MODEL_HEADER = "X-Nluflow-Model"
ENTITY_EXTRACTOR = "CRFEntityExtractor"
_TOKEN_IN_QUERY = re.compile(r"(?<=[?&]token=)[^&\s]*")
_EXPECTED_BODY = 'expected a JSON body like {"text": "..."}; the request was not processed.'


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class ServeOptions:
    """How ``nluflow serve`` serves: auth, polling, limits and logging (checked when built).

    ``token`` None serves openly (only on a trusted network); ``limits`` bound slow and idle clients
    (:mod:`nluflow.apps.server_limits`); ``access_log`` and ``log_level`` only matter to :func:`run`.
    """

    token: str | None = None
    poll_seconds: float = DEFAULT_POLL_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    access_log: bool = False
    log_level: str = "info"
    limits: ServerLimits | None = None

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ConfigError(
                "the auth token is empty; expected a non-empty token, or no token at all for an open server "
                "(only on a trusted network); the server was not started"
            )
        if self.max_body_bytes < MIN_MAX_BODY_BYTES:
            raise ConfigError(
                f"request size limit {self.max_body_bytes} bytes is too small; expected at least "
                f"{MIN_MAX_BODY_BYTES} bytes; the server was not started"
            )
        if self.max_batch < 1:
            raise ConfigError(f"max_batch {self.max_batch} must be at least 1; the server was not started")
        check_poll(self.poll_seconds)


# ------------------------------------------------------------------------------------------------ answers


def rasa_parse(parse: Parse) -> dict[str, Any]:
    """A :class:`Parse` as Rasa's ``/model/parse`` answer (entities also carry ``extractor``)."""
    return {
        "text": parse.text,
        "intent": {"name": parse.intent.name, "confidence": parse.intent.confidence},
        "entities": [
            {
                "start": e.start,
                "end": e.end,
                "value": e.value,
                "entity": e.entity,
                "extractor": ENTITY_EXTRACTOR,
            }
            for e in parse.entities
        ],
        "text_tokens": [[t.start, t.end] for t in tokenize(parse.text)],
        "intent_ranking": [{"name": s.name, "confidence": s.confidence} for s in parse.intent_ranking],
    }


def rasa_error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Rasa's ``ErrorResponse`` body."""
    body: dict[str, Any] = {
        "version": __version__,
        "status": "failure",
        "message": message,
        "reason": reason,
        "details": {},
        "help": None,
        "code": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


_REASONS = {404: "NotFound", 405: "MethodNotAllowed"}


class _Refuse(Exception):
    """Raised by a check on the request path: ``response`` is the Rasa error the request gets."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _document(body: bytes) -> Any:
    """The body as JSON; raises :class:`_Refuse` with a 400 for anything JSON cannot read safely."""
    try:
        return jsonsafe.loads(body)
    except jsonsafe.NumberTooLong as exc:
        message = f'The request body holds {exc}; expected {{"text": "..."}}; the request was not processed.'
    except RecursionError:
        message = (
            'The request body is JSON nested too deeply to read; expected {"text": "..."}; '
            "the request was not processed."
        )
    except (UnicodeDecodeError, ValueError) as exc:
        message = (
            f'The request body is not valid JSON ({exc}); expected {{"text": "..."}}; '
            "the request was not processed."
        )
    raise _Refuse(rasa_error(400, "BadRequest", message))


def _text_of(document: Any) -> str:
    """The ``text`` to parse; raises :class:`_Refuse` with a 400 when there is no readable one."""
    text = document.get("text") if isinstance(document, dict) else None
    if not isinstance(text, str):
        found = (
            "no 'text' key"
            if not isinstance(document, dict) or "text" not in document
            else (f"'text' is a {type(text).__name__}")
        )
        raise _Refuse(
            rasa_error(
                400,
                "BadRequest",
                "No text message defined in request_body. Add text message to request body in order to "
                f'obtain the intent and extracted entities: found {found}, expected {{"text": "..."}}.',
            )
        )
    if jsonsafe.lone_surrogate(text) is not None:  # a "\ud800" escape: no tokenizer can read it
        raise _Refuse(
            rasa_error(
                400,
                "BadRequest",
                "The 'text' holds an unpaired UTF-16 surrogate (an escape such as \\ud800 without its pair); "
                "expected valid Unicode text; the request was not processed.",
            )
        )
    return text


# ------------------------------------------------------------------------------------------------ the app


class _TokenRedactor(logging.Filter):
    """Keeps ``?token=`` values out of uvicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub("***", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


class _Server:
    """The serving app's state (the watcher, the batcher, the options); its routes are the methods."""

    def __init__(
        self, store: ModelStore, watcher: ActiveModelWatcher, options: ServeOptions, watch: bool
    ) -> None:
        self.store = store
        self.watcher = watcher
        self.options = options
        self.watch = watch
        self._expected = options.token.encode() if options.token is not None else b""
        self._batcher: ParseBatcher | None = None

    # -- checks and answers
    def authorize(self, request: Request) -> None:
        if self.options.token is None:
            return
        candidates = [request.query_params.get("token")]
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(credentials.strip())
        if not any(c is not None and hmac.compare_digest(c.encode(), self._expected) for c in candidates):
            raise _Refuse(
                rasa_error(
                    401,
                    "NotAuthenticated",
                    "User is not authenticated: the request has no valid token; expected ?token=<token> or "
                    "an 'Authorization: Bearer <token>' header; the request was not processed.",
                )
            )

    def no_model(self) -> Response:
        refused = self.watcher.refused
        why = (
            f" The activated model {refused.model_id!r} was refused: {refused.reason}."
            if refused is not None
            else f" Project {self.watcher.project!r} has no active model in the {self.store.describe()} yet."
        )
        return rasa_error(
            409,
            "Conflict",
            "No agent loaded. To continue processing, a model of a trained agent needs to be loaded."
            + why
            + " The server checks again every "
            + f"{self.watcher.poll_seconds:g} s.",
        )

    async def read_body(self, request: Request) -> bytes:
        """The whole body within the size and time limits; raises :class:`_Refuse` otherwise."""
        limit = self.options.max_body_bytes
        too_large = rasa_error(
            413,
            "PayloadTooLarge",
            f"The request body is larger than the limit of {limit} bytes; {_EXPECTED_BODY}",
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Refuse(rasa_error(400, "BadRequest", f"Content-Length {declared!r} is not a number."))
            if int(declared) > limit:
                raise _Refuse(too_large)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise _Refuse(too_large)
                    chunks.append(chunk)
        except TimeoutError:
            path = request.url.path
            logger.info(
                "%s: the request body did not arrive within %g s; not processed", path, BODY_TIMEOUT_SECONDS
            )
            message = f"The request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s; {_EXPECTED_BODY}"
            raise _Refuse(rasa_error(408, "RequestTimeout", message)) from None
        except ClientDisconnect:  # one info line, not a traceback per dropped connection; nobody reads it
            path = request.url.path
            logger.info("%s: the client disconnected after %d bytes of its body; not processed", path, size)
            message = "The client disconnected before sending the whole body; the request was not processed."
            raise _Refuse(rasa_error(400, "BadRequest", message)) from None
        return b"".join(chunks)

    # -- routes
    async def home(self, request: Request) -> Response:
        return PlainTextResponse(f"Hello from nluflow: {__version__}")

    async def version(self, request: Request) -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "minimum_compatible_version": __version__,
                "server": "nluflow",
                "api": "rasa-3",
            }
        )

    async def status(self, request: Request) -> Response:
        try:
            self.authorize(request)
        except _Refuse as refuse:
            return refuse.response
        served = self.watcher.current
        if served is None:
            return self.no_model()
        refused = self.watcher.refused
        return JSONResponse(
            {
                "model_id": served.model_id,
                "model_file": served.model_file,
                "num_active_training_jobs": 0,
                "manifest_sha256": served.manifest_sha256,
                "project": self.watcher.project,
                "activated_at": served.activated_at,
                "loaded_at": served.loaded_at,
                "models_loaded": self.watcher.loads,
                "refused": refused.as_dict() if refused is not None else None,
                "pointer_problem": self.watcher.pointer_problem,
            },
            headers={MODEL_HEADER: served.model_id},
        )

    async def parse(self, request: Request) -> Response:
        try:
            self.authorize(request)
            body = await self.read_body(request)
            emulation = request.query_params.get("emulation_mode")
            if emulation not in (None, "", "rasa"):
                message = (
                    f"emulation_mode {emulation!r} is not supported; nluflow answers in Rasa's format only; "
                    "drop the parameter."
                )
                return rasa_error(400, "BadRequest", message)
            text = _text_of(_document(body))
        except _Refuse as refuse:
            return refuse.response
        assert self._batcher is not None, "the app's lifespan starts the batcher"
        try:
            served, result = await self._batcher.parse(text)
        except NoModelError:
            return self.no_model()
        except Exception:
            logger.exception("project %r: parsing failed", self.watcher.project)
            return rasa_error(  # the details are in the server log, not in the answer
                500,
                "ParsingError",
                "An unexpected error occurred while parsing the text; see the server log.",
            )
        return JSONResponse(rasa_parse(result), headers={MODEL_HEADER: served.model_id})

    async def http_error(self, request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        if code == 404:
            message = f"No route {request.url.path!r}; this server has /, /version, /status and /model/parse."
        elif code == 405:
            message = f"{request.method} is not allowed on {request.url.path!r}."
        else:
            message = exc.detail if isinstance(exc, HTTPException) else "Internal server error."
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None
        return rasa_error(code, _REASONS.get(code, "BadRequest"), message, headers)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._batcher = ParseBatcher(self.watcher, self.options.max_batch)
        await asyncio.to_thread(self.watcher.refresh)  # serve from the first request on
        if self.watch:
            self.watcher.start()
        try:
            yield
        finally:
            self.watcher.stop()
            batcher, self._batcher = self._batcher, None
            batcher.close()


def create_app(
    store: ModelStore,
    project: str,
    options: ServeOptions | None = None,
    *,
    loader: Loader | None = None,
    watch: bool = True,
) -> Starlette:
    """The ASGI app serving ``project``'s active model from ``store``.

    On startup it loads the active model (if any) before accepting requests, then polls for new ones when
    ``watch`` is true. ``app.state.watcher`` is the :class:`ActiveModelWatcher`.
    """
    options = options or ServeOptions()
    watcher = ActiveModelWatcher(store, project, poll_seconds=options.poll_seconds, loader=loader)
    server = _Server(store, watcher, options, watch)
    app = Starlette(
        routes=[
            Route("/", server.home, methods=["GET"]),
            Route("/version", server.version, methods=["GET"]),
            Route("/status", server.status, methods=["GET"]),
            Route("/model/parse", server.parse, methods=["POST"]),
        ],
        exception_handlers={HTTPException: server.http_error, Exception: server.http_error},
        lifespan=server.lifespan,
    )
    app.state.watcher = watcher
    return app


def _log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging config plus the ``nluflow`` loggers, so swaps and refusals show in the console."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["nluflow"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return config


def run(
    host: str, port: int, project: str, store: ModelStore | str | Path, options: ServeOptions | None = None
) -> None:
    """Serve ``project``'s active model on ``host:port`` with uvicorn until interrupted (Ctrl-C, SIGTERM).

    Slow and idle clients are timed out and open connections capped by ``options.limits`` (see
    :mod:`nluflow.apps.server_limits`).
    """
    import uvicorn

    from nluflow.apps.server_limits import uvicorn_config

    options = options or ServeOptions()
    model_store = store if isinstance(store, ModelStore) else ModelStore.local(store)
    check_id(project, "project")
    app = create_app(model_store, project, options)
    config = uvicorn_config(
        app,
        limits=options.limits,
        host=host,
        port=port,
        lifespan="on",
        access_log=options.access_log,
        log_level=options.log_level,
        log_config=_log_config(options.log_level),
        server_header=False,
    )
    # After Config: it applies the logging config, which would otherwise come first.
    logging.getLogger("uvicorn.access").addFilter(_TokenRedactor())
    if options.token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving project %r on %s without a token: anyone who can reach the port can query the model; "
            "pass a token to require ?token= or a bearer header",
            project,
            host,
        )
    logger.info(
        "serving project %r from the %s on http://%s:%d (auth: %s, poll every %g s)",
        project,
        model_store.describe(),
        host,
        port,
        "token" if options.token else "open",
        options.poll_seconds,
    )
    uvicorn.Server(config).run()
