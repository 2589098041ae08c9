"""The generic training service as a block: OAuth2 credentials, every path and JSON field configurable."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import httpx
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from nluflow.backends.http import HttpOptions
from nluflow.backends.service import ServiceFields, ServicePaths, ServiceSettings, TrainingServiceBackend

_PATHS = ServicePaths()
_FIELDS = ServiceFields()


class TrainingServiceBlock(Block):
    """An in-house training service that follows upload → job → poll → fetch, with OAuth2 client credentials.

    Job creation must honour the `Idempotency-Key` header (the same key returns the same job).

    Example:
        Load the block and build the backend client (a context manager: it closes its HTTP clients):
        ```python
        from blocks.service import TrainingServiceBlock

        service_block = TrainingServiceBlock.load("BLOCK_NAME")
        with service_block.get_client() as backend:
            print(backend.name)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Training Service"
    _block_type_slug: ClassVar[str] = "nluflow-training-service"
    _description: ClassVar[str] = "Train nluflow models on a generic upload/job/poll/fetch training service."
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl(
        "https://github.com/nluflow/nluflow#training-service"
    )

    url: str = Field(default=..., title="Base URL", description="The service's base URL.")
    client_id: str = Field(
        default=..., title="OAuth2 client id", description="Client id for client credentials."
    )
    client_secret: SecretStr = Field(
        default=..., title="OAuth2 client secret", description="Client secret for client credentials."
    )
    scope: str | None = Field(
        default=None, title="Scope", description="OAuth2 scope, if the service needs one."
    )
    gpu_tier: Literal["none", "t4", "a10g", "a100"] = Field(
        default="none", title="GPU tier", description="The accelerator a job asks for."
    )
    deployment: str = Field(
        default="production", title="Deployment", description="The deployment that serves the active model."
    )
    token_path: str = Field(default=_PATHS.token, title="Token path", description="OAuth2 token endpoint.")
    datasets_path: str = Field(default=_PATHS.datasets, title="Datasets path", description="Dataset upload.")
    jobs_path: str = Field(default=_PATHS.jobs, title="Jobs path", description="Job creation.")
    job_path: str = Field(default=_PATHS.job, title="Job path", description="Job status, with {job_id}.")
    model_path: str = Field(
        default=_PATHS.model, title="Model path", description="Model metadata, with {model_id}."
    )
    artifact_path: str = Field(
        default=_PATHS.artifact, title="Artifact path", description="Model files download, with {model_id}."
    )
    predict_path: str = Field(
        default=_PATHS.predict, title="Predict path", description="Batch prediction, with {model_id}."
    )
    deployment_path: str = Field(
        default=_PATHS.deployment,
        title="Deployment path",
        description="Deployment update, with {deployment}.",
    )
    dataset_id_field: str = Field(
        default=_FIELDS.dataset_id,
        title="Dataset id field",
        description="Field with the uploaded dataset's id.",
    )
    job_id_field: str = Field(
        default=_FIELDS.job_id, title="Job id field", description="Field with the job id."
    )
    status_field: str = Field(
        default=_FIELDS.status, title="Status field", description="Field with the status."
    )
    progress_field: str = Field(
        default=_FIELDS.progress, title="Progress field", description="Field with progress from 0 to 1."
    )
    epochs_field: str = Field(
        default=_FIELDS.epochs, title="Epochs field", description="Field with per-epoch metrics."
    )
    error_field: str = Field(
        default=_FIELDS.error, title="Error field", description="Field with a failure reason."
    )
    model_id_field: str = Field(
        default=_FIELDS.model_id, title="Model id field", description="Field with the trained model's id."
    )
    predictions_field: str = Field(
        default=_FIELDS.predictions, title="Predictions field", description="Field with the list of parses."
    )
    status_map: dict[str, Literal["queued", "running", "succeeded", "failed", "cancelled"]] = Field(
        default_factory=lambda: {k: v.value for k, v in _FIELDS.states.items()},
        title="Status words",
        description="The service's status words and what each one means.",
    )

    def get_client(
        self,
        on_progress: Callable[[float, str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> TrainingServiceBackend:
        """Build the backend client (secrets are unwrapped here only; a fresh client for each call)."""
        paths = ServicePaths(
            token=self.token_path,
            datasets=self.datasets_path,
            jobs=self.jobs_path,
            job=self.job_path,
            model=self.model_path,
            artifact=self.artifact_path,
            predict=self.predict_path,
            deployment=self.deployment_path,
        )
        fields = ServiceFields.model_validate(
            {
                "dataset_id": self.dataset_id_field,
                "job_id": self.job_id_field,
                "status": self.status_field,
                "progress": self.progress_field,
                "epochs": self.epochs_field,
                "error": self.error_field,
                "model_id": self.model_id_field,
                "predictions": self.predictions_field,
                "states": dict(self.status_map),
            }
        )
        settings = ServiceSettings(
            paths=paths, fields=fields, gpu_tier=self.gpu_tier, deployment=self.deployment
        )
        return TrainingServiceBackend(
            self.url,
            self.client_id,
            self.client_secret.get_secret_value(),
            scope=self.scope,
            settings=settings,
            http=HttpOptions(transport=transport),
            on_progress=on_progress,
        )
