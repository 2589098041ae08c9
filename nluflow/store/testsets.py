"""A project's frozen test set and the training data of its stored models, kept in a store.

Keys come from :mod:`nluflow.store.layout` (``<project>/testset/...``, ``<project>/datasets/...``); the test
set's rules (routing, deltas, measurability) are in :mod:`nluflow.testset`. Everything here goes through the
store's :class:`~nluflow.store.fs.FileSystem`, so it works on a local folder and on S3 alike.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from nluflow.data.schema import Dataset, Example
from nluflow.errors import DataError, IntegrityError, ModelNotFoundError
from nluflow.store.fs import FileSystem
from nluflow.store.layout import check_id, layout


class TestSetVersion(BaseModel):
    """One version of a project's frozen test set."""

    version: int = Field(ge=1)
    sha256: str
    created_at: str
    n_examples: int
    added: int = Field(default=0, description="Examples routed in from new annotations by this version.")
    reason: str = Field(default="", description="Why this version was made.")


class TestSetRecord(BaseModel):
    """``testset.json``: the current version of a project's frozen test set and its history (oldest first).

    The first four fields are what nluflow wrote before test sets had versions; such a record reads as
    version 1 without history."""

    __test__ = False  # not a pytest test class

    sha256: str
    created_at: str
    source: str
    n_examples: int
    version: int = 1
    intent_counts: dict[str, int] = Field(default_factory=dict)
    history: list[TestSetVersion] = Field(default_factory=list)

    def versions(self) -> list[TestSetVersion]:
        """Every version, oldest first (a record from before versions had none: version 1 only)."""
        if self.history:
            return list(self.history)
        return [
            TestSetVersion(
                version=self.version,
                sha256=self.sha256,
                created_at=self.created_at,
                n_examples=self.n_examples,
                reason="frozen",
            )
        ]


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def parse_jsonl_bytes(raw: bytes, source: str) -> Dataset:
    """Examples from a JSONL file nluflow wrote (the shared format); DataError naming ``source`` otherwise."""
    examples = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(Example.model_validate(json.loads(line)))
        except ValueError as exc:
            raise DataError(f"not an example of the shared JSONL format: {exc}", source, number) from None
    return Dataset(examples=tuple(examples), source=source)


