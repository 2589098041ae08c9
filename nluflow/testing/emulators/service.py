"""Emulator of the generic training service (see ``nluflow.backends.service`` for the protocol)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nluflow.data.schema import Dataset, Example
from nluflow.testing.emulators._base import Emulator, JobPhase, TrainingJob
from nluflow.testing.emulators._middleware import Endpoint, Refused
from nluflow.testing.emulators._model import pack_dir

PHASE_WORDS = {
    JobPhase.QUEUED: "queued",
    JobPhase.RUNNING: "running",
    JobPhase.SUCCEEDED: "succeeded",
    JobPhase.FAILED: "failed",
    JobPhase.CANCELLED: "cancelled",
    JobPhase.ERROR: "failed",
}


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    patience: int = Field(ge=1, le=100)


class CrossValidation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folds: int = Field(ge=0, le=20)


class JobConfig(BaseModel):
    """The documented job config; unknown keys are allowed (``TrainingConfig.extra`` passes through)."""

    model_config = ConfigDict(extra="allow")

    gpu_tier: Literal["none", "t4", "a10g", "a100"]
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    validation_split: float = Field(gt=0, lt=1)
    early_stopping: EarlyStopping
    cross_validation: CrossValidation
    seed: int = Field(ge=0)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    config: JobConfig


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, max_length=1000)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str


_Body = TypeVar("_Body", bound=BaseModel)


class TrainingServiceEmulator(Emulator):
    """The generic training service, with OAuth2 tokens, idempotency keys and epoch metrics."""

    name = "service"
    title = "training service emulator"

    def __init__(
        self,
        client_id: str = "nluflow",
        client_secret: str = "service-secret",
        token_ttl: float = 3600,
        **kw: Any,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.datasets: dict[str, Dataset] = {}
        self.dataset_keys: dict[str, str] = {}
        self.job_keys: dict[str, tuple[str, str]] = {}
        self.deployments: dict[str, list[str]] = {}
        super().__init__(**kw)

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        return json.dumps(
            {"error": title.lower().replace(" ", "_"), "message": detail}
        ).encode(), "application/json"

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def _error(self, status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        value = request.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        expires = self.tokens.get(token) if scheme == "Bearer" else None
        if expires is None or expires < time.time():
            return self._error(401, "invalid_token", "the access token is missing, unknown or expired")
        return None

    def _model_job(self, model_id: str) -> TrainingJob:
        """The finished job behind ``model_id``; raises :class:`Refused` with a 404 otherwise."""
        job = self.jobs.get(model_id.removeprefix("model-"))
        if job is None or job.model is None:
            raise Refused(self._error(404, "not_found", f"no model {model_id}"))
        return job

    def _idempotency_key(self, request: Request, route: str) -> str:
        key = request.headers.get("idempotency-key")
        if not key:
            raise Refused(
                self._error(400, "missing_idempotency_key", f"POST {route} needs an Idempotency-Key")
            )
        return key

    async def _body(self, request: Request, model: type[_Body]) -> _Body:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise Refused(self._error(422, "invalid_request", str(exc)[:300])) from None

    # -------------------------------------------------------------------------------------------- routes

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/oauth/token", self.token, "token", public=True),
            Endpoint("POST", "/datasets", self.upload, "upload"),
            Endpoint("POST", "/jobs", self.create_job, "train"),
            Endpoint("GET", "/jobs/{job_id}", self.get_job, "status"),
            Endpoint("GET", "/models/{model_id}", self.get_model, "model"),
            Endpoint("GET", "/models/{model_id}/artifact", self.get_artifact, "artifact"),
            Endpoint("POST", "/models/{model_id}/predict", self.predict, "predict"),
            Endpoint("PUT", "/deployments/{name}", self.deploy, "activate"),
        ]

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return self._error(400, "unsupported_grant_type", "only client_credentials is supported")
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._error(401, "invalid_client", "client authentication failed")
        value = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[value] = time.time() + self.token_ttl
            self.tokens_issued += 1
        return JSONResponse(
            {"access_token": value, "token_type": "bearer", "expires_in": int(self.token_ttl)}
        )

    async def upload(self, request: Request) -> Response:
        key = self._idempotency_key(request, "/datasets")
        if key in self.dataset_keys:
            existing = self.dataset_keys[key]
            return JSONResponse({"id": existing, "examples": len(self.datasets[existing])})
        examples = []
        for number, line in enumerate((await request.body()).decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                examples.append(Example.model_validate(json.loads(line)))
            except (ValueError, ValidationError) as exc:
                return self._error(422, "invalid_dataset", f"line {number}: {exc}"[:300])
        if not examples:
            return self._error(422, "invalid_dataset", "the dataset has no examples")
        with self.lock:
            dataset_id = self.dataset_keys.setdefault(key, self.new_id("ds-"))
            self.datasets[dataset_id] = Dataset.of(examples, source=f"upload {dataset_id}")
        return JSONResponse({"id": dataset_id, "examples": len(examples)}, status_code=201)

    async def create_job(self, request: Request) -> Response:
        key = self._idempotency_key(request, "/jobs")
        body = await self._body(request, JobRequest)
        with self.lock:
            if key in self.job_keys:
                job_id, digest = self.job_keys[key]
                if digest != body.model_dump_json():
                    return self._error(422, "idempotency_key_reused", "the key was used with another body")
                return JSONResponse({"id": job_id, "status": PHASE_WORDS[self.jobs[job_id].phase]})
            dataset = self.datasets.get(body.dataset_id)
            if dataset is None:
                return self._error(404, "not_found", f"no dataset {body.dataset_id}")
            job = self.start_job(dataset, body.config.seed, config=body.config.model_dump())
            self.job_keys[key] = (job.id, body.model_dump_json())
        return JSONResponse({"id": job.id, "status": "queued"}, status_code=201)

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = self.jobs.get(job_id)
        if job is None:
            return self._error(404, "not_found", f"no job {job_id}")
        return JSONResponse(
            {
                "id": job.id,
                "status": PHASE_WORDS[job.phase],
                "progress": round(job.progress, 3),
                "epochs": list(job.epochs),
                "error": job.error,
                "model_id": f"model-{job.id}" if job.phase is JobPhase.SUCCEEDED else None,
                "created_at": job.created_at,
            }
        )

    async def get_model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        job = self._model_job(model_id)
        return JSONResponse(
            {"id": model_id, "job_id": job.id, "created_at": job.finished_at, "format": "tar.gz"}
        )

    async def get_artifact(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        job = self._model_job(model_id)
        if job.model_dir is None:
            return self._error(404, "not_found", f"no model {model_id}")
        return Response(pack_dir(job.model_dir), media_type="application/gzip")

    async def predict(self, request: Request) -> Response:
        body = await self._body(request, PredictRequest)
        job = self._model_job(request.path_params["model_id"])
        assert job.model is not None
        parses = job.model.parse(body.texts)
        return JSONResponse({"predictions": [p.model_dump(mode="json") for p in parses]})

    async def deploy(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await self._body(request, DeployRequest)
        self._model_job(body.model_id)
        with self.lock:
            history = self.deployments.setdefault(name, [])
            previous = history[-1] if history else None
            if previous != body.model_id:
                history.append(body.model_id)
        return JSONResponse({"deployment": name, "model_id": body.model_id, "previous_model_id": previous})

    def deployed(self, name: str = "production") -> str | None:
        history = self.deployments.get(name) or []
        return history[-1] if history else None
