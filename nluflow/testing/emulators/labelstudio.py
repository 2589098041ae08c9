"""Emulator of Label Studio 1.23.2's export and auth, following shapes captured from a real server.

What it serves (``tests/fixtures/label-studio/README.md`` describes the captures):

- ``GET /api/projects/{id}/export?exportType=JSON`` — the project's tasks as one JSON list, each task and
  annotation with the keys (and key order) of the captured ``export.json``; like the real server, only
  tasks with at least one annotation (skipped ones included) unless ``download_all_tasks=true``.
- ``POST /api/token/refresh/`` ``{"refresh": <PAT>}`` → ``{"access": <JWT>}``; the access token expires after
  ``access_ttl`` seconds (5 minutes in Label Studio 1.23).
- Auth on every API route: ``Authorization: Token <legacy token>`` (refused with the captured 401 message when
  ``legacy_enabled`` is false, as in new 1.23 organisations) or ``Authorization: Bearer <access token>``;
  the PAT itself is refused as a bearer, as the real server does.
- Errors: 401 (no, wrong, expired or disabled credentials), 404 (no such project), and, through the shared
  fault injector, 500/503/429, a dropped connection or a 401 that expires every access token
  (endpoints ``export`` and ``refresh``). Error bodies use Django REST framework's ``{"detail": ...}`` (and
  simplejwt's ``code`` for token errors); their exact wording beyond the captured 401 message is assumed.

Annotators are played from Python: :meth:`add_task`, :meth:`annotate`, :meth:`delete_annotation`,
:meth:`delete_task`; :meth:`load_export` starts from a captured export.

Webhooks (:meth:`add_webhook`) are sent like Label Studio 1.23.2 sends them: a synchronous ``POST`` of the
captured body shape (``ANNOTATION_CREATED`` with ``annotation``, ``task`` and ``project``;
``ANNOTATIONS_DELETED`` with ``annotations: [{"id"}]``; ``TASKS_DELETED`` with ``tasks: [{"id"}]`` and a bare
project id), the webhook's custom headers, a 1 s timeout and **no retry**: a failed delivery is only recorded
in ``deliveries``. The ``project`` object is reduced to ``id`` and ``title`` (the real one has 50 keys).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nluflow.testing.emulators._base import Emulator
from nluflow.testing.emulators._middleware import Endpoint, answering

LEGACY_DISABLED = "legacy token authentication has been disabled for this organization"
DEFAULT_ACCESS_TTL = 300.0
WEBHOOK_TIMEOUT = 1.0  # Label Studio's WEBHOOK_TIMEOUT; it never retries


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token (not signed for real: nluflow only reads ``exp``)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(secrets.token_bytes(32))}"


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _result(
    task_id: int, text: str, intent: str | None, entities: Sequence[tuple[int, int, str]]
) -> list[dict[str, Any]]:
    """An annotation's ``result``: the intent choice (none when ``intent`` is None) and the entity spans."""
    result: list[dict[str, Any]] = []
    if intent is not None:
        result.append(
            {
                "id": f"t{task_id}-intent",
                "from_name": "intent",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": [intent]},
            }
        )
    for n, (start, end, label) in enumerate(entities, 1):
        result.append(
            {
                "id": f"t{task_id}-e{n}",
                "from_name": "entities",
                "to_name": "text",
                "type": "labels",
                "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
            }
        )
    return result


