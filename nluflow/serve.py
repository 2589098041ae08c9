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

Hot swap: an :class:`ActiveModelWatcher` thread polls the store's ``active.json`` (every second by
default). When the pointer names another model, the watcher copies the model's files into a private
folder, checks every sha256 against the manifest and the manifest's own sha256 against the pointer, loads
the model from those very bytes, runs one warm-up parse, and only then replaces one reference. Requests
never wait for a load: each batch of requests takes the reference once and answers with that model, so an
answer is always whole, from the old model or the new one. A model that fails any check is refused, logged,
and retried with a growing delay; the previous model keeps serving.

Throughput: parses run on one inference thread. Requests that arrive while a batch is being parsed form
the next batch (up to ``max_batch``), so a busy server amortises the per-call cost of the featurisers
without delaying a lone request.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sklearn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nluflow import __version__, jsonsafe
from nluflow.backends.base import Parse
from nluflow.errors import ConfigError, IntegrityError, StoreError
from nluflow.hashing import sha256_file
from nluflow.models.nlu import NLUModel
from nluflow.models.tokenize import tokenize
from nluflow.store import MANIFEST_NAME, MODELS_DIR, ActivePointer, Manifest, ModelStore, check_id

if TYPE_CHECKING:
    from nluflow.server_limits import ServerLimits

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5005  # Rasa's default port, so existing clients find the server
DEFAULT_POLL_SECONDS = 1.0
MIN_POLL_SECONDS = 0.05
# Refused models are retried with a doubling delay up to this cap (a fixed file gets picked up again).
MAX_RETRY_SECONDS = 60.0
# An utterance is a few hundred bytes; 64 KiB leaves room for long texts and stops abusive bodies early.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 10.0  # a client that trickles its body this long holds a connection for nothing
MIN_MAX_BODY_BYTES = 1024
DEFAULT_MAX_BATCH = 64
WARMUP_TEXT = "hello"
MODEL_HEADER = "X-Nluflow-Model"
ENTITY_EXTRACTOR = "CRFEntityExtractor"
STOP_TIMEOUT_SECONDS = 10.0
_TOKEN_IN_QUERY = re.compile(r"(?<=[?&]token=)[^&\s]*")


# ------------------------------------------------------------------------------------------------ models


class Parser(Protocol):
    """What the server needs from a loaded model: Rasa-shaped parses, one per text, in order."""

    def parse(self, texts: Sequence[str]) -> list[Parse]: ...


Loader = Callable[[Path], Parser]
"""Loads a model from a verified local folder (default: :meth:`NLUModel.load`)."""


def _utc_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ServedModel:
    """A loaded, verified model and where it came from."""

    model_id: str
    manifest_sha256: str
    model_file: str
    activated_at: str
    loaded_at: str
    parser: Parser


@dataclass(frozen=True)
class Refusal:
    """An activated model the server refused to load, and when it tries again."""

    model_id: str
    manifest_sha256: str
    reason: str
    at: str
    attempts: int
    retry_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "manifest_sha256": self.manifest_sha256,
            "reason": self.reason,
            "at": self.at,
            "attempts": self.attempts,
        }


