"""The audit log: a hash-chained JSONL file, one line per retrain run and per change of the active pointer.

``decision`` says what happened: ``promote``, ``reject``, ``blocked``, ``unchanged`` and ``failed`` for
retrain runs; ``rollback``, ``activate``, ``forced-promote`` and ``testset-reset`` for changes a person made
with the CLI. So every change of the active model is on the log, with who/why in ``reasons``.

Each line is one JSON object with the run's record plus three chain fields::

    seq        1, 2, 3, ... (the line's position in the chain)
    prev_hash  the previous line's ``hash`` (``GENESIS``, 64 zeros, for the first line)
    hash       sha256 of the canonical JSON of the line without ``hash``

Editing a line breaks its ``hash``; deleting or reordering lines breaks ``seq`` and ``prev_hash``; a write cut
off part-way leaves a line that is not JSON. :meth:`AuditLog.verify` names the first line where any of that
happened. What a chain cannot show on its own is that whole lines were cut off the *end* of the file (or the
file replaced wholesale): compare the last ``hash`` with a copy kept elsewhere if that matters.

Appends from several processes are safe: ``append`` holds an exclusive ``fcntl.flock`` on the file while
it reads the last line and appends the new one, then flushes and fsyncs. Readers take a shared lock, so they
never see half a line. ``flock`` is advisory and POSIX-only, and it does not work reliably on some network
filesystems (older NFS); keep the log on a local disk.

The log file itself is never a symbolic link: it is opened with ``O_NOFOLLOW``, so a link planted in place of
``audit.jsonl`` (to a file outside the store, say) is refused instead of being read or appended to.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from nluflow.errors import AuditError
from nluflow.hashing import canonical_json, sha256_text

GENESIS = "0" * 64
RUN_DECISIONS = ("promote", "reject", "blocked", "unchanged", "failed")
POINTER_DECISIONS = ("rollback", "activate", "forced-promote", "testset-reset")
_MAX_ERROR_CHARS = 300
# Credentials that can hide in an error message: user:password@ in URLs, tokens in query strings and headers.
_SECRET_PATTERNS = (
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1[REDACTED]@"),
    (re.compile(r"(?i)((?:token|api[_-]?key|secret|password|access[_-]?key)=)[^&\s]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [REDACTED]"),
)
CHAIN_FIELDS = ("seq", "prev_hash", "hash")
_TAIL_BLOCK = 1 << 16


def _line_hash(line: dict[str, Any]) -> str:
    return sha256_text(canonical_json({k: v for k, v in line.items() if k != "hash"}))


class AuditVerification(BaseModel):
    """The result of :meth:`AuditLog.verify`."""

    ok: bool = Field(description="True when every line is intact and chained to the one before it.")
    lines: int = Field(description="Lines read (including the first bad one).")
    first_bad_line: int | None = Field(default=None, description="1-based line number of the first bad line.")
    reason: str | None = Field(default=None, description="What is wrong with that line, as file:line: ...")


class AuditLog:
    """A hash-chained JSONL audit log at ``path`` (created, with its folder, on the first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain ``record`` onto the log; return the line as written (with ``seq``, ``prev_hash``, ``hash``).

        Values must be JSON-serialisable; other objects (datetimes, paths) are written as ``str(value)``.
        Refuses to append to a log whose last line is broken, so a damaged chain is never extended.
        """
        if not isinstance(record, dict):
            raise AuditError(f"{self.path}: an audit record must be a dict, got {type(record).__name__}")
        clash = sorted(set(record) & set(CHAIN_FIELDS))
        if clash:
            raise AuditError(
                f"{self.path}: the record already has {', '.join(clash)}, fields the log sets itself; "
                "nothing was appended"
            )
        # One JSON round trip first, so the hash covers exactly what a reader will parse back.
        try:
            plain: dict[str, Any] = json.loads(canonical_json(record))
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"{self.path}: the record cannot be written as JSON ({exc}); nothing appended"
            ) from exc
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._open(os.O_RDWR | os.O_CREAT | os.O_APPEND, "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    seq, prev_hash = self._tail(fh)
                    line = {**plain, "seq": seq + 1, "prev_hash": prev_hash}
                    line["hash"] = _line_hash(line)
                    fh.write((canonical_json(line) + "\n").encode("utf-8"))
                    fh.flush()
                    os.fsync(fh.fileno())
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from exc
        return line

    def _open(self, flags: int, mode: str) -> IO[bytes]:
        """Open the log without following a symbolic link in its place (AuditError naming the link)."""
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP or self.path.is_symlink():
                raise AuditError(self._link_message()) from None
            raise
        return os.fdopen(fd, mode)

    def _link_message(self) -> str:
        try:
            target = os.readlink(self.path)
        except OSError:
            target = "?"
        return (
            f"{self.path} is a symbolic link (to {target}), not a file; the audit log must be a regular file "
            "in the store, or retrains would write their history somewhere else. Nothing was read or "
            "written. Replace the link with a copy of the log (check it with `nluflow audit verify`), or "
            "remove it to start a new log"
        )

    def _tail(self, fh: IO[bytes]) -> tuple[int, str]:
        """``(seq, hash)`` of the last line, ``(0, GENESIS)`` for an empty log; AuditError if it is broken."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0, GENESIS
        # Read backwards until the block holds the whole last line (its start, or the file's start).
        block = b""
        pos = size
        while True:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step) + block
            body = block[:-1] if block.endswith(b"\n") else block
            if b"\n" in body or pos == 0:
                break
        if not block.endswith(b"\n"):
            raise AuditError(
                f"{self.path}: the last line has no line end (a write was cut off); the chain is broken, so "
                "nothing was appended. Run `verify` and restore the log from a backup"
            )
        last = block[:-1].rsplit(b"\n", 1)[-1]
        try:
            parsed = json.loads(last.decode("utf-8"))
            seq, digest = parsed["seq"], parsed["hash"]
        except (UnicodeDecodeError, ValueError, TypeError, KeyError):
            raise AuditError(
                f"{self.path}: the last line is not a valid audit line; the chain is broken, so nothing was "
                "appended. Run `verify` and restore the log from a backup"
            ) from None
        if type(seq) is not int or not isinstance(digest, str):
            raise AuditError(f"{self.path}: the last line has no valid seq/hash; nothing was appended")
        return seq, digest

    def _read_lines(self) -> list[bytes]:
        """The raw lines, read under a shared lock so a concurrent append is never seen half-written."""
        try:
            with self._open(os.O_RDONLY, "rb") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
                try:
                    data = fh.read()
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read the audit log: {exc}") from exc
        if not data:
            return []
        lines = data.split(b"\n")
        # A complete file ends with "\n", which leaves one empty piece; otherwise the last line was cut off.
        if lines[-1] == b"":
            lines.pop()
        else:
            lines[-1] += b"\x00"  # marks a line without its line end for ``verify``
        return lines

    def records(self) -> list[dict[str, Any]]:
        """Every line as a dict, in file order; AuditError naming file:line at the first unreadable line."""
        out: list[dict[str, Any]] = []
        for number, raw in enumerate(self._read_lines(), start=1):
            try:
                value = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AuditError(
                    f"{self.path}:{number}: not a JSON line (edited or cut off); run `verify` for the chain"
                ) from None
            if not isinstance(value, dict):
                raise AuditError(
                    f"{self.path}:{number}: expected a JSON object, found {type(value).__name__}"
                )
            out.append(value)
        return out

    def verify(self) -> AuditVerification:
        """Check every line and the chain; the result names the first bad line. A missing log is empty, ok;
        a symbolic link in place of the log is not ok (nothing behind it is read)."""
        if self.path.is_symlink():
            return AuditVerification(ok=False, lines=0, reason=self._link_message())
        lines = self._read_lines()
        prev_hash = GENESIS
        for number, raw in enumerate(lines, start=1):
            digest, problem = self._check_line(raw, number, prev_hash)
            if problem is not None:
                return AuditVerification(
                    ok=False, lines=number, first_bad_line=number, reason=f"{self.path}:{number}: {problem}"
                )
            prev_hash = digest
        return AuditVerification(ok=True, lines=len(lines))

    @staticmethod
    def _check_line(raw: bytes, number: int, prev_hash: str) -> tuple[str, str | None]:
        """``(hash, None)`` when the line is intact and chained to ``prev_hash``, else ``("", problem)``."""
        if raw.endswith(b"\x00"):
            return "", "the last line has no line end: the write was cut off"
        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "", "not valid JSON: the line was edited or cut off"
        if not isinstance(line, dict):
            return "", f"expected a JSON object, found {type(line).__name__}"
        missing = [name for name in CHAIN_FIELDS if name not in line]
        if missing:
            return "", f"missing chain field(s) {', '.join(missing)}"
        if type(line["seq"]) is not int or line["seq"] != number:
            return "", (
                f"seq is {line['seq']!r}, expected {number}: lines were deleted, inserted or reordered "
                "before this one"
            )
        if line["prev_hash"] != prev_hash:
            return "", (
                f"prev_hash {line['prev_hash']!r} does not match the previous line's hash {prev_hash!r}: "
                "the previous line was changed or replaced"
            )
        computed = _line_hash(line)
        if line["hash"] != computed:
            return "", (
                f"hash {line['hash']!r} does not match the line's content (sha256 {computed}): the line was "
                "edited after it was written"
            )
        return computed, None


