"""Training stages: submit a job (idempotent), then wait for it and fetch the candidate's files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from nluflow.backends.base import JobRef, JobState, ModelRef, ProjectScoped, TrainingConfig
from nluflow.errors import TrainingFailedError
from nluflow.pipeline import DatasetSnapshot
from tasks.common import (
    BACKEND_RETRY_DELAYS,
    BackendSpec,
    ProgressReporter,
    artifact_key,
    cache_key,
    cache_policy,
    crash_point,
    is_transient,
    workspace,
)

# JobRef.data flag: submit-training already reported the job's progress to its end (the local backend).
PROGRESS_REPORTED = "nluflow_progress_reported"
# Polling: first wait, growth factor, and the longest wait between two status calls (seconds).
POLL_FIRST_SECONDS = 1.0
POLL_FACTOR = 1.5
POLL_MAX_SECONDS = 30.0


def complete_marker(candidate: Path) -> Path:
    """Written beside the candidate folder once all its files are fetched."""
    return candidate.with_name(candidate.name + ".complete")


def candidate_ready(backend: BackendSpec, project: str, model_id: str) -> bool:
    """Whether the candidate's files are on disk. A cached training result is only useful while they are:
    the flow refreshes the training cache when they are gone."""
    return complete_marker(workspace(backend.workspace).candidate(project, model_id)).exists()


def _train_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    return cache_key(ctx.task.name, inputs["key"], inputs["backend"].name)


@task(
    name="submit-training",
    cache_policy=cache_policy(_train_key),
    persist_result=True,
    retries=len(BACKEND_RETRY_DELAYS),
    retry_delay_seconds=BACKEND_RETRY_DELAYS,
    retry_condition_fn=is_transient,
)
def submit_training(
    backend: BackendSpec,
    project: str,
    model_id: str,
    train: DatasetSnapshot,
    config: TrainingConfig,
    key: str,
) -> JobRef:
    """Start training; the idempotency key makes a retried submit reuse the job it already started.

    Retried on transient errors only. On Rasa (no idempotency key; 3.x trains again on every request) the
    client never resends a train request whose answer was lost: a retry of this task first waits for the
    server's running training and takes the archive tagged with this key from its models folder.
    """
    logger = get_run_logger()
    progress = ProgressReporter(artifact_key(project, "training-progress"), logger)
    client = backend.build(on_progress=progress)
    if isinstance(client, ProjectScoped):  # Rasa: archives name the project; another project's served model
        client.bind_project(project)  # is refused
    logger.info("submitting %s examples to the %s backend (key %s)", train.n_examples, backend.name, key[:12])
    crash_point("train")  # test-only: a run killed while it trains
    job = client.submit(train.load(), config, idempotency_key=key)
    if progress.reported:  # the backend trained while submitting (the local one): wait-for-training adds none
        job = job.model_copy(update={"data": {**job.data, PROGRESS_REPORTED: True}})
    return job


@task(
    name="wait-for-training",
    cache_policy=cache_policy(_train_key),
    persist_result=True,
    retries=len(BACKEND_RETRY_DELAYS),
    retry_delay_seconds=BACKEND_RETRY_DELAYS,
    retry_condition_fn=is_transient,
)
def wait_for_training(
    backend: BackendSpec,
    project: str,
    model_id: str,
    job: JobRef,
    key: str,
    max_wait_seconds: float,
) -> ModelRef:
    """Poll the job with backoff until it ends, then fetch the model files into the candidate folder."""
    logger = get_run_logger()
    progress = ProgressReporter(artifact_key(project, "training-progress"), logger)
    client = backend.build()
    deadline = time.monotonic() + max_wait_seconds
    delay = POLL_FIRST_SECONDS
    # One progress artifact per run: a job that submit-training already reported to its end adds none.
    reported_by_submit = bool(job.data.get(PROGRESS_REPORTED))
    while True:
        status = client.status(job)
        if not (reported_by_submit and status.state.terminal):
            progress(status.progress, status.message or status.state.value)
        if status.state.terminal:
            break
        if time.monotonic() + delay > deadline:
            raise TrainingFailedError(
                f"training job {job.job_id} on {backend.name} did not finish within {max_wait_seconds:.0f} s "
                f"(last state {status.state.value}); no model was promoted"
            )
        time.sleep(delay)
        delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)
    if status.state is not JobState.SUCCEEDED:
        raise TrainingFailedError(
            f"training job {job.job_id} on {backend.name} ended {status.state.value}: "
            f"{status.message or 'no reason given'}; no model was promoted"
        )
    dest = workspace(backend.workspace).candidate(project, model_id)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    complete_marker(dest).unlink(missing_ok=True)
    staging.mkdir(parents=True)
    fetched = client.fetch(job, staging)
    staging.rename(dest)
    complete_marker(dest).touch()
    if progress.reported or not reported_by_submit:
        progress(1.0, "model fetched")
    return fetched.model_copy(update={"model_id": model_id, "path": str(dest)})
