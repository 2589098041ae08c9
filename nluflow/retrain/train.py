"""Stage: train the candidate through the backend protocol — submit (idempotent), wait, fetch its files."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nluflow.backends.base import (
    JobRef,
    JobState,
    JobStatus,
    ModelRef,
    ProjectScoped,
    TrainingBackend,
    TrainingConfig,
)
from nluflow.data.schema import Dataset
from nluflow.errors import TrainingFailedError

# Polling: first wait, growth factor, and the longest wait between two status calls (seconds).
POLL_FIRST_SECONDS = 1.0
POLL_FACTOR = 1.5
POLL_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Polling:
    """How to wait for a job: backoff, the longest wait, and the clock and sleep (injected in tests)."""

    max_wait_seconds: float
    first: float = POLL_FIRST_SECONDS
    factor: float = POLL_FACTOR
    longest: float = POLL_MAX_SECONDS
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


def submit(client: TrainingBackend, project: str, train: Dataset, config: TrainingConfig, key: str) -> JobRef:
    """Start training ``train``; the idempotency ``key`` makes a retried submit reuse the job it started."""
    if isinstance(client, ProjectScoped):  # Rasa: archives name the project; another project's served model
        client.bind_project(project)  # is refused
    return client.submit(train, config, idempotency_key=key)


def wait_for_job(
    client: TrainingBackend,
    job: JobRef,
    backend_name: str,
    polling: Polling,
    on_status: Callable[[JobStatus], None] = lambda status: None,
) -> JobStatus:
    """Poll ``job`` with backoff until it ends (``on_status`` sees every answer); TrainingFailedError when it
    did not succeed, or did not end within ``polling.max_wait_seconds``."""
    deadline = polling.clock() + polling.max_wait_seconds
    delay = polling.first
    while True:
        status = client.status(job)
        on_status(status)
        if status.state.terminal:
            break
        if polling.clock() + delay > deadline:
            raise TrainingFailedError(
                f"training job {job.job_id} on {backend_name} did not finish within "
                f"{polling.max_wait_seconds:.0f} s (last state {status.state.value}); no model was promoted"
            )
        polling.sleep(delay)
        delay = min(delay * polling.factor, polling.longest)
    if status.state is not JobState.SUCCEEDED:
        raise TrainingFailedError(
            f"training job {job.job_id} on {backend_name} ended {status.state.value}: "
            f"{status.message or 'no reason given'}; no model was promoted"
        )
    return status


def complete_marker(candidate: Path) -> Path:
    """Written beside the candidate folder once all its files are fetched."""
    return candidate.with_name(candidate.name + ".complete")


def fetch_candidate(client: TrainingBackend, job: JobRef, dest: Path, model_id: str) -> ModelRef:
    """Fetch a finished job's model files into ``dest`` (staged, then renamed; a marker says complete)."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    complete_marker(dest).unlink(missing_ok=True)
    staging.mkdir(parents=True)
    fetched = client.fetch(job, staging)
    staging.rename(dest)
    complete_marker(dest).touch()
    return fetched.model_copy(update={"model_id": model_id, "path": str(dest)})
