"""Stage: score models on the frozen test set — the active model out of the store, any model's predictions
scored by nluflow's own metrics (so candidate and active model are judged the same way), must-pass cases."""

from __future__ import annotations

from collections.abc import Sequence

from nluflow.backends.base import LabelledPredictor, ModelRef, ProjectScoped, TrainingBackend
from nluflow.data.loaders import load_must_pass
from nluflow.data.schema import Dataset, Example
from nluflow.errors import DataError
from nluflow.evaluation.gates import MustPassResult, check_must_pass
from nluflow.evaluation.metrics import EvaluationResult, evaluate
from nluflow.pipeline import Workspace
from nluflow.store import Manifest, ModelStore


def active_model(
    model_store: ModelStore, project: str, workspace: Workspace
) -> tuple[ModelRef, Manifest] | None:
    """The project's active model, its files copied into the workspace and verified against the manifest;
    None for a project without one."""
    pointer = model_store.active(project)
    if pointer is None:
        return None
    path = model_store.materialize(project, pointer.model_id, workspace.champion(project, pointer.model_id))
    manifest = model_store.manifest(project, pointer.model_id)
    return ModelRef.stored(manifest, path), manifest


def check_served(client: TrainingBackend, active: ModelRef, project: str) -> None:
    """One served model per server (Rasa): it must be the project's active model."""
    if isinstance(client, ProjectScoped):
        client.check_active_served(active, project)


def score(
    client: TrainingBackend, model: ModelRef, test_set: Dataset, target_precision: float
) -> EvaluationResult:
    """Predict every test utterance with ``model`` and score the predictions."""
    if isinstance(client, LabelledPredictor):
        parses = client.predict_labelled(model, test_set.examples)
    else:
        parses = client.predict(model, test_set.texts)
    return evaluate(test_set, parses, target_precision=target_precision)


def must_pass_cases(path: str, known_intents: list[str]) -> list[Example]:
    """The utterances the candidate must all get right (a team's regression list); DataError naming the
    file and line of a case whose intent is not in the training data."""
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
    return cases


def must_pass(client: TrainingBackend, model: ModelRef, cases: Sequence[Example]) -> MustPassResult:
    """Predict the must-pass utterances with ``model``: which it got wrong."""
    return check_must_pass(cases, client.predict(model, [c.text for c in cases]))
