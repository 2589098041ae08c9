"""Promotion stages, run inside one transaction: store the candidate, activate it on the backend, switch
the active pointer. A failure rolls back what was done before it (candidate removed, backend re-pointed);
the pointer is written last and atomically, so it is either the old one or the new one.

The promotion slot (:func:`promotion_slot`): one promotion per project at a time, held with a short Prefect
lease that is renewed while its holder lives, so a killed run frees it about a lease later. Under the slot,
:func:`recheck_active` reads the active model again: a model another run promoted since this run's decision
must be beaten too, on the same frozen test set, before the candidate may replace it."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.transactions import Transaction, get_transaction
from prefect.variables import Variable

from nluflow.backends.base import ModelRef, TrainingBackend
from nluflow.errors import ConfigError, PromotionError
from nluflow.evaluation.gates import Decision, GatePolicy, MustPassResult, decide
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.pipeline import DatasetSnapshot
from nluflow.store import ActivePointer, Manifest, ModelStore
from tasks.common import BACKEND_RETRY_DELAYS, BackendSpec, StoreSpec, crash_point, is_transient
from tasks.evaluation import evaluate_model, fetch_active_model

# The promotion slot's lease: renewed every 3/4 of it while the holder lives (Prefect's renewal thread), so a
# killed holder frees the slot about one lease later. The Prefect server refuses leases under 60 s
# (``/v2/concurrency_limits/increment-with-lease``: ``lease_duration`` ge=60), and its repossessor service
# frees expired leases every ``PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS`` (15 s).
LEASE_ENV = "NLUFLOW_PROMOTION_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
MIN_LEASE_SECONDS = 60.0
MAX_LEASE_SECONDS = 3600.0
# How often a run waiting for the slot says who holds it.
WAIT_LOG_SECONDS = 10.0
# A holder whose lease ran out this long ago is taken for dead: a waiter frees its slot itself (servers that
# run no repossessor, e.g. the ephemeral one, would otherwise keep it forever). Its renewals come every
# 3/4 lease, so a live holder's record is never this stale.
STALE_GRACE_SECONDS = 15.0


def promotion_limit_name(project: str) -> str:
    return f"nluflow-promote-{project}"


def promotion_lease_seconds() -> float:
    """The promotion slot's lease from ``$NLUFLOW_PROMOTION_LEASE_SECONDS`` (default 60)."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not MIN_LEASE_SECONDS <= value <= MAX_LEASE_SECONDS:
        raise ConfigError(
            f"{LEASE_ENV}={raw!r} is not a lease: expected seconds from {MIN_LEASE_SECONDS:.0f} (the "
            f"shortest lease the Prefect server grants) to {MAX_LEASE_SECONDS:.0f}; nothing was promoted. "
            f"Unset it for the default of {DEFAULT_LEASE_SECONDS:.0f} s"
        )
    return value


def _holder_variable(project: str) -> str:
    # Variable names are lowercase; a project id may not be, so it is hashed (the value names the project).
    return f"nluflow_promotion_slot_{hashlib.sha256(project.encode()).hexdigest()[:20]}"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SlotHolder:
    """Who holds a project's promotion slot, as the holder records it (a Prefect variable) and renews it."""

    project: str
    flow_run_id: str
    host: str
    pid: int
    since: str
    lease_seconds: float
    lease_until: str
    lease_id: str | None

    @classmethod
    def from_value(cls, value: Any) -> SlotHolder | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                project=str(value["project"]),
                flow_run_id=str(value["flow_run_id"]),
                host=str(value["host"]),
                pid=int(value["pid"]),
                since=str(value["since"]),
                lease_seconds=float(value["lease_seconds"]),
                lease_until=str(value["lease_until"]),
                lease_id=str(value["lease_id"]) if value.get("lease_id") else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def who(self) -> str:
        """``flow run <id>`` for a retrain; a CLI command records itself by name (``nluflow models ...``)."""
        try:
            UUID(self.flow_run_id)
        except ValueError:
            return self.flow_run_id
        return f"flow run {self.flow_run_id}"

    def until(self) -> datetime:
        return datetime.fromisoformat(self.lease_until)

    def describe(self, now: datetime) -> str:
        left = (self.until() - now).total_seconds()
        state = (
            f"its lease runs until {self.lease_until} ({left:.0f} s left; renewed every "
            f"{self.lease_seconds * 0.75:.0f} s while it lives)"
            if left >= 0
            else f"its lease ran out at {self.lease_until} ({-left:.0f} s ago): it looks dead"
        )
        return f"held by {self.who()} (host {self.host}, pid {self.pid}) since {self.since}; {state}"


