"""Emulator of the generic training service (see ``nluflow.backends.service`` for the protocol)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nluflow.data.schema import Dataset, Example
from nluflow.testing.emulators._base import ASGIApp, Emulator, JobPhase, routes
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


class TrainingServiceEmulator(Emulator):
    """The generic training service, with OAuth2 tokens, idempotency keys and epoch metrics."""

    name = "service"
    table = routes(
        ("POST", r"/oauth/token", "token"),
        ("POST", r"/datasets", "upload"),
        ("POST", r"/jobs", "train"),
        ("GET", r"/jobs/[^/]+", "status"),
        ("GET", r"/models/[^/]+", "model"),
        ("GET", r"/models/[^/]+/artifact", "artifact"),
        ("POST", r"/models/[^/]+/predict", "predict"),
        ("PUT", r"/deployments/[^/]+", "activate"),
    )

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

    def _authorized(self, request: Request) -> JSONResponse | None:
        value = request.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        expires = self.tokens.get(token) if scheme == "Bearer" else None
        if expires is None or expires < time.time():
            return self._error(401, "invalid_token", "the access token is missing, unknown or expired")
        return None

    def build_app(self) -> ASGIApp:
        app = FastAPI(title="training service emulator", openapi_url=None)

        @app.post("/oauth/token")
        async def token(request: Request) -> Response:
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

        @app.post("/datasets")
        async def upload(request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
            key = request.headers.get("idempotency-key")
            if not key:
                return self._error(400, "missing_idempotency_key", "POST /datasets needs an Idempotency-Key")
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

        @app.post("/jobs")
        async def create_job(request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
            key = request.headers.get("idempotency-key")
            if not key:
                return self._error(400, "missing_idempotency_key", "POST /jobs needs an Idempotency-Key")
            raw = await request.body()
            try:
                body = JobRequest.model_validate_json(raw)
            except ValidationError as exc:
                return self._error(422, "invalid_request", str(exc)[:300])
            with self.lock:
                if key in self.job_keys:
                    job_id, digest = self.job_keys[key]
                    if digest != body.model_dump_json():
                        return self._error(
                            422, "idempotency_key_reused", "the key was used with another body"
                        )
                    return JSONResponse({"id": job_id, "status": PHASE_WORDS[self.jobs[job_id].phase]})
                dataset = self.datasets.get(body.dataset_id)
                if dataset is None:
                    return self._error(404, "not_found", f"no dataset {body.dataset_id}")
                job = self.start_job(dataset, body.config.seed, config=body.config.model_dump())
                self.job_keys[key] = (job.id, body.model_dump_json())
            return JSONResponse({"id": job.id, "status": "queued"}, status_code=201)

        @app.get("/jobs/{job_id}")
        async def get_job(job_id: str, request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
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

        def model_job(model_id: str) -> Any:
            job = self.jobs.get(model_id.removeprefix("model-"))
            return job if job is not None and job.model is not None else None

        @app.get("/models/{model_id}")
        async def get_model(model_id: str, request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
            job = model_job(model_id)
            if job is None:
                return self._error(404, "not_found", f"no model {model_id}")
            return JSONResponse(
                {"id": model_id, "job_id": job.id, "created_at": job.finished_at, "format": "tar.gz"}
            )

        @app.get("/models/{model_id}/artifact")
        async def get_artifact(model_id: str, request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
            job = model_job(model_id)
            if job is None or job.model_dir is None:
                return self._error(404, "not_found", f"no model {model_id}")
            return Response(pack_dir(job.model_dir), media_type="application/gzip")

        @app.post("/models/{model_id}/predict")
        async def predict(model_id: str, request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
            try:
                body = PredictRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                return self._error(422, "invalid_request", str(exc)[:300])
            job = model_job(model_id)
            if job is None:
                return self._error(404, "not_found", f"no model {model_id}")
            parses = job.model.parse(body.texts)
            return JSONResponse({"predictions": [p.model_dump(mode="json") for p in parses]})

        @app.put("/deployments/{name}")
        async def deploy(name: str, request: Request) -> Response:
            if (denied := self._authorized(request)) is not None:
                return denied
            try:
                body = DeployRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                return self._error(422, "invalid_request", str(exc)[:300])
            if model_job(body.model_id) is None:
                return self._error(404, "not_found", f"no model {body.model_id}")
            with self.lock:
                history = self.deployments.setdefault(name, [])
                previous = history[-1] if history else None
                if previous != body.model_id:
                    history.append(body.model_id)
            return JSONResponse(
                {"deployment": name, "model_id": body.model_id, "previous_model_id": previous}
            )

        return app

    def deployed(self, name: str = "production") -> str | None:
        history = self.deployments.get(name) or []
        return history[-1] if history else None
