"""Promotion stages, run inside one transaction: store the candidate, activate it on the backend, (the intent
line, ``tasks/audit.py``), switch the active pointer. Each task runs one step of
:mod:`nluflow.retrain.promote`; its ``on_rollback`` hook runs that step's undo (candidate removed, backend
re-pointed), so a failure rolls back what was done before it. The pointer is written last and atomically.

Under the promotion slot (:mod:`tasks.slot`), :func:`recheck_active` reads the active model again: a model
another run promoted since this run's decision must be beaten too, on the same frozen test set, before the
candidate may replace it."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction
from pydantic import BaseModel, ConfigDict

from nluflow.backends.base import ModelRef
from nluflow.evaluation.gates import Decision, GatePolicy, MustPassResult, decide
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.pipeline import DatasetSnapshot
from nluflow.retrain import promote
from nluflow.retrain.promote import Candidate
from nluflow.store import ActivePointer, Manifest
from tasks.common import BACKEND_RETRY_DELAYS, BackendSpec, StoreSpec, crash_point, is_transient, run_logger
from tasks.evaluation import evaluate_model, fetch_active_model


class Judging(BaseModel):
    """What a candidate is judged with: its scores, the frozen test set, the gates and must-pass results."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    candidate_eval: EvaluationResult
    test: DatasetSnapshot
    target_precision: float
    gates: GatePolicy
    must_pass: MustPassResult | None = None


@dataclass(frozen=True)
class Recheck:
    """The decision made again under the promotion slot, against the model that is active now."""

    active: ModelRef | None
    active_eval: EvaluationResult | None
    decision: Decision

    @property
    def active_id(self) -> str | None:
        return self.active.model_id if self.active else None


def recheck_active(
    store: StoreSpec,
    project: str,
    backend: BackendSpec,
    judging: Judging,
    compared_with: str | None,
    run_id: str,
) -> Recheck | None:
    """Under the promotion slot: read the active pointer again. None when it still names ``compared_with``
    (the model the decision was made against; or this very run promoted already, a retried flow run), so the
    decision stands. Otherwise another run got there first: its model is scored on the same frozen test set
    (the evaluate task, cached on model and test set) and the gates run again against it."""
    pointer = store.build().active(project)
    if not promote.needs_recheck(pointer, compared_with, run_id):
        return None
    run_logger().warning(
        "the active model of %s changed while this run trained: %s, not %s; judging the candidate again "
        "against it on the same test set",
        project,
        pointer.model_id if pointer else "none",
        compared_with or "none",
    )
    active = fetch_active_model(store, project, backend)
    ref = active[0] if active else None
    j = judging
    active_eval = evaluate_model(backend, ref, j.test, j.target_precision) if ref is not None else None
    return Recheck(ref, active_eval, decide(j.candidate_eval, active_eval, j.gates, j.must_pass))


@task(name="store-candidate", cache_policy=NO_CACHE)
def store_candidate(store: StoreSpec, candidate: Candidate) -> Manifest:
    """Copy the candidate's files into the store with a sha256 manifest, then verify what was written."""
    model_store = store.build(create=True)
    txn = get_transaction()
    if txn is not None:  # what the rollback hook needs to undo exactly this step
        txn.set("store", store)
        txn.set("project", candidate.project)
        txn.set("model_id", candidate.model_id)
        txn.set("existed", model_store.has_model(candidate.project, candidate.model_id))
    manifest = promote.store_candidate(model_store, candidate)
    crash_point("store")
    return manifest


@store_candidate.on_rollback
def _remove_stored_candidate(txn: Transaction) -> None:
    """Undo ``store-candidate``: remove the model it added (never one that was stored before)."""
    store: StoreSpec = txn.get("store")
    promote.unstore_candidate(
        store.build(), txn.get("project"), txn.get("model_id"), txn.get("existed", True)
    )


@task(
    name="activate-on-backend",
    cache_policy=NO_CACHE,
    retries=len(BACKEND_RETRY_DELAYS),
    retry_delay_seconds=BACKEND_RETRY_DELAYS,
    retry_condition_fn=is_transient,
)
def activate_on_backend(backend: BackendSpec, model: ModelRef, previous: ModelRef | None) -> None:
    """Make the platform serve the candidate (a no-op for the local backend). The rollback hook covers
    failures of later stages; a failed activation itself serves the previous model again before it raises."""
    txn = get_transaction()
    if txn is not None:
        txn.set("backend", backend)
        txn.set("previous", previous)
    with backend.client() as client:
        promote.activate(client, model, previous)
    crash_point("activate")


@activate_on_backend.on_rollback
def _reactivate_previous(txn: Transaction) -> None:
    """Undo ``activate-on-backend``: the backend serves the previous model again."""
    previous: ModelRef | None = txn.get("previous", None)
    if previous is not None:
        backend: BackendSpec = txn.get("backend")
        with backend.client() as client:
            promote.serve_previous(client, previous)


@task(name="keep-rejected-candidate", cache_policy=NO_CACHE)
def keep_rejected_candidate(store: StoreSpec, candidate: Candidate, keep: int, reason: str) -> list[str]:
    """Keep a rejected candidate in the store (stored, not active) so a person can still promote it with
    ``nluflow models promote``; prune the rejected candidates beyond the newest ``keep``. Returns the ids
    pruned."""
    return promote.keep_rejected(store.build(create=True), candidate, keep, reason)


@task(name="switch-active-pointer", cache_policy=NO_CACHE)
def switch_active_pointer(
    store: StoreSpec, project: str, model_id: str, run_id: str | None, reason: str
) -> ActivePointer:
    """Point the project at the new model: verified first, written atomically, written last."""
    pointer = promote.switch_pointer(store.build(), project, model_id, run_id, reason)
    crash_point("pointer")
    return pointer
