"""What a person does to a store by hand: roll back, activate, force a promotion, reset the test set, find
and check the audit logs. Prefect-free: the CLI (``flows/cli_models.py``, ``flows/cli_audit.py``,
``flows/cli_testset.py``) takes the project's promotion slot, opens the store, and calls these.

Every change of the active pointer is recorded on the project's audit log, and refused before anything
changes when the log could not record it (a broken chain). Before a change, promotions a killed run left
half-way (and runs killed before their own line, when the caller knows them) are closed on the log.

A model trained on a remote platform is made the served one there too: the caller passes ``serve_remote``
(it builds the backend from its block, which is Prefect's business); if the platform refuses, the store's
pointer is put back and the error is raised.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nluflow.audit import audit_record, pointer_change_record
from nluflow.errors import AuditError, ConfigError, StoreError
from nluflow.recovery import EarlierRun, recover_and_describe
from nluflow.store.audit_log import AuditLog, ChainLog, open_audit_log
from nluflow.store.layout import AUDIT_NAME, check_id, layout
from nluflow.store.local import LocalFileSystem
from nluflow.store.manifest import ActivePointer, Manifest
from nluflow.store.models import ModelStore
from nluflow.store.testsets import TestSetRecord, TestSetStore

logger = logging.getLogger(__name__)

ServeRemote = Callable[[Manifest], None]
"""Makes the platform that trained ``manifest``'s model serve it; raises when the platform refuses."""


@dataclass(frozen=True)
class PointerChange:
    """A change of the active pointer made by hand, and its audit line (None when nothing changed)."""

    decision: str
    before: ActivePointer | None
    pointer: ActivePointer
    line: dict[str, Any] | None


def prepare_change(
    store: ModelStore, project: str, earlier_runs: Sequence[EarlierRun] = ()
) -> tuple[ChainLog, list[str]]:
    """The project's audit log, ready to record a change: promotions a killed run left half-way (and the
    ``earlier_runs`` gone without a line) are closed first; a log that cannot record the change (a broken
    chain) refuses it, so the history never misses one. Returns the log and one note per line written."""
    log = open_audit_log(store.fs, check_id(project, "project"))
    notes = recover_and_describe(log, store, project, actor="cli", earlier_runs=earlier_runs)
    result = log.verify()
    if not result.ok:
        raise AuditError(
            f"the audit log is broken ({result.reason}), so this change could not be recorded; nothing was "
            "changed. Restore the log from a backup, then run the command again"
        )
    return log, notes


def refuse_rejected_without_reason(store: ModelStore, project: str, model_id: str, command: str) -> None:
    """A kept rejected candidate goes active only with a reason on the audit log: making it active overrides
    the gates, which is what ``models promote --reason`` is for."""
    if model_id not in {e.model_id for e in store.rejected(project)}:
        return
    raise ConfigError(
        f"{model_id} is a candidate the gates rejected (kept in the store for a forced promotion); making it "
        f"active overrides the gates, so `{command}` refuses it without a reason; nothing was changed. Run "
        f"`nluflow models promote {model_id} --project {project} --reason '<why the gates are wrong here>'`"
    )


def rollback(
    store: ModelStore,
    log: ChainLog,
    project: str,
    to: str | None = None,
    serve_remote: ServeRemote | None = None,
) -> PointerChange:
    """Point the project back at the previous active model (or at ``to``), verified first; audited."""
    if to is not None:
        refuse_rejected_without_reason(store, project, to, "models rollback --to")
    before = store.active(project)
    pointer = store.rollback(project, to=to)
    _serve(store, project, pointer, before, serve_remote)
    return _record(log, "rollback", before, pointer, pointer.reason)


def activate(
    store: ModelStore,
    log: ChainLog,
    project: str,
    model_id: str,
    reason: str = "",
    serve_remote: ServeRemote | None = None,
) -> PointerChange:
    """Make a stored model the active one (verified first); audited. A rejected candidate needs a reason and
    is then a forced promotion."""
    why = " ".join(reason.split())
    if not why:
        refuse_rejected_without_reason(store, project, model_id, "models activate")
    forced = model_id in {e.model_id for e in store.rejected(project)}
    before = store.active(project)
    text = f"forced promote: {why}" if forced else (why or "activated from CLI")
    pointer = store.activate(project, model_id, reason=text)
    _serve(store, project, pointer, before, serve_remote)
    if forced:
        store.forget_rejected(project, model_id)
    return _record(log, "forced-promote" if forced else "activate", before, pointer, why or text)


