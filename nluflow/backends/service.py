"""A generic training service: the upload → job → poll → fetch protocol many in-house ML platforms follow.

The protocol (every path and JSON field name is configurable, these are the defaults)::

    POST /oauth/token            form grant_type=client_credentials → {access_token, token_type, expires_in}
    POST /datasets               JSONL body, Idempotency-Key        → {"id", "examples"}
    POST /jobs                   {"dataset_id", "config"}, Idempotency-Key → {"id", "status"}
                                 (the same key returns the same job, never a second one)
    GET  /jobs/{job_id}          → {"id", "status", "progress", "epochs": [{epoch, loss, val_loss, accuracy}],
                                    "error", "model_id"}
    GET  /models/{model_id}      → the model's metadata
    GET  /models/{model_id}/artifact                  → the model files (bytes)
    POST /models/{model_id}/predict {"texts": [...]}  → {"predictions": [<Rasa parse>, ...]}
    PUT  /deployments/{deployment} {"model_id"}       → the deployment now serves that model

``config`` carries the GPU tier, early stopping and cross-validation folds next to the shared training
options. Status words are mapped with ``ServiceFields.states``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nluflow.backends.base import ClosingClient, JobRef, JobState, JobStatus, ModelRef, Parse, TrainingConfig
from nluflow.backends.errors import ContractError
from nluflow.backends.http import HttpOptions, HttpSession, OAuth2ClientCredentials, require
from nluflow.data.schema import Dataset
from nluflow.errors import BackendError, ConfigError, TrainingFailedError

GPU_TIERS = ("none", "t4", "a10g", "a100")


class ServicePaths(BaseModel):
    """Endpoint paths of the training service, relative to its base URL, with ``{name}`` placeholders."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str = "/oauth/token"
    datasets: str = "/datasets"
    jobs: str = "/jobs"
    job: str = "/jobs/{job_id}"
    model: str = "/models/{model_id}"
    artifact: str = "/models/{model_id}/artifact"
    predict: str = "/models/{model_id}/predict"
    deployment: str = "/deployments/{deployment}"


class ServiceFields(BaseModel):
    """JSON field names of the training service's answers, and its status words."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset_id: str = "id"
    job_id: str = "id"
    status: str = "status"
    progress: str = "progress"
    epochs: str = "epochs"
    error: str = "error"
    model_id: str = "model_id"
    predictions: str = "predictions"
    states: dict[str, JobState] = Field(
        default_factory=lambda: {
            "pending": JobState.QUEUED,
            "queued": JobState.QUEUED,
            "running": JobState.RUNNING,
            "training": JobState.RUNNING,
            "succeeded": JobState.SUCCEEDED,
            "completed": JobState.SUCCEEDED,
            "failed": JobState.FAILED,
            "error": JobState.FAILED,
            "cancelled": JobState.CANCELLED,
            "canceled": JobState.CANCELLED,
        }
    )


def _fill(template: str, **values: str) -> str:
    from urllib.parse import quote

    return template.format(**{k: quote(v, safe="") for k, v in values.items()})


def parse_from_json(body: Any, text: str, what: str) -> Parse:
    """A Rasa-shaped parse dict → ``Parse``; a missing intent is a ``ContractError``."""
    if not isinstance(body, dict) or not isinstance(body.get("intent"), dict):
        raise ContractError(
            f"{what}: expected a parse with an 'intent' object for {text!r}, found {body!r:.80}"
        )
    intent = body["intent"]
    ranking = body.get("intent_ranking") or []
    entities = [
        {k: e[k] for k in ("start", "end", "entity", "value") if k in e}
        for e in body.get("entities") or []
        if isinstance(e, dict)
    ]
    try:
        return Parse.model_validate(
            {
                "text": text,
                "intent": {
                    "name": intent.get("name") or "",
                    "confidence": float(intent.get("confidence") or 0.0),
                },
                "intent_ranking": [
                    {"name": r.get("name") or "", "confidence": float(r.get("confidence") or 0.0)}
                    for r in ranking
                    if isinstance(r, dict)
                ],
                "entities": [
                    {**e, "value": str(e.get("value", text[e["start"] : e["end"]]))}
                    for e in entities
                    if {"start", "end", "entity"} <= e.keys()
                ],
            }
        )
    except (ValueError, TypeError) as exc:
        raise ContractError(f"{what}: the parse of {text!r} does not have the Rasa shape ({exc})") from None


@dataclass(frozen=True)
class ServiceSettings:
    """What a training service's API looks like and what jobs ask for; checked when made (``ConfigError``)."""

    paths: ServicePaths | Mapping[str, str] = field(default_factory=ServicePaths)
    fields: ServiceFields | Mapping[str, Any] = field(default_factory=ServiceFields)
    gpu_tier: str = "none"
    deployment: str = "production"
    predict_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.gpu_tier not in GPU_TIERS:
            raise ConfigError(
                f"gpu_tier {self.gpu_tier!r} is not one of {', '.join(GPU_TIERS)}; nothing was sent"
            )
        if self.predict_batch_size < 1:
            raise ConfigError(f"predict_batch_size must be at least 1, found {self.predict_batch_size}")
        if not isinstance(self.paths, ServicePaths):
            object.__setattr__(self, "paths", ServicePaths.model_validate(dict(self.paths)))
        if not isinstance(self.fields, ServiceFields):
            object.__setattr__(self, "fields", ServiceFields.model_validate(dict(self.fields)))


