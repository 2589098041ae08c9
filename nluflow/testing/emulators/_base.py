"""What every emulator shares: its route table wired to the middleware, request recording, training jobs.

A platform lists its routes once in :meth:`Emulator.endpoints`; ``_middleware`` puts the auth gate and the
fault injector in front of the app serving them, and ``_serving`` runs an emulator with uvicorn.
Faults are injected per endpoint (the fault name of its routes) and consumed one per request::

    emulator.faults.inject("train", Fault.RATE_LIMIT)          # the next train request gets a 429
    emulator.faults.inject("status", Fault.SERVER_ERROR, times=3)
    emulator.outcome = JobOutcome.FAIL                          # the next training job ends failed

``jobs_started`` counts the trainings an emulator really started, so tests can prove none ran twice after a
fault that struck once the work was done.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from nluflow.data.schema import Dataset
from nluflow.testing.emulators._middleware import (
    ASGIApp,
    AuthGate,
    EmulatorSettings,
    Endpoint,
    FaultInjector,
    FaultPlan,
    RecordedRequest,
    Scope,
    answering,
)
from nluflow.testing.emulators._model import Loader, Predictor, Trainer, load_local, train_local
from nluflow.testing.emulators._serving import ServedApp


class JobOutcome(StrEnum):
    """How the next training job ends."""

    SUCCEED = "succeed"
    FAIL = "job FAILED"
    CANCEL = "job CANCELLED"
    ERROR = "job error"
    NEVER_FINISH = "job never finishes"


# ------------------------------------------------------------------------------------------- training jobs


class JobPhase(StrEnum):
    """An emulator's internal job states; each emulator maps them to its platform's words."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass
class TrainingJob:
    """One training job of an emulator, trained in a background thread with the local model."""

    id: str
    dataset: Dataset
    seed: int
    outcome: JobOutcome
    meta: dict[str, Any] = field(default_factory=dict)
    phase: JobPhase = JobPhase.QUEUED
    progress: float = 0.0
    epochs: list[dict[str, float]] = field(default_factory=list)
    model: Predictor | None = None
    model_dir: Path | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Emulator:
    """Base of the platform emulators: faults, recorded requests, jobs, and the local model behind them.

    A platform lists its routes once in :meth:`endpoints`; the app (:meth:`build_app`), the auth gate
    (:meth:`authenticate`) and the fault injector all read that one table.
    """

    name = "emulator"
    title = "emulator"

    def __init__(
        self,
        *,
        trainer: Trainer = train_local,
        loader: Loader = load_local,
        settings: EmulatorSettings | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.trainer = trainer
        self.loader = loader
        self.settings = settings or EmulatorSettings()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"nluflow-{self.name}-"))
        self.faults = FaultPlan()
        self.outcome = JobOutcome.SUCCEED
        self.jobs: dict[str, TrainingJob] = {}
        self.jobs_started = 0
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        table = self.endpoints()
        router = self.build_app(table)
        # The served routes in table order: a request's endpoint is found with the router's own matching.
        self._routes = list(zip(router.routes[len(router.routes) - len(table) :], table, strict=True))
        gate = AuthGate(router, self.endpoint_of, self.authenticate)
        self._injector = FaultInjector(
            gate, self.endpoint_of, self.faults, self.settings, self.error_body, self.expire_tokens
        )

    # --- what each platform defines
    def endpoints(self) -> list[Endpoint]:
        """The platform's routes, each declared once."""
        raise NotImplementedError

    def build_app(self, endpoints: Sequence[Endpoint]) -> Starlette:
        """The app serving ``endpoints``: FastAPI, whose 404 and 405 answers are JSON."""
        app = FastAPI(title=self.title, openapi_url=None)
        for endpoint in endpoints:
            app.add_api_route(endpoint.path, answering(endpoint.handler), methods=[endpoint.method])
        return app

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        """None when a request for a non-public endpoint may go on, else the platform's refusal."""
        return None

    def error_body(self, status: int, title: str, detail: str) -> tuple[bytes, str]:
        return json.dumps({"status": status, "title": title, "detail": detail}).encode(), "application/json"

    def expire_tokens(self) -> None:
        """Called when a 401 'token expired' fault fires: emulators that issue tokens revoke them."""

    # --- shared
    def endpoint_of(self, scope: Scope) -> Endpoint | None:
        """The endpoint an HTTP request is for (None: no route, or the method does not match)."""
        for route, endpoint in self._routes:
            if endpoint.method == scope["method"] and route.matches(scope)[0] is Match.FULL:
                return endpoint
        return None

    @property
    def app(self) -> ASGIApp:
        return self._injector

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._injector.recorded

    def recorded(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def serve(self) -> ServedApp:
        return ServedApp(self.app, on_stop=self.release_jobs)

    def release_jobs(self) -> None:
        """End the jobs still running (e.g. the ones told never to finish): the server is going away."""
        with self.lock:
            for job in self.jobs.values():
                if not job.done.is_set():
                    job.error = "the server shut down"
                    job.phase = JobPhase.ERROR
                    job.finished_at = time.time()
                    job.done.set()

    def new_id(self, prefix: str = "") -> str:
        return f"{prefix}{next(self._ids):06d}"

    def start_job(self, dataset: Dataset, seed: int, job_id: str | None = None, **meta: Any) -> TrainingJob:
        """Start training in a background thread; the next ``outcome`` decides how the job ends."""
        with self.lock:
            outcome, self.outcome = self.outcome, JobOutcome.SUCCEED
            job = TrainingJob(job_id or self.new_id("job-"), dataset, seed, outcome, dict(meta))
            self.jobs[job.id] = job
            self.jobs_started += 1
        threading.Thread(target=self._run, args=(job,), name=f"{self.name}-{job.id}", daemon=True).start()
        return job

    def _run(self, job: TrainingJob) -> None:
        job.phase = JobPhase.RUNNING
        job.progress = 0.1
        try:
            model = self.trainer(job.dataset, job.seed)
            steps = 4
            for epoch in range(1, steps + 1):
                time.sleep(self.settings.job_min_seconds / steps)
                loss = round(1.0 / (epoch + 1), 4)
                job.epochs.append(
                    {"epoch": epoch, "loss": loss, "val_loss": round(loss * 1.1, 4), "accuracy": 1 - loss / 2}
                )
                job.progress = 0.1 + 0.8 * epoch / steps
                if job.outcome is JobOutcome.NEVER_FINISH and epoch == 2:
                    return  # stays RUNNING for ever
            if job.outcome is JobOutcome.SUCCEED:
                model_dir = self.workdir / "models" / job.id
                model_dir.mkdir(parents=True, exist_ok=True)
                model.save(model_dir)
                job.model, job.model_dir = model, model_dir
                job.progress = 1.0
                job.phase = JobPhase.SUCCEEDED
            elif job.outcome is JobOutcome.FAIL:
                job.error = "training diverged: loss is NaN after epoch 2"
                job.phase = JobPhase.FAILED
            elif job.outcome is JobOutcome.CANCEL:
                job.error = "cancelled by an operator"
                job.phase = JobPhase.CANCELLED
            else:
                job.error = "worker lost: the training pod was evicted"
                job.phase = JobPhase.ERROR
        except Exception as exc:  # a bad dataset: the job fails like on the platform
            job.error = f"{type(exc).__name__}: {exc}"
            job.phase = JobPhase.FAILED
        finally:
            if job.phase is not JobPhase.RUNNING:
                job.finished_at = time.time()
                job.done.set()

    def model_of(self, job_id: str) -> Predictor | None:
        job = self.jobs.get(job_id)
        return job.model if job else None
