"""Emulator of NeuralSpace NLU (AutoNLP) under ``/api/nlu/v1`` (see the specs' neuralspace/README.md).

Documented shapes: the raw ``Authorization`` token, ``POST /model/train/queue``, ``POST /model/parse`` (the
model must be deployed), the status lifecycle and the ``{success, message, timestamp, data}`` envelope.
The other paths are the backend's configurable defaults (upload, list, get, delete, deploy). An upload
replaces the project's training data for its language. Failure outcomes map to the platform's words:
failed → ``Failed``, cancelled → ``Dead`` (no update for 10 h), error → ``Timed Out``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nluflow.data.schema import Dataset, Entity, Example
from nluflow.testing.emulators._base import Emulator, JobPhase, TrainingJob
from nluflow.testing.emulators._middleware import Endpoint, Refused

PREFIX = "/api/nlu/v1"
LIFECYCLE = (
    "Initiated",
    "Queued",
    "Pipeline Building",
    "Pipeline Built",
    "Preparing Data",
    "Data Prepared",
    "Training",
    "Trained",
    "Saved",
    "Completed",
)


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    intent: str = Field(min_length=1)
    entities: list[Entity] = []
    type: str = Field(pattern="^(train|test)$")


class Upload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    projectId: str
    language: str = Field(min_length=2, max_length=3)
    trainingData: list[Row] = Field(min_length=1)


class Queue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    projectId: str
    language: str
    modelName: str = Field(min_length=1)
    noOfTrainingJob: int = Field(default=5, ge=1, le=5)


class Deploy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modelId: str
    noOfReplicas: int = Field(default=1, ge=1)


class Undeploy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modelId: str


class ParseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modelId: str
    text: str = Field(min_length=1)


_Body = TypeVar("_Body", bound=BaseModel)


def _word(job: TrainingJob) -> str:
    if job.phase is JobPhase.QUEUED:
        return "Queued"
    if job.phase is JobPhase.RUNNING:
        return LIFECYCLE[min(2 + int(job.progress * 6), 8)]
    return {
        JobPhase.SUCCEEDED: "Completed",
        JobPhase.FAILED: "Failed",
        JobPhase.CANCELLED: "Dead",
        JobPhase.ERROR: "Timed Out",
    }[job.phase]


class NeuralSpaceEmulator(Emulator):
    """NeuralSpace NLU with the local model behind it."""

    name = "neuralspace"
    title = "neuralspace emulator"

    def __init__(self, token: str = "neuralspace-token", **kw: Any) -> None:
        self.token = token
        self.data: dict[tuple[str, str], list[Row]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.deploy_history: list[str] = []
        super().__init__(**kw)

    @property
    def base(self) -> str:
        return PREFIX

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        body = {
            "success": False,
            "message": f"{title}: {detail}",
            "timestamp": int(time.time() * 1000),
            "data": None,
        }
        return json.dumps(body).encode(), "application/json"

    def _fail(self, status: int, message: str, data: Any = None) -> Response:
        return JSONResponse(
            {"success": False, "message": message, "timestamp": int(time.time() * 1000), "data": data},
            status_code=status,
        )

    @staticmethod
    def _ok(message: str, data: Any, status: int = 200) -> Response:
        return JSONResponse(
            {"success": True, "message": message, "timestamp": int(time.time() * 1000), "data": data},
            status_code=status,
        )

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        if request.headers.get("authorization") != self.token:
            return self._fail(401, "Unauthorized: invalid or expired authorization token")
        return None

    def _describe(self, model: dict[str, Any]) -> dict[str, Any]:
        job: TrainingJob = model["job"]
        out = {k: v for k, v in model.items() if k != "job"}
        out["trainingStatus"] = _word(job)
        out["trainingProgress"] = round(job.progress * 100)
        out["message"] = job.error
        last = job.epochs[-1] if job.epochs and job.phase is JobPhase.SUCCEEDED else {}
        out["metrics"] = {"i_acc": last.get("accuracy", 0.0)} if last else {}
        return out

    async def _body(self, request: Request, model: type[_Body]) -> _Body:
        """The JSON body as ``model``; raises :class:`Refused` with the platform's 400 otherwise."""
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            raise Refused(
                self._fail(400, f"Invalid request body: {first['msg']} at {first['loc']}")
            ) from None

    def _model(self, model_id: str) -> dict[str, Any]:
        model = self.models.get(model_id)
        if model is None:
            raise Refused(self._fail(404, f"Model {model_id} not found"))
        return model

    # -------------------------------------------------------------------------------------------- routes

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", f"{PREFIX}/dataset/upload", self.upload, "upload"),
            Endpoint("POST", f"{PREFIX}/model/train/queue", self.queue, "train"),
            Endpoint("GET", f"{PREFIX}/models", self.list_models, "models"),
            Endpoint("GET", f"{PREFIX}/model/{{model_id}}", self.get_model, "status"),
            Endpoint("DELETE", f"{PREFIX}/model/{{model_id}}", self.delete_model),
            Endpoint("POST", f"{PREFIX}/model/deploy", self.deploy, "activate"),
            Endpoint("POST", f"{PREFIX}/model/undeploy", self.undeploy, "activate"),
            Endpoint("POST", f"{PREFIX}/model/parse", self.parse, "predict"),
        ]

    async def upload(self, request: Request) -> Response:
        body = await self._body(request, Upload)
        with self.lock:
            self.data[(body.projectId, body.language)] = list(body.trainingData)
        return self._ok("Dataset uploaded successfully", {"examples": len(body.trainingData)})

    async def queue(self, request: Request) -> Response:
        body = await self._body(request, Queue)
        rows = [r for r in self.data.get((body.projectId, body.language), []) if r.type == "train"]
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.intent] = counts.get(row.intent, 0) + 1
        if len(counts) < 2 or min(counts.values()) < 10:
            return self._fail(
                400,
                "At least 2 intents with 10 examples each are needed to train",
                {"examplesPerIntent": counts},
            )
        dataset = Dataset.of(Example(text=r.text, intent=r.intent, entities=tuple(r.entities)) for r in rows)
        model_id = str(uuid.uuid4())
        job = self.start_job(dataset, 0, model=model_id)
        with self.lock:
            self.models[model_id] = {
                "modelId": model_id,
                "modelName": body.modelName,
                "projectId": body.projectId,
                "language": body.language,
                "noOfTrainingJob": body.noOfTrainingJob,
                "examplesPerIntent": counts,
                "deployed": False,
                "job": job,
            }
        return self._ok("Model queued for training", {"modelId": model_id})

    async def list_models(self, request: Request) -> Response:
        project = request.query_params.get("projectId")
        items = [self._describe(m) for m in self.models.values() if m["projectId"] == project]
        return self._ok("Models fetched successfully", {"models": items, "total": len(items)})

    async def get_model(self, request: Request) -> Response:
        return self._ok(
            "Model fetched successfully", self._describe(self._model(request.path_params["model_id"]))
        )

    async def delete_model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        with self.lock:
            found = self.models.pop(model_id, None)
        if found is None:
            return self._fail(404, f"Model {model_id} not found")
        return self._ok("Model deleted successfully", {"modelId": model_id})

    async def deploy(self, request: Request) -> Response:
        body = await self._body(request, Deploy)
        model = self._model(body.modelId)
        if model["job"].phase is not JobPhase.SUCCEEDED:
            return self._fail(400, f"Model {body.modelId} is not trained and cannot be deployed")
        model["deployed"] = True
        with self.lock:
            self.deploy_history.append(body.modelId)
        return self._ok("Model deployed successfully", {"modelId": body.modelId, "deployed": True})

    async def undeploy(self, request: Request) -> Response:
        body = await self._body(request, Undeploy)
        self._model(body.modelId)["deployed"] = False
        return self._ok("Model undeployed successfully", {"modelId": body.modelId, "deployed": False})

    async def parse(self, request: Request) -> Response:
        body = await self._body(request, ParseBody)
        model = self._model(body.modelId)
        if not model["deployed"] or model["job"].model is None:
            return self._fail(400, f"Model {body.modelId} is not deployed; deploy it before parsing")
        result = model["job"].model.parse([body.text])[0].model_dump(mode="json")
        result["entities"] = [{**e, "confidence": 0.99} for e in result["entities"]]
        return self._ok("Model parsed successfully", result)

    def deployed(self) -> list[str]:
        return [m["modelName"] for m in self.models.values() if m["deployed"]]

    def last_deployed(self) -> str | None:
        """The name of the deployed model deployed last (what an activation or rollback points at)."""
        for model_id in reversed(self.deploy_history):
            if model_id in self.models and self.models[model_id]["deployed"]:
                return str(self.models[model_id]["modelName"])
        return None
