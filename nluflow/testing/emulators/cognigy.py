"""Emulator of the Cognigy.AI REST API (``/new/v2.0``; see the specs' cognigy/README.md).

Implemented: OAuth2 client credentials at ``/auth/oauth2/token`` and ``X-API-Key`` (or ``?api_key=``);
``GET /flows``, ``GET /locales``; intent import (multipart CSV, a task), export (CSV), training (a task with
``currentStep/totalStep``), ``GET /tasks/{id}`` and ``GET /tasks`` (list, newest first); NLU scores per
sentence; snapshots (a task, then a list entry) and ``PATCH /endpoints/{id}`` / ``GET /endpoints/{id}``.
Errors are RFC 7807 bodies with a ``traceId``. A GET with a body is refused with 403, like trial
environments do. Tasks carry ``type`` and ``parameters`` (flow and locale) so a client can find its own.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import io
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from nluflow.data.schema import Dataset, Example
from nluflow.testing.emulators._base import Emulator, JobOutcome, JobPhase, TrainingJob
from nluflow.testing.emulators._middleware import Endpoint, Refused
from nluflow.testing.emulators._model import Predictor

API = "/new/v2.0"
LANGUAGES = ("en-US", "de-DE", "fr-FR", "es-ES")
PROPERTY_TYPES = ("exampleSentence", "defaultReply", "confirmationSentence", "rules")


def _hex24() -> str:
    return secrets.token_hex(12)


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body (stdlib only)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    out: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return out
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out


def _merge(current: list[tuple[str, str]], pairs: list[tuple[str, str]], mode: str) -> list[tuple[str, str]]:
    """An import's sentences merged into a flow's: ``overwrite`` replaces the intents it names, ``merge`` adds
    new pairs, ``skip`` adds only intents the flow does not have."""
    if mode == "overwrite":
        names = {n for n, _ in pairs}
        return [p for p in current if p[0] not in names] + pairs
    if mode == "merge":
        return current + [p for p in pairs if p not in current]
    known = {n for n, _ in current}
    return current + [p for p in pairs if p[0] not in known]


def _score(ranked: Any, flow_reference: str) -> dict[str, Any]:
    """One entry of an NLU scores answer."""
    return {
        "id": _hex24(),
        "name": ranked.name,
        "score": ranked.confidence,
        "negated": False,
        "confirmationSentence": None,
        "confirmationSentences": [],
        "disambiguationSentence": None,
        "flow": flow_reference,
    }


@dataclass
class Task:
    id: str
    type: str
    parameters: dict[str, Any]
    created_at: int = field(default_factory=_now_ms)
    status: str = "queued"
    fail_reason: str | None = None
    job: TrainingJob | None = None
    result: dict[str, Any] = field(default_factory=dict)


class CognigyEmulator(Emulator):
    """One Cognigy project with flows and locales; NLU trained per flow and locale with the local model."""

    name = "cognigy"
    title = "cognigy emulator"

    def __init__(
        self,
        api_key: str | None = "cognigy-key",
        client_id: str | None = None,
        client_secret: str | None = None,
        token_ttl: float = 3600,
        project_id: str | None = None,
        flow_ids: tuple[str, ...] = (),
        endpoint_id: str | None = None,
        **kw: Any,
    ) -> None:
        self.api_key = api_key
        self.client_id, self.client_secret, self.token_ttl = client_id, client_secret, token_ttl
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.project_id = project_id or _hex24()
        self.flows = {fid: str(uuid.uuid4()) for fid in (flow_ids or (_hex24(),))}
        self.locales = {_hex24(): (str(uuid.uuid4()), lang) for lang in LANGUAGES}
        self.endpoint_id = endpoint_id or _hex24()
        self.endpoint: dict[str, Any] = {
            "_id": self.endpoint_id,
            "entrypoint": self.project_id,
            "name": "webchat",
        }
        self.entrypoint_history: list[str] = []
        self.sentences: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.trained: dict[tuple[str, str], Predictor] = {}
        self.tasks: dict[str, Task] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.snapshot_models: dict[str, Predictor | None] = {}
        super().__init__(**kw)

    @property
    def flow_id(self) -> str:
        return next(iter(self.flows))

    def locale_id(self, language: str = "en-US") -> str:
        return next(lid for lid, (_, lang) in self.locales.items() if lang == language)

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        body = {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": "",
            "code": status,
            "traceId": uuid.uuid4().hex,
            "details": {},
        }
        return json.dumps(body).encode(), "application/problem+json"

    def _problem(self, status: int, title: str, detail: str, instance: str = "") -> Response:
        body, ctype = self.error_body(status, title, detail)
        data = json.loads(body)
        data["instance"] = instance
        return JSONResponse(data, status_code=status, media_type=ctype)

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def _auth(self, request: Request) -> Response | None:
        key = request.headers.get("x-api-key") or request.query_params.get("api_key")
        if self.api_key is not None and key == self.api_key:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.tokens.get(token, 0) > time.time():
            return None
        return self._problem(
            401, "Unauthorized", "The API key or access token is missing, invalid or expired."
        )

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        if request.method == "GET" and body:
            return self._problem(403, "Forbidden", "GET requests must not have a body.", request.url.path)
        return self._auth(request)

    # ------------------------------------------------------------------------------------------- tasks

    def _task_json(self, task: Task) -> dict[str, Any]:
        self._advance(task)
        step = 0
        if task.job is not None:
            step = round(task.job.progress * 100)
        elif task.status == "done":
            step = 100
        return {
            "_id": task.id,
            "name": task.type,
            "type": task.type,
            "data": {},
            "parameters": task.parameters,
            "status": task.status,
            "currentStep": step,
            "totalStep": 100,
            "failReason": task.fail_reason,
            "createdAt": task.created_at,
            "lastChanged": _now_ms(),
            "lastRunAt": task.created_at,
            "lastFinishedAt": _now_ms() if task.status in ("done", "error", "cancelled") else None,
            **task.result,
        }

    def _advance(self, task: Task) -> None:
        """Move a task on according to its training job (other tasks finish at once)."""
        job = task.job
        if job is None:
            if task.status == "queued":
                task.status = "done"
            return
        key = (task.parameters["flowId"], task.parameters["localeId"])
        if job.phase is JobPhase.RUNNING:
            task.status = "active"
        elif job.phase is JobPhase.SUCCEEDED and task.status != "done":
            assert job.model is not None
            self.trained[key] = job.model
            task.status = "done"
        elif job.phase is JobPhase.CANCELLED:
            task.status, task.fail_reason = "cancelled", job.error
        elif job.phase in (JobPhase.FAILED, JobPhase.ERROR):
            task.status, task.fail_reason = "error", job.error

    def _advance_all(self) -> None:
        for task in sorted(self.tasks.values(), key=lambda t: t.created_at):
            self._advance(task)

    def _new_task(self, kind: str, parameters: dict[str, Any]) -> Task:
        task = Task(_hex24(), kind, parameters)
        with self.lock:
            self.tasks[task.id] = task
        return task

    # ------------------------------------------------------------------------------------------- checks

    def _check_flow_locale(self, flow_id: str, locale_id: Any, path: str) -> None:
        if flow_id not in self.flows:
            raise Refused(self._problem(404, "Not Found", f"Flow {flow_id} not found.", path))
        if locale_id not in self.locales:
            raise Refused(self._problem(400, "Bad Request", f"Locale {locale_id!r} not found.", path))

    async def _json(self, request: Request, expected: str, check: Callable[[Any], bool]) -> Any:
        """The JSON body if ``check`` accepts it; else raises :class:`Refused`, a 400 naming ``expected``."""
        try:
            body = json.loads(await request.body())
            accepted = check(body)
        except (ValueError, TypeError):
            accepted = False
        if not accepted:
            raise Refused(self._problem(400, "Bad Request", f"Expected {expected}."))
        return body

    def _list(self, items: list[Any], total: int | None = None) -> Response:
        total = len(items) if total is None else total
        return JSONResponse({"items": items, "total": total, "nextCursor": None, "previousCursor": None})

    # -------------------------------------------------------------------------------------------- routes

    def endpoints(self) -> list[Endpoint]:
        flow = f"{API}/flows/{{flow_id}}"
        return [
            Endpoint("POST", "/auth/oauth2/token", self.token, "token", public=True),
            Endpoint("GET", f"{API}/flows", self.list_flows, "lookup"),
            Endpoint("GET", f"{API}/locales", self.list_locales, "lookup"),
            Endpoint("POST", f"{flow}/intents/import", self.import_intents, "upload"),
            Endpoint("POST", f"{flow}/intents/export", self.export_intents, "export"),
            Endpoint("POST", f"{flow}/intents/train", self.train, "train"),
            Endpoint("GET", f"{API}/tasks/{{task_id}}", self.get_task, "status"),
            Endpoint("GET", f"{API}/tasks", self.list_tasks, "tasks"),
            Endpoint("POST", f"{API}/projects/{{project_id}}/nlu/scores", self.scores, "predict"),
            Endpoint("POST", f"{API}/snapshots", self.create_snapshot, "snapshot"),
            Endpoint("GET", f"{API}/snapshots", self.list_snapshots),
            Endpoint("PATCH", f"{API}/endpoints/{{endpoint_id}}", self.patch_endpoint, "activate"),
            Endpoint("GET", f"{API}/endpoints/{{endpoint_id}}", self.get_endpoint),
        ]

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        credentials = (form.get("client_id"), form.get("client_secret"))
        if self.client_id is None or credentials != (self.client_id, self.client_secret):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        value = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[value] = time.time() + self.token_ttl
            self.tokens_issued += 1
        return JSONResponse(
            {"access_token": value, "token_type": "Bearer", "expires_in": int(self.token_ttl)}
        )

    async def list_flows(self, request: Request) -> Response:
        items = [
            {"_id": fid, "referenceId": ref, "name": f"Flow {fid[:6]}"} for fid, ref in self.flows.items()
        ]
        return self._list(items if request.query_params.get("projectId") == self.project_id else [])

    async def list_locales(self, request: Request) -> Response:
        items = [
            {"_id": lid, "referenceId": ref, "name": lang, "nluLanguage": lang}
            for lid, (ref, lang) in self.locales.items()
        ]
        return self._list(items if request.query_params.get("projectId") == self.project_id else [])

    async def import_intents(self, request: Request) -> Response:
        flow_id = request.path_params["flow_id"]
        parts = parse_multipart(await request.body(), request.headers.get("content-type", ""))
        locale_id = parts.get("localeId", (None, b""))[1].decode()
        mode = parts.get("mode", (None, b""))[1].decode()
        self._check_flow_locale(flow_id, locale_id, request.url.path)
        if mode not in ("skip", "overwrite", "merge") or "file" not in parts:
            return self._problem(400, "Bad Request", "Expected multipart fields file, localeId, mode.")
        pairs = self._sentences_of(parts["file"][1])
        with self.lock:
            current = self.sentences.get((flow_id, locale_id), [])
            self.sentences[(flow_id, locale_id)] = _merge(current, pairs, mode)
        task = self._new_task("importIntents", {"flowId": flow_id, "localeId": locale_id, "mode": mode})
        return JSONResponse(self._task_json_initial(task))

    def _sentences_of(self, data: bytes) -> list[tuple[str, str]]:
        """The ``(intent, sentence)`` pairs of an intents CSV; raises :class:`Refused` on a bad file."""
        try:
            rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        except UnicodeDecodeError:
            raise Refused(self._problem(400, "Bad Request", "The file is not UTF-8.")) from None
        for number, row in enumerate(rows, start=1):
            if len(row) != 3 or row[1] not in PROPERTY_TYPES:
                raise Refused(
                    self._problem(400, "Bad Request", f"Row {number}: expected name,propertyType,value.")
                )
        return [(r[0], r[2]) for r in rows if r[1] == "exampleSentence"]

    async def export_intents(self, request: Request) -> Response:
        flow_id = request.path_params["flow_id"]
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._problem(400, "Bad Request", "The body is not JSON.")
        self._check_flow_locale(flow_id, body.get("localeId"), request.url.path)
        pairs = self.sentences.get((flow_id, body["localeId"]), [])
        if body.get("format") == "json":
            intents: dict[str, list[str]] = {}
            for name, text in pairs:
                intents.setdefault(name, []).append(text)
            return JSONResponse(
                [{"name": n, "exampleSentences": s, "isDisabled": False} for n, s in intents.items()]
            )
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for name, text in pairs:
            writer.writerow([name, "exampleSentence", text])
        return Response(buffer.getvalue().encode(), media_type="text/csv")

    async def train(self, request: Request) -> Response:
        flow_id = request.path_params["flow_id"]
        body = await self._json(
            request, "{localeId, mode}", lambda b: isinstance(b, dict) and set(b) <= {"localeId", "mode"}
        )
        if body.get("mode", "full") not in ("full", "quick"):
            return self._problem(400, "Bad Request", "mode must be 'full' or 'quick'.")
        locale_id = str(body.get("localeId"))
        self._check_flow_locale(flow_id, locale_id, request.url.path)
        pairs = self.sentences.get((flow_id, locale_id), [])
        if len({n for n, _ in pairs}) < 1:
            return self._problem(400, "Bad Request", "The flow has no intents to train.")
        dataset = Dataset.of([Example(text=t, intent=n) for n, t in pairs])
        task = self._new_task(
            "trainIntents", {"flowId": flow_id, "localeId": locale_id, "mode": body.get("mode")}
        )
        task.job = self.start_job(dataset, 0, task=task.id)
        return JSONResponse(self._task_json_initial(task))

    async def get_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        task = self.tasks.get(task_id)
        if task is None:
            return self._problem(404, "Not Found", f"Task {task_id} not found.", request.url.path)
        return JSONResponse(self._task_json(task))

    async def list_tasks(self, request: Request) -> Response:
        limit = min(int(request.query_params.get("limit", 25)), 100)
        items = sorted(self.tasks.values(), key=lambda t: t.created_at, reverse=True)[:limit]
        return self._list([self._task_json(t) for t in items], len(self.tasks))

    async def scores(self, request: Request) -> Response:
        body = await self._json(
            request,
            "{flowReferenceId, localeReferenceId, sentence}",
            lambda b: (
                set(b) == {"flowReferenceId", "localeReferenceId", "sentence"}
                and isinstance(b["sentence"], str)
            ),
        )
        flow = next((f for f, ref in self.flows.items() if ref == body["flowReferenceId"]), None)
        locale = next(
            (lid for lid, (ref, _) in self.locales.items() if ref == body["localeReferenceId"]), None
        )
        if request.path_params["project_id"] != self.project_id or flow is None or locale is None:
            return self._problem(404, "Not Found", "Project, flow or locale not found.", request.url.path)
        self._advance_all()
        model = self.trained.get((flow, locale))
        if model is None:
            return JSONResponse({"scores": []})
        parse = model.parse([body["sentence"]])[0]
        ranking = parse.intent_ranking or (parse.intent,)
        return JSONResponse({"scores": [_score(r, body["flowReferenceId"]) for r in ranking]})

    async def create_snapshot(self, request: Request) -> Response:
        body = await self._json(
            request,
            "{projectId, name, description}",
            lambda b: set(b) <= {"projectId", "name", "description"} and {"projectId", "name"} <= set(b),
        )
        if body["projectId"] != self.project_id:
            return self._problem(404, "Not Found", "Project not found.")
        snapshot_id = _hex24()
        self._advance_all()
        with self.lock:
            self.snapshots[snapshot_id] = {
                "_id": snapshot_id,
                "name": body["name"],
                "description": body.get("description", ""),
                "projectId": self.project_id,
                "createdAt": _now_ms(),
            }
            # What the snapshot would serve: the NLU trained for the first flow in English.
            self.snapshot_models[snapshot_id] = self.trained.get((self.flow_id, self.locale_id()))
        task = self._new_task("createSnapshot", {"projectId": self.project_id, "snapshotId": snapshot_id})
        return JSONResponse(self._task_json_initial(task))

    async def list_snapshots(self, request: Request) -> Response:
        project = request.query_params.get("projectId")
        return self._list([s for s in self.snapshots.values() if s["projectId"] == project])

    def _check_endpoint(self, request: Request) -> None:
        endpoint_id = request.path_params["endpoint_id"]
        if endpoint_id != self.endpoint_id:
            raise Refused(
                self._problem(404, "Not Found", f"Endpoint {endpoint_id} not found.", request.url.path)
            )

    async def patch_endpoint(self, request: Request) -> Response:
        self._check_endpoint(request)
        body = await self._json(
            request, "{entrypoint}", lambda b: isinstance(b, dict) and isinstance(b.get("entrypoint"), str)
        )
        if body["entrypoint"] not in self.snapshots and body["entrypoint"] != self.project_id:
            return self._problem(400, "Bad Request", f"Entrypoint {body['entrypoint']} not found.")
        with self.lock:
            if self.endpoint["entrypoint"] != body["entrypoint"]:
                self.entrypoint_history.append(body["entrypoint"])
            self.endpoint = {**self.endpoint, **body}
        return Response(status_code=204)

    async def get_endpoint(self, request: Request) -> Response:
        self._check_endpoint(request)
        return JSONResponse(self.endpoint)

    def _task_json_initial(self, task: Task) -> dict[str, Any]:
        now = _now_ms()
        return {
            "_id": task.id,
            "status": "queued",
            "type": task.type,
            "parameters": task.parameters,
            "lastChangedAt": now,
            "lastCreatedAt": now,
            "createdAt": task.created_at,
            "currentStep": 0,
            "totalStep": 100,
        }

    def served_snapshot_name(self) -> str | None:
        """The name of the snapshot the endpoint points at (None while it points at the project)."""
        snapshot = self.snapshots.get(self.endpoint["entrypoint"])
        return str(snapshot["name"]) if snapshot else None


__all__ = ["CognigyEmulator", "JobOutcome"]
