"""Audit records: what one line of a project's audit log says, and how people read it.

``decision`` says what happened: ``promote``, ``reject``, ``blocked``, ``unchanged`` and ``failed`` for
retrain runs, and ``crashed`` for a run killed before it could write its own line (written for it by the next
run, see :mod:`nluflow.recovery`); ``rollback``, ``activate``, ``forced-promote`` and ``testset-reset`` for
changes a person made with the CLI. So every change of the active model is on the log, with who/why in
``reasons``.

A retrain's promotion is written in two lines, so the pointer never moves without a trace: a
``promote-intent`` line (model, previous model, run) before the active pointer is switched, and the run's
``promote`` line after it, which names its intent by ``intent_seq``. An intent without its completion line
(the run was killed or failed in between) is resolved by :mod:`nluflow.recovery` from the pointer: a
``promote`` line with ``recovered: true``, or ``promotion-abandoned``.

The log itself (the hash chain, its repair and seal, local file or S3 object) is
:mod:`nluflow.store.audit_log`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from nluflow.errors import AuditError
from nluflow.store.audit_log import CHAIN_FIELDS, GENESIS, REPAIRED, SEALED

RUN_DECISIONS = ("promote", "reject", "superseded", "blocked", "unchanged", "failed", "crashed")
POINTER_DECISIONS = ("rollback", "activate", "forced-promote", "testset-reset")
INTENT = "promote-intent"
ABANDONED = "promotion-abandoned"
CRASHED = "crashed"
_MAX_ERROR_CHARS = 300
# Credentials that can hide in an error message: user:password@ in URLs, tokens in query strings and headers.
_SECRET_PATTERNS = (
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1[REDACTED]@"),
    (re.compile(r"(?i)((?:token|api[_-]?key|secret|password|access[_-]?key)=)[^&\s]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [REDACTED]"),
)

__all__ = ["GENESIS", "REPAIRED", "SEALED"]  # re-exported chain constants, for readers of records


# The fields every run line has besides run, project, backend, decision and reasons (``validation_loss``
# may be left out: it is then None).
RUN_LINE_FIELDS = (
    "flow_run_id",
    "dataset_sha256",
    "test_sha256",
    "job_id",
    "model_id",
    "config",
    "duration_seconds",
    "metrics",
    "validation_loss",
    "promoted",
    "previous_model_id",
    "manifest_sha256",
)


def audit_record(
    *, run_id: str, project: str, backend: str, decision: str, reasons: Sequence[str], **fields: Any
) -> dict[str, Any]:
    """One retrain run as an audit record (UTC ``timestamp`` added); pass it to :meth:`AuditLog.append`.

    ``fields`` must give every name of :data:`RUN_LINE_FIELDS` (``validation_loss`` defaults to None) and
    may add others (e.g. ``error`` for a failed run); it cannot set the chain fields or the timestamp.
    :meth:`nluflow.retrain.RunRecord.audit_line` is the one place a retrain builds its line.
    """
    reserved = sorted(set(fields) & {*CHAIN_FIELDS, "timestamp"})
    if reserved:
        raise AuditError(f"audit record: {', '.join(reserved)} cannot be set by the caller")
    missing = [name for name in RUN_LINE_FIELDS if name not in fields and name != "validation_loss"]
    if missing:
        raise AuditError(f"audit record: {', '.join(missing)} missing; expected every run line field")
    record: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "run_id": run_id,
        "project": project,
        "backend": backend,
        "decision": decision,
        "reasons": list(reasons),
        "validation_loss": None,
    }
    record.update(fields)
    return record


def pointer_change_record(
    *,
    project: str,
    decision: str,
    model_id: str,
    previous_model_id: str | None,
    manifest_sha256: str | None,
    reason: str,
    actor: str = "cli",
) -> dict[str, Any]:
    """A change of the active pointer made by a person (rollback, activate, forced promote) as an audit
    record: which model is active now, which one was, and why (``reasons``)."""
    if decision not in POINTER_DECISIONS:
        raise AuditError(f"audit record: {decision!r} is not one of {', '.join(POINTER_DECISIONS)}")
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "run_id": None,
        "flow_run_id": None,
        "project": project,
        "actor": actor,
        "decision": decision,
        "promoted": decision in ("activate", "rollback", "forced-promote"),
        "model_id": model_id,
        "previous_model_id": previous_model_id,
        "manifest_sha256": manifest_sha256,
        "reasons": [reason] if reason else [],
    }


def error_summary(exc: BaseException) -> str:
    """An error as one line for an audit record: its type and the first line of its message, shortened,
    with credentials that may hide in URLs, query strings or headers replaced by ``[REDACTED]``."""
    text = redacted_line(str(exc))
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"


def redacted_line(text: str) -> str:
    """The first non-blank line of ``text``, shortened, with credentials replaced by ``[REDACTED]`` (for
    messages from elsewhere, e.g. a Prefect state message, that go on an audit line)."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    for pattern, replacement in _SECRET_PATTERNS:
        line = pattern.sub(replacement, line)
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"


def history_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a person reads of each line: seq, time, decision, model and the first reason (or the error)."""
    rows: list[dict[str, Any]] = []
    for rec in records:
        note = rec.get("error") or next(iter(rec.get("reasons") or []), "")
        rows.append(
            {
                "seq": rec.get("seq"),
                "time": str(rec.get("timestamp", ""))[:19].replace("T", " "),
                "decision": rec.get("decision", "?"),
                "model": rec.get("model_id"),
                "note": str(note),
            }
        )
    return rows
