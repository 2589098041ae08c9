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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from nluflow.data.schema import Dataset, Example
from nluflow.testing.emulators._base import ASGIApp, Emulator, JobOutcome, JobPhase, TrainingJob, routes
from nluflow.testing.emulators._model import Predictor

API = "/new/v2.0"
LANGUAGES = ("en-US", "de-DE", "fr-FR", "es-ES")


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
    table = routes(
        ("POST", r"/auth/oauth2/token", "token"),
        ("GET", rf"{API}/(flows|locales)", "lookup"),
        ("POST", rf"{API}/flows/[^/]+/intents/import", "upload"),
        ("POST", rf"{API}/flows/[^/]+/intents/export", "export"),
        ("POST", rf"{API}/flows/[^/]+/intents/train", "train"),
        ("GET", rf"{API}/tasks/[^/]+", "status"),
        ("GET", rf"{API}/tasks", "tasks"),
        ("POST", rf"{API}/projects/[^/]+/nlu/scores", "predict"),
        ("POST", rf"{API}/snapshots", "snapshot"),
        ("PATCH", rf"{API}/endpoints/[^/]+", "activate"),
    )

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

    async def _guard(self, request: Request) -> Response | None:
        if request.method == "GET" and await request.body():
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

    # --------------------------------------------------------------------------------------------- app

    def build_app(self) -> ASGIApp:
        app = FastAPI(title="cognigy emulator", openapi_url=None)

        @app.post("/auth/oauth2/token")
        async def token(request: Request) -> Response:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            if self.client_id is None or (form.get("client_id"), form.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            value = secrets.token_urlsafe(24)
            with self.lock:
                self.tokens[value] = time.time() + self.token_ttl
                self.tokens_issued += 1
            return JSONResponse(
                {"access_token": value, "token_type": "Bearer", "expires_in": int(self.token_ttl)}
            )

        @app.get(f"{API}/flows")
        async def flows(request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            items = [
                {"_id": fid, "referenceId": ref, "name": f"Flow {fid[:6]}"} for fid, ref in self.flows.items()
            ]
            if request.query_params.get("projectId") != self.project_id:
                items = []
            return JSONResponse(
                {"items": items, "total": len(items), "nextCursor": None, "previousCursor": None}
            )

        @app.get(f"{API}/locales")
        async def locales(request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            items = [
                {"_id": lid, "referenceId": ref, "name": lang, "nluLanguage": lang}
                for lid, (ref, lang) in self.locales.items()
            ]
            if request.query_params.get("projectId") != self.project_id:
                items = []
            return JSONResponse(
                {"items": items, "total": len(items), "nextCursor": None, "previousCursor": None}
            )

        def check_flow_locale(flow_id: str, locale_id: Any, path: str) -> Response | None:
            if flow_id not in self.flows:
                return self._problem(404, "Not Found", f"Flow {flow_id} not found.", path)
            if locale_id not in self.locales:
                return self._problem(400, "Bad Request", f"Locale {locale_id!r} not found.", path)
            return None

        @app.post(f"{API}/flows/{{flow_id}}/intents/import")
        async def import_intents(flow_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            parts = parse_multipart(await request.body(), request.headers.get("content-type", ""))
            locale_id = parts.get("localeId", (None, b""))[1].decode()
            mode = parts.get("mode", (None, b""))[1].decode()
            if (bad := check_flow_locale(flow_id, locale_id, request.url.path)) is not None:
                return bad
            if mode not in ("skip", "overwrite", "merge") or "file" not in parts:
                return self._problem(400, "Bad Request", "Expected multipart fields file, localeId, mode.")
            try:
                rows = list(csv.reader(io.StringIO(parts["file"][1].decode("utf-8-sig"))))
            except UnicodeDecodeError:
                return self._problem(400, "Bad Request", "The file is not UTF-8.")
            for number, row in enumerate(rows, start=1):
                if len(row) != 3 or row[1] not in (
                    "exampleSentence",
                    "defaultReply",
                    "confirmationSentence",
                    "rules",
                ):
                    return self._problem(
                        400, "Bad Request", f"Row {number}: expected name,propertyType,value."
                    )
            pairs = [(r[0], r[2]) for r in rows if r[1] == "exampleSentence"]
            key = (flow_id, locale_id)
            with self.lock:
                current = self.sentences.get(key, [])
                if mode == "overwrite":
                    names = {n for n, _ in pairs}
                    current = [p for p in current if p[0] not in names] + pairs
                elif mode == "merge":
                    current = current + [p for p in pairs if p not in current]
                else:
                    known = {n for n, _ in current}
                    current = current + [p for p in pairs if p[0] not in known]
                self.sentences[key] = current
            task = self._new_task("importIntents", {"flowId": flow_id, "localeId": locale_id, "mode": mode})
            return JSONResponse(self._task_json_initial(task))

        @app.post(f"{API}/flows/{{flow_id}}/intents/export")
        async def export_intents(flow_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            try:
                body = json.loads(await request.body())
            except ValueError:
                return self._problem(400, "Bad Request", "The body is not JSON.")
            if (bad := check_flow_locale(flow_id, body.get("localeId"), request.url.path)) is not None:
                return bad
            pairs = self.sentences.get((flow_id, body["localeId"]), [])
            if body.get("format") == "json":
                intents: dict[str, list[str]] = {}
                for name, text in pairs:
                    intents.setdefault(name, []).append(text)
                data = [{"name": n, "exampleSentences": s, "isDisabled": False} for n, s in intents.items()]
                return JSONResponse(data)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            for name, text in pairs:
                writer.writerow([name, "exampleSentence", text])
            return Response(buffer.getvalue().encode(), media_type="text/csv")

        @app.post(f"{API}/flows/{{flow_id}}/intents/train")
        async def train(flow_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            try:
                body = json.loads(await request.body())
                assert isinstance(body, dict) and set(body) <= {"localeId", "mode"}
            except (ValueError, AssertionError):
                return self._problem(400, "Bad Request", "Expected {localeId, mode}.")
            if body.get("mode", "full") not in ("full", "quick"):
                return self._problem(400, "Bad Request", "mode must be 'full' or 'quick'.")
            locale_id = str(body.get("localeId"))
            if (bad := check_flow_locale(flow_id, locale_id, request.url.path)) is not None:
                return bad
            pairs = self.sentences.get((flow_id, locale_id), [])
            if len({n for n, _ in pairs}) < 1:
                return self._problem(400, "Bad Request", "The flow has no intents to train.")
            dataset = Dataset.of([Example(text=t, intent=n) for n, t in pairs])
            task = self._new_task(
                "trainIntents", {"flowId": flow_id, "localeId": locale_id, "mode": body.get("mode")}
            )
            task.job = self.start_job(dataset, 0, task=task.id)
            return JSONResponse(self._task_json_initial(task))

        @app.get(f"{API}/tasks/{{task_id}}")
        async def get_task(task_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            task = self.tasks.get(task_id)
            if task is None:
                return self._problem(404, "Not Found", f"Task {task_id} not found.", request.url.path)
            return JSONResponse(self._task_json(task))

        @app.get(f"{API}/tasks")
        async def list_tasks(request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            limit = min(int(request.query_params.get("limit", 25)), 100)
            items = sorted(self.tasks.values(), key=lambda t: t.created_at, reverse=True)[:limit]
            data = [self._task_json(t) for t in items]
            return JSONResponse(
                {"items": data, "total": len(self.tasks), "nextCursor": None, "previousCursor": None}
            )

        @app.post(f"{API}/projects/{{project_id}}/nlu/scores")
        async def scores(project_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            try:
                body = json.loads(await request.body())
                assert set(body) == {"flowReferenceId", "localeReferenceId", "sentence"}
                assert isinstance(body["sentence"], str)
            except (ValueError, AssertionError, TypeError):
                return self._problem(
                    400, "Bad Request", "Expected {flowReferenceId, localeReferenceId, sentence}."
                )
            flow = next((f for f, ref in self.flows.items() if ref == body["flowReferenceId"]), None)
            locale = next(
                (lid for lid, (ref, _) in self.locales.items() if ref == body["localeReferenceId"]), None
            )
            if project_id != self.project_id or flow is None or locale is None:
                return self._problem(404, "Not Found", "Project, flow or locale not found.", request.url.path)
            self._advance_all()
            model = self.trained.get((flow, locale))
            if model is None:
                return JSONResponse({"scores": []})
            parse = model.parse([body["sentence"]])[0]
            ranking = parse.intent_ranking or (parse.intent,)
            return JSONResponse(
                {
                    "scores": [
                        {
                            "id": _hex24(),
                            "name": r.name,
                            "score": r.confidence,
                            "negated": False,
                            "confirmationSentence": None,
                            "confirmationSentences": [],
                            "disambiguationSentence": None,
                            "flow": body["flowReferenceId"],
                        }
                        for r in ranking
                    ]
                }
            )

        @app.post(f"{API}/snapshots")
        async def create_snapshot(request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            try:
                body = json.loads(await request.body())
                assert set(body) <= {"projectId", "name", "description"} and {"projectId", "name"} <= set(
                    body
                )
            except (ValueError, AssertionError, TypeError):
                return self._problem(400, "Bad Request", "Expected {projectId, name, description}.")
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

        @app.get(f"{API}/snapshots")
        async def list_snapshots(request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            items = [
                s for s in self.snapshots.values() if s["projectId"] == request.query_params.get("projectId")
            ]
            return JSONResponse(
                {"items": items, "total": len(items), "nextCursor": None, "previousCursor": None}
            )

        @app.patch(f"{API}/endpoints/{{endpoint_id}}")
        async def patch_endpoint(endpoint_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            if endpoint_id != self.endpoint_id:
                return self._problem(404, "Not Found", f"Endpoint {endpoint_id} not found.", request.url.path)
            try:
                body = json.loads(await request.body())
                assert isinstance(body, dict) and isinstance(body.get("entrypoint"), str)
            except (ValueError, AssertionError):
                return self._problem(400, "Bad Request", "Expected {entrypoint}.")
            if body["entrypoint"] not in self.snapshots and body["entrypoint"] != self.project_id:
                return self._problem(400, "Bad Request", f"Entrypoint {body['entrypoint']} not found.")
            with self.lock:
                if self.endpoint["entrypoint"] != body["entrypoint"]:
                    self.entrypoint_history.append(body["entrypoint"])
                self.endpoint = {**self.endpoint, **body}
            return Response(status_code=204)

        @app.get(f"{API}/endpoints/{{endpoint_id}}")
        async def get_endpoint(endpoint_id: str, request: Request) -> Response:
            if (denied := await self._guard(request)) is not None:
                return denied
            if endpoint_id != self.endpoint_id:
                return self._problem(404, "Not Found", f"Endpoint {endpoint_id} not found.", request.url.path)
            return JSONResponse(self.endpoint)

        return app

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