def read_slot_holder(project: str) -> SlotHolder | None:
    """The recorded holder of the project's promotion slot, or None when nobody recorded one."""
    try:
        return SlotHolder.from_value(Variable.get(_holder_variable(project)))
    except Exception:  # the record is for messages only; it never stops a promotion
        return None


def _record_holder(
    project: str, run_id: str, lease_seconds: float, lease_id: UUID | None, since: str
) -> None:
    until = (_now() + timedelta(seconds=lease_seconds)).isoformat()
    value = {
        "project": project,
        "flow_run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": since,
        "lease_seconds": lease_seconds,
        "lease_until": until,
        "lease_id": str(lease_id) if lease_id else None,
    }
    Variable.set(_holder_variable(project), value, overwrite=True)


def _keep_holder_record(
    project: str, run_id: str, lease_seconds: float, lease_id: UUID | None, since: str, stop: threading.Event
) -> None:
    # Same cadence as Prefect's lease renewal: the record's "until" follows the lease.
    while not stop.wait(lease_seconds * 0.75):
        with suppress(Exception):
            _record_holder(project, run_id, lease_seconds, lease_id, since)


def _free_dead_holder(project: str, limit: str, holder: SlotHolder, released: set[str]) -> str | None:
    """Free the slot of a holder whose lease ran out ``STALE_GRACE_SECONDS`` ago (it was killed, and the
    server runs no repossessor, or lost the lease); returns how, or None when the holder may be alive.

    First by its lease id (releasing a lease the server already revoked changes nothing). If a look later the
    same dead holder's record is still there and the slot is still taken, the server no longer knows the lease
    (an ephemeral server keeps leases in memory and restarted with the next run): the slot is released by
    the limit's name. A new holder records itself the moment it takes the slot, so an unchanged stale
    record means nobody else holds it."""
    if holder.lease_id is None:
        return None
    if (_now() - holder.until()).total_seconds() < STALE_GRACE_SECONDS:
        return None
    with get_client(sync_client=True) as client:
        if holder.lease_id not in released:
            released.add(holder.lease_id)
            client.release_concurrency_slots_with_lease(lease_id=UUID(holder.lease_id))
            return "released its lease"
        held = (_now() - datetime.fromisoformat(holder.since)).total_seconds()
        client.release_concurrency_slots(names=[limit], slots=1, occupancy_seconds=max(held, 1.0))
    with suppress(Exception):
        Variable.unset(_holder_variable(project))
    return "released its slot by name (the server no longer knew its lease: it restarted)"


def _watch_while_waiting(project: str, limit: str, logger: Any, done: threading.Event) -> None:
    """While a run waits for the slot: every ``WAIT_LOG_SECONDS`` say who holds it and until when, and free
    the slot of a holder that is dead. Errors are logged, never raised: this only informs and unsticks."""
    started = time.monotonic()
    released: set[str] = set()  # lease ids of dead holders this run released
    while not done.wait(WAIT_LOG_SECONDS):
        try:
            current = read_slot_holder(project)
            freed = _free_dead_holder(project, limit, current, released) if current else None
            if current is not None and freed is not None:
                logger.warning(
                    "promotion slot of %s: flow run %s looks dead (its lease ran out at %s): %s",
                    project,
                    current.flow_run_id,
                    current.lease_until,
                    freed,
                )
                continue
            who = current.describe(_now()) if current else "holder unknown (it recorded no holder)"
            logger.info(
                "waiting for the promotion slot of %s (%.0f s so far): %s",
                project,
                time.monotonic() - started,
                who,
            )
        except Exception as exc:
            logger.warning("could not read who holds the promotion slot of %s: %s", project, exc)


def _lease_ids() -> set[UUID]:
    ctx = ConcurrencyContext.get()
    return set(ctx.cleanup_lease_ids) if ctx is not None else set()


