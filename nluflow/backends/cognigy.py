"""Cognigy.AI over its REST API (base ``{url}/new/v2.0``), the real endpoints of the NLU lifecycle.

- auth: ``X-API-Key`` header, or OAuth2 client credentials at ``POST {url}/auth/oauth2/token``.
- a "model" is the NLU of one flow and locale, trained from the intents we import. Its identity is the
  sha256 of its example sentences (``data_sha256``), so the client can tell whether the flow holds it now
  (``POST /flows/{flowId}/intents/export`` returns the flow's intents as CSV).
- submit: ``POST /flows/{flowId}/intents/import`` (multipart CSV, ``mode=overwrite``) → task, then
  ``POST /flows/{flowId}/intents/train {"localeId", "mode"}`` → task; poll ``GET /tasks/{taskId}``
  (``queued | active | done | cancelling | cancelled | error``, ``currentStep/totalStep``, ``failReason``).
  Cognigy has no idempotency key: before training, and after a train request whose answer was lost, the
  client lists the flow's tasks and reuses a train task started after its import instead of starting one.
  If the flow already holds exactly this data, trained after its last import, no training runs at all.
- predict: ``POST /projects/{projectId}/nlu/scores {flowReferenceId, localeReferenceId, sentence}`` per text.
  Cognigy scores only the flow's current NLU, so predicting another model (the active one, from the store)
  first re-imports that model's sentences and retrains the flow; the working copy then holds that model.
  Scores carry intents only: Cognigy returns no entities there, so its parses say
  ``entities_predicted=False`` and entity metrics are absent (not 0).
- activate: ``POST /snapshots`` (task) named after the model, then ``PATCH /endpoints/{endpointId}
  {"entrypoint": snapshotId}``. Rollback re-points the endpoint to the previous model's snapshot (by name).
- no body on GET requests (Cognigy trial environments answer such requests with 403).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nluflow.backends.base import (
    ClosingClient,
    IntentScore,
    JobRef,
    JobState,
    JobStatus,
    ModelRef,
    Parse,
    TrainingConfig,
)
from nluflow.backends.errors import ContractError, MalformedResponseError, TransientHTTPError
from nluflow.backends.http import (
    HttpOptions,
    HttpSession,
    OAuth2ClientCredentials,
    api_key_auth,
    require,
    wait_for_job,
)
from nluflow.data.schema import Dataset
from nluflow.errors import BackendError, ConfigError, TrainingFailedError
from nluflow.hashing import sha256_json

API = "/new/v2.0"
TOKEN_PATH = "/auth/oauth2/token"
# nluflow locales → Cognigy NLU languages (the supported language matrix).
LOCALES = {"en-US": "en-US", "de-DE": "de-DE", "fr-FR": "fr-FR", "es-ES": "es-ES"}
TRAIN_MODES = ("full", "quick")
IMPORT_MODES = ("skip", "overwrite", "merge")
TASK_STATES = {
    "queued": JobState.QUEUED,
    "active": JobState.RUNNING,
    "cancelling": JobState.RUNNING,
    "done": JobState.SUCCEEDED,
    "cancelled": JobState.CANCELLED,
    "error": JobState.FAILED,
}
# Short tasks (import, snapshot) and the retrain that predicting another model needs: longest waits (s).
SHORT_TASK_WAIT = 600.0
TRAIN_WAIT = 6 * 3600.0
MAX_RESUBMITS = 2
SNAPSHOT_PREFIX = "nluflow-"


def intents_csv(train: Dataset) -> bytes:
    """Cognigy's intent CSV: no header, ``name,exampleSentence,value`` rows, UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for example in train:
        writer.writerow([example.intent, "exampleSentence", example.text.replace("\n", " ")])
    return buffer.getvalue().encode("utf-8")


def sentences_of_csv(data: bytes) -> list[tuple[str, str]]:
    """The ``(intent, sentence)`` pairs of an intent CSV (other property types are ignored)."""
    rows = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    return [(row[0], row[2]) for row in rows if len(row) >= 3 and row[1] == "exampleSentence"]


def data_sha256(pairs: Iterable[tuple[str, str]]) -> str:
    """The identity of a Cognigy model: its example sentences, order-free."""
    return sha256_json(sorted([intent, sentence] for intent, sentence in pairs))


