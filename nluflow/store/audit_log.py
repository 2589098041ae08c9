"""The audit log: a hash-chained JSONL file, one line per retrain run and per change of the active pointer.

What the lines say is :mod:`nluflow.audit`; this module keeps the chain. :func:`open_audit_log` opens a
project's log (key ``<project>/audit.jsonl`` from :mod:`nluflow.store.layout`) on its store's filesystem:
a local folder gives :class:`AuditLog` (a file under ``flock``); a filesystem with conditional writes (S3)
gives :class:`ObjectAuditLog`, whose append is read → verify → write only if the object is still the version
read (S3 ``If-Match`` on its ETag), retried when another writer got there first.

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
from pathlib import Path
from typing import IO, Any

from nluflow.errors import AuditError, ModelNotFoundError, StoreError
from nluflow.store.audit_chain import (
    CHAIN_FIELDS,
    GENESIS,
    REPAIRED,
    SEALED,
    AuditVerification,
    Line,
    Scan,
    broken_error,
    chained,
    encode_line,
    lost_line_end_only,
    parse_records,
    plain_record,
    repaired_line,
    scan,
    seal_command,
    seal_reason,
    sealed_line,
    split_lines,
    torn_message,
    utc_stamp,
    verification,
)
from nluflow.store.audit_object import ObjectAuditLog
from nluflow.store.fs import ConditionalWrites, FileSystem
from nluflow.store.layout import layout
from nluflow.store.local import LocalFileSystem

logger = logging.getLogger("nluflow.audit")

__all__ = [
    "CHAIN_FIELDS",
    "GENESIS",
    "REPAIRED",
    "SEALED",
    "AuditLog",
    "AuditVerification",
    "ChainLog",
    "open_audit_log",
]


class AuditLog:
    """A hash-chained JSONL audit log at ``path`` (created, with its folder, on the first append)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.repairs: list[str] = []  # what this object repaired (torn tails moved aside), for the CLI

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    @property
    def project(self) -> str:
        """The project the log belongs to: the name of its folder."""
        return self.path.parent.name

    def seal_command(self) -> str:
        return seal_command(self.project)

    def exists(self) -> bool:
        """Whether the log (or something in its place, such as a link) is there."""
        return self.path.exists() or self.path.is_symlink()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain ``record`` onto the log; return the line as written (with ``seq``, ``prev_hash``, ``hash``).

        Values must be JSON-serialisable; other objects (datetimes, paths) are written as ``str(value)``.
        A torn last line is moved aside first (a ``repaired`` line says where); a chain broken anywhere else
        is never extended: AuditError naming the break and the command that seals it.
        """
        plain = plain_record(record, self.path)
        with self._locked() as fh:
            found = self._appendable(fh)
            line = chained(plain, len(found.lines) + 1, found.last_hash)
            self._write_line(fh, line)
            return line

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
        why = seal_reason(reason, self.path)
        with self._locked() as fh:
            found = self._scan(fh)
            if found.torn:
                self._appendable(fh)  # moves the torn line aside and says so in a `repaired` line
                return self._last_line(fh)
            if found.ok:
                raise AuditError(f"{self.path}: the chain is intact; nothing to seal, nothing was changed")
            if not self._read_all(fh).endswith(b"\n"):
                fh.write(b"\n")  # the broken last line stays in the sealed range, on a line of its own
            line = sealed_line(found, self.path.parent.name, actor, why)
            self._write_line(fh, line)
            logger.info(
                "%s: sealed the break at line %d (%s) with line %d",
                self.path,
                line["sealed_from_line"],
                why,
                line["seq"],
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

    def _scan(self, fh: IO[bytes]) -> Scan:
        return scan(self._read_all(fh), self.path)

    def _last_line(self, fh: IO[bytes]) -> dict[str, Any]:
        lines = split_lines(self._read_all(fh))
        value: dict[str, Any] = json.loads(lines[-1].raw.decode("utf-8"))
        return value

    def _appendable(self, fh: IO[bytes]) -> Scan:
        """The scan of a log that can take a new line (under the exclusive lock): a torn last line is moved
        aside first; a broken chain raises AuditError with the command that seals it."""
        found = self._scan(fh)
        if found.ok:
            return found
        bad = found.first_bad
        assert bad is not None
        if found.torn:
            return self._repair_torn(fh, found, bad)
        raise broken_error(found, self.seal_command())

    def _repair_torn(self, fh: IO[bytes], found: Scan, bad: Line) -> Scan:
        torn = self._read_all(fh)[bad.start :]
        if lost_line_end_only(found, bad):
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            return self._scan(fh)
        aside = self.path.with_name(f"{self.path.name}.torn-{utc_stamp()}")
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
        message = torn_message(self.path, bad, len(torn), aside.name)
        self._write_line(fh, repaired_line(found, self.path.parent.name, aside.name, len(torn), message))
        logger.info("%s", message)  # callers say it where people look (run log, CLI)
        self.repairs.append(message)
        return self._scan(fh)

    def _write_line(self, fh: IO[bytes], line: dict[str, Any]) -> None:
        try:
            fh.write(encode_line(line))
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from exc

    def adopt(self, newer: bytes) -> bool:
        """Replace the log with ``newer`` when ``newer`` extends it (the log is a prefix of it), under the
        exclusive lock; True when replaced. AuditError when the two diverged (neither extends the other):
        nothing is changed, so no line of either is lost."""
        with self._locked() as fh:
            mine = self._read_all(fh)
            if mine.startswith(newer):
                return False
            if not newer.startswith(mine):
                raise AuditError(
                    f"{self.path}: this copy of the audit log and the store's log diverged (neither "
                    "extends the other: both got lines the other lacks); nothing was changed. Keep both "
                    "files and compare them with `nluflow audit verify`"
                )
            try:
                fh.write(newer[len(mine) :])
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot update the audit log copy: {exc}") from exc
            return True

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
        return parse_records(self._read_data(), self.path)

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
        return verification(self._read_data(), self.path, self.seal_command())


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


def open_audit_log(fs: FileSystem, project: str) -> AuditLog | ObjectAuditLog:
    """The audit log of ``project`` on a store's filesystem (key ``<project>/audit.jsonl``).

    A local folder gives the file under ``flock`` (:class:`AuditLog`, unchanged behaviour: torn-tail repair,
    seal, the ``.promoting`` lock beside it); a filesystem with conditional writes (S3) gives
    :class:`ObjectAuditLog`. Any other filesystem cannot append safely: StoreError."""
    key = layout(project).audit
    if isinstance(fs, LocalFileSystem):
        # Not local_path(): that resolves links, and the log refuses a link in its place with its own message.
        return AuditLog(fs.root.joinpath(*key.split("/")))
    if isinstance(fs, ConditionalWrites):
        return ObjectAuditLog(fs, project)
    raise StoreError(
        f"the {fs.describe()} cannot write conditionally, so its audit log cannot be appended to safely; "
        "expected a local folder or S3. Nothing was read or written"
    )


def refresh_audit_copy(fs: FileSystem, project: str, copy: Path) -> bool:
    """Bring a local working copy of a remote store's audit log up to date before lines are appended to it
    (the flow keeps one and uploads it after each line): lines another writer (the CLI, through
    :class:`ObjectAuditLog`) added in the store are appended to the copy, so the next upload never drops
    them. True when the copy changed; AuditError when copy and store diverged."""
    try:
        remote = fs.read_bytes(layout(project).audit)
    except ModelNotFoundError:
        return False
    return AuditLog(copy).adopt(remote)


ChainLog = AuditLog | ObjectAuditLog  # what open_audit_log returns; both have the same public methods