class ActiveModelWatcher:
    """Holds the model being served and swaps in the store's newly activated one, off the request path.

    ``current`` is read once per batch of requests; ``refresh`` (called by the poll thread, or by hand in
    tests) loads and verifies a new model completely before it replaces ``current`` in one assignment.
    """

    def __init__(
        self,
        store: ModelStore,
        project: str,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        loader: Loader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.project = check_id(project, "project")
        self.poll_seconds = _check_poll(poll_seconds)
        self._loader: Loader = loader or NLUModel.load
        self._clock = clock
        self._current: ServedModel | None = None
        self._refused: Refusal | None = None
        self._pointer_problem: str | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loads = 0

    @property
    def current(self) -> ServedModel | None:
        """The model answering requests now (None until one was loaded)."""
        return self._current

    @property
    def refused(self) -> Refusal | None:
        """The latest activated model that was refused and is not being served, if any."""
        return self._refused

    @property
    def pointer_problem(self) -> str | None:
        """Why ``active.json`` could not be read at the last poll, if it could not."""
        return self._pointer_problem

    # ---------------------------------------------------------------------------------------- polling

    def start(self) -> None:
        """Poll the active pointer every ``poll_seconds`` on a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=f"nluflow-serve-{self.project}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any surprise; the current model keeps serving
                logger.exception("project %r: unexpected error while checking the active model", self.project)

    def refresh(self) -> bool:
        """Check the active pointer once; load, verify and swap in a newly activated model.

        Returns True when a new model now serves. Never raises for a bad store, pointer or model: those are
        logged, recorded in ``refused`` / ``pointer_problem``, and the current model keeps serving.
        """
        with self._refresh_lock:
            try:
                pointer = self.store.active(self.project)
            except Exception as exc:
                self._note_pointer_problem(str(exc))
                return False
            if pointer is None:
                if self._current is None:
                    self._note_pointer_problem(
                        f"project {self.project!r} has no active model in the {self.store.describe()} yet; "
                        "/model/parse answers 409 until a model is activated (nluflow retrain or "
                        "`nluflow models activate`)"
                    )
                else:
                    self._note_pointer_problem(
                        f"project {self.project!r} has no active.json in the {self.store.describe()} any "
                        "more (removed by hand?); expected the pointer of the model being served"
                    )
                return False
            if self._pointer_problem is not None:
                logger.info("project %r: the active pointer is readable again", self.project)
                self._pointer_problem = None
            current = self._current
            if current is not None and (current.model_id, current.manifest_sha256) == (
                pointer.model_id,
                pointer.manifest_sha256,
            ):
                return False
            refused = self._refused
            same = refused is not None and (refused.model_id, refused.manifest_sha256) == (
                pointer.model_id,
                pointer.manifest_sha256,
            )
            if refused is not None and same and self._clock() < refused.retry_at:
                return False
            try:
                served = self._load(pointer)
            except Exception as exc:
                self._refuse(pointer, exc, refused if same else None)
                return False
            self._current = served  # the swap: one reference, read once per batch
            self._refused = None
            self.loads += 1
            logger.info(
                "project %r: now serving model %r (manifest sha256 %s); previous: %s",
                self.project,
                served.model_id,
                served.manifest_sha256,
                repr(current.model_id) if current is not None else "none",
            )
            return True

    def _note_pointer_problem(self, problem: str) -> None:
        if problem != self._pointer_problem:  # once per distinct problem, not once a second
            serving = self._current.model_id if self._current is not None else None
            logger.warning(
                "%s; %s",
                problem,
                f"model {serving!r} keeps serving" if serving else "no model is being served",
            )
        self._pointer_problem = problem

    def _refuse(self, pointer: ActivePointer, exc: Exception, previous: Refusal | None) -> None:
        attempts = previous.attempts + 1 if previous is not None else 1
        delay = min(self.poll_seconds * 2**attempts, MAX_RETRY_SECONDS)
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StoreError) else str(exc)
        self._refused = Refusal(
            model_id=pointer.model_id,
            manifest_sha256=pointer.manifest_sha256,
            reason=reason,
            at=_utc_iso(),
            attempts=attempts,
            retry_at=self._clock() + delay,
        )
        serving = self._current.model_id if self._current is not None else None
        level = logging.ERROR if previous is None or previous.reason != reason else logging.DEBUG
        logger.log(
            level,
            "project %r: refused to serve the activated model %r: %s; %s; retrying in %.0f s",
            self.project,
            pointer.model_id,
            reason,
            f"model {serving!r} keeps serving" if serving else "no model is being served",
            delay,
        )

    # ---------------------------------------------------------------------------------------- loading

    def _load(self, pointer: ActivePointer) -> ServedModel:
        """Verify and load the model ``pointer`` names, from a private copy of the verified bytes."""
        project, model_id = self.project, pointer.model_id
        with tempfile.TemporaryDirectory(prefix=f"nluflow-serve-{project}-") as tmp:
            private = Path(tmp) / "model"
            # On a local store, materialize verifies the stored folder in place; on S3 it downloads into
            # ``private`` and verifies the download.
            folder = self.store.materialize(project, model_id, dest=private)
            manifest_path = folder / MANIFEST_NAME
            try:
                manifest = Manifest.model_validate_json(manifest_path.read_bytes())
            except (OSError, ValidationError) as exc:
                raise IntegrityError(
                    f"{manifest_path}: unreadable or not a manifest ({exc}); the model is refused"
                ) from None
            where = f"{project}/{MODELS_DIR}/{model_id}/{MANIFEST_NAME}"
            if (manifest.project, manifest.model_id) != (project, model_id):
                raise IntegrityError(
                    f"{where}: describes model {manifest.model_id!r} of project {manifest.project!r}, "
                    f"expected {model_id!r} of {project!r}; the model is refused"
                )
            if manifest.sha256() != pointer.manifest_sha256:
                raise IntegrityError(
                    f"{where}: manifest sha256 {manifest.sha256()}, active.json expects "
                    f"{pointer.manifest_sha256}; the model is refused"
                )
            if folder.resolve() != private.resolve():
                _copy_files(folder, private, manifest)
            # Hash the very bytes the loader reads, so nothing can change between the check and the load.
            _check_files(private, manifest, where)
            parser = self._loader(private)
            parser.parse([WARMUP_TEXT])  # fails here, not on a request; also opens lazy parts (CRF tagger)
        return ServedModel(
            model_id=model_id,
            manifest_sha256=pointer.manifest_sha256,
            model_file=f"{project}/{MODELS_DIR}/{model_id}",
            activated_at=pointer.activated_at,
            loaded_at=_utc_iso(),
            parser=parser,
        )


def _copy_files(source: Path, dest: Path, manifest: Manifest) -> None:
    for rel in manifest.files:
        target = dest.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source.joinpath(*rel.split("/")), target)
        except OSError as exc:
            raise StoreError(
                f"{source / rel}: cannot copy the model file ({exc}); the model is refused"
            ) from exc


def _check_files(folder: Path, manifest: Manifest, where: str) -> None:
    for rel, expected in manifest.files.items():
        path = folder.joinpath(*rel.split("/"))
        found = sha256_file(path) if path.is_file() else None
        if found != expected:
            raise IntegrityError(
                f"{where}: {rel} has sha256 {found or 'missing'}, the manifest expects {expected}; "
                "the model is refused"
            )


def _check_poll(poll_seconds: float) -> float:
    if not poll_seconds >= MIN_POLL_SECONDS:
        raise ConfigError(
            f"poll interval {poll_seconds!r} s is too short; expected at least {MIN_POLL_SECONDS} s "
            "(1 s is plenty); the server was not started"
        )
    return float(poll_seconds)


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


class _NoModelError(Exception):
    pass


# ------------------------------------------------------------------------------------------------ batching


_Job = tuple[str, "asyncio.Future[tuple[ServedModel, Parse]]"]


def _parse_each(parser: Parser, texts: list[str]) -> list[Parse | Exception]:
    out: list[Parse | Exception] = []
    for text in texts:
        try:
            out.append(parser.parse([text])[0])
        except Exception as exc:
            out.append(exc)
    return out


def _inference_thread_setup() -> None:
    # Served inputs are plain strings and a fitted pipeline yields finite features, so scikit-learn's
    # per-call checks only cost time (measured: 2.8 -> 2.4 ms for a one-text parse). The setting is
    # thread-local: it applies to the inference thread only.
    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)


class _Batcher:
    """Opportunistic batching on one inference thread: requests that arrive during a batch join the next."""

    def __init__(self, watcher: ActiveModelWatcher, max_batch: int) -> None:
        self._watcher = watcher
        self._max_batch = max_batch
        self._pending: list[_Job] = []
        self._drainer: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="nluflow-parse", initializer=_inference_thread_setup
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def parse(self, text: str) -> tuple[ServedModel, Parse]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[ServedModel, Parse]] = loop.create_future()
        self._pending.append((text, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Job] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                served = self._watcher.current  # one model for the whole batch
                if served is None:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(_NoModelError())
                    continue
                texts = [text for text, _ in batch]
                results: Sequence[Parse | Exception]
                try:
                    results = await loop.run_in_executor(self._executor, served.parser.parse, texts)
                    if len(results) != len(texts):
                        raise RuntimeError(f"the model gave {len(results)} parses for {len(texts)} texts")
                except Exception:
                    # One bad text must fail only its own request: parse the batch one by one.
                    results = await loop.run_in_executor(self._executor, _parse_each, served.parser, texts)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result((served, result))
                batch = []
        except BaseException as exc:  # cancelled at shutdown, or the executor is gone: answer everyone
            failure = exc if isinstance(exc, Exception) else RuntimeError("the server is stopping")
            for _, future in [*batch, *self._pending]:
                if not future.done():
                    future.set_exception(failure)
            self._pending.clear()
            if not isinstance(exc, Exception):
                raise
            logger.error("the parse queue failed: %s: %s", type(exc).__name__, exc)


# ------------------------------------------------------------------------------------------------ the app


class _TokenRedactor(logging.Filter):
    """Keeps ``?token=`` values out of uvicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub("***", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def _check_token(token: str | None) -> str | None:
    if token is not None and not token.strip():
        raise ConfigError(
            "the auth token is empty; expected a non-empty token, or no token at all for an open server "
            "(only on a trusted network); the server was not started"
        )
    return token


def _check_max_body(max_body_bytes: int) -> int:
    if max_body_bytes < MIN_MAX_BODY_BYTES:
        raise ConfigError(
            f"request size limit {max_body_bytes} bytes is too small; expected at least {MIN_MAX_BODY_BYTES} "
            "bytes; the server was not started"
        )
    return max_body_bytes


def create_app(
    store: ModelStore,
    project: str,
    *,
    token: str | None = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    loader: Loader | None = None,
    watch: bool = True,
) -> Starlette:
    """The ASGI app serving ``project``'s active model from ``store``.

    On startup it loads the active model (if any) before accepting requests, then polls for new ones when
    ``watch`` is true. ``app.state.watcher`` is the :class:`ActiveModelWatcher`.
    """
    token = _check_token(token)
    max_body_bytes = _check_max_body(max_body_bytes)
    if max_batch < 1:
        raise ConfigError(f"max_batch {max_batch} must be at least 1; the server was not started")
    watcher = ActiveModelWatcher(store, project, poll_seconds=poll_seconds, loader=loader)
    batcher_box: list[_Batcher] = []
    expected = token.encode() if token is not None else b""

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        candidates = [request.query_params.get("token")]
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(credentials.strip())
        return any(c is not None and hmac.compare_digest(c.encode(), expected) for c in candidates)

    def not_authenticated() -> Response:
        return rasa_error(
            401,
            "NotAuthenticated",
            "User is not authenticated: the request has no valid token; expected ?token=<token> or an "
            "'Authorization: Bearer <token>' header; the request was not processed.",
        )

    def no_model() -> Response:
        refused = watcher.refused
        why = (
            f" The activated model {refused.model_id!r} was refused: {refused.reason}."
            if refused is not None
            else f" Project {watcher.project!r} has no active model in the {store.describe()} yet."
        )
        return rasa_error(
            409,
            "Conflict",
            "No agent loaded. To continue processing, a model of a trained agent needs to be loaded."
            + why
            + " The server checks again every "
            + f"{watcher.poll_seconds:g} s.",
        )

    async def read_body(request: Request) -> bytes | Response:
        too_large = rasa_error(
            413,
            "PayloadTooLarge",
            f"The request body is larger than the limit of {max_body_bytes} bytes; expected a JSON body "
            'like {"text": "..."}; the request was not processed.',
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return rasa_error(400, "BadRequest", f"Content-Length {declared!r} is not a number.")
            if int(declared) > max_body_bytes:
                return too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body_bytes:
                        return too_large
                    chunks.append(chunk)
        except TimeoutError:
            logger.info(
                "%s: the request body did not arrive within %g s; not processed",
                request.url.path,
                BODY_TIMEOUT_SECONDS,
            )
            return rasa_error(
                408,
                "RequestTimeout",
                f"The request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s; expected a JSON body "
                'like {"text": "..."}; the request was not processed.',
            )
        except ClientDisconnect:  # one info line, not a traceback per dropped connection; nobody reads it
            logger.info(
                "%s: the client disconnected after %d bytes of its body; not processed",
                request.url.path,
                size,
            )
            return rasa_error(
                400,
                "BadRequest",
                "The client disconnected before sending the whole body; the request was not processed.",
            )
        return b"".join(chunks)

    async def home(request: Request) -> Response:
        return PlainTextResponse(f"Hello from nluflow: {__version__}")

    async def version(request: Request) -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "minimum_compatible_version": __version__,
                "server": "nluflow",
                "api": "rasa-3",
            }
        )

    async def status(request: Request) -> Response:
        if not authorized(request):
            return not_authenticated()
        served = watcher.current
        if served is None:
            return no_model()
        refused = watcher.refused
        return JSONResponse(
            {
                "model_id": served.model_id,
                "model_file": served.model_file,
                "num_active_training_jobs": 0,
                "manifest_sha256": served.manifest_sha256,
                "project": watcher.project,
                "activated_at": served.activated_at,
                "loaded_at": served.loaded_at,
                "models_loaded": watcher.loads,
                "refused": refused.as_dict() if refused is not None else None,
                "pointer_problem": watcher.pointer_problem,
            },
            headers={MODEL_HEADER: served.model_id},
        )

    async def parse(request: Request) -> Response:
        if not authorized(request):
            return not_authenticated()
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        emulation = request.query_params.get("emulation_mode")
        if emulation not in (None, "", "rasa"):
            return rasa_error(
                400,
                "BadRequest",
                f"emulation_mode {emulation!r} is not supported; nluflow answers in Rasa's format only; "
                "drop the parameter.",
            )
        try:
            document = jsonsafe.loads(body)
        except jsonsafe.NumberTooLong as exc:
            return rasa_error(
                400,
                "BadRequest",
                f'The request body holds {exc}; expected {{"text": "..."}}; the request was not processed.',
            )
        except RecursionError:
            return rasa_error(
                400,
                "BadRequest",
                'The request body is JSON nested too deeply to read; expected {"text": "..."}; '
                "the request was not processed.",
            )
        except (UnicodeDecodeError, ValueError) as exc:
            return rasa_error(
                400,
                "BadRequest",
                f'The request body is not valid JSON ({exc}); expected {{"text": "..."}}; '
                "the request was not processed.",
            )
        text = document.get("text") if isinstance(document, dict) else None
        if not isinstance(text, str):
            found = (
                "no 'text' key"
                if not isinstance(document, dict) or "text" not in document
                else (f"'text' is a {type(text).__name__}")
            )
            return rasa_error(
                400,
                "BadRequest",
                "No text message defined in request_body. Add text message to request body in order to "
                f'obtain the intent and extracted entities: found {found}, expected {{"text": "..."}}.',
            )
        if jsonsafe.lone_surrogate(text) is not None:  # a "\ud800" escape: no tokenizer can read it
            return rasa_error(
                400,
                "BadRequest",
                "The 'text' holds an unpaired UTF-16 surrogate (an escape such as \\ud800 without its pair); "
                "expected valid Unicode text; the request was not processed.",
            )
        try:
            served, result = await batcher_box[0].parse(text)
        except _NoModelError:
            return no_model()
        except Exception:
            logger.exception("project %r: parsing failed", watcher.project)
            return rasa_error(  # the details are in the server log, not in the answer
                500,
                "ParsingError",
                "An unexpected error occurred while parsing the text; see the server log.",
            )
        return JSONResponse(rasa_parse(result), headers={MODEL_HEADER: served.model_id})

    async def http_error(request: Request, exc: Exception) -> Response:
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
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher_box.append(_Batcher(watcher, max_batch))
        await asyncio.to_thread(watcher.refresh)  # serve from the first request on
        if watch:
            watcher.start()
        try:
            yield
        finally:
            watcher.stop()
            batcher_box.pop().close()

    app = Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
            Route("/model/parse", parse, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=lifespan,
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
    host: str,
    port: int,
    project: str,
    store: ModelStore | str | Path,
    token: str | None = None,
    *,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    access_log: bool = False,
    log_level: str = "info",
    limits: ServerLimits | None = None,
) -> None:
    """Serve ``project``'s active model on ``host:port`` with uvicorn until interrupted (Ctrl-C, SIGTERM).

    Slow and idle clients are timed out and open connections capped by ``limits`` (see
    :mod:`nluflow.server_limits`).
    """
    import uvicorn

    from nluflow.server_limits import uvicorn_config

    model_store = store if isinstance(store, ModelStore) else ModelStore.local(store)
    check_id(project, "project")
    app = create_app(
        model_store,
        project,
        token=token,
        poll_seconds=poll_seconds,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
    )
    config = uvicorn_config(
        app,
        limits=limits,
        host=host,
        port=port,
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        log_config=_log_config(log_level),
        server_header=False,
    )
    # After Config: it applies the logging config, which would otherwise come first.
    logging.getLogger("uvicorn.access").addFilter(_TokenRedactor())
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
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
        "token" if token else "open",
        poll_seconds,
    )
    uvicorn.Server(config).run()
