"""The audit stages of a run: recover promotions that stopped half-way, the promotion's intent line, the
run's audit line, and the notification."""

from __future__ import annotations

from typing import Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from blocks.notify import WebhookNotification
from nluflow.audit import error_summary
from nluflow.notify import DecisionNotice
from nluflow.recovery import EarlierRun, pending_intents, recover_promotions, release_promotion_lock
from nluflow.retrain import promote
from nluflow.store import layout
from nluflow.store.audit_log import AuditLog
from tasks.common import StoreSpec, crash_point, run_logger
from tasks.crashed_runs import earlier_retrain_runs


@task(name="recover-promotions", cache_policy=NO_CACHE)
def recover_promotions_task(
    store: StoreSpec, project: str, actor: str, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Before a run: move a torn audit tail aside, refuse a broken chain (with the command that seals it),
    close every promotion an earlier run left half-way (killed between its intent and completion lines), and
    with ``run_id`` (the current run, left out) write a ``crashed`` line for each earlier run of the project
    that Prefect knows was killed before it could write its own line (a recovered ``failed`` line for a
    Failed run whose hook wrote none)."""
    logger = run_logger()
    earlier: list[EarlierRun] = []
    if run_id is not None:
        try:
            earlier = earlier_retrain_runs(store, project, current_run_id=run_id)
        except Exception as exc:  # the API is the run's own server; if it cannot answer, the next run will
            logger.warning(
                "could not list earlier runs of %s for crashed ones: %s", project, error_summary(exc)
            )
    log = AuditLog(store.audit_path(project))
    written = recover_promotions(log, store.build(create=True), project, actor=actor, earlier_runs=earlier)
    _report_recovery(store, project, log, written)
    return written


def _report_recovery(store: StoreSpec, project: str, log: AuditLog, written: list[dict[str, Any]]) -> None:
    """Upload the log when recovery wrote to it, and say what it repaired and wrote."""
    logger = run_logger()
    if written or log.repairs:
        upload_audit(store, project)
    for repair in log.repairs:
        logger.warning("audit log repaired: %s", repair)
    for line in written:
        logger.warning("audit line %s: %s", line["seq"], line["reasons"][0])


@task(name="write-promotion-intent", cache_policy=NO_CACHE)
def write_promotion_intent(store: StoreSpec, project: str, model_id: str, run_id: str) -> dict[str, Any]:
    """Inside the promotion, just before the pointer switch: take the promotion lock and append the
    ``promote-intent`` line (model, the model it replaces as the pointer says now, run). The run's
    ``promote`` line after the switch completes it; if the run stops in between, recovery completes it from
    the pointer."""
    log = AuditLog(store.audit_path(project))
    line = promote.write_intent(
        log, store.build(), project, model_id, run_id, after=lambda: upload_audit(store, project)
    )
    txn = get_transaction()
    if txn is not None:
        txn.set("audit_store", store)
        txn.set("audit_project", project)
        txn.set("audit_run_id", run_id)
    crash_point("intent")
    return line


@write_promotion_intent.on_rollback
def _close_rolled_back_intent(txn: Transaction) -> None:
    """The promotion rolled back: let go of the lock and say on the log that it was abandoned."""
    store: StoreSpec = txn.get("audit_store")
    project: str = txn.get("audit_project")
    log = AuditLog(store.audit_path(project))
    logger = run_logger()
    try:
        written = promote.abandon_intent(log, store.build(create=True), project, txn.get("audit_run_id"))
        _report_recovery(store, project, log, written)
    except Exception as exc:  # the other rollback hooks must still run; the next run recovers the intent
        logger.warning("could not close the rolled-back promotion on the audit log: %s", exc)


@task(name="write-audit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def write_audit(audit_path: str, record: dict[str, Any]) -> dict[str, Any]:
    """Append one hash-chained line for this run. A ``promote`` line completes the run's pending
    ``promote-intent`` line (``intent_seq``), after which the promotion lock is let go."""
    log = AuditLog(audit_path)
    run_id = record.get("run_id")
    if record.get("decision") == "promote" and "intent_seq" not in record:
        intents = [i for i in pending_intents(log.records()) if i.get("run_id") == run_id]
        if intents:
            record = {**record, "intent_seq": intents[-1]["seq"]}
    line = log.append(record)
    release_promotion_lock(audit_path, f"run {run_id}")
    for repair in log.repairs:  # a torn last line was moved aside before this line
        run_logger().warning("audit log repaired: %s", repair)
    if record.get("decision") == "promote":
        crash_point("audit")
    return line


def upload_audit(store: StoreSpec, project: str) -> None:
    """A remote store's audit log is written as a local file (see ``StoreSpec.audit_path``) and uploaded after
    each line: runs that end before ``sync-run-to-store`` (blocked, failed) upload it here."""
    if not store.is_local():
        store.build(create=True).fs.put_file(store.audit_path(project), layout(project).audit)


@task(name="notify", cache_policy=NO_CACHE)
def notify(notice: DecisionNotice, block_names: list[str]) -> dict[str, bool]:
    """Announce the decision to every configured webhook (generic JSON or Slack).

    Runs after the promotion committed: a failing receiver or a missing block is logged, never raised, so a
    notification can never undo or fail a promotion."""
    logger = run_logger()
    logger.info("[%s] %s", notice.project, notice.summary)
    sent: dict[str, bool] = {}
    for name in block_names:
        try:
            block = cast(WebhookNotification, WebhookNotification.load(name))
            sent[name] = block.get_notifier().send(notice)
        except Exception as exc:  # a notification must never fail the run
            logger.warning("notification %r not sent: %s", name, type(exc).__name__)
            sent[name] = False
    return sent
