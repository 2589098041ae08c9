"""Training stages: submit a job (idempotent), then wait for it and fetch the candidate's files."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from nluflow.backends.base import JobRef, JobStatus, ModelRef, TrainingConfig
from nluflow.pipeline import DatasetSnapshot
from nluflow.retrain import train as training
from nluflow.retrain.train import complete_marker
from tasks.common import (
    BACKEND_RETRY_DELAYS,
    BackendSpec,
    ProgressReporter,
    artifact_key,
    cache_key,
    cache_policy,
    crash_point,
    is_transient,
    run_logger,
    workspace,
)

# JobRef.data flag: submit-training already reported the job's progress to its end (the local backend).
PROGRESS_REPORTED = "nluflow_progress_reported"


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
    logger = run_logger()
    progress = ProgressReporter(artifact_key(project, "training-progress"), logger)
    with backend.client(on_progress=progress) as client:
        logger.info(
            "submitting %s examples to the %s backend (key %s)", train.n_examples, backend.name, key[:12]
        )
        crash_point("train")  # test-only: a run killed while it trains
        job = training.submit(client, project, train.load(), config, key)
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
    progress = ProgressReporter(artifact_key(project, "training-progress"), run_logger())
    # One progress artifact per run: a job that submit-training already reported to its end adds none.
    reported_by_submit = bool(job.data.get(PROGRESS_REPORTED))

    def on_status(status: JobStatus) -> None:
        if not (reported_by_submit and status.state.terminal):
            progress(status.progress, status.message or status.state.value)

    with backend.client() as client:
        training.wait_for_job(client, job, backend.name, training.Polling(max_wait_seconds), on_status)
        dest = workspace(backend.workspace).candidate(project, model_id)
        candidate = training.fetch_candidate(client, job, dest, model_id)
    if progress.reported or not reported_by_submit:
        progress(1.0, "model fetched")
    return candidate
