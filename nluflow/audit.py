"""The audit log: a hash-chained JSONL file, one line per retrain run and per change of the active pointer.

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

The log repairs and seals itself only in the open: a last line cut off by a full disk or a kill is moved to
``audit.jsonl.torn-<utc>`` and a ``repaired`` line naming that file is appended (the next append does it);
a chain broken anywhere else is never extended: appends are refused until a person runs
``nluflow audit seal``, which appends a ``sealed`` line chained to the last good line that records the break.
``verify`` then reports "sealed at line N" and checks the chain after it.

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
``audit.jsonl`` (to a file outside the store, say) is refused instead of being read or appended to; so is a
log whose project folder is a link that leads out of the folder above it (the store).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from nluflow.errors import AuditError
from nluflow.hashing import canonical_json, sha256_text

GENESIS = "0" * 64
RUN_DECISIONS = ("promote", "reject", "superseded", "blocked", "unchanged", "failed", "crashed")
POINTER_DECISIONS = ("rollback", "activate", "forced-promote", "testset-reset")
INTENT = "promote-intent"
ABANDONED = "promotion-abandoned"
CRASHED = "crashed"
REPAIRED = "repaired"
SEALED = "sealed"
_MAX_ERROR_CHARS = 300
# Credentials that can hide in an error message: user:password@ in URLs, tokens in query strings and headers.
_SECRET_PATTERNS = (
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1[REDACTED]@"),
    (re.compile(r"(?i)((?:token|api[_-]?key|secret|password|access[_-]?key)=)[^&\s]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [REDACTED]"),
)
CHAIN_FIELDS = ("seq", "prev_hash", "hash")

logger = logging.getLogger(__name__)


def _line_hash(line: dict[str, Any]) -> str:
    return sha256_text(canonical_json({k: v for k, v in line.items() if k != "hash"}))


class AuditVerification(BaseModel):
    """The result of :meth:`AuditLog.verify`."""

    ok: bool = Field(description="True when every line is intact and chained to the one before it.")
    lines: int = Field(description="Lines read (including the first bad one).")
    first_bad_line: int | None = Field(default=None, description="1-based line number of the first bad line.")
    reason: str | None = Field(default=None, description="What is wrong with that line, as file:line: ...")
    sealed: list[str] = Field(
        default_factory=list,
        description="Breaks sealed with `nluflow audit seal`, as 'sealed at line N: ...' (the chain is "
        "checked after each seal).",
    )


@dataclass
class _Line:
    number: int
    start: int  # byte offset of the line in the file
    raw: bytes  # without its line end
    complete: bool  # ends with a line end


@dataclass
class _Scan:
    """What one pass over the log found: the chain's end, the first unsealed break, the sealed breaks."""

    lines: list[_Line]
    last_seq: int = 0
    last_hash: str = GENESIS
    first_bad: _Line | None = None
    problem: str | None = None
    sealed: list[str] = field(default_factory=list)
    skipped: set[int] = field(default_factory=set)  # line numbers inside sealed breaks

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    @property
    def torn(self) -> bool:
        """The only problem is a last line that is not a whole JSON line (a write cut off part-way)."""
        bad = self.first_bad
        if bad is None or bad.number != len(self.lines):
            return False
        if not bad.complete:
            return True
        try:
            json.loads(bad.raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return True
        return False


def _split(data: bytes) -> list[_Line]:
    lines: list[_Line] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            lines.append(_Line(len(lines) + 1, pos, data[pos:], complete=False))
            break
        lines.append(_Line(len(lines) + 1, pos, data[pos:end], complete=True))
        pos = end + 1
    return lines


def _check_line(line: _Line, prev_hash: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(parsed line, None)`` when the line is intact and chained to ``prev_hash``, else
    ``(None, problem)``."""
    if not line.complete:
        return None, "the last line has no line end: the write was cut off"
    try:
        parsed = json.loads(line.raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "not valid JSON: the line was edited or cut off"
    if not isinstance(parsed, dict):
        return None, f"expected a JSON object, found {type(parsed).__name__}"
    missing = [name for name in CHAIN_FIELDS if name not in parsed]
    if missing:
        return None, f"missing chain field(s) {', '.join(missing)}"
    if type(parsed["seq"]) is not int or parsed["seq"] != line.number:
        return None, (
            f"seq is {parsed['seq']!r}, expected {line.number}: lines were deleted, inserted or reordered "
            "before this one"
        )
    if parsed["prev_hash"] != prev_hash:
        return None, (
            f"prev_hash {parsed['prev_hash']!r} does not match the previous line's hash {prev_hash!r}: "
            "the previous line was changed or replaced"
        )
    computed = _line_hash(parsed)
    if parsed["hash"] != computed:
        return None, (
            f"hash {parsed['hash']!r} does not match the line's content (sha256 {computed}): the line was "
            "edited after it was written"
        )
    return parsed, None


def _find_seal(lines: list[_Line], bad: _Line, prev_hash: str) -> dict[str, Any] | None:
    """The ``sealed`` line after ``bad`` that seals the break at ``bad`` (chained to ``prev_hash``)."""
    for later in lines[bad.number :]:
        if b'"sealed"' not in later.raw:
            continue
        parsed, problem = _check_line(later, prev_hash)
        if (
            problem is None
            and parsed is not None
            and parsed.get("decision") == SEALED
            and parsed.get("sealed_from_line") == bad.number
        ):
            return parsed
    return None


def _scan(data: bytes, path: Path) -> _Scan:
    lines = _split(data)
    scan = _Scan(lines=lines)
    index = 0
    while index < len(lines):
        line = lines[index]
        parsed, problem = _check_line(line, scan.last_hash)
        if parsed is not None:
            scan.last_seq, scan.last_hash = parsed["seq"], parsed["hash"]
            index += 1
            continue
        seal = _find_seal(lines, line, scan.last_hash)
        if seal is None:
            scan.first_bad, scan.problem = line, f"{path}:{line.number}: {problem}"
            break
        scan.sealed.append(
            f"sealed at line {seal['seq']}: lines {line.number}-{seal['seq'] - 1} were broken ({problem}); "
            f"reason: {seal.get('reasons', [''])[0] if seal.get('reasons') else ''}"
        )
        scan.skipped.update(range(line.number, seal["seq"]))
        scan.last_seq, scan.last_hash = seal["seq"], seal["hash"]
        index = seal["seq"]
    return scan


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


class AuditLog:
    """A hash-chained JSONL audit log at ``path`` (created, with its folder, on the first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.repairs: list[str] = []  # what this object repaired (torn tails moved aside), for the CLI

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def seal_command(self) -> str:
        return f"nluflow audit seal --project {self.path.parent.name} --reason TEXT"

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain ``record`` onto the log; return the line as written (with ``seq``, ``prev_hash``, ``hash``).

        Values must be JSON-serialisable; other objects (datetimes, paths) are written as ``str(value)``.
        A torn last line is moved aside first (a ``repaired`` line says where); a chain broken anywhere else
        is never extended: AuditError naming the break and the command that seals it.
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
        with self._locked() as fh:
            scan = self._appendable(fh)
            return self._write(fh, scan, plain)

    def repair(self) -> list[str]:
        """Make the log appendable if a torn last line is its only problem (moved aside, ``repaired`` line);
        AuditError if the chain is broken elsewhere. Returns what was repaired (empty when nothing was)."""
        before = len(self.repairs)
        if not self.path.exists() and not self.path.is_symlink():
            self._check_folder()
            return []
        with self._locked() as fh:
            self._appendable(fh)
        return self.repairs[before:]

    def seal(self, reason: str, actor: str = "cli") -> dict[str, Any]:
        """Seal a broken chain: append a ``sealed`` line chained to the last good line that records the break
        (its first bad line and why), so the chain continues after it. A torn last line is moved aside
        instead (``repaired``). AuditError when the chain is intact: there is nothing to seal."""
        why = " ".join(reason.split())
        if not why:
            raise AuditError(
                f"{self.path}: a seal needs a reason (who found the break, and why it is sealed)"
            )
        with self._locked() as fh:
            scan = self._scan(fh)
            if scan.torn:
                self._appendable(fh)  # moves the torn line aside and says so in a `repaired` line
                return self._last_line(fh)
            if scan.ok:
                raise AuditError(f"{self.path}: the chain is intact; nothing to seal, nothing was changed")
            assert scan.first_bad is not None
            data = self._read_all(fh)
            if not data.endswith(b"\n"):
                fh.write(b"\n")  # the broken last line stays in the sealed range, on a line of its own
            broken_from = scan.first_bad.number
            record = {
                "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
                "decision": SEALED,
                "run_id": None,
                "flow_run_id": None,
                "actor": actor,
                "project": self.path.parent.name,
                "promoted": False,
                "model_id": None,
                "sealed_from_line": broken_from,
                "broken_lines": len(scan.lines) - broken_from + 1,
                "break": scan.problem,
                "reasons": [why],
            }
            line = {**record, "seq": len(scan.lines) + 1, "prev_hash": scan.last_hash}
            line["hash"] = _line_hash(line)
            self._write_line(fh, line)
            logger.info(
                "%s: sealed the break at line %d (%s) with line %d", self.path, broken_from, why, line["seq"]
            )
            return line

    # -- file access ---------------------------------------------------------------------------------------

    def _check_folder(self) -> None:
        """Refuse a log whose project folder is a link leading out of the folder above it (the store)."""
        folder = self.path.parent
        if folder.is_symlink():
            target = folder.resolve()
            if not target.is_relative_to(folder.parent.resolve()):
                raise AuditError(
                    f"{folder} is a symbolic link to {target}, outside {folder.parent}; the audit log must "
                    "stay in the store, or retrains would write their history somewhere else. Nothing was "
                    "read or written. Replace the link with the folder itself"
                )

    def _locked(self) -> _Locked:
        self._check_folder()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self._open(os.O_RDWR | os.O_CREAT | os.O_APPEND, "a+b")
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from exc
        return _Locked(fh, self.path)

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

    @staticmethod
    def _read_all(fh: IO[bytes]) -> bytes:
        fh.seek(0)
        return fh.read()

    def _scan(self, fh: IO[bytes]) -> _Scan:
        return _scan(self._read_all(fh), self.path)

    def _last_line(self, fh: IO[bytes]) -> dict[str, Any]:
        lines = _split(self._read_all(fh))
        value: dict[str, Any] = json.loads(lines[-1].raw.decode("utf-8"))
        return value

    def _appendable(self, fh: IO[bytes]) -> _Scan:
        """The scan of a log that can take a new line (under the exclusive lock): a torn last line is moved
        aside first; a broken chain raises AuditError with the command that seals it."""
        scan = self._scan(fh)
        if scan.ok:
            return scan
        bad = scan.first_bad
        assert bad is not None
        if scan.torn:
            return self._repair_torn(fh, scan, bad)
        raise AuditError(
            f"the audit log is broken: {scan.problem}. Nothing was appended and nothing was changed, so the "
            "break is not buried under new lines. Keep a copy of the log to investigate, then run "
            f"`{self.seal_command()}` to record the break and continue the chain after it"
        )

    def _repair_torn(self, fh: IO[bytes], scan: _Scan, bad: _Line) -> _Scan:
        data = self._read_all(fh)
        torn = data[bad.start :]
        whole = _check_line(_Line(bad.number, bad.start, bad.raw, True), scan.last_hash)[1] is None
        if not bad.complete and whole:
            # A whole, chained line that only lost its line end: give it back, nothing is lost.
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            return self._scan(fh)
        aside = self.path.with_name(f"{self.path.name}.torn-{_utc_stamp()}")
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(torn)
                out.flush()
                os.fsync(out.fileno())
            fh.truncate(bad.start)
        except OSError as exc:
            raise AuditError(
                f"{self.path}:{bad.number}: the last line was cut off ({len(torn)} bytes) and could not be "
                f"moved aside to {aside.name}: {exc}; nothing was appended. Free space on the disk, then "
                "retry"
            ) from exc
        message = (
            f"{self.path}:{bad.number}: the last line was cut off (a full disk or a killed process): its "
            f"{len(torn)} bytes were moved to {aside.name} and the chain continues from line {bad.number - 1}"
        )
        record = {
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
            "decision": REPAIRED,
            "run_id": None,
            "flow_run_id": None,
            "project": self.path.parent.name,
            "promoted": False,
            "model_id": None,
            "torn_file": aside.name,
            "torn_bytes": len(torn),
            "reasons": [message],
        }
        line = {**record, "seq": scan.last_seq + 1, "prev_hash": scan.last_hash}
        line["hash"] = _line_hash(line)
        self._write_line(fh, line)
        logger.info("%s", message)  # callers say it where people look (run log, CLI)
        self.repairs.append(message)
        return self._scan(fh)

    def _write(self, fh: IO[bytes], scan: _Scan, plain: dict[str, Any]) -> dict[str, Any]:
        line = {**plain, "seq": len(scan.lines) + 1, "prev_hash": scan.last_hash}
        line["hash"] = _line_hash(line)
        self._write_line(fh, line)
        return line

    def _write_line(self, fh: IO[bytes], line: dict[str, Any]) -> None:
        try:
            fh.write((canonical_json(line) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from exc

    def _read_data(self) -> bytes:
        """The file's bytes, read under a shared lock so a concurrent append is never seen half-written."""
        self._check_folder()
        try:
            with self._open(os.O_RDONLY, "rb") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
                try:
                    return fh.read()
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read the audit log: {exc}") from exc

    def records(self) -> list[dict[str, Any]]:
        """Every line as a dict, in file order, without the lines of a sealed break; AuditError naming
        file:line at the first unreadable line."""
        data = self._read_data()
        scan = _scan(data, self.path)
        out: list[dict[str, Any]] = []
        for line in scan.lines:
            if line.number in scan.skipped:
                continue
            try:
                if not line.complete:
                    raise ValueError("no line end")
                value = json.loads(line.raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AuditError(
                    f"{self.path}:{line.number}: not a JSON line (edited or cut off); run `verify` for the "
                    "chain"
                ) from None
            if not isinstance(value, dict):
                raise AuditError(
                    f"{self.path}:{line.number}: expected a JSON object, found {type(value).__name__}"
                )
            out.append(value)
        return out

    def verify(self) -> AuditVerification:
        """Check every line and the chain; the result names the first bad line (and any sealed breaks).
        A missing log is empty, ok; a symbolic link in place of the log is not ok (nothing behind it is
        read)."""
        if self.path.is_symlink():
            return AuditVerification(ok=False, lines=0, reason=self._link_message())
        try:
            self._check_folder()
        except AuditError as exc:
            return AuditVerification(ok=False, lines=0, reason=str(exc))
        scan = _scan(self._read_data(), self.path)
        if scan.first_bad is not None:
            hint = (
                " (the next append moves it aside and records a `repaired` line)"
                if scan.torn
                else f"; run `{self.seal_command()}` to seal it"
            )
            return AuditVerification(
                ok=False,
                lines=scan.first_bad.number,
                first_bad_line=scan.first_bad.number,
                reason=f"{scan.problem}{hint}",
                sealed=scan.sealed,
            )
        return AuditVerification(ok=True, lines=len(scan.lines), sealed=scan.sealed)


class _Locked:
    """The open log under an exclusive ``flock`` for the span of a ``with`` block."""

    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self.fh, self.path = fh, path

    def __enter__(self) -> IO[bytes]:
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            self.fh.close()
            raise AuditError(f"{self.path}: cannot lock the audit log: {exc}") from exc
        return self.fh

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        finally:
            self.fh.close()


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