def _logger() -> Any:
    """The run's logger in a flow or task run; outside one (a CLI command) the module's logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("nluflow.promotion")


@contextmanager
def promotion_slot(
    project: str,
    run_id: str,
    *,
    lease_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> Iterator[None]:
    """Hold the project's promotion slot (one promotion per project at a time) for the ``with`` body.

    The slot is a Prefect global concurrency limit taken with a lease of ``lease_seconds`` (default
    ``$NLUFLOW_PROMOTION_LEASE_SECONDS``, 60) that Prefect renews while this process lives, so a killed run
    frees it about a lease later instead of after Prefect's default 300 s. The holder is the flow run
    (``run_id``), or a CLI command that names itself there. While it waits, it logs who holds the slot and
    until when, every ``WAIT_LOG_SECONDS``. With ``timeout_seconds`` it waits at most that long, then raises
    :class:`PromotionError` saying who holds the slot (nothing was done)."""
    logger = _logger()
    lease = lease_seconds if lease_seconds is not None else promotion_lease_seconds()
    in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    limit = ensure_promotion_limit(project) if in_run else ensure_promotion_limit.fn(project)
    try:
        holder: ConcurrencyLeaseHolder | None = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id))
    except ValueError:
        holder = None  # not a flow run (a bare call in a test)
    current = read_slot_holder(project)
    if current is not None:
        logger.info("promotion slot of %s is %s; waiting for it", project, current.describe(_now()))
    with ExitStack() as stack:
        if ConcurrencyContext.get() is None:  # outside a run (a CLI command): record the lease id too, so a
            stack.enter_context(ConcurrencyContext())  # waiter can free the slot of a killed holder
        before = _lease_ids()
        waiting = threading.Event()
        watcher = threading.Thread(
            target=contextvars.copy_context().run,  # the run's Prefect settings and logger context
            args=(_watch_while_waiting, project, limit, logger, waiting),
            name=f"nluflow-slot-watch-{project}",
            daemon=True,
        )
        watcher.start()
        try:
            stack.enter_context(
                concurrency(
                    limit,
                    occupy=1,
                    timeout_seconds=timeout_seconds,
                    strict=True,
                    lease_duration=lease,
                    holder=holder,
                )
            )
        except TimeoutError:
            now = read_slot_holder(project)
            who = now.describe(_now()) if now else "held, holder unknown (it recorded no holder)"
            raise PromotionError(
                f"the promotion slot of {project!r} is {who}; waited {timeout_seconds or 0:.0f} s for it and "
                "changed nothing. A promotion holds it for seconds to minutes: run the command again when "
                "it is done"
            ) from None
        finally:
            waiting.set()
            watcher.join()
        new = sorted(_lease_ids() - before, key=str)
        lease_id = new[0] if len(new) == 1 else None
        since = _now().isoformat()
        try:
            _record_holder(project, run_id, lease, lease_id, since)
        except Exception as exc:  # messages only: the slot is held either way
            logger.warning("could not record the promotion slot's holder: %s", exc)
        stop = threading.Event()
        keeper = threading.Thread(
            target=contextvars.copy_context().run,
            args=(_keep_holder_record, project, run_id, lease, lease_id, since, stop),
            name=f"nluflow-slot-record-{project}",
            daemon=True,
        )
        keeper.start()
        logger.info(
            "holding the promotion slot of %s (lease %.0f s, renewed while this run lives)", project, lease
        )
        try:
            yield
        finally:
            stop.set()
            with suppress(Exception):
                Variable.unset(_holder_variable(project))


@dataclass(frozen=True)
class Recheck:
    """The decision made again under the promotion slot, against the model that is active now."""

    active: ModelRef | None
    active_eval: EvaluationResult | None
    decision: Decision


def recheck_active(
    store: StoreSpec,
    project: str,
    backend: BackendSpec,
    test: DatasetSnapshot,
    target_precision: float,
    candidate_eval: EvaluationResult,
    compared_with: str | None,
    gates: GatePolicy,
    must_pass: MustPassResult | None,
    run_id: str,
) -> Recheck | None:
    """Under the promotion slot: read the active pointer again. None when it still names ``compared_with``
    (the model the decision was made against; or this very run promoted already, a retried flow run), so the
    decision stands. Otherwise another run got there first: its model is scored on the same frozen test set
    (the evaluate task, cached on model and test set) and the gates run again against it."""
    pointer = store.build().active(project)
    now_id = pointer.model_id if pointer else None
    if now_id == compared_with or (pointer is not None and pointer.run_id == run_id):
        return None
    logger = get_run_logger()
    logger.warning(
        "the active model of %s changed while this run trained: %s, not %s; judging the candidate again "
        "against it on the same test set",
        project,
        now_id or "none",
        compared_with or "none",
    )
    active = fetch_active_model(store, project, backend)
    ref = active[0] if active else None
    if ref is None:
        return Recheck(None, None, decide(candidate_eval, None, gates, must_pass))
    active_eval = evaluate_model(backend, ref, test, target_precision)
    return Recheck(ref, active_eval, decide(candidate_eval, active_eval, gates, must_pass))


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
    """Point the project at the new model: verified first, written atomically, written last.

    A model an earlier run kept as rejected (the same data and config trained again, now promoted) comes
    off the rejected list: it is the active model, not a candidate to prune or to force."""
    model_store = store.build()
    pointer = model_store.activate(project, model_id, run_id=run_id, reason=reason)
    model_store.forget_rejected(project, model_id)
    get_run_logger().info("active model of %s is now %s", project, pointer.model_id)
    crash_point("pointer")
    return pointer
