"""The training-backend protocol and the values that cross it.

A backend trains a model on a dataset, reports job status, fetches the trained model's files, predicts with a
model, and activates a model where the platform serves it. The local backend does all of it in-process;
remote backends speak HTTP. Metrics are never taken from a backend: nluflow computes them from ``predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nluflow.data.schema import Dataset, Example, IntentScore, Parse
from nluflow.errors import ConfigError
from nluflow.hashing import sha256_json
from nluflow.models.options import LocalModelOptions
from nluflow.store import Manifest

# Re-exported: the values that cross the protocol, defined where the layers below can use them.
__all__ = [
    "ClosingClient",
    "IntentScore",
    "JobRef",
    "JobState",
    "JobStatus",
    "LabelledPredictor",
    "LocalModelOptions",
    "ModelRef",
    "Parse",
    "TrainingBackend",
    "TrainingConfig",
]


class TrainingConfig(BaseModel):
    """What to train, with the bounds every backend shares; out-of-range values are refused up front.

    ``epochs``, ``batch_size``, ``learning_rate``, ``dropout`` and ``early_stopping_patience`` are for neural
    (remote) backends; the local backend's linear model + CRF use ``local`` instead and ignore them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_split: float = Field(default=0.1, ge=0.1, le=0.5, description="Share held out for validation.")
    epochs: int = Field(default=100, ge=10, le=500, description="Training epochs (neural backends).")
    batch_size: int = Field(default=32, ge=8, le=128, description="Batch size (neural backends).")
    learning_rate: float = Field(
        default=0.001, gt=0.0, le=0.1, description="Learning rate (neural backends)."
    )
    dropout: float = Field(default=0.1, ge=0.0, le=0.8, description="Dropout rate (neural backends).")
    early_stopping_patience: int = Field(default=5, ge=1, le=20, description="Epochs without improvement.")
    cv_folds: int = Field(default=0, description="Cross-validation folds on training data: 0 (off) or 2-10.")
    seed: int = Field(default=42, ge=0, description="Random seed, so a retrain is reproducible.")
    local: LocalModelOptions = Field(default_factory=LocalModelOptions, description="Local backend options.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options (remote).")

    @model_validator(mode="after")
    def _folds(self) -> TrainingConfig:
        if self.cv_folds != 0 and not 2 <= self.cv_folds <= 10:
            raise ValueError("cv_folds must be 0 (off) or between 2 and 10")
        return self

    def sha256(self) -> str:
        return sha256_json(self.model_dump(mode="json"))

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TrainingConfig:
        """Validate a user-supplied config, raising ConfigError with every problem listed."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"training config refused before any training started: {problems}") from None


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobRef(BaseModel):
    """A handle on a training job; plain data, safe to pass between Prefect tasks."""

    model_config = ConfigDict(frozen=True)

    backend: str
    job_id: str
    idempotency_key: str
    data: dict[str, Any] = Field(default_factory=dict, description="Backend-specific handle data.")


class JobStatus(BaseModel):
    state: JobState
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. loss, val_loss, accuracy.")


class ModelRef(BaseModel):
    """A trained model: its id, and where its files are (a local folder) once fetched."""

    model_config = ConfigDict(frozen=True)

    backend: str
    model_id: str
    path: str | None = Field(default=None, description="Local folder holding the model files.")
    backend_model_id: str | None = Field(default=None, description="The platform's own id, if remote.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Training metrics from the backend.")

    @classmethod
    def stored(cls, manifest: Manifest, path: str | Path) -> ModelRef:
        """The model a store manifest describes, its files materialised at ``path``."""
        return cls(
            backend=manifest.backend,
            model_id=manifest.model_id,
            path=str(path),
            backend_model_id=manifest.backend_model_id,
        )


class ClosingClient:
    """A client that is its own context manager: ``with Backend(...) as backend:`` closes it at the end."""

    def close(self) -> None:
        """Release what the client holds (its HTTP clients); a no-op where it holds nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class TrainingBackend(Protocol):
    """What the retrain flow needs from a platform. A backend is a context manager; ``close`` ends the HTTP
    clients a remote backend holds (the local backend holds none)."""

    name: str

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        """Start a training job; the same key never starts a second job."""
        ...

    def status(self, job: JobRef) -> JobStatus: ...

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        """Write the trained model's files into ``dest`` (an empty folder) and describe them."""
        ...

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]: ...

    def activate(self, model: ModelRef) -> None:
        """Make ``model`` the one the platform serves (a no-op where nothing is served)."""
        ...

    def close(self) -> None:
        """Release the client's resources (its HTTP clients); calling it again does nothing."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class ProjectScoped(Protocol):
    """A backend whose platform serves one model for everyone (Rasa): told the project it trains for, it
    names its models per project and refuses to act when the platform serves another project's model."""

    def bind_project(self, project: str) -> None: ...

    def check_active_served(self, active: ModelRef, project: str) -> None:
        """Raise when the platform does not serve the project's active model (the store's pointer and the
        platform disagree: another project or a hand-made change replaced it)."""
        ...


@runtime_checkable
class LabelledPredictor(Protocol):
    """A backend that predicts better with the test set's true labels (Rasa's ``/model/test/intents`` needs
    them). The labels are never used to score: metrics are nluflow's, computed from the predictions."""

    def predict_labelled(self, model: ModelRef, examples: Sequence[Example]) -> list[Parse]: ...
