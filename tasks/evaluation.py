"""Evaluation stages: the active model out of the store, predictions on the frozen test set, must-pass."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from nluflow.backends.base import LabelledPredictor, ModelRef, ProjectScoped
from nluflow.data.loaders import load_must_pass
from nluflow.errors import DataError
from nluflow.evaluation.gates import MustPassResult, check_must_pass
from nluflow.evaluation.metrics import EvaluationResult, evaluate
from nluflow.hashing import sha256_file
from nluflow.pipeline import DatasetSnapshot, model_files_sha256
from nluflow.store import Manifest
from tasks.common import (
    BACKEND_RETRY_DELAYS,
    BackendSpec,
    StoreSpec,
    cache_key,
    cache_policy,
    is_transient,
    workspace,
)


@task(name="fetch-active-model", cache_policy=NO_CACHE)
def fetch_active_model(
    store: StoreSpec, project: str, backend: BackendSpec
) -> tuple[ModelRef, Manifest] | None:
    """The project's active model, its files verified against the manifest; None for a first model."""
    model_store = store.build(create=True)
    pointer = model_store.active(project)
    if pointer is None:
        return None
    dest = workspace(backend.workspace).champion(project, pointer.model_id)
    path = model_store.materialize(project, pointer.model_id, dest)
    manifest = model_store.manifest(project, pointer.model_id)
    active = ModelRef.stored(manifest, path)
    if backend.name != "local":
        client = backend.build()
        if isinstance(client, ProjectScoped):  # one served model per server (Rasa): it must be this one
            client.check_active_served(active, project)
    return active, manifest


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
    test_set = test.load()
    platform = backend.build()
    if isinstance(platform, LabelledPredictor):
        parses = platform.predict_labelled(model, test_set.examples)
    else:
        parses = platform.predict(model, test_set.texts)
    result = evaluate(test_set, parses, target_precision=target_precision)
    get_run_logger().info(
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
    cases = load_must_pass(path)
    known = set(known_intents)
    for case in cases:
        if case.intent not in known:
            raise DataError(
                f"must-pass utterance {case.text!r} expects intent {case.intent!r}, which is not in the "
                f"training data (known: {', '.join(sorted(known)[:20])}); fix the must-pass file or add "
                "training examples; nothing was trained or promoted",
                path=case.origin.path if case.origin else path,
                line=case.origin.line if case.origin else None,
            )
    parses = backend.build().predict(model, [c.text for c in cases])
    return check_must_pass(cases, parses)
