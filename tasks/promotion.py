"""Promotion stages, run inside one transaction: store the candidate, activate it on the backend, switch
the active pointer. A failure rolls back what was done before it (candidate removed, backend re-pointed);
the pointer is written last and atomically, so it is either the old one or the new one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.logging import get_run_logger
from prefect.transactions import Transaction, get_transaction

from nluflow.backends.base import ModelRef, TrainingBackend
from nluflow.registry import ActivePointer, Manifest, ModelStore
from tasks.common import BACKEND_RETRY_DELAYS, BackendSpec, StoreSpec, crash_point, is_transient


def promotion_limit_name(project: str) -> str:
    return f"nluflow-promote-{project}"


@task(name="ensure-promotion-limit", cache_policy=NO_CACHE)
def ensure_promotion_limit(project: str) -> str:
    """Create the per-project concurrency limit (one promotion at a time) if it does not exist yet."""
    name = promotion_limit_name(project)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


def _add_model(
    model_store: ModelStore,
    project: str,
    model: ModelRef,
    dataset_sha256: str,
    test_sha256: str,
    config: dict[str, Any],
    metrics: dict[str, float],
    run_id: str | None,
    backend_block: str | None,
) -> Manifest:
    """Copy a trained candidate's files into the store with its manifest: the one place both a promoted and a
    kept rejected candidate are stored, so their manifests cannot drift apart."""
    assert model.path is not None
    return model_store.add_model(
        project,
        model.model_id,
        Path(model.path),
        backend=model.backend,
        dataset_sha256=dataset_sha256,
        test_sha256=test_sha256,
        config=config,
        metrics=metrics,
        training_metrics=dict(model.metrics),
        backend_model_id=model.backend_model_id,
        run_id=run_id,
        backend_block=backend_block,
    )


@task(name="store-candidate", cache_policy=NO_CACHE)
def store_candidate(
    store: StoreSpec,
    project: str,
    model: ModelRef,
    dataset_sha256: str,
    test_sha256: str,
    config: dict[str, Any],
    metrics: dict[str, float],
    run_id: str | None,
    backend_block: str | None = None,
) -> Manifest:
    """Copy the candidate's files into the store with a sha256 manifest, then verify what was written.

    ``backend_block``: the block reference of a remote backend, kept in the manifest for rollbacks."""
    model_store = store.build(create=True)
    existed = model_store.has_model(project, model.model_id)
    txn = get_transaction()
    if txn is not None:
        txn.set("store", store)
        txn.set("project", project)
        txn.set("model_id", model.model_id)
        txn.set("existed", existed)
    assert model.path is not None
    manifest = _add_model(
        model_store, project, model, dataset_sha256, test_sha256, config, metrics, run_id, backend_block
    )
    model_store.verify(project, model.model_id)
    crash_point("store")
    return manifest


@store_candidate.on_rollback
def _remove_stored_candidate(txn: Transaction) -> None:
    """Undo ``store-candidate``: remove the model it added (never one that was stored before)."""
    if txn.get("existed", True):
        return
    store: StoreSpec = txn.get("store")
    model_store = store.build()
    project, model_id = txn.get("project"), txn.get("model_id")
    active = model_store.active(project)
    if active is not None and active.model_id == model_id:
        return
    model_store.remove_model(project, model_id)
    get_run_logger().warning("rolled back: removed candidate %s from the store", model_id)


@task(
    name="activate-on-backend",
    cache_policy=NO_CACHE,
    retries=len(BACKEND_RETRY_DELAYS),
    retry_delay_seconds=BACKEND_RETRY_DELAYS,
    retry_condition_fn=is_transient,
)
def activate_on_backend(backend: BackendSpec, model: ModelRef, previous: ModelRef | None) -> None:
    """Make the platform serve the candidate (a no-op for the local backend).

    The rollback hook below covers failures of later stages; this covers a failure of the activation itself,
    which may come after the platform already switched (the answer was lost or an error arrived after the
    work was done): the previous model is activated again before the error propagates.
    """
    txn = get_transaction()
    if txn is not None:
        txn.set("backend", backend)
        txn.set("previous", previous)
    client = backend.build()
    try:
        client.activate(model)
    except Exception:
        if previous is not None:
            _restore(client, previous)
        raise
    crash_point("activate")


def _restore(client: TrainingBackend, previous: ModelRef) -> None:
    """Best effort: serve ``previous`` again after a failed activation (the activation error is the one
    that propagates; a failure here is logged)."""
    logger = get_run_logger()
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


@activate_on_backend.on_rollback
def _reactivate_previous(txn: Transaction) -> None:
    previous: ModelRef | None = txn.get("previous", None)
    if previous is not None:
        backend: BackendSpec = txn.get("backend")
        backend.build().activate(previous)
        get_run_logger().warning("rolled back: the backend serves %s again", previous.model_id)


@task(name="keep-rejected-candidate", cache_policy=NO_CACHE)
def keep_rejected_candidate(
    store: StoreSpec,
    project: str,
    model: ModelRef,
    dataset_sha256: str,
    test_sha256: str,
    config: dict[str, Any],
    metrics: dict[str, float],
    run_id: str | None,
    backend_block: str | None,
    keep: int,
    reason: str,
) -> list[str]:
    """Keep a rejected candidate in the store (stored, not active) so a person can still promote it with
    ``nluflow models promote``; then prune the rejected candidates beyond the newest ``keep``.

    A model that was already stored (e.g. the active one, or a rerun of a kept candidate) is not touched.
    Returns the ids pruned."""
    logger = get_run_logger()
    model_store = store.build(create=True)
    if keep > 0 and model.path is not None and not model_store.has_model(project, model.model_id):
        _add_model(
            model_store, project, model, dataset_sha256, test_sha256, config, metrics, run_id, backend_block
        )
        model_store.record_rejected(project, model.model_id, run_id=run_id, reason=reason)
        logger.info(
            "kept rejected candidate %s in the store (not active; `nluflow models promote` can force it)",
            model.model_id,
        )
    pruned = model_store.prune_rejected(project, keep)
    if pruned:
        logger.info("pruned rejected candidates beyond the newest %d: %s", keep, ", ".join(pruned))
    return pruned


@task(name="switch-active-pointer", cache_policy=NO_CACHE)
def switch_active_pointer(
    store: StoreSpec, project: str, model_id: str, run_id: str | None, reason: str
) -> ActivePointer:
    """Point the project at the new model: verified first, written atomically, written last."""
    pointer = store.build().activate(project, model_id, run_id=run_id, reason=reason)
    get_run_logger().info("active model of %s is now %s", project, pointer.model_id)
    crash_point("pointer")
    return pointer
