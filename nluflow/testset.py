"""The project's frozen test set, how it grows with new annotations, and what is new since the active model.

A test set that never changes stops measuring: once both models score 1.000 on it no later model can beat
the active one, and new vocabulary never enters it. So the frozen test set grows with the data:

- **New** examples are the ones neither in the current test set nor in the active model's training data.
  "+N new" compares normalised text + intent (a relabelled example is new); routing compares normalised
  text only (the leakage rule), so no example the active model trained on, under any label, is ever routed
  into the test set.
- **Routing is stratified and deterministic.** Per intent, the test set's share of the intent's distinct
  texts is kept at ``fraction``: ``quota = round(fraction * total) - already in the test set`` (at least 0, at
  most the intent's new texts, leaving one for training when the intent has nothing else to train on).
  The quota is filled with the new texts that come first in the order of a seeded hash of
  ``(intent, normalised text)``; duplicates of one text travel together. Because the quota counts what the
  test set already holds, a rerun on the same data routes nothing more (an unchanged export stays a cache
  hit), and an intent that gets one new example per batch gives one to the test set every few batches.
  Nor is any text another stored model trained on (a kept rejected candidate may still be promoted by
  hand), nor one the active model's run was offered and validation dropped (it was seen, not new).
- **Versions.** Every change of the test set is a new version with its own sha256. The store keeps, under
  ``<project>/testset/``: ``versions/<sha256>.jsonl`` (each version's data, written once),
  ``test.jsonl`` (the current version's data, for people and older readers) and ``testset.json`` (the
  pointer: the current version and the history of versions). Data is written before the pointer, so a
  crash leaves the previous version in force.
- **Training data of stored models** is kept content-addressed at ``<project>/datasets/<sha256>.jsonl``
  (written once), which is what a manifest's ``dataset_sha256`` names; comparing the current training data
  with it gives "+N new, M removed". What that run was *offered* (before validation dropped broken
  examples) is kept beside it at ``<project>/datasets/<sha256>.offered.jsonl``: "new" is counted against
  it, so an example validation drops is not new again on every run.

Everything here goes through the store's :class:`~nluflow.registry.FileSystem`, so it works on a local
folder and on S3 alike.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import normalize_text
from nluflow.errors import DataError, IntegrityError, ModelNotFoundError
from nluflow.registry import FileSystem, check_id

# Fewest test utterances per intent for a first freeze to be accepted (RunSettings.min_test_per_intent).
DEFAULT_MIN_TEST_PER_INTENT = 2
# Below this many test utterances for an intent, one error moves its recall by 10 points or more: warn.
TINY_PER_INTENT = 10

TESTSET_DIR = "testset"
TESTSET_DATA = f"{TESTSET_DIR}/test.jsonl"
TESTSET_META = f"{TESTSET_DIR}/testset.json"
TESTSET_VERSIONS = f"{TESTSET_DIR}/versions"
DATASETS_DIR = "datasets"

Key = tuple[str, str]


def example_key(example: Example) -> Key:
    """How examples are compared across datasets: normalised text and intent."""
    return normalize_text(example.text), example.intent


def _keys(dataset: Dataset) -> set[Key]:
    return {example_key(e) for e in dataset}


def _rank(seed: int, intent: str, norm: str) -> bytes:
    return hashlib.sha256(f"testset-route\0{seed}\0{intent}\0{norm}".encode()).digest()


def _half_up(value: float) -> int:
    return math.floor(value + 0.5)


# ----------------------------------------------------------------------------------------------- routing


def new_example_indices(
    data: Dataset, test: Dataset, previous: Dataset | None, seen: Iterable[Dataset] = ()
) -> list[int]:
    """Indices of ``data``'s examples that may be routed into the test set: their normalised text is neither
    in ``test`` nor in ``previous`` (the active model's training data; ``None`` when there is none) nor in
    any of ``seen`` (what other stored models trained on, what the active model's run was offered), under
    any intent, so no model is scored on a text it trained on, even one relabelled since."""
    held_out = {normalize_text(e.text) for e in test}
    if previous is not None:
        held_out |= {normalize_text(e.text) for e in previous}
    for other in seen:
        held_out |= {normalize_text(e.text) for e in other}
    return [i for i, e in enumerate(data.examples) if normalize_text(e.text) not in held_out]


def route_to_test(data: Dataset, test: Dataset, new: Iterable[int], fraction: float, seed: int) -> list[int]:
    """Indices (into ``data``) of the new examples that go to the test set; see the module docstring.

    Deterministic: the same data, test set, new indices, fraction and seed always give the same answer, in
    whatever order the examples come.
    """
    held_out = {normalize_text(e.text) for e in test}
    in_test: dict[str, set[str]] = defaultdict(set)
    for e in test:
        in_test[e.intent].add(normalize_text(e.text))
    outside: dict[str, set[str]] = defaultdict(set)  # the intent's distinct texts not in the test set
    for e in data:
        norm = normalize_text(e.text)
        if norm not in held_out:
            outside[e.intent].add(norm)
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in new:
        e = data.examples[i]
        groups[e.intent][normalize_text(e.text)].append(i)

    routed: list[int] = []
    for intent, by_text in sorted(groups.items()):
        total = len(in_test[intent]) + len(outside[intent])
        quota = _half_up(fraction * total) - len(in_test[intent])
        # Keep at least one text of the intent for training when the new ones are all it has.
        room = len(by_text) - (1 if len(outside[intent]) == len(by_text) else 0)
        quota = max(0, min(quota, room))
        ordered = sorted(by_text, key=lambda norm: _rank(seed, intent, norm))
        for norm in ordered[:quota]:
            routed.extend(by_text[norm])
    return sorted(routed)


# -------------------------------------------------------------------------------------- what is new


class DataDelta(BaseModel):
    """How the data of this run differs from the active model's training data."""

    known: bool = Field(description="False when the active model's training data was not kept in the store.")
    active_model_id: str | None = Field(default=None, description="The model compared with.")
    compared_with: str | None = Field(default=None, description="sha256 of its training data.")
    new: int | None = Field(default=None, description="New examples (distinct normalised text + intent).")
    removed: int | None = Field(
        default=None, description="Examples it trained on that are no longer trained on."
    )
    to_test: int = Field(default=0, description="New examples routed into the test set.")

    def summary(self) -> str:
        """One line for the report, the log and the CLI, e.g. ``+9 new (7 to training, 2 to the test set),
        0 removed``."""
        if self.active_model_id is not None and not self.known:
            return (
                f"unknown: the training data of the active model {self.active_model_id} is not in the store "
                "(it was stored before nluflow kept training data), so nothing can be compared and no new "
                "example was routed into the test set; the next promoted model makes it known"
            )
        split = f" ({(self.new or 0) - self.to_test} to training, {self.to_test} to the test set)"
        head = f"+{self.new} new{split if self.to_test else ''}"
        if self.active_model_id is None:
            return f"{head}; no active model yet"
        return f"{head}, {self.removed} removed"


def data_delta(
    data: Dataset,
    train: Dataset,
    test: Dataset,
    previous: Dataset | None,
    *,
    baseline_test: Dataset,
    active_model_id: str | None,
    compared_with: str | None,
    offered: Dataset | None = None,
) -> DataDelta:
    """Compare this run's data with the active model's training data ``previous``.

    ``new``: distinct examples of ``data`` neither in ``previous`` nor in ``baseline_test`` (the test set the
    active model was scored on, so the count does not depend on which run grew the test set since);
    ``to_test``: how many of them are in this run's ``test`` set; ``removed``: distinct examples of
    ``previous`` that ``train`` no longer holds. ``previous`` is None when there is no active model
    (everything is new) or its training data is unknown (then nothing is counted). ``offered``: what the
    active model's run was offered before validation dropped examples; what it held is not new either."""
    if active_model_id is not None and previous is None:
        return DataDelta(known=False, active_model_id=active_model_id, compared_with=compared_with)
    held_out = {normalize_text(e.text) for e in baseline_test}
    seen = _keys(previous) if previous is not None else set()
    known = seen | (_keys(offered) if offered is not None else set())
    new = {k for k in _keys(data) if k not in known and k[0] not in held_out}
    in_test = {normalize_text(e.text) for e in test}
    return DataDelta(
        known=True,
        active_model_id=active_model_id,
        compared_with=compared_with,
        new=len(new),
        removed=len(seen - _keys(train)) if previous is not None else 0,
        to_test=sum(1 for k in new if k[0] in in_test),
    )


# ------------------------------------------------------------------------------------ measurability


def measurability_problems(test: Dataset, intents: Iterable[str], min_per_intent: int) -> list[str]:
    """What makes ``test`` unable to measure ``intents``: empty, or intents below ``min_per_intent``."""
    if len(test) == 0:
        return ["it would hold no utterance at all"]
    counts = test.intent_counts()
    short = sorted((counts.get(i, 0), i) for i in set(intents) if counts.get(i, 0) < min_per_intent)
    if not short:
        return []
    listed = ", ".join(f"{intent} ({n})" for n, intent in short[:10])
    more = f" and {len(short) - 10} more" if len(short) > 10 else ""
    return [f"{len(short)} intent(s) would have fewer than {min_per_intent} test utterances: {listed}{more}"]


def refuse_unmeasurable(
    test: Dataset, data: Dataset, min_per_intent: int, test_fraction: float, source: str
) -> None:
    """Raise a DataError naming the user's files when a test set split off ``data`` cannot measure
    anything; nothing is frozen."""
    problems = measurability_problems(test, data.intent_counts(), min_per_intent)
    if not problems:
        return
    needed = math.ceil((min_per_intent - 0.5) / test_fraction)
    raise DataError(
        f"cannot freeze a test set from these {len(data)} examples: split off at {test_fraction:.0%}, "
        f"{'; '.join(problems)}, so it could not tell a good model from a bad one. Nothing was frozen and "
        f"nothing was trained. Add annotations (about {needed} per intent give {min_per_intent} test "
        "utterances each), or pass a test set of your own with --test (RetrainParams.test), or lower "
        "min_test_per_intent",
        path=source,
    )


def tiny_warning(test: Dataset, tiny_per_intent: int = TINY_PER_INTENT) -> str | None:
    """A warning when the test set is so small that single errors swing the metrics, else None."""
    counts = test.intent_counts()
    small = sorted((n, i) for i, n in counts.items() if n < tiny_per_intent)
    if not small:
        return None
    listed = ", ".join(f"{i} ({n})" for n, i in small[:8]) + (" …" if len(small) > 8 else "")
    return (
        f"the test set is tiny: {len(test)} utterances, {len(small)} of {len(counts)} intents with fewer "
        f"than {tiny_per_intent} ({listed}); one error moves such an intent's recall by 10 points or "
        "more, so small differences between models mean little. It grows with new annotations, or pass a "
        "larger one with --test"
    )


# ----------------------------------------------------------------------------------------- the store


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
        self._clock = clock

    def _key(self, rel: str) -> str:
        return f"{self.project}/{rel}"

    def where(self) -> str:
        return f"{self.fs.describe()}, {self._key(TESTSET_DIR)}/"

    def record(self) -> TestSetRecord | None:
        """The pointer, or None when nothing is frozen. A test.jsonl without pointer (frozen by hand, or a
        first freeze cut off before its pointer) is adopted as version 1."""
        try:
            raw = self.fs.read_bytes(self._key(TESTSET_META))
        except ModelNotFoundError:
            if not self.fs.exists(self._key(TESTSET_DATA)):
                return None
            data = self._read(self._key(TESTSET_DATA))
            return TestSetRecord(
                sha256=data.sha256(),
                created_at="unknown",
                source=self._key(TESTSET_DATA),
                n_examples=len(data),
                intent_counts=dict(sorted(data.intent_counts().items())),
            )
        try:
            return TestSetRecord.model_validate_json(raw)
        except ValueError as exc:
            raise IntegrityError(
                f"{self.fs.describe()}: {self._key(TESTSET_META)} is not a test set record ({exc}); nothing "
                "was changed. Restore it, or start a new test set with `nluflow testset reset`"
            ) from None

    def _read(self, key: str) -> Dataset:
        return parse_jsonl_bytes(self.fs.read_bytes(key), key)

    def current(self) -> tuple[TestSetRecord, Dataset] | None:
        """The current version and its examples (sha256 checked), or None when nothing is frozen."""
        record = self.record()
        if record is None:
            return None
        key = self._key(f"{TESTSET_VERSIONS}/{record.sha256}.jsonl")
        if not self.fs.exists(key):
            key = self._key(TESTSET_DATA)  # stored before versions were kept
        try:
            data = self._read(key)
        except ModelNotFoundError:
            raise IntegrityError(
                f"{self.fs.describe()}: the frozen test set of {self.project!r} (version {record.version}, "
                f"sha256 {record.sha256[:16]}…) has lost its data; nothing was changed. Restore "
                f"{self._key(TESTSET_DIR)}/ or start a new test set with `nluflow testset reset`"
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
        key = self._key(f"{TESTSET_VERSIONS}/{sha256}.jsonl")
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
        version_key = self._key(f"{TESTSET_VERSIONS}/{sha}.jsonl")
        if not self.fs.exists(version_key):
            self.fs.write_bytes(version_key, body)
        self.fs.write_bytes(self._key(TESTSET_DATA), body)
        self.fs.write_bytes(self._key(TESTSET_META), record.model_dump_json(indent=2).encode("utf-8"))
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
        version_key = self._key(f"{TESTSET_VERSIONS}/{sha}.jsonl")
        if not self.fs.exists(version_key):
            self.fs.write_bytes(version_key, body)
        if self.fs.exists(self._key(TESTSET_DATA)):  # frozen by hand, or by a run from before pointers
            return None
        created = self.fs.create_exclusive(
            self._key(TESTSET_META), record.model_dump_json(indent=2).encode("utf-8")
        )
        if not created:
            return None
        self.fs.write_bytes(self._key(TESTSET_DATA), body)
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
        key = self._key(f"{TESTSET_VERSIONS}/{before.sha256}.jsonl")
        if self.fs.exists(key):
            self.fs.write_bytes(self._key(TESTSET_DATA), self.fs.read_bytes(key))
        self.fs.write_bytes(self._key(TESTSET_META), before.model_dump_json(indent=2).encode("utf-8"))

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
        self.fs.remove_tree(self._key(TESTSET_DATA))
        self.fs.remove_tree(self._key(TESTSET_META))
        return record


# --------------------------------------------------------------------------- stored models' training data


def training_data_key(project: str, sha256: str) -> str:
    return f"{check_id(project, 'project')}/{DATASETS_DIR}/{sha256}.jsonl"


def keep_training_data(fs: FileSystem, project: str, data: Dataset) -> str:
    """Write ``data`` to ``<project>/datasets/<sha256>.jsonl`` once; return its key."""
    key = training_data_key(project, data.sha256())
    if not fs.exists(key):
        fs.write_bytes(key, data.to_jsonl().encode("utf-8"))
    return key


def offered_data_key(project: str, sha256: str) -> str:
    return f"{check_id(project, 'project')}/{DATASETS_DIR}/{sha256}.offered.jsonl"


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


def intent_table(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Per-intent counts, largest first then by name."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


__all__ = [
    "DEFAULT_MIN_TEST_PER_INTENT",
    "DataDelta",
    "TestSetRecord",
    "TestSetStore",
    "TestSetVersion",
    "audit_fields",
    "data_delta",
    "example_key",
    "keep_offered_data",
    "keep_training_data",
    "new_example_indices",
    "refuse_unmeasurable",
    "route_to_test",
    "stored_offered_data",
    "stored_training_data",
    "tiny_warning",
]


AUDIT_FIELDS = ("test_set_version", "new_examples", "removed_examples", "routed_to_test", "new_since_active")


def audit_fields(data_info: Mapping[str, Any]) -> dict[str, Any]:
    """The test set version and "+N new, M removed" of a run's ``data_info``, for its audit line."""
    return {k: data_info[k] for k in AUDIT_FIELDS if k in data_info}
