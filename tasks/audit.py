"""The last stages of a run: the audit line and the notification."""

from __future__ import annotations

from typing import Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.notify import WebhookNotification
from nluflow.audit import AuditLog
from nluflow.notify import DecisionNotice
from tasks.common import StoreSpec


@task(name="write-audit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def write_audit(audit_path: str, record: dict[str, Any]) -> dict[str, Any]:
    """Append one hash-chained line for this run."""
    return AuditLog(audit_path).append(record)


def upload_audit(store: StoreSpec, project: str) -> None:
    """A remote store's audit log is written as a local file (see ``StoreSpec.audit_path``) and uploaded after
    each line: runs that end before ``sync-run-to-store`` (blocked, failed) upload it here."""
    if not store.is_local():
        store.build(create=True).fs.put_file(store.audit_path(project), f"{project}/audit.jsonl")


@task(name="notify", cache_policy=NO_CACHE)
def notify(notice: DecisionNotice, block_names: list[str]) -> dict[str, bool]:
    """Announce the decision to every configured webhook (generic JSON or Slack).

    Runs after the promotion committed: a failing receiver or a missing block is logged, never raised, so a
    notification can never undo or fail a promotion."""
    logger = get_run_logger()
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
