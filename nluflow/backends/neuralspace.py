"""NeuralSpace NLU ("AutoNLP") over HTTP: a mocked-first backend, every path configurable.

What is documented (REAL): base ``https://platform.neuralspace.ai/api/nlu/v1``, the raw token in the
``Authorization`` header (no ``Bearer``), ``POST /model/train/queue {projectId, language, modelName,
noOfTrainingJob}`` → a model id, ``POST /model/parse {modelId, text}`` (the model must be deployed), the
status lifecycle (Initiated … Completed, Failed, Timed Out after 6 h, Dead after 10 h without an update),
and the training-example JSON ``{text, intent, entities: [{start, end, value, entity}], type}``. The paths
of upload, model get/list/delete, deploy and undeploy were not recovered: their defaults here are guesses,
each one overridable in the block. Answers are read from NeuralSpace's envelope ``{success, message, data}``.

NeuralSpace has no idempotency key: the model name carries the key (``nluflow-<key>``), and before queueing
(and after a queue request whose answer was lost) the client lists the project's models and reuses the one
with that name. Training needs at least 2 intents with 10 examples each; the client checks that first and
reports the per-intent counts (``examplesPerIntent``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from nluflow.backends.base import ClosingClient, JobRef, JobState, JobStatus, ModelRef, Parse, TrainingConfig
from nluflow.backends.errors import ContractError, MalformedResponseError, TransientHTTPError
from nluflow.backends.http import HeaderAuth, HttpOptions, HttpSession, require, wait_for_job
from nluflow.backends.service import parse_from_json
from nluflow.data.schema import Dataset
from nluflow.errors import BackendError, ConfigError, TrainingFailedError

logger = logging.getLogger(__name__)

BASE_URL = "https://platform.neuralspace.ai/api/nlu/v1"
MIN_INTENTS = 2
MIN_EXAMPLES_PER_INTENT = 10
# The platform declares a job Timed Out after 6 h and Dead after 10 h without updates; wait a bit longer.
MAX_TRAIN_WAIT = 7 * 3600.0
DEPLOY_WAIT = 900.0
MAX_RESUBMITS = 2
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
FAILURES = {"Failed": "the training failed", "Timed Out": "timed out after 6 h", "Dead": "no update for 10 h"}


def state_of(word: str) -> JobState:
    """NeuralSpace's training status → ``JobState``; unknown words are a ``ContractError``."""
    if word in ("Initiated", "Queued"):
        return JobState.QUEUED
    if word == "Completed":
        return JobState.SUCCEEDED
    if word in FAILURES:
        return JobState.FAILED
    if word in LIFECYCLE:
        return JobState.RUNNING
    raise ContractError(
        f"NeuralSpace reports training status {word!r}; "
        f"expected one of {', '.join(LIFECYCLE + tuple(FAILURES))}"
    )


class NeuralSpacePaths(BaseModel):
    """Endpoint paths relative to the base URL; ``{model_id}`` and ``{project_id}`` are filled in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upload: str = "/dataset/upload"
    train: str = "/model/train/queue"
    models: str = "/models?projectId={project_id}"
    model: str = "/model/{model_id}"
    delete: str = "/model/{model_id}"
    deploy: str = "/model/deploy"
    # Undeploy a model that was deployed only to be scored; None keeps scored candidates deployed.
    undeploy: str | None = "/model/undeploy"
    parse: str = "/model/parse"


def examples_per_intent(train: Dataset) -> dict[str, int]:
    return dict(sorted(train.intent_counts().items()))


def check_minimum(train: Dataset) -> dict[str, int]:
    """NeuralSpace trains only on ≥ 2 intents with ≥ 10 examples each; else ``ConfigError`` with counts."""
    counts = examples_per_intent(train)
    short = {k: v for k, v in counts.items() if v < MIN_EXAMPLES_PER_INTENT}
    if len(counts) < MIN_INTENTS or short:
        shown = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
        problems = []
        if len(counts) < MIN_INTENTS:
            problems.append(f"{len(counts)} intent(s), at least {MIN_INTENTS} needed")
        if short:
            problems.append(
                f"{len(short)} intent(s) under {MIN_EXAMPLES_PER_INTENT} examples ({', '.join(short)})"
            )
        raise ConfigError(
            f"NeuralSpace refuses this training set: {'; '.join(problems)} (examplesPerIntent: {shown}); "
            "add examples or drop those intents; nothing was uploaded"
        )
    return counts


def _data(body: Any, what: str) -> Any:
    """The ``data`` of NeuralSpace's ``{success, message, data}`` envelope."""
    if not isinstance(body, dict) or "data" not in body:
        raise ContractError(
            f"{what}: expected NeuralSpace's envelope {{success, message, data}}, found {body!r:.80}"
        )
    if body.get("success") is False:
        raise BackendError(f"{what}: NeuralSpace answered success=false ({body.get('message')})")
    return body["data"]


