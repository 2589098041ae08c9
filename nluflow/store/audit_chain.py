"""The audit log's hash chain on bytes: split, check, find sealed breaks, and build the log's own lines.

Shared by the local :class:`~nluflow.store.audit_log.AuditLog` and the
:class:`~nluflow.store.audit_object.ObjectAuditLog`; nothing here touches storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from nluflow.errors import AuditError
from nluflow.hashing import canonical_json, sha256_text

GENESIS = "0" * 64
REPAIRED = "repaired"
SEALED = "sealed"
CHAIN_FIELDS = ("seq", "prev_hash", "hash")


def line_hash(line: dict[str, Any]) -> str:
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
class Line:
    number: int
    start: int  # byte offset of the line in the file
    raw: bytes  # without its line end
    complete: bool  # ends with a line end


@dataclass
class Scan:
    """What one pass over the log found: the chain's end, the first unsealed break, the sealed breaks."""

    lines: list[Line]
    last_seq: int = 0
    last_hash: str = GENESIS
    first_bad: Line | None = None
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


def split_lines(data: bytes) -> list[Line]:
    lines: list[Line] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            lines.append(Line(len(lines) + 1, pos, data[pos:], complete=False))
            break
        lines.append(Line(len(lines) + 1, pos, data[pos:end], complete=True))
        pos = end + 1
    return lines


def check_line(line: Line, prev_hash: str) -> tuple[dict[str, Any] | None, str | None]:
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
    computed = line_hash(parsed)
    if parsed["hash"] != computed:
        return None, (
            f"hash {parsed['hash']!r} does not match the line's content (sha256 {computed}): the line was "
            "edited after it was written"
        )
    return parsed, None


def _find_seal(lines: list[Line], bad: Line, prev_hash: str) -> dict[str, Any] | None:
    """The ``sealed`` line after ``bad`` that seals the break at ``bad`` (chained to ``prev_hash``)."""
    for later in lines[bad.number :]:
        if b'"sealed"' not in later.raw:
            continue
        parsed, problem = check_line(later, prev_hash)
        if (
            problem is None
            and parsed is not None
            and parsed.get("decision") == SEALED
            and parsed.get("sealed_from_line") == bad.number
        ):
            return parsed
    return None


def scan(data: bytes, path: str | Path) -> Scan:
    lines = split_lines(data)
    scan = Scan(lines=lines)
    index = 0
    while index < len(lines):
        line = lines[index]
        parsed, problem = check_line(line, scan.last_hash)
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


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def plain_record(record: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``record`` as a reader will parse it back (one JSON round trip, so the hash covers exactly that);
    AuditError when it is not a dict, sets a chain field, or is not JSON."""
    if not isinstance(record, dict):
        raise AuditError(f"{where}: an audit record must be a dict, got {type(record).__name__}")
    clash = sorted(set(record) & set(CHAIN_FIELDS))
    if clash:
        raise AuditError(
            f"{where}: the record already has {', '.join(clash)}, fields the log sets itself; "
            "nothing was appended"
        )
    try:
        plain: dict[str, Any] = json.loads(canonical_json(record))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"{where}: the record cannot be written as JSON ({exc}); nothing appended") from exc
    return plain


def chained(record: dict[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """The line that chains ``record`` at ``seq`` after a line whose hash is ``prev_hash``."""
    line = {**record, "seq": seq, "prev_hash": prev_hash}
    line["hash"] = line_hash(line)
    return line


def encode_line(line: dict[str, Any]) -> bytes:
    return (canonical_json(line) + "\n").encode("utf-8")


def seal_reason(reason: str, where: str | Path) -> str:
    why = " ".join(reason.split())
    if not why:
        raise AuditError(f"{where}: a seal needs a reason (who found the break, and why it is sealed)")
    return why


def sealed_line(found: Scan, project: str, actor: str, why: str) -> dict[str, Any]:
    """The ``sealed`` line that records the break ``found`` names and continues the chain after it."""
    assert found.first_bad is not None
    broken_from = found.first_bad.number
    record = {
        "timestamp": now_iso(),
        "decision": SEALED,
        "run_id": None,
        "flow_run_id": None,
        "actor": actor,
        "project": project,
        "promoted": False,
        "model_id": None,
        "sealed_from_line": broken_from,
        "broken_lines": len(found.lines) - broken_from + 1,
        "break": found.problem,
        "reasons": [why],
    }
    return chained(record, len(found.lines) + 1, found.last_hash)


def torn_message(where: str | Path, bad: Line, torn: int, aside: str) -> str:
    return (
        f"{where}:{bad.number}: the last line was cut off (a full disk or a killed process): its "
        f"{torn} bytes were moved to {aside} and the chain continues from line {bad.number - 1}"
    )


def repaired_line(found: Scan, project: str, aside: str, torn: int, message: str) -> dict[str, Any]:
    """The ``repaired`` line that says where a torn last line was moved."""
    record = {
        "timestamp": now_iso(),
        "decision": REPAIRED,
        "run_id": None,
        "flow_run_id": None,
        "project": project,
        "promoted": False,
        "model_id": None,
        "torn_file": aside,
        "torn_bytes": torn,
        "reasons": [message],
    }
    return chained(record, found.last_seq + 1, found.last_hash)


def lost_line_end_only(found: Scan, bad: Line) -> bool:
    """The torn last line is whole and chained and only lost its line end (give it back, nothing lost)."""
    whole = Line(bad.number, bad.start, bad.raw, complete=True)
    return not bad.complete and check_line(whole, found.last_hash)[1] is None


def broken_error(found: Scan, seal_command: str) -> AuditError:
    return AuditError(
        f"the audit log is broken: {found.problem}. Nothing was appended and nothing was changed, so the "
        "break is not buried under new lines. Keep a copy of the log to investigate, then run "
        f"`{seal_command}` to record the break and continue the chain after it"
    )


def parse_records(data: bytes, where: str | Path) -> list[dict[str, Any]]:
    """Every line as a dict, in order, without the lines of a sealed break; AuditError naming where:line at
    the first unreadable line."""
    found = scan(data, where)
    out: list[dict[str, Any]] = []
    for line in found.lines:
        if line.number in found.skipped:
            continue
        try:
            if not line.complete:
                raise ValueError("no line end")
            value = json.loads(line.raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise AuditError(
                f"{where}:{line.number}: not a JSON line (edited or cut off); run `verify` for the chain"
            ) from None
        if not isinstance(value, dict):
            raise AuditError(f"{where}:{line.number}: expected a JSON object, found {type(value).__name__}")
        out.append(value)
    return out


def verification(data: bytes, where: str | Path, seal_command: str) -> AuditVerification:
    """The chain check of a log's bytes: the first bad line (and any sealed breaks)."""
    found = scan(data, where)
    if found.first_bad is not None:
        hint = (
            " (the next append moves it aside and records a `repaired` line)"
            if found.torn
            else f"; run `{seal_command}` to seal it"
        )
        return AuditVerification(
            ok=False,
            lines=found.first_bad.number,
            first_bad_line=found.first_bad.number,
            reason=f"{found.problem}{hint}",
            sealed=found.sealed,
        )
    return AuditVerification(ok=True, lines=len(found.lines), sealed=found.sealed)


def seal_command(project: str) -> str:
    return f"nluflow audit seal --project {project} --reason TEXT"
