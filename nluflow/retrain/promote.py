"""Stage: promote the candidate, all or nothing, in four steps that each know their undo::

    store candidate      → undo: remove it from the store (never a model stored before, never the active one)
    activate on backend  → undo: serve the previous model again (a failed activation does that itself)
    promote-intent line  → undo: let go of the promotion lock, close the intent as abandoned on the log
    switch the pointer   → written last and atomically: it is either the old pointer or the new one

:class:`Promotion` runs steps and, when one fails, the undo of every step done before it, newest first.
The Prefect flow runs the same steps as tasks inside a transaction whose ``on_rollback`` hooks call these
undo functions (``tasks/promotion.py``); :func:`promote_candidate` runs them without Prefect. A rejected
candidate is kept in the store for a forced promotion (:func:`keep_rejected`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from nluflow.backends.base import ModelRef, TrainingBackend
from nluflow.evaluation.gates import Decision
from nluflow.outcome import RunOutcome, decided, superseded
from nluflow.recovery import hold_promotion_lock, intent_record, recover_promotions, release_promotion_lock
from nluflow.store import ActivePointer, Manifest, ModelStore
from nluflow.store.audit_log import AuditLog

logger = logging.getLogger("nluflow.retrain")

T = TypeVar("T")


class Candidate(BaseModel):
    """A trained candidate as the store keeps it: its files and what its manifest records."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    model: ModelRef
    dataset_sha256: str
    test_sha256: str
    config: dict[str, Any] = Field(description="The training configuration, as JSON.")
    metrics: dict[str, float] = Field(description="Headline metrics on the frozen test set.")
    run_id: str | None = None
    backend_block: str | None = Field(
        default=None, description="A remote backend's block reference, kept in the manifest for rollbacks."
    )

    @property
    def model_id(self) -> str:
        return self.model.model_id


def holder(run_id: str | None) -> str:
    """Who holds the promotion lock for a run."""
    return f"run {run_id}"


# -- step 1: the candidate in the store ---------------------------------------------------------------------


def add_candidate(model_store: ModelStore, candidate: Candidate) -> Manifest:
    """Copy a trained candidate's files into the store with its manifest: the one place both a promoted and
    a kept rejected candidate are stored, so their manifests cannot drift apart."""
    model = candidate.model
    if model.path is None:
        raise ValueError(f"candidate {model.model_id} has no local files to store")
    return model_store.add_model(
        candidate.project,
        model.model_id,
        Path(model.path),
        backend=model.backend,
        dataset_sha256=candidate.dataset_sha256,
        test_sha256=candidate.test_sha256,
        config=candidate.config,
        metrics=candidate.metrics,
        training_metrics=dict(model.metrics),
        backend_model_id=model.backend_model_id,
        run_id=candidate.run_id,
        backend_block=candidate.backend_block,
    )


def store_candidate(model_store: ModelStore, candidate: Candidate) -> Manifest:
    """Store the candidate with a sha256 manifest, then verify what was written."""
    manifest = add_candidate(model_store, candidate)
    model_store.verify(candidate.project, candidate.model_id)
    return manifest


def unstore_candidate(model_store: ModelStore, project: str, model_id: str, existed: bool) -> bool:
    """Undo :func:`store_candidate`: remove the model it added (never one stored before, never the active
    one). Returns whether it removed it."""
    if existed:
        return False
    active = model_store.active(project)
    if active is not None and active.model_id == model_id:
        return False
    model_store.remove_model(project, model_id)
    logger.warning("rolled back: removed candidate %s from the store", model_id)
    return True


# -- step 2: the platform serves it ------------------------------------------------------------------------


def _restore(client: TrainingBackend, previous: ModelRef) -> None:
    """Best effort: serve ``previous`` again after a failed activation (the activation error is the one
    that propagates; a failure here is logged)."""
    try:
        client.activate(previous)
    except Exception as exc:
        logger.error(
            "the activation failed and the backend may still serve the candidate: re-activating %s failed "
            "too (%s). The store still points at %s: make the platform serve it (`nluflow models activate "
            "%s` does both)",
            previous.model_id,
            exc,
            previous.model_id,
            previous.model_id,
        )
    else:
        logger.warning("the activation failed: the backend serves %s again", previous.model_id)


def activate(client: TrainingBackend, model: ModelRef, previous: ModelRef | None) -> None:
    """Make the platform serve ``model`` (a no-op for the local backend). An activation that fails may come
    after the platform already switched (the answer was lost): ``previous`` is served again before the
    error propagates."""
    try:
        client.activate(model)
    except Exception:
        if previous is not None:
            _restore(client, previous)
        raise


def serve_previous(client: TrainingBackend, previous: ModelRef | None) -> None:
    """Undo :func:`activate` after a later step failed: the platform serves ``previous`` again."""
    if previous is not None:
        client.activate(previous)
        logger.warning("rolled back: the backend serves %s again", previous.model_id)


# -- step 3: the intent line -------------------------------------------------------------------------------


