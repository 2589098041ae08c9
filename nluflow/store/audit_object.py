"""The audit log as one object on a store without locks (S3): append is read → verify → conditional write.

S3 has no ``flock`` and no append. :class:`ObjectAuditLog` reads the whole log with a version tag (the
object's ETag), checks the chain, and writes the log with the new line back only if the object is still
that version (``PutObject`` with ``If-Match``; ``If-None-Match: *`` for the first line). Another writer that
got there first makes the write fail with 412: the append starts again from a fresh read, up to
:data:`CONFLICT_ATTEMPTS` times. So two appends never lose a line, and a reader always sees a whole log (a
PutObject is atomic). Each append rewrites the object: fine for a log of runs, one line per retrain.

Torn tails and seals behave as on a local log: a last line that is not whole JSON is moved to
``audit.jsonl.torn-<utc>`` beside the log and a ``repaired`` line is appended in the same conditional
write; a break elsewhere refuses appends until ``nluflow audit seal``. There is no ``.promoting`` lock file
on S3: promotions and pointer changes are serialised by the project's Prefect promotion slot.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from nluflow.errors import AuditError, StoreError
from nluflow.store import audit_chain as chain
from nluflow.store.audit_chain import AuditVerification, Line, Scan
from nluflow.store.fs import ConditionalWrites
from nluflow.store.layout import check_id, layout

logger = logging.getLogger("nluflow.audit")

CONFLICT_ATTEMPTS = 8
_CONFLICT_DELAY_SECONDS = 0.05


class _TaggedStore(ConditionalWrites, Protocol):
    """What the log needs: conditional writes, plain writes (the torn tail's copy) and a description."""

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def describe(self) -> str: ...


class ObjectAuditLog:
    """A project's hash-chained audit log as one object of a filesystem with conditional writes."""

    def __init__(self, fs: _TaggedStore, project: str) -> None:
        self.fs = fs
        self.project = check_id(project, "project")
        self.key = layout(project).audit
        self.path = f"{fs.describe()}: {self.key}"  # where, for messages (a local log's is its path)
        self.repairs: list[str] = []

    def __repr__(self) -> str:
        return f"ObjectAuditLog({self.path!r})"

    def seal_command(self) -> str:
        return chain.seal_command(self.project)

    def exists(self) -> bool:
        return self.fs.read_tagged(self.key)[1] is not None

    # -- reads -----------------------------------------------------------------------------------------

    def _read(self) -> tuple[bytes, str | None]:
        try:
            return self.fs.read_tagged(self.key)
        except StoreError as exc:
            raise AuditError(f"{self.path}: cannot read the audit log: {exc}") from exc

    def records(self) -> list[dict[str, Any]]:
        """Every line as a dict, in order, without the lines of a sealed break."""
        return chain.parse_records(self._read()[0], self.path)

    def verify(self) -> AuditVerification:
        """Check every line and the chain; a missing log is empty, ok."""
        return chain.verification(self._read()[0], self.path, self.seal_command())

    # -- writes ----------------------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain ``record`` onto the log (a torn tail is moved aside first); return the line as written."""
        plain = chain.plain_record(record, self.path)

        def add(data: bytes, found: Scan) -> tuple[bytes, dict[str, Any]]:
            line = chain.chained(plain, len(found.lines) + 1, found.last_hash)
            return data + chain.encode_line(line), line

        return self._update(add)

    def repair(self) -> list[str]:
        """Move a torn last line aside (``repaired`` line); AuditError if the chain is broken elsewhere."""
        before = len(self.repairs)
        data, tag = self._read()
        if tag is None:
            return []
        found = chain.scan(data, self.path)
        if not found.ok:
            self._update(lambda data, found: (data, {}))
        return self.repairs[before:]

    def seal(self, reason: str, actor: str = "cli") -> dict[str, Any]:
        """Seal a broken chain with a ``sealed`` line (a torn last line is moved aside instead)."""
        why = chain.seal_reason(reason, self.path)
        for _ in range(CONFLICT_ATTEMPTS):
            data, tag = self._read()
            found = chain.scan(data, self.path)
            if found.torn:
                self.repair()
                return chain.parse_records(self._read()[0], self.path)[-1]
            if found.ok:
                raise AuditError(f"{self.path}: the chain is intact; nothing to seal, nothing was changed")
            body = data if data.endswith(b"\n") else data + b"\n"
            line = chain.sealed_line(found, self.project, actor, why)
            if self._write(body + chain.encode_line(line), tag):
                logger.info("%s: sealed the break at line %d (%s)", self.path, line["sealed_from_line"], why)
                return line
        raise self._busy()

    # -- the compare-and-swap loop ---------------------------------------------------------------------

    def _update(self, change: Any) -> dict[str, Any]:
        """Read, make appendable (torn tail aside), apply ``change(data, scan) -> (data, line)``, write if
        unchanged since the read; start again when another writer got there first."""
        for attempt in range(CONFLICT_ATTEMPTS):
            original, tag = self._read()
            data, found, repaired = self._appendable(original)
            new, line = change(data, found)
            if new == original:
                return dict(line)
            if self._write(new, tag):
                self.repairs.extend(repaired)
                for message in repaired:
                    logger.info("%s", message)
                return dict(line)
            time.sleep(_CONFLICT_DELAY_SECONDS * (attempt + 1))
        raise self._busy()

    def _appendable(self, data: bytes) -> tuple[bytes, Scan, list[str]]:
        """``data`` ready for a new line: a torn last line moved aside (its ``repaired`` line added)."""
        found = chain.scan(data, self.path)
        if found.ok:
            return data, found, []
        bad = found.first_bad
        assert bad is not None
        if not found.torn:
            raise chain.broken_error(found, self.seal_command())
        if chain.lost_line_end_only(found, bad):
            fixed = data + b"\n"
            return fixed, chain.scan(fixed, self.path), []
        return self._move_torn(data, found, bad)

    def _move_torn(self, data: bytes, found: Scan, bad: Line) -> tuple[bytes, Scan, list[str]]:
        torn = data[bad.start :]
        aside = f"{self.key}.torn-{chain.utc_stamp()}"
        try:
            self.fs.write_bytes(aside, torn)
        except StoreError as exc:
            raise AuditError(
                f"{self.path}:{bad.number}: the last line was cut off ({len(torn)} bytes) and could not be "
                f"moved aside to {aside}: {exc}; nothing was appended"
            ) from exc
        name = aside.rsplit("/", 1)[-1]
        message = chain.torn_message(self.path, bad, len(torn), name)
        fixed = data[: bad.start] + chain.encode_line(
            chain.repaired_line(found, self.project, name, len(torn), message)
        )
        return fixed, chain.scan(fixed, self.path), [message]

    def _write(self, data: bytes, tag: str | None) -> bool:
        try:
            return self.fs.replace_if(self.key, data, tag)
        except StoreError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from exc

    def _busy(self) -> AuditError:
        return AuditError(
            f"{self.path}: other writers changed the audit log {CONFLICT_ATTEMPTS} times while this line was "
            "being written; nothing was appended. Retry"
        )