class LabelStudioEmulator(Emulator):
    """One Label Studio organisation with projects of text tasks, legacy tokens and personal access tokens."""

    name = "label-studio"
    title = "label studio emulator"

    def __init__(
        self,
        *,
        legacy_token: str = "ls-legacy-token-5c0f2e9a",
        legacy_enabled: bool = True,
        access_ttl: float = DEFAULT_ACCESS_TTL,
        clock: Callable[[], float] = time.time,
        projects: Sequence[int] = (1,),
        **kw: Any,
    ) -> None:
        self.legacy_token = legacy_token
        self.legacy_enabled = legacy_enabled
        self.access_ttl = access_ttl
        self.clock = clock
        self.personal_access_token = _jwt(
            {"token_type": "refresh", "exp": 4102444800, "jti": uuid.uuid4().hex, "user_id": 1}
        )
        self.access_tokens: dict[str, float] = {}
        self.refreshes = 0
        self.exports = 0
        self.projects: dict[int, list[dict[str, Any]]] = {p: [] for p in projects}
        self._data_lock = threading.RLock()
        self.webhooks: list[tuple[str, dict[str, str]]] = []
        self.deliveries: list[tuple[str, int | str]] = []
        self._task_ids = 0
        self._annotation_ids = 0
        super().__init__(**kw)

    # ------------------------------------------------------------------------------------------ webhooks

    def add_webhook(self, url: str, headers: dict[str, str] | None = None) -> None:
        """Send every action to ``url`` (``send_for_all_actions``, ``send_payload``) with these headers."""
        self.webhooks.append((url, dict(headers or {})))

    def _send(self, body: dict[str, Any]) -> None:
        for url, headers in self.webhooks:
            try:
                response = httpx.post(
                    url,
                    content=json.dumps(body),
                    headers={"Content-Type": "application/json", **headers},
                    timeout=WEBHOOK_TIMEOUT,
                )
                self.deliveries.append((body["action"], response.status_code))
            except httpx.HTTPError as exc:  # Label Studio logs it and carries on
                self.deliveries.append((body["action"], type(exc).__name__))

    @staticmethod
    def _project(project: int) -> dict[str, Any]:
        return {"id": project, "title": f"project {project}"}

    # ------------------------------------------------------------------------------------------ annotators

    def load_export(self, tasks: list[dict[str, Any]], project: int = 1) -> None:
        """Start a project from a captured JSON export (ids continue after the highest one in it)."""
        with self._data_lock:
            self.projects[project] = json.loads(json.dumps(tasks))
            for task in tasks:
                self._task_ids = max(self._task_ids, int(task["id"]))
                for annotation in task.get("annotations", []):
                    self._annotation_ids = max(self._annotation_ids, int(annotation["id"]))

    def add_task(self, text: str, project: int = 1, **data: Any) -> int:
        """Import one task ``{"data": {"text": ..., **data}}``; returns its id."""
        with self._data_lock:
            self._task_ids += 1
            now = _stamp(self.clock())
            tasks = self.projects.setdefault(project, [])
            tasks.append(
                {
                    "id": self._task_ids,
                    "annotations": [],
                    "drafts": [],
                    "predictions": [],
                    "data": {"text": text, **data},
                    "meta": {},
                    "created_at": now,
                    "updated_at": now,
                    "allow_skip": True,
                    "inner_id": len(tasks) + 1,
                    "total_annotations": 0,
                    "cancelled_annotations": 0,
                    "total_predictions": 0,
                    "comment_count": 0,
                    "unresolved_comment_count": 0,
                    "last_comment_updated_at": None,
                    "project": project,
                    "updated_by": None,
                    "comment_authors": [],
                }
            )
            return self._task_ids

    def _task(self, task_id: int) -> dict[str, Any]:
        for tasks in self.projects.values():
            for task in tasks:
                if task["id"] == task_id:
                    return task
        raise KeyError(f"no task {task_id}")

    def annotate(
        self,
        task_id: int,
        intent: str | None,
        entities: Sequence[tuple[int, int, str]] = (),
        *,
        cancelled: bool = False,
        ground_truth: bool = False,
    ) -> int:
        """Add an annotation: the intent choice and ``(start, end, label)`` spans of the task's text, or a
        skip (``cancelled``: Label Studio keeps a skip as an annotation with ``was_cancelled``, no result)."""
        with self._data_lock:
            task = self._task(task_id)
            result = [] if cancelled else _result(task_id, task["data"]["text"], intent, entities)
            self._annotation_ids += 1
            now = _stamp(self.clock())
            annotation = {
                "id": self._annotation_ids,
                "completed_by": 1,
                "result": result,
                "was_cancelled": cancelled,
                "ground_truth": ground_truth,
                "created_at": now,
                "updated_at": now,
                "draft_created_at": None,
                "lead_time": 5.0,
                "prediction": {},
                "result_count": len(result),
                "unique_id": str(uuid.uuid4()),
                "import_id": None,
                "last_action": None,
                "bulk_created": False,
                "task": task_id,
                "project": task["project"],
                "updated_by": 1,
                "parent_prediction": None,
                "parent_annotation": None,
                "last_created_by": None,
            }
            task["annotations"].append(annotation)
            self._recount(task, now)
            webhook_task = {
                k: v for k, v in task.items() if k not in ("annotations", "drafts", "predictions")
            }
            webhook_task.update(
                is_labeled=task["total_annotations"] > 0,
                overlap=1,
                precomputed_agreement=None,
                file_upload=None,
            )
            body = {
                "action": "ANNOTATION_CREATED",
                "annotation": annotation,
                "project": self._project(task["project"]),
                "task": webhook_task,
            }
        self._send(body)
        return int(annotation["id"])

    def delete_annotation(self, annotation_id: int) -> None:
        with self._data_lock:
            for project, tasks in self.projects.items():
                for task in tasks:
                    kept = [a for a in task["annotations"] if a["id"] != annotation_id]
                    if len(kept) != len(task["annotations"]):
                        task["annotations"] = kept
                        self._recount(task, _stamp(self.clock()))
                        body = {
                            "action": "ANNOTATIONS_DELETED",
                            "annotations": [{"id": annotation_id}],
                            "project": self._project(project),
                        }
                        break
                else:
                    continue
                break
            else:
                raise KeyError(f"no annotation {annotation_id}")
        self._send(body)

    def delete_task(self, task_id: int) -> None:
        with self._data_lock:
            for project, tasks in self.projects.items():
                kept = [t for t in tasks if t["id"] != task_id]
                if len(kept) != len(tasks):
                    self.projects[project] = kept
                    body = {"action": "TASKS_DELETED", "tasks": [{"id": task_id}], "project": project}
                    break
            else:
                raise KeyError(f"no task {task_id}")
        self._send(body)

    @staticmethod
    def _recount(task: dict[str, Any], now: str) -> None:
        task["total_annotations"] = sum(not a["was_cancelled"] for a in task["annotations"])
        task["cancelled_annotations"] = sum(bool(a["was_cancelled"]) for a in task["annotations"])
        task["updated_at"] = now

    # ---------------------------------------------------------------------------------------------- auth

    def expire_tokens(self) -> None:
        with self.lock:
            self.access_tokens.clear()

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        """None when the request carries valid credentials, else the 401 Label Studio would answer."""
        header = request.headers.get("authorization", "")
        kind, _, value = header.partition(" ")
        if not header:
            return self._deny("Authentication credentials were not provided.")
        if kind == "Token":
            if not self.legacy_enabled:
                return self._deny(LEGACY_DISABLED)
            if secrets.compare_digest(value.encode(), self.legacy_token.encode()):
                return None
            return self._deny("Invalid token.")
        if kind == "Bearer":
            with self.lock:
                expires = self.access_tokens.get(value)
            if expires is not None and self.clock() < expires:
                return None
            return self._deny("Given token not valid for any token type", code="token_not_valid")
        return self._deny("Authentication credentials were not provided.")

    @staticmethod
    def _deny(detail: str, code: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {"detail": detail}
        if code:
            body["code"] = code
        return JSONResponse(body, status_code=401)

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        return json.dumps({"detail": detail}).encode(), "application/json"

    # -------------------------------------------------------------------------------------------- routes

    async def refresh(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"detail": "JSON parse error"}, status_code=400)
        given = body.get("refresh") if isinstance(body, dict) else None
        if not isinstance(given, str):
            return JSONResponse({"refresh": ["This field is required."]}, status_code=400)
        if not secrets.compare_digest(given.encode(), self.personal_access_token.encode()):
            return JSONResponse(
                {"detail": "Token is invalid or expired", "code": "token_not_valid"}, status_code=401
            )
        now = self.clock()
        access = _jwt(
            {"token_type": "access", "exp": int(now + self.access_ttl), "jti": uuid.uuid4().hex, "user_id": 1}
        )
        with self.lock:
            self.access_tokens[access] = now + self.access_ttl
            self.refreshes += 1
        return JSONResponse({"access": access})

    async def export(self, request: Request) -> Response:
        project = int(request.path_params["project"])
        export_type = request.query_params.get("exportType", "JSON")
        if export_type != "JSON":
            return JSONResponse({"detail": f"export type {export_type} is not emulated"}, status_code=400)
        with self._data_lock:
            tasks = self.projects.get(project)
            if tasks is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            if request.query_params.get("download_all_tasks", "false").lower() not in ("true", "1"):
                tasks = [task for task in tasks if task["annotations"]]  # as 1.23.2's only_finished
            # The real server sends one compact UTF-8 line without \u escapes.
            body = json.dumps(tasks, ensure_ascii=False, separators=(",", ":")).encode()
            self.exports += 1
        return Response(body, media_type="application/json")

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/api/token/refresh/", self.refresh, "refresh", public=True),
            Endpoint("GET", "/api/projects/{project:int}/export", self.export, "export"),
        ]

    def build_app(self, endpoints: Sequence[Endpoint]) -> Starlette:
        """Plain Starlette, as this emulator always was (its 404 and 405 answers are plain text)."""
        return Starlette(routes=[Route(e.path, answering(e.handler), methods=[e.method]) for e in endpoints])