class TrainingServiceBackend(ClosingClient):
    """A client of a generic training service (OAuth2 client credentials, idempotent job creation); a context
    manager: ``close`` ends its HTTP client."""

    name = "service"

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        settings: ServiceSettings | None = None,
        http: HttpOptions | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> None:
        settings = settings or ServiceSettings()
        assert isinstance(settings.paths, ServicePaths) and isinstance(settings.fields, ServiceFields)
        self.settings = settings
        self.paths: ServicePaths = settings.paths
        self.fields: ServiceFields = settings.fields
        self.gpu_tier = settings.gpu_tier
        self.deployment = settings.deployment
        self.predict_batch_size = settings.predict_batch_size
        self.on_progress = on_progress
        self._session = HttpSession.open(base_url, http)
        self._session.auth = OAuth2ClientCredentials(
            self._session, self.paths.token, client_id, client_secret, scope
        )

    def __repr__(self) -> str:
        return f"TrainingServiceBackend({self._session!r}, deployment={self.deployment!r})"

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------------------------------- protocol

    def training_config(self, config: TrainingConfig) -> dict[str, Any]:
        """The job config the service receives: shared options, GPU tier, early stopping, CV folds."""
        return {
            "gpu_tier": self.gpu_tier,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "dropout": config.dropout,
            "validation_split": config.validation_split,
            "early_stopping": {"enabled": True, "patience": config.early_stopping_patience},
            "cross_validation": {"folds": config.cv_folds},
            "seed": config.seed,
            **config.extra,
        }

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        """Upload the dataset, then create the job; both carry idempotency keys, so a retry reuses them."""
        if len(train) == 0:
            raise ConfigError("the training set is empty; nothing was uploaded")
        uploaded = self._session.json(
            "POST",
            self.paths.datasets,
            content=train.to_jsonl().encode("utf-8"),
            headers={"Content-Type": "application/x-ndjson"},
            idempotency_key=f"{idempotency_key}-dataset",
        )
        dataset_id = str(require(uploaded, self.fields.dataset_id, (str, int), "the dataset upload answer"))
        body = {"dataset_id": dataset_id, "config": self.training_config(config)}
        created = self._session.json("POST", self.paths.jobs, json_body=body, idempotency_key=idempotency_key)
        job_id = str(require(created, self.fields.job_id, (str, int), "the job creation answer"))
        return JobRef(
            backend=self.name, job_id=job_id, idempotency_key=idempotency_key, data={"dataset_id": dataset_id}
        )

    def _job(self, job: JobRef) -> dict[str, Any]:
        body = self._session.json("GET", _fill(self.paths.job, job_id=job.job_id))
        if not isinstance(body, dict):
            raise ContractError(f"job {job.job_id}: expected a JSON object, found {type(body).__name__}")
        return body

    def _state(self, body: dict[str, Any], job_id: str) -> JobState:
        word = require(body, self.fields.status, str, f"job {job_id}")
        state = self.fields.states.get(word.lower())
        if state is None:
            known = ", ".join(sorted(self.fields.states))
            raise ContractError(
                f"job {job_id} reports status {word!r}, which is not one of {known}; add it to the block's "
                "status mapping"
            )
        return state

    def status(self, job: JobRef) -> JobStatus:
        body = self._job(job)
        state = self._state(body, job.job_id)
        epochs = body.get(self.fields.epochs) or []
        metrics = _last_epoch_metrics(epochs)
        try:
            progress = float(body.get(self.fields.progress) or 0.0)
        except (TypeError, ValueError):
            progress = 0.0
        if state is JobState.SUCCEEDED:
            progress = 1.0
        message = str(body.get(self.fields.error) or "")
        if not message and epochs:
            message = f"{state.value}, epoch {len(epochs)}"
        status = JobStatus(
            state=state, progress=min(max(progress, 0.0), 1.0), message=message, metrics=metrics
        )
        if self.on_progress is not None:
            self.on_progress(status.progress, status.message or state.value)
        return status

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        body = self._job(job)
        state = self._state(body, job.job_id)
        if state is not JobState.SUCCEEDED:
            reason = body.get(self.fields.error) or "no reason given"
            if state.terminal:
                raise TrainingFailedError(
                    f"job {job.job_id} ended {state.value} ({reason}); there is no model"
                )
            raise BackendError(f"job {job.job_id} is still {state.value}; fetch it once it has succeeded")
        model_id = str(require(body, self.fields.model_id, (str, int), f"job {job.job_id}"))
        meta = self._session.json("GET", _fill(self.paths.model, model_id=model_id))
        artifact = self._session.request("GET", _fill(self.paths.artifact, model_id=model_id)).content
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "model.tar.gz").write_bytes(artifact)
        record = {"service_model_id": model_id, "job_id": job.job_id, "metadata": meta}
        (dest / "service-model.json").write_text(
            json.dumps(record, indent=2, sort_keys=True), encoding="utf-8"
        )
        return ModelRef(
            backend=self.name,
            model_id=model_id,
            path=str(dest),
            backend_model_id=model_id,
            metrics=_last_epoch_metrics(body.get(self.fields.epochs) or []),
        )

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        model_id = model.backend_model_id or model.model_id
        url = _fill(self.paths.predict, model_id=model_id)
        out: list[Parse] = []
        for start in range(0, len(texts), self.predict_batch_size):
            batch = list(texts[start : start + self.predict_batch_size])
            body = self._session.json("POST", url, json_body={"texts": batch}, retry_safe=True)
            predictions = require(body, self.fields.predictions, list, f"predictions of model {model_id}")
            if len(predictions) != len(batch):
                raise ContractError(
                    f"model {model_id} returned {len(predictions)} predictions for {len(batch)} texts"
                )
            out.extend(
                parse_from_json(p, t, f"model {model_id}") for p, t in zip(predictions, batch, strict=True)
            )
        return out

    def activate(self, model: ModelRef) -> None:
        model_id = model.backend_model_id or model.model_id
        self._session.json(
            "PUT", _fill(self.paths.deployment, deployment=self.deployment), json_body={"model_id": model_id}
        )


def _last_epoch_metrics(epochs: Any) -> dict[str, float]:
    if not isinstance(epochs, list) or not epochs or not isinstance(epochs[-1], dict):
        return {}
    out: dict[str, float] = {}
    for key, value in epochs[-1].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out