def write_intent(
    log: AuditLog,
    model_store: ModelStore,
    project: str,
    model_id: str,
    run_id: str,
    after: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Take the promotion lock and append the ``promote-intent`` line (the model, the one it replaces as the
    pointer says now, the run): the pointer never moves unaudited. ``after`` runs once the line is written
    (a remote store's upload); if it or the append fails, the lock is let go."""
    active = model_store.active(project)
    hold_promotion_lock(log.path, holder=holder(run_id))
    try:
        line = log.append(
            intent_record(
                project=project,
                model_id=model_id,
                previous_model_id=active.model_id if active else None,
                run_id=run_id,
            )
        )
        after()
    except BaseException:
        release_promotion_lock(log.path, holder(run_id))
        raise
    return line


def abandon_intent(log: AuditLog, model_store: ModelStore, project: str, run_id: str) -> list[dict[str, Any]]:
    """Undo :func:`write_intent`: let go of the lock and close the intent on the log (``promotion-abandoned``,
    decided from the pointer). Returns the lines written."""
    release_promotion_lock(log.path, holder(run_id))
    return recover_promotions(log, model_store, project, actor="rollback")


# -- step 4: the pointer -----------------------------------------------------------------------------------


def switch_pointer(
    model_store: ModelStore, project: str, model_id: str, run_id: str | None, reason: str
) -> ActivePointer:
    """Point the project at the new model: verified first, written atomically, written last. A model an
    earlier run kept as rejected comes off the rejected list: it is the active model now."""
    pointer = model_store.activate(project, model_id, run_id=run_id, reason=reason)
    model_store.forget_rejected(project, model_id)
    logger.info("active model of %s is now %s", project, pointer.model_id)
    return pointer


# -- the steps in order, each undone on failure ------------------------------------------------------------


class Promotion:
    """Runs steps in order; when one raises, the undo of every step done before it runs, newest first, and
    the error propagates (an undo that fails is logged: the others still run)."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def step(self, name: str, do: Callable[[], T], undo: Callable[[], object] | None = None) -> T:
        try:
            value = do()
        except BaseException:
            self.roll_back()
            raise
        if undo is not None:
            self._undo.append((name, undo))
        return value

    def roll_back(self) -> None:
        """Undo every step done so far, newest first."""
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                logger.error("could not undo %s: %s", name, exc)


def promote_candidate(
    model_store: ModelStore,
    client: TrainingBackend,
    log: AuditLog,
    candidate: Candidate,
    previous: ModelRef | None,
    reason: str,
) -> ActivePointer:
    """Promote ``candidate`` without Prefect: store → activate → intent line → pointer, all or nothing. The
    run's ``promote`` line, which completes the intent and lets go of the lock, is the caller's to write."""
    project, model_id, run_id = candidate.project, candidate.model_id, candidate.run_id or "local"
    existed = model_store.has_model(project, model_id)
    steps = Promotion()
    steps.step(
        "store-candidate",
        lambda: store_candidate(model_store, candidate),
        lambda: unstore_candidate(model_store, project, model_id, existed),
    )
    steps.step(
        "activate-on-backend",
        lambda: activate(client, candidate.model, previous),
        lambda: serve_previous(client, previous),
    )
    steps.step(
        "write-promotion-intent",
        lambda: write_intent(log, model_store, project, model_id, run_id),
        lambda: abandon_intent(log, model_store, project, run_id),
    )
    return steps.step(
        "switch-active-pointer", lambda: switch_pointer(model_store, project, model_id, run_id, reason)
    )


# -- a candidate that is not promoted ----------------------------------------------------------------------


def keep_rejected(model_store: ModelStore, candidate: Candidate, keep: int, reason: str) -> list[str]:
    """Keep a rejected candidate in the store (stored, not active) so a person can still promote it with
    ``nluflow models promote``; then prune the rejected candidates beyond the newest ``keep``. A model that
    was already stored (the active one, a rerun of a kept candidate) is not touched. Returns the ids
    pruned."""
    project, model = candidate.project, candidate.model
    if keep > 0 and model.path is not None and not model_store.has_model(project, model.model_id):
        add_candidate(model_store, candidate)
        model_store.record_rejected(project, model.model_id, run_id=candidate.run_id, reason=reason)
        logger.info(
            "kept rejected candidate %s in the store (not active; `nluflow models promote` can force it)",
            model.model_id,
        )
    pruned = model_store.prune_rejected(project, keep)
    if pruned:
        logger.info("pruned rejected candidates beyond the newest %d: %s", keep, ", ".join(pruned))
    return pruned


# -- judged again under the promotion slot -----------------------------------------------------------------


def needs_recheck(pointer: ActivePointer | None, compared_with: str | None, run_id: str) -> bool:
    """Whether the decision must be made again: the active pointer no longer names ``compared_with`` (the
    model the decision was made against), and this very run did not move it (a retried flow run)."""
    now_id = pointer.model_id if pointer else None
    return not (now_id == compared_with or (pointer is not None and pointer.run_id == run_id))


def final_outcome(
    project: str,
    decision: Decision,
    model_id: str,
    compared_with: str | None,
    active_id: str | None,
    promoted: bool,
) -> RunOutcome:
    """The run's outcome: ``superseded`` when another run's model became active after this run compared
    with ``compared_with`` and the candidate did not beat it, else what the gates decided."""
    if active_id != compared_with and not promoted and active_id != model_id:
        return superseded(project, model_id, compared_with, active_id or "none", decision)
    return decided(project, decision, model_id, active_id, promoted=promoted)