def audit_record(
    *,
    run_id: str,
    flow_run_id: str | None,
    project: str,
    dataset_sha256: str | None,
    test_sha256: str | None,
    backend: str,
    job_id: str | None,
    model_id: str | None,
    config: dict[str, Any],
    duration_seconds: float,
    metrics: dict[str, Any],
    decision: str,
    promoted: bool,
    reasons: Sequence[str],
    previous_model_id: str | None,
    manifest_sha256: str | None,
    validation_loss: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One retrain run as an audit record (UTC ``timestamp`` added); pass it to :meth:`AuditLog.append`.

    ``extra`` adds fields (e.g. ``error`` for a failed run); it cannot override the named fields or the chain
    fields.
    """
    reserved = sorted(set(extra) & {*CHAIN_FIELDS, "timestamp"})
    if reserved:
        raise AuditError(f"audit record: {', '.join(reserved)} cannot be set by the caller")
    record: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "project": project,
        "dataset_sha256": dataset_sha256,
        "test_sha256": test_sha256,
        "backend": backend,
        "job_id": job_id,
        "model_id": model_id,
        "config": config,
        "duration_seconds": duration_seconds,
        "metrics": metrics,
        "validation_loss": validation_loss,
        "decision": decision,
        "promoted": promoted,
        "reasons": list(reasons),
        "previous_model_id": previous_model_id,
        "manifest_sha256": manifest_sha256,
    }
    record.update(extra)
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
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
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