def _millis(value: Any) -> float:
    """Cognigy timestamps are epoch milliseconds; anything else sorts first."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class CognigySettings:
    """Which Cognigy.AI flow and locale nluflow trains, and how: checked when made (``ConfigError``)."""

    project_id: str
    flow_id: str
    locale: str = "en-US"
    endpoint_id: str | None = None
    train_mode: str = "full"
    import_mode: str = "overwrite"
    train_wait: float = TRAIN_WAIT

    def __post_init__(self) -> None:
        if self.locale not in LOCALES:
            raise ConfigError(
                f"locale {self.locale!r} is not in the Cognigy language matrix ({', '.join(LOCALES)}); "
                "nothing was sent"
            )
        if self.train_mode not in TRAIN_MODES:
            raise ConfigError(f"train_mode {self.train_mode!r} is not one of {', '.join(TRAIN_MODES)}")
        if self.import_mode not in IMPORT_MODES:
            raise ConfigError(f"import_mode {self.import_mode!r} is not one of {', '.join(IMPORT_MODES)}")


class CognigyBackend(ClosingClient):
    """One Cognigy.AI flow and locale as a training backend (a context manager: ``close`` ends its client)."""

    name = "cognigy"

    def __init__(
        self,
        url: str,
        settings: CognigySettings,
        *,
        api_key: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        http: HttpOptions | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> None:
        if bool(api_key) == bool(client_id and client_secret):
            raise ConfigError(
                "give Cognigy either an API key or an OAuth2 client id and secret (exactly one)"
            )
        self.settings = settings
        self.project_id = settings.project_id
        self.flow_id = settings.flow_id
        self.locale = settings.locale
        self.endpoint_id = settings.endpoint_id
        self.train_mode = settings.train_mode
        self.import_mode = settings.import_mode
        self.train_wait = settings.train_wait
        self.on_progress = on_progress
        self._session = HttpSession.open(url, http)
        self._sleep, self._clock = self._session.sleep, self._session.clock
        if api_key:
            self._session.auth = api_key_auth(api_key)
        else:
            assert client_id and client_secret
            self._session.auth = OAuth2ClientCredentials(self._session, TOKEN_PATH, client_id, client_secret)
        self._refs: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"CognigyBackend({self._session!r}, flow={self.flow_id!r}, locale={self.locale!r})"

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------------------------------ lookups

    def _get(self, path: str, **params: Any) -> Any:
        return self._session.json("GET", API + path, params=params or None)

    def refs(self) -> dict[str, str]:
        """The locale's ``_id`` and ``referenceId`` and the flow's ``referenceId`` (looked up once)."""
        if self._refs is None:
            locales = require(self._get("/locales", projectId=self.project_id), "items", list, "GET /locales")
            locale = next(
                (x for x in locales if isinstance(x, dict) and x.get("nluLanguage") == LOCALES[self.locale]),
                None,
            )
            if locale is None:
                found = sorted({str(x.get("nluLanguage")) for x in locales if isinstance(x, dict)})
                raise ConfigError(
                    f"project {self.project_id} has no locale with NLU language {LOCALES[self.locale]} "
                    f"(found: {', '.join(found) or 'none'}); add the locale in Cognigy or pick another one"
                )
            flows = require(self._get("/flows", projectId=self.project_id), "items", list, "GET /flows")
            flow = next((x for x in flows if isinstance(x, dict) and x.get("_id") == self.flow_id), None)
            if flow is None:
                raise ConfigError(f"project {self.project_id} has no flow {self.flow_id}; check the block")
            self._refs = {
                "locale_id": str(require(locale, "_id", str, "the locale")),
                "locale_ref": str(require(locale, "referenceId", str, "the locale")),
                "flow_ref": str(require(flow, "referenceId", str, "the flow")),
            }
        return self._refs

    # -------------------------------------------------------------------------------------------- tasks

    def _task(self, task_id: str) -> dict[str, Any]:
        body = self._get(f"/tasks/{task_id}")
        if not isinstance(body, dict):
            raise ContractError(f"GET /tasks/{task_id}: expected a task object, found {type(body).__name__}")
        return body

    @staticmethod
    def _task_status(task: dict[str, Any]) -> JobStatus:
        word = require(task, "status", str, "the task")
        state = TASK_STATES.get(word)
        if state is None:
            raise ContractError(
                f"task {task.get('_id')} has status {word!r}; expected one of {', '.join(TASK_STATES)}"
            )
        total = task.get("totalStep") or 0
        step = task.get("currentStep") or 0
        progress = float(step) / float(total) if isinstance(total, int | float) and total else 0.0
        if state is JobState.SUCCEEDED:
            progress = 1.0
        message = (
            str(task.get("failReason") or "") if state in (JobState.FAILED, JobState.CANCELLED) else word
        )
        return JobStatus(state=state, progress=min(max(progress, 0.0), 1.0), message=message)

    def _wait_task(self, task_id: str, what: str, max_wait: float) -> None:
        wait_for_job(
            lambda: self._task_status(self._task(task_id)),
            max_wait=max_wait,
            what=what,
            sleep=self._sleep,
            clock=self._clock,
        )

    def _tasks(self, kind: str) -> list[dict[str, Any]]:
        """Recent tasks of one type for this flow (and locale, where the task names one), newest first."""
        body = self._get("/tasks", limit=100, sort="createdAt:desc")
        items = require(body, "items", list, "GET /tasks")
        out = []
        for task in items:
            if not isinstance(task, dict) or task.get("type") != kind:
                continue
            params = task.get("parameters") or {}
            if params.get("flowId") not in (None, self.flow_id):
                continue
            if params.get("localeId") not in (None, self.refs()["locale_id"]):
                continue
            out.append(task)
        return sorted(out, key=lambda t: _millis(t.get("createdAt")), reverse=True)

    def _await_no_training(self) -> None:
        """Never start a training while one runs on this flow: wait for it to end first."""
        for task in self._tasks("trainIntents"):
            if task.get("status") in ("queued", "active", "cancelling"):
                task_id = str(task.get("_id"))
                with contextlib.suppress(TrainingFailedError):  # if it ended badly, ours can start now
                    self._wait_task(
                        task_id,
                        f"the training {task_id} already running on flow {self.flow_id}",
                        self.train_wait,
                    )

    # --------------------------------------------------------------------------------------- protocol

    def _export(self) -> bytes:
        response = self._session.request(
            "POST",
            f"{API}/flows/{self.flow_id}/intents/export",
            json_body={"localeId": self.refs()["locale_id"], "format": "csv"},
            retry_safe=True,
        )
        return response.content

    def _held_and_trained(self, sha: str) -> dict[str, Any] | None:
        """The done train task that trained exactly this data, if the flow holds it now; else None."""
        if data_sha256(sentences_of_csv(self._export())) != sha:
            return None
        trains = self._tasks("trainIntents")
        imports = self._tasks("importIntents")
        last_import = _millis(imports[0].get("createdAt")) if imports else 0.0
        if (
            trains
            and trains[0].get("status") == "done"
            and _millis(trains[0].get("createdAt")) >= last_import
        ):
            return trains[0]
        return None

    def _import(self, data: bytes) -> float:
        """Import the CSV (overwrite), wait for the import task; return its creation time."""
        task = self._session.json(
            "POST",
            f"{API}/flows/{self.flow_id}/intents/import",
            data={"localeId": self.refs()["locale_id"], "mode": self.import_mode, "flowId": self.flow_id},
            files={"file": ("intents.csv", data, "text/csv")},
            retry_safe=True,  # importing the same sentences again changes nothing
        )
        task_id = str(require(task, "_id", str, "the import task"))
        self._wait_task(task_id, f"the intent import {task_id}", SHORT_TASK_WAIT)
        return _millis(task.get("createdAt"))

    def _start_training(self, imported_at: float) -> str:
        """Start one train task, or reuse the one a lost answer already started."""
        resubmits = 0
        while True:
            try:
                task = self._session.json(
                    "POST",
                    f"{API}/flows/{self.flow_id}/intents/train",
                    json_body={"localeId": self.refs()["locale_id"], "mode": self.train_mode},
                    retry_safe=False,
                )
                return str(require(task, "_id", str, "the train task"))
            except (TransientHTTPError, MalformedResponseError):
                started = [
                    t for t in self._tasks("trainIntents") if _millis(t.get("createdAt")) >= imported_at
                ]
                if started:
                    return str(started[0].get("_id"))
                if resubmits >= MAX_RESUBMITS:
                    raise
                resubmits += 1

    def _train_data(self, data: bytes) -> tuple[str, bool]:
        """Make the flow hold and have trained ``data``; returns the train task id and whether it is new."""
        sha = data_sha256(sentences_of_csv(data))
        self._await_no_training()
        held = self._held_and_trained(sha)
        if held is not None:
            return str(held.get("_id")), False
        imported_at = self._import(data)
        return self._start_training(imported_at), True

    def submit(self, train: Dataset, config: TrainingConfig, idempotency_key: str) -> JobRef:
        if len(train) == 0:
            raise ConfigError("the training set is empty; nothing was sent to Cognigy")
        data = intents_csv(train)
        task_id, _ = self._train_data(data)
        return JobRef(
            backend=self.name,
            job_id=task_id,
            idempotency_key=idempotency_key,
            data={"data_sha256": data_sha256(sentences_of_csv(data)), "flow_id": self.flow_id},
        )

    def status(self, job: JobRef) -> JobStatus:
        status = self._task_status(self._task(job.job_id))
        if self.on_progress is not None:
            self.on_progress(status.progress, status.message or status.state.value)
        return status

    def fetch(self, job: JobRef, dest: Path) -> ModelRef:
        status = self._task_status(self._task(job.job_id))
        if status.state is not JobState.SUCCEEDED:
            raise (TrainingFailedError if status.state.terminal else BackendError)(
                f"Cognigy train task {job.job_id} is {status.state.value} ({status.message}); "
                "there is no model"
            )
        data = self._export()
        sha = data_sha256(sentences_of_csv(data))
        if sha != job.data.get("data_sha256"):
            raise BackendError(
                f"flow {self.flow_id} no longer holds the sentences train task {job.job_id} was trained on "
                "(someone changed its intents since); train again"
            )
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "intents.csv").write_bytes(data)
        record = {
            "project_id": self.project_id,
            "flow_id": self.flow_id,
            "locale": self.locale,
            "train_task_id": job.job_id,
            "data_sha256": sha,
        }
        (dest / "cognigy-model.json").write_text(
            json.dumps(record, indent=2, sort_keys=True), encoding="utf-8"
        )
        return ModelRef(
            backend=self.name, model_id=f"cognigy-{sha[:16]}", path=str(dest), backend_model_id=sha
        )

    def _ensure_held(self, model: ModelRef) -> None:
        """Make the flow's working copy hold ``model`` (re-import its sentences and retrain if needed)."""
        sha = model.backend_model_id or ""
        self._await_no_training()
        if self._held_and_trained(sha) is not None:
            return
        if not model.path or not (Path(model.path) / "intents.csv").is_file():
            raise BackendError(
                f"flow {self.flow_id} does not hold model {model.model_id} and its intents.csv is not at "
                f"{model.path}; it cannot be restored"
            )
        data = (Path(model.path) / "intents.csv").read_bytes()
        if data_sha256(sentences_of_csv(data)) != sha:
            raise BackendError(f"{model.path}/intents.csv does not match model {model.model_id}'s sentences")
        task_id, _ = self._train_data(data)
        self._wait_task(
            task_id, f"the retraining of model {model.model_id} on flow {self.flow_id}", self.train_wait
        )

    def predict(self, model: ModelRef, texts: Sequence[str]) -> list[Parse]:
        if not texts:
            return []
        self._ensure_held(model)
        refs = self.refs()
        out = []
        for text in texts:
            body = self._session.json(
                "POST",
                f"{API}/projects/{self.project_id}/nlu/scores",
                json_body={
                    "flowReferenceId": refs["flow_ref"],
                    "localeReferenceId": refs["locale_ref"],
                    "sentence": text,
                },
                retry_safe=True,
            )
            scores = require(body, "scores", list, "the NLU scores")
            ranking = sorted(
                (
                    IntentScore(name=str(s.get("name") or ""), confidence=float(s.get("score") or 0.0))
                    for s in scores
                    if isinstance(s, dict)
                ),
                key=lambda s: -s.confidence,
            )
            top = ranking[0] if ranking else IntentScore(name="", confidence=0.0)
            # Cognigy's scores carry no entities: say so, so entity metrics are absent rather than 0.
            out.append(Parse(text=text, intent=top, intent_ranking=tuple(ranking), entities_predicted=False))
        return out

    def _snapshot_named(self, name: str) -> str | None:
        body = self._get("/snapshots", projectId=self.project_id, limit=100)
        for item in require(body, "items", list, "GET /snapshots"):
            if isinstance(item, dict) and item.get("name") == name:
                return str(require(item, "_id", str, "the snapshot"))
        return None

    def activate(self, model: ModelRef) -> None:
        """Snapshot the project holding ``model`` (once per model) and point the endpoint at the snapshot."""
        if not self.endpoint_id:
            raise ConfigError(
                "no endpoint_id in the block: Cognigy promotion points an endpoint at a snapshot"
            )
        sha = model.backend_model_id or ""
        name = f"{SNAPSHOT_PREFIX}{sha[:16]}"
        snapshot_id = self._snapshot_named(name)
        if snapshot_id is None:
            self._ensure_held(model)
            task = self._session.json(
                "POST",
                f"{API}/snapshots",
                json_body={
                    "projectId": self.project_id,
                    "name": name,
                    "description": f"nluflow model {model.model_id} (sentences sha256 {sha})",
                },
                # A resent snapshot request at worst makes a twin with the same name and content; the
                # lookup by name below picks one of them, so this request is safe to resend.
                retry_safe=True,
            )
            task_id = str(require(task, "_id", str, "the snapshot task"))
            self._wait_task(task_id, f"the snapshot {name}", SHORT_TASK_WAIT)
            snapshot_id = self._snapshot_named(name)
            if snapshot_id is None:
                raise ContractError(f"snapshot task {task_id} is done but no snapshot is named {name}")
        self._session.request(
            "PATCH",
            f"{API}/endpoints/{self.endpoint_id}",
            json_body={"entrypoint": snapshot_id},
            retry_safe=True,
        )
