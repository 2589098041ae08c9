"""What every task shares: the retry condition, versioned cache keys, backend and store construction."""

from __future__ import annotations

import inspect
import logging
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
from prefect.cache_policies import CachePolicy
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict, Field

from blocks.store import LocalModelStore
from nluflow.backends.base import TrainingBackend
from nluflow.backends.local import LocalBackend
from nluflow.errors import ConfigError, TransientBackendError
from nluflow.hashing import sha256_json
from nluflow.pipeline import CODE_VERSION, Workspace
from nluflow.store import ModelStore, layout
from nluflow.store.audit_log import refresh_audit_copy

# Retry delays (seconds) for stages that talk to a backend: transient errors only.
BACKEND_RETRY_DELAYS: list[float] = [2.0, 10.0, 30.0]


# Test-only crash hook (tests/flows/test_crash_points.py): a run with NLUFLOW_TEST_KILL_AT=<step> kills its
# own process with SIGKILL right after that step, to prove that every crash point leaves store and audit log
# recoverable. Steps: train (as training starts), store, activate, intent, pointer, audit, sync. Unset in
# normal use: a no-op.
KILL_AT_ENV = "NLUFLOW_TEST_KILL_AT"


def crash_point(step: str) -> None:
    """Test-only: SIGKILL this process after ``step`` when ``$NLUFLOW_TEST_KILL_AT`` names it."""
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def run_logger() -> Any:
    """The run's logger inside a flow or task run; outside one (a task's ``.fn()`` called directly, a CLI
    command) the ``nluflow.tasks`` logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("nluflow.tasks")


def is_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry rate limits, server and transport errors; fail fast on bugs and bad data."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read is no reason to retry
        return False
    return isinstance(exc, TransientBackendError | httpx.TransportError | httpx.TimeoutException)


def cache_key(task_name: str, *parts: Any) -> str:
    """A cache key that is unique to the task, the code version and the given parts."""
    return f"{task_name}-{sha256_json({'code': CODE_VERSION, 'parts': list(parts)})[:40]}"


def cache_policy(fn: Callable[[TaskRunContext, dict[str, Any]], str | None]) -> CachePolicy:
    return CachePolicy.from_cache_key_fn(fn)


def load_block(ref: str, what: str) -> Any:
    """Load a block by ``<block-type-slug>/<block-name>``, e.g. ``nluflow-rasa-backend/prod``."""
    from prefect.blocks.core import Block

    if "/" not in ref:
        raise ConfigError(
            f"{what} {ref!r} is not a block reference; expected '<block-type-slug>/<block-name>', "
            "e.g. 'nluflow-rasa-backend/prod' (`prefect block ls` lists them)"
        )
    try:
        return Block.load(ref)
    except ValueError as exc:  # Prefect raises ValueError for an unknown block document
        raise ConfigError(f"{what} {ref!r} could not be loaded: {exc}") from None


class BackendSpec(BaseModel):
    """Which backend to use, as plain data a task can take: ``local`` or a backend block reference."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(default="local", description="'local', or '<block-type-slug>/<block-name>'.")
    workspace: str = Field(description="Local working folder for jobs and fetched models.")

    def build(self, on_progress: Callable[[float, str], None] | None = None) -> TrainingBackend:
        """A fresh client: the local backend, or the one a backend block builds (secrets unwrapped there)."""
        if self.name == "local":
            return LocalBackend(Path(self.workspace) / "backends" / "local", on_progress=on_progress)
        block = load_block(self.name, "backend")
        kwargs: dict[str, Any] = {"on_progress": on_progress}
        if "workdir" in inspect.signature(block.get_client).parameters:
            kwargs["workdir"] = str(
                Path(self.workspace) / "backends" / re.sub(r"[^A-Za-z0-9._-]", "-", self.name)
            )
        return cast(TrainingBackend, block.get_client(**kwargs))

    @contextmanager
    def client(self, on_progress: Callable[[float, str], None] | None = None) -> Iterator[TrainingBackend]:
        """A fresh client for the ``with`` body, closed after it (when the client has a ``close``)."""
        backend = self.build(on_progress)
        try:
            yield backend
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()


class StoreSpec(BaseModel):
    """Which model store to use: a local folder, or a store block reference (local folder or S3)."""

    model_config = ConfigDict(frozen=True)

    path: str | None = Field(default=None, description="Local store folder.")
    block: str | None = Field(default=None, description="'<block-type-slug>/<block-name>' of a store block.")
    workspace: str | None = Field(
        default=None, description="Local working folder (audit copy of remote stores)."
    )

    def build(self, create: bool = False) -> ModelStore:
        if self.block:
            block = load_block(self.block, "model store")
            if isinstance(block, LocalModelStore):
                return block.get_store(create=create)
            return cast(ModelStore, block.get_store())
        if not self.path:
            raise ConfigError("no model store given: pass a store folder or a store block reference")
        return ModelStore.local(self.path, create=create)

    def audit_path(self, project: str) -> Path:
        """The project's audit log, a local file: inside a local store, or in the workspace for a remote
        store (where ``sync_audit`` uploads a copy after each line)."""
        if self.block:
            block = load_block(self.block, "model store")
            if isinstance(block, LocalModelStore):
                return Path(block.path) / layout(project).audit
            assert self.workspace is not None
            copy = Path(self.workspace) / "audit" / layout(project).audit
            refresh_audit_copy(block.get_store().fs, project, copy)  # lines the CLI wrote in the store
            return copy
        assert self.path is not None
        return Path(self.path) / layout(project).audit

    def is_local(self) -> bool:
        return not self.block or isinstance(load_block(self.block, "model store"), LocalModelStore)


def workspace(path: str) -> Workspace:
    return Workspace(Path(path))


_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")


def artifact_key(project: str, name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only; runs of one key form a series."""
    return _KEY_UNSAFE.sub("-", f"{project}-{name}".lower()).strip("-")


class ProgressReporter:
    """Reports training progress to the log and, inside a run, to one Prefect progress artifact (created on
    the first report; a task's ``.fn()`` called outside a run only logs)."""

    def __init__(self, key: str, logger: Any) -> None:
        self.key = key
        self.logger = logger
        self._artifact_id: uuid.UUID | None = None
        self._last = -1.0

    @property
    def reported(self) -> bool:
        """Whether anything was reported."""
        return self._last >= 0

    def __call__(self, fraction: float, message: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext

        percent = round(max(0.0, min(1.0, fraction)) * 100, 1)
        if percent == self._last:
            return
        self._last = percent
        self.logger.info("training %5.1f%% %s", percent, message)
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        if self._artifact_id is None:
            self._artifact_id = cast(
                uuid.UUID,
                create_progress_artifact(progress=percent, key=self.key, description=f"Training: {message}"),
            )
        else:
            update_progress_artifact(self._artifact_id, progress=percent, description=f"Training: {message}")
