"""The one exception tree of nluflow.

Callers learn what to catch here, without reading the code that raises::

    NluflowError                      base; ``exit_code`` says how the CLI ends (2 = bad input, 1 = fault)
    ├── DataError                     a data file is malformed or fails a blocking validation rule
    │                                 (carries ``path`` and ``line``; exit 2)
    ├── ConfigError                   a training config, gate policy or parameter is out of range (exit 2)
    ├── StoreError                    the model store cannot do what was asked (exit 2)
    │   ├── UnsafePathError           a project or model id tries to leave the store (``../x``, ``/abs``)
    │   ├── ModelNotFoundError        no such project, model, or active pointer target
    │   └── IntegrityError            a stored file's sha256 does not match its manifest (exit 1)
    ├── BackendError                  a training backend failed (exit 1)
    │   ├── TransientBackendError     worth retrying: 408/429/5xx, transport errors, timeouts
    │   ├── TrainingFailedError       the job reached a terminal failure state (failed, cancelled, timed out)
    │   └── NotFittedError            predict/save before fit (also a ``sklearn.exceptions.NotFittedError``)
    ├── SourceError                   a data source (Label Studio, an S3 prefix) could not be read (exit 1)
    │   └── TransientSourceError      worth retrying: 408/429/5xx, transport errors, timeouts
    ├── PromotionError                promotion failed after the candidate was stored; rolled back (exit 1)
    └── AuditError                    the audit log cannot be written or read (exit 1)

Messages are one paragraph: where (file:line), what was found, what was expected, and what happens next.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class NluflowError(Exception):
    """Base class of every error nluflow raises on purpose."""

    exit_code: int = 1


class DataError(NluflowError):
    """A data file is malformed, or the data fails a blocking validation rule.

    ``str(err)`` reads ``path:line: message`` when the location is known.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(self.location_prefix() + message)

    def location_prefix(self) -> str:
        if self.path is None:
            return ""
        if self.line is None:
            return f"{self.path}: "
        return f"{self.path}:{self.line}: "

    def __reduce__(self) -> tuple[object, ...]:  # keep path/line through pickling (Prefect results)
        return (type(self), (self.message, self.path, self.line))


class ConfigError(NluflowError):
    """A training config, gate policy or other parameter is out of range."""

    exit_code = 2


class StoreError(NluflowError):
    """The model store cannot do what was asked; nothing was changed."""

    exit_code = 2


class UnsafePathError(StoreError):
    """A project or model id would leave the store (``..``, absolute paths, separators)."""


class ModelNotFoundError(StoreError):
    """No such project or model, or the active pointer names a model that is not stored."""


class IntegrityError(StoreError):
    """A stored file does not match the sha256 in its manifest; the model is refused."""

    exit_code = 1


class BackendError(NluflowError):
    """A training backend failed."""

    exit_code = 1


class TransientBackendError(BackendError):
    """A failure worth retrying (rate limit, server error, transport error, timeout)."""


class TrainingFailedError(BackendError):
    """The training job reached a terminal failure state."""


class NotFittedError(BackendError, _SklearnNotFittedError):  # type: ignore[misc]
    """An estimator was used before ``fit``."""


class SourceError(NluflowError):
    """A data source (a Label Studio project, an S3 prefix) could not be read; nothing was trained."""

    exit_code = 1


class TransientSourceError(SourceError):
    """A source failure worth retrying later (rate limit, server error, transport error, timeout)."""


class PromotionError(NluflowError):
    """Promotion failed after the candidate was stored; the store was rolled back."""

    exit_code = 1


class AuditError(NluflowError):
    """The audit log cannot be written or read."""

    exit_code = 1