class TestSetStore:
    """A project's frozen test set in a model store's filesystem (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, fs: FileSystem, project: str, *, clock: Any = _utc_now) -> None:
        self.fs = fs
        self.project = check_id(project, "project")
        self.keys = layout(project)
        self._clock = clock

    def where(self) -> str:
        return f"{self.fs.describe()}, {self.keys.testset}/"

    def record(self) -> TestSetRecord | None:
        """The pointer, or None when nothing is frozen. A test.jsonl without pointer (frozen by hand, or a
        first freeze cut off before its pointer) is adopted as version 1."""
        try:
            raw = self.fs.read_bytes(self.keys.testset_meta)
        except ModelNotFoundError:
            if not self.fs.exists(self.keys.testset_data):
                return None
            data = self._read(self.keys.testset_data)
            return TestSetRecord(
                sha256=data.sha256(),
                created_at="unknown",
                source=self.keys.testset_data,
                n_examples=len(data),
                intent_counts=dict(sorted(data.intent_counts().items())),
            )
        try:
            return TestSetRecord.model_validate_json(raw)
        except ValueError as exc:
            raise IntegrityError(
                f"{self.fs.describe()}: {self.keys.testset_meta} is not a test set record ({exc}); nothing "
                "was changed. Restore it, or start a new test set with `nluflow testset reset`"
            ) from None

    def _read(self, key: str) -> Dataset:
        return parse_jsonl_bytes(self.fs.read_bytes(key), key)

    def current(self) -> tuple[TestSetRecord, Dataset] | None:
        """The current version and its examples (sha256 checked), or None when nothing is frozen."""
        record = self.record()
        if record is None:
            return None
        key = self.keys.testset_version(record.sha256)
        if not self.fs.exists(key):
            key = self.keys.testset_data  # stored before versions were kept
        try:
            data = self._read(key)
        except ModelNotFoundError:
            raise IntegrityError(
                f"{self.fs.describe()}: the frozen test set of {self.project!r} (version {record.version}, "
                f"sha256 {record.sha256[:16]}…) has lost its data; nothing was changed. Restore "
                f"{self.keys.testset}/ or start a new test set with `nluflow testset reset`"
            ) from None
        if data.sha256() != record.sha256:
            raise IntegrityError(
                f"{self.fs.describe()}: {key} has sha256 {data.sha256()[:16]}…, but version {record.version} "
                f"of the frozen test set is {record.sha256[:16]}…: it was changed after it was frozen; "
                "nothing was scored. Restore it, or start a new test set with `nluflow testset reset`"
            )
        return record, Dataset(examples=data.examples, source=f"frozen test set v{record.version}")

    def version(self, sha256: str) -> Dataset | None:
        """The data of the version with this sha256, if the store keeps it (None otherwise)."""
        key = self.keys.testset_version(sha256)
        try:
            data = self._read(key)
        except ModelNotFoundError:
            return None
        return data if data.sha256() == sha256 else None

    def _write_version(
        self, data: Dataset, source: str, added: int, reason: str, before: TestSetRecord | None
    ) -> TestSetRecord:
        sha = data.sha256()
        now = self._clock()
        version = (before.version + 1) if before else 1
        history = before.versions() if before else []
        record = TestSetRecord(
            sha256=sha,
            created_at=now,
            source=source,
            n_examples=len(data),
            version=version,
            intent_counts=dict(sorted(data.intent_counts().items())),
            history=[
                *history,
                TestSetVersion(
                    version=version,
                    sha256=sha,
                    created_at=now,
                    n_examples=len(data),
                    added=added,
                    reason=reason,
                ),
            ],
        )
        body = data.to_jsonl().encode("utf-8")
        version_key = self.keys.testset_version(sha)
        if not self.fs.exists(version_key):
            self.fs.write_bytes(version_key, body)
        self.fs.write_bytes(self.keys.testset_data, body)
        self.fs.write_bytes(self.keys.testset_meta, record.model_dump_json(indent=2).encode("utf-8"))
        return record

    def freeze_first(self, data: Dataset, source: str, reason: str) -> TestSetRecord | None:
        """Freeze ``data`` as version 1 unless a test set is frozen already; None when another writer froze
        one first (then use :meth:`current`). The pointer is created with the filesystem's
        ``create_exclusive`` (compare-and-swap on absence), so of two runs freezing at the same moment exactly
        one wins and both use its set. The version's data is written first (content-addressed, so a loser's
        leftover is harmless), ``test.jsonl`` only by the winner."""
        sha = data.sha256()
        now = self._clock()
        record = TestSetRecord(
            sha256=sha,
            created_at=now,
            source=source,
            n_examples=len(data),
            version=1,
            intent_counts=dict(sorted(data.intent_counts().items())),
            history=[
                TestSetVersion(version=1, sha256=sha, created_at=now, n_examples=len(data), reason=reason)
            ],
        )
        body = data.to_jsonl().encode("utf-8")
        version_key = self.keys.testset_version(sha)
        if not self.fs.exists(version_key):
            self.fs.write_bytes(version_key, body)
        if self.fs.exists(self.keys.testset_data):  # frozen by hand, or by a run from before pointers
            return None
        created = self.fs.create_exclusive(
            self.keys.testset_meta, record.model_dump_json(indent=2).encode("utf-8")
        )
        if not created:
            return None
        self.fs.write_bytes(self.keys.testset_data, body)
        return record

    def freeze(self, data: Dataset, source: str, reason: str) -> TestSetRecord:
        """Freeze ``data`` as version 1 (or the next version, if a set is frozen already)."""
        return self._write_version(data, source, 0, reason, self.record())

    def grow(self, record: TestSetRecord, current: Dataset, added: Dataset, reason: str) -> TestSetRecord:
        """Write the next version: ``current`` followed by ``added``."""
        merged = Dataset(examples=current.examples + added.examples, source=record.source)
        return self._write_version(merged, record.source, len(added), reason, record)

    def restore(self, before: TestSetRecord | None) -> None:
        """Put the test set back as it was (``before``; None: nothing frozen), e.g. after a run that froze or
        grew it was then blocked by validation. Data first, pointer last; each version's data stays under
        ``versions/``."""
        if before is None:
            self.reset()
            return
        now = self.record()
        if now is not None and now.model_dump() == before.model_dump():
            return
        key = self.keys.testset_version(before.sha256)
        if self.fs.exists(key):
            self.fs.write_bytes(self.keys.testset_data, self.fs.read_bytes(key))
        self.fs.write_bytes(self.keys.testset_meta, before.model_dump_json(indent=2).encode("utf-8"))

    def undo(self, written: str | None) -> bool:
        """Undo this writer's own change of the test set: ``written`` is the sha256 of the version it froze
        or grew (None: it wrote none, e.g. it lost the first-freeze race and used the winner's set). Only
        while that version is still the current one is it taken back, to the version it grew from (a first
        freeze: to nothing frozen); a set another run froze or grew since is left alone. Returns whether
        anything was put back.

        Compare, then swap: the pointer is read right before the earlier version is written back. The
        store's filesystem offers no conditional overwrite, so a writer that changes the set in between is
        lost; the window is one read long, where restoring blindly would undo every other writer."""
        if written is None:
            return False
        now = self.record()
        if now is None or now.sha256 != written:
            return False
        self.restore(self._previous(now))
        return True

    def _previous(self, record: TestSetRecord) -> TestSetRecord | None:
        """The record of the version ``record`` was made from (None for version 1)."""
        history = record.versions()
        if len(history) < 2:
            return None
        prior = history[-2]
        data = self.version(prior.sha256)
        counts = dict(sorted(data.intent_counts().items())) if data is not None else {}
        return TestSetRecord(
            sha256=prior.sha256,
            created_at=prior.created_at,
            source=record.source,
            n_examples=prior.n_examples,
            version=prior.version,
            intent_counts=counts,
            history=history[:-1],
        )

    def reset(self) -> TestSetRecord | None:
        """Remove the frozen test set so the next run freezes a new one; returns what was removed (None when
        nothing was frozen). Each version's data stays under ``versions/`` for the audit trail."""
        record = self.record()
        if record is None:
            return None
        # Data first, pointer last: a reset cut off half-way still reads the old version from versions/.
        self.fs.remove_tree(self.keys.testset_data)
        self.fs.remove_tree(self.keys.testset_meta)
        return record


# --------------------------------------------------------------------------- stored models' training data


def training_data_key(project: str, sha256: str) -> str:
    return layout(project).training_data(sha256)


def keep_training_data(fs: FileSystem, project: str, data: Dataset) -> str:
    """Write ``data`` to ``<project>/datasets/<sha256>.jsonl`` once; return its key."""
    key = training_data_key(project, data.sha256())
    if not fs.exists(key):
        fs.write_bytes(key, data.to_jsonl().encode("utf-8"))
    return key


def offered_data_key(project: str, sha256: str) -> str:
    return layout(project).offered_data(sha256)


def keep_offered_data(fs: FileSystem, project: str, train_sha256: str, offered: Dataset) -> str:
    """Keep what a run was offered (before validation dropped examples) beside the training data it gave,
    ``train_sha256``. Runs offered different data that gave the same training data add theirs (distinct
    examples, first seen first), so every example one of them dropped is known. Returns the key."""
    key = offered_data_key(project, train_sha256)
    kept = stored_offered_data(fs, project, train_sha256)
    examples = list(kept.examples) if kept is not None else []
    have = {e.model_dump_json() for e in examples}
    for example in offered:
        if example.model_dump_json() not in have:
            have.add(example.model_dump_json())
            examples.append(example)
    if kept is None or len(examples) != len(kept):
        merged = Dataset(examples=tuple(examples), source=key)
        fs.write_bytes(key, merged.to_jsonl().encode("utf-8"))
    return key


def stored_offered_data(fs: FileSystem, project: str, train_sha256: str) -> Dataset | None:
    """What the runs that gave the training data ``train_sha256`` were offered, or None when not kept."""
    key = offered_data_key(project, train_sha256)
    try:
        return parse_jsonl_bytes(fs.read_bytes(key), key)
    except ModelNotFoundError:
        return None


def stored_training_data(fs: FileSystem, project: str, sha256: str) -> Dataset | None:
    """The training data a manifest's ``dataset_sha256`` names, or None when it was not kept (models stored
    before this) or does not match its sha256."""
    key = training_data_key(project, sha256)
    try:
        data = parse_jsonl_bytes(fs.read_bytes(key), key)
    except ModelNotFoundError:
        return None
    return data if data.sha256() == sha256 else None
