"""The hot swap of ``nluflow serve``: the model being served, and the watcher that swaps in a new one.

An :class:`ActiveModelWatcher` thread polls the store's ``active.json`` (every second by default). When the
pointer names another model, the watcher copies the model's files into a private folder, checks every
sha256 against the manifest and the manifest's own sha256 against the pointer, loads the model from those
very bytes, runs one warm-up parse, and only then replaces one reference. A model that fails any check is
refused, logged, and retried with a growing delay; the previous model keeps serving.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from nluflow.backends.base import Parse
from nluflow.errors import ConfigError, IntegrityError, StoreError
from nluflow.hashing import sha256_file
from nluflow.models.nlu import NLUModel
from nluflow.store import MANIFEST_NAME, ActivePointer, Manifest, ModelStore, check_id, layout

logger = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0
MIN_POLL_SECONDS = 0.05
# Refused models are retried with a doubling delay up to this cap (a fixed file gets picked up again).
MAX_RETRY_SECONDS = 60.0
WARMUP_TEXT = "hello"
STOP_TIMEOUT_SECONDS = 10.0


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
        self.poll_seconds = check_poll(poll_seconds)
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
            where = layout(project).manifest(model_id)
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
            model_file=layout(project).model(model_id),
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


def check_poll(poll_seconds: float) -> float:
    if not poll_seconds >= MIN_POLL_SECONDS:
        raise ConfigError(
            f"poll interval {poll_seconds!r} s is too short; expected at least {MIN_POLL_SECONDS} s "
            "(1 s is plenty); the server was not started"
        )
    return float(poll_seconds)