def force_promote(
    store: ModelStore,
    log: ChainLog,
    project: str,
    model_id: str,
    reason: str,
    serve_remote: ServeRemote | None = None,
) -> PointerChange:
    """Make a stored model (e.g. a rejected candidate) active, overriding the gates; the reason is audited."""
    why = " ".join(reason.split())
    if not why:
        raise ConfigError(
            "--reason is empty; expected a sentence saying why the gates are overridden (it is recorded "
            "in the audit log); nothing was changed"
        )
    before = store.active(project)
    if before is not None and before.model_id == model_id:
        raise ConfigError(f"{model_id} is already the active model of {project}; nothing was changed")
    pointer = store.activate(project, model_id, reason=f"forced promote: {why}")
    _serve(store, project, pointer, before, serve_remote)
    store.forget_rejected(project, model_id)
    return _record(log, "forced-promote", before, pointer, why)


def _serve(
    store: ModelStore,
    project: str,
    pointer: ActivePointer,
    before: ActivePointer | None,
    serve_remote: ServeRemote | None,
) -> None:
    """A remote model is made the served one on its platform; on failure the store's pointer is put back."""
    manifest = store.manifest(project, pointer.model_id)
    if manifest.backend == "local":
        return
    try:
        if serve_remote is None:
            raise ConfigError(
                f"model {manifest.model_id} was trained on the {manifest.backend!r} backend, and nothing "
                "here can make that platform serve it; nothing was changed"
            )
        serve_remote(manifest)
    except Exception:
        if before is not None and before.model_id != pointer.model_id:
            store.activate(project, before.model_id, reason="restored: the platform refused the activation")
        raise


def _record(
    log: ChainLog, decision: str, before: ActivePointer | None, pointer: ActivePointer, reason: str
) -> PointerChange:
    """One audit line for a change of the active pointer (none when nothing changed)."""
    line = None
    if before is None or before.model_id != pointer.model_id:
        line = log.append(
            pointer_change_record(
                project=pointer.project,
                decision=decision,
                model_id=pointer.model_id,
                previous_model_id=before.model_id if before else None,
                manifest_sha256=pointer.manifest_sha256,
                reason=reason,
            )
        )
    return PointerChange(decision=decision, before=before, pointer=pointer, line=line)


def reset_testset(
    store: ModelStore, log: ChainLog, project: str, reason: str
) -> tuple[TestSetRecord, dict[str, Any]] | None:
    """Remove the frozen test set so the next run freezes a new one, and say so on the audit log; None when
    nothing was frozen (nothing changed). Each version's data stays under ``testset/versions/``."""
    pointer = store.active(project)
    removed = TestSetStore(store.fs, project).reset()
    if removed is None:
        return None
    line = log.append(
        audit_record(
            run_id=f"cli-{uuid.uuid4().hex[:12]}",
            flow_run_id=None,
            project=project,
            dataset_sha256=None,
            test_sha256=removed.sha256,
            backend="none",
            job_id=None,
            model_id=pointer.model_id if pointer else None,
            config={},
            duration_seconds=0.0,
            metrics={},
            decision="testset-reset",
            promoted=False,
            reasons=[
                f"{reason}: test set version {removed.version} (sha256 {removed.sha256[:16]}…, "
                f"{removed.n_examples} utterances) removed; the next run without --test freezes a new one"
            ],
            previous_model_id=pointer.model_id if pointer else None,
            manifest_sha256=None,
            test_set_version=removed.version,
            actor="cli",
        )
    )
    return removed, line


def audit_logs(store: ModelStore, project: str | None) -> list[ChainLog]:
    """The audit logs to check: ``project``'s, or every project's in the store (sorted). StoreError when
    there is none. On a local folder a symbolic link in place of a log is listed too: verify refuses it,
    never skips it."""
    if project is not None:
        log = open_audit_log(store.fs, check_id(project, "project"))
        if not log.exists():
            raise StoreError(
                f"no audit log at {log.path}; has project {project!r} run a retrain in this store?"
            )
        return [log]
    fs = store.fs
    if isinstance(fs, LocalFileSystem):
        # Symbolic links too (glob skips dangling ones).
        paths = (d / AUDIT_NAME for d in fs.root.iterdir() if d.is_dir())
        logs: list[ChainLog] = [AuditLog(p) for p in sorted(paths) if p.is_file() or p.is_symlink()]
    else:
        names = [name for name in fs.list_dir("") if _is_id(name)]
        logs = [open_audit_log(fs, name) for name in names if fs.exists(layout(name).audit)]
    if not logs:
        raise StoreError(
            f"no audit logs in the {store.describe()}; no project has run a retrain in this store"
        )
    return logs


def _is_id(name: str) -> bool:
    try:
        check_id(name, "project")
    except StoreError:
        return False
    return True