@dataclass(frozen=True)
class NeuralSpaceSettings:
    """The project's language, the API's paths and the job's resources; checked when made
    (``ConfigError``)."""

    language: str = "en"
    paths: NeuralSpacePaths | Mapping[str, str] = field(default_factory=NeuralSpacePaths)
    training_jobs: int = 1
    replicas: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.training_jobs <= 5:
            raise ConfigError(f"training_jobs (noOfTrainingJob) must be 1-5, found {self.training_jobs}")
        if not isinstance(self.paths, NeuralSpacePaths):
            object.__setattr__(self, "paths", NeuralSpacePaths.model_validate(dict(self.paths)))


class NeuralSpaceBackend(ClosingClient):
    """A NeuralSpace NLU project and language as a training backend (a context manager: ``close`` ends its
    HTTP client)."""

    name = "neuralspace"

    def __init__(
        self,
        token: str,
        project_id: str,
        *,
        url: str = BASE_URL,
        settings: NeuralSpaceSettings | None = None,
        http: HttpOptions | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> None:
        settings = settings or NeuralSpaceSettings()
        assert isinstance(settings.paths, NeuralSpacePaths)
        self.settings = settings
        self.project_id = project_id
        self.language = settings.language.split("-")[0].lower()
        self.paths: NeuralSpacePaths = settings.paths
        self.training_jobs = settings.training_jobs
        self.replicas = settings.replicas
        self.on_progress = on_progress
        self._session = HttpSession.open(
            url,
            http,
            auth=HeaderAuth("Authorization", token),
            headers={"Accept": "application/json, text/plain, */*"},
        )
        self._sleep, self._clock = self._session.sleep, self._session.clock

    def __repr__(self) -> str:
        return (
            f"NeuralSpaceBackend({self._session!r}, project={self.project_id!r}, language={self.language!r})"
        )

    def close(self) -> None:
        self._session.close()

    def _path(self, template: str, **values: str) -> str:
        return template.format(**{k: quote(v, safe="") for k, v in values.items()})

    @staticmethod
    def model_name(idempotency_key: str) -> str:
        return f"nluflow-{idempotency_key[:24]}"

    # ------------------------------------------------------------------------------------------- models

    def _models(self) -> list[dict[str, Any]]:
        body = self._session.json("GET", self._path(self.paths.models, project_id=self.project_id))
        data = _data(body, "the model list")
        items = data.get("models") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ContractError(f"the model list: expected a list of models, found {type(items).__name__}")
        return [m for m in items if isinstance(m, dict)]

    def _model(self, model_id: str) -> dict[str, Any]:
        data = _data(
            self._session.json("GET", self._path(self.paths.model, model_id=model_id)), f"model {model_id}"
        )
        if not isinstance(data, dict):
            raise ContractError(f"model {model_id}: expected an object, found {type(data).__name__}")
        return data

    def _find(self, name: str) -> str | None:
        for model in self._models():
            if model.get("modelName") == name and model.get("language", self.language) == self.language:
                return str(require(model, "modelId", str, f"model {name}"))
        return None

    def delete(self, model_id: str) -> None:
        """Delete a model on the platform (frees a training slot of the subscription)."""
        self._session.request("DELETE", self._path(self.paths.delete, model_id=model_id))

    # ----------------------------------------------------------------------------------------- protocol

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        counts = check_minimum(train)
        name = self.model_name(idempotency_key)
        existing = self._find(name)
        if existing is None:
            rows = [{**e.content(), "type": "train"} for e in train]
            for row in rows:
                row.pop("locale", None)
                row.pop("score", None)
            self._session.json(
                "POST",
                self.paths.upload,
                json_body={"projectId": self.project_id, "language": self.language, "trainingData": rows},
                retry_safe=True,  # uploading the same examples to the project again changes nothing
            )
            existing = self._queue(name)
        return JobRef(
            backend=self.name,
            job_id=existing,
            idempotency_key=idempotency_key,
            data={"modelName": name, "examplesPerIntent": counts},
        )

    def _queue(self, name: str) -> str:
        body = {
            "projectId": self.project_id,
            "language": self.language,
            "modelName": name,
            "noOfTrainingJob": self.training_jobs,
        }
        resubmits = 0
        while True:
            try:
                answer = self._session.json("POST", self.paths.train, json_body=body, retry_safe=False)
                data = _data(answer, "the train queue answer")
                return str(require(data, "modelId", str, "the train queue answer"))
            except (TransientHTTPError, MalformedResponseError):
                found = self._find(name)
                if found is not None:
                    return found
                if resubmits >= MAX_RESUBMITS:
                    raise
                resubmits += 1

    def status(self, job: JobRef) -> JobStatus:
        model = self._model(job.job_id)
        word = str(require(model, "trainingStatus", str, f"model {job.job_id}"))
        state = state_of(word)
        progress = (LIFECYCLE.index(word) / (len(LIFECYCLE) - 1)) if word in LIFECYCLE else 0.0
        message = (
            word if state is not JobState.FAILED else f"{word}: {model.get('message') or FAILURES[word]}"
        )
        metrics = {
            k: float(v)
            for k, v in (model.get("metrics") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        status = JobStatus(state=state, progress=progress, message=message, metrics=metrics)
        if self.on_progress is not None:
            self.on_progress(status.progress, status.message)
        return status

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        model = self._model(job.job_id)
        word = str(require(model, "trainingStatus", str, f"model {job.job_id}"))
        state = state_of(word)
        if state is not JobState.SUCCEEDED:
            error = TrainingFailedError if state.terminal else BackendError
            raise error(f"NeuralSpace model {job.job_id} is {word}; there is no trained model to fetch")
        dest.mkdir(parents=True, exist_ok=True)
        record = {
            "neuralspace_model": model,
            "project_id": self.project_id,
            "language": self.language,
            "examplesPerIntent": job.data.get("examplesPerIntent", {}),
        }
        (dest / "neuralspace-model.json").write_text(
            json.dumps(record, indent=2, sort_keys=True), encoding="utf-8"
        )
        return ModelRef(
            backend=self.name,
            model_id=job.job_id,
            path=str(dest),
            backend_model_id=job.job_id,
            metrics={
                k: float(v)
                for k, v in (model.get("metrics") or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
        )

    def _is_deployed(self, model_id: str) -> bool:
        return self._model(model_id).get("deployed") is True

    def _deploy(self, model_id: str) -> None:
        def probe() -> JobStatus:
            if self._is_deployed(model_id):
                return JobStatus(state=JobState.SUCCEEDED)
            return JobStatus(state=JobState.RUNNING, message="deploying")

        self._session.json(
            "POST",
            self.paths.deploy,
            json_body={"modelId": model_id, "noOfReplicas": self.replicas},
            retry_safe=True,
        )
        wait_for_job(
            probe,
            max_wait=DEPLOY_WAIT,
            what=f"the deployment of model {model_id}",
            sleep=self._sleep,
            clock=self._clock,
        )

    def _undeploy(self, model_id: str) -> None:
        if self.paths.undeploy is None:
            logger.warning(
                "NeuralSpace model %s was deployed to be scored and stays deployed (no undeploy path set)",
                model_id,
            )
            return
        self._session.json("POST", self.paths.undeploy, json_body={"modelId": model_id}, retry_safe=True)

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        """Parse ``texts`` with ``model``. NeuralSpace parses deployed models only: a model that is not
        deployed (a candidate) is deployed for the scoring and undeployed after it, so scoring never
        changes what the platform serves; only ``activate`` does."""
        model_id = model.backend_model_id or model.model_id
        if not texts:
            return []
        was_deployed = self._is_deployed(model_id)
        if not was_deployed:
            self._deploy(model_id)
        try:
            out = []
            for text in texts:
                body = self._session.json(
                    "POST", self.paths.parse, json_body={"modelId": model_id, "text": text}, retry_safe=True
                )
                data = _data(body, f"the parse of model {model_id}")
                out.append(parse_from_json(data, text, f"NeuralSpace model {model_id}"))
        except BaseException:
            if not was_deployed:
                try:
                    self._undeploy(model_id)
                except Exception as exc:  # the scoring error is the one to report
                    logger.warning(
                        "NeuralSpace model %s could not be undeployed after a failed scoring: %s",
                        model_id,
                        exc,
                    )
            raise
        if not was_deployed:
            self._undeploy(model_id)
        return out

    def activate(self, model: ModelRef) -> None:
        """NeuralSpace serves deployed models by id: activating (and rolling back) is deploying again, so
        the model is the one deployed last; the deploy call is idempotent."""
        self._deploy(model.backend_model_id or model.model_id)
