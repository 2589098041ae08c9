"""Evaluation stages: the active model out of the store, predictions on the frozen test set, must-pass."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from nluflow.backends.base import ModelRef
from nluflow.evaluation.gates import MustPassResult
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.hashing import sha256_file
from nluflow.pipeline import DatasetSnapshot, model_files_sha256
from nluflow.retrain import scoring
from nluflow.store import Manifest
from tasks.common import (
    BACKEND_RETRY_DELAYS,
    BackendSpec,
    StoreSpec,
    cache_key,
    cache_policy,
    is_transient,
    run_logger,
    workspace,
)


@task(name="fetch-active-model", cache_policy=NO_CACHE)
def fetch_active_model(
    store: StoreSpec, project: str, backend: BackendSpec
) -> tuple[ModelRef, Manifest] | None:
    """The project's active model, its files verified against the manifest; None for a first model."""
    active = scoring.active_model(store.build(create=True), project, workspace(backend.workspace))
    if active is not None and backend.name != "local":
        with backend.client() as client:
            scoring.check_served(client, active[0], project)
    return active


def _evaluate_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    model: ModelRef = inputs["model"]
    model_sha = model_files_sha256(model.path) if model.path else model.backend_model_id
    # "labelled": predictions may come from the labelled test set (Rasa's real entity predictions), so
    # results cached before that are not reused.
    return cache_key(
        "evaluate-model",
        "labelled",
        model.backend,
        model_sha,
        inputs["test"].sha256,
        inputs["target_precision"],
    )


@task(
    name="evaluate-model",
    cache_policy=cache_policy(_evaluate_key),
    persist_result=True,
    retries=len(BACKEND_RETRY_DELAYS),
    retry_delay_seconds=BACKEND_RETRY_DELAYS,
    retry_condition_fn=is_transient,
)
def evaluate_model(
    backend: BackendSpec, model: ModelRef, test: DatasetSnapshot, target_precision: float
) -> EvaluationResult:
    """Predict every test utterance with ``model`` and score the predictions (metrics are ours, not the
    backend's, so candidate and active model are judged the same way)."""
    with backend.client() as client:
        result = scoring.score(client, model, test.load(), target_precision)
    run_logger().info(
        "%s: accuracy %.4f, macro F1 %.4f on %d test utterances (sha %s)",
        model.model_id,
        result.accuracy,
        result.macro_f1,
        result.n,
        test.sha256[:12],
    )
    return result


def _must_pass_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    model: ModelRef = inputs["model"]
    model_sha = model_files_sha256(model.path) if model.path else model.backend_model_id
    return cache_key("check-must-pass", model_sha, sha256_file(inputs["path"]))


@task(
    name="check-must-pass",
    cache_policy=cache_policy(_must_pass_key),
    persist_result=True,
    retries=len(BACKEND_RETRY_DELAYS),
    retry_delay_seconds=BACKEND_RETRY_DELAYS,
    retry_condition_fn=is_transient,
)
def check_must_pass_utterances(
    backend: BackendSpec, model: ModelRef, path: str, known_intents: list[str]
) -> MustPassResult:
    """Utterances the candidate must all get right (a team's regression list)."""
    cases = scoring.must_pass_cases(path, known_intents)
    with backend.client() as client:
        return scoring.must_pass(client, model, cases)
