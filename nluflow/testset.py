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

The rules live here (pure functions on datasets); where the test set and the kept data are stored, and how,
is :mod:`nluflow.store.testsets` (keys in :mod:`nluflow.store.layout`).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import normalize_text
from nluflow.errors import DataError

# Fewest test utterances per intent for a first freeze to be accepted (RunSettings.min_test_per_intent).
DEFAULT_MIN_TEST_PER_INTENT = 2
# Below this many test utterances for an intent, one error moves its recall by 10 points or more: warn.
TINY_PER_INTENT = 10


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


def intent_table(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Per-intent counts, largest first then by name."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


__all__ = [
    "DEFAULT_MIN_TEST_PER_INTENT",
    "DataDelta",
    "audit_fields",
    "data_delta",
    "example_key",
    "new_example_indices",
    "refuse_unmeasurable",
    "route_to_test",
    "tiny_warning",
]


AUDIT_FIELDS = ("test_set_version", "new_examples", "removed_examples", "routed_to_test", "new_since_active")


def audit_fields(data_info: Mapping[str, Any]) -> dict[str, Any]:
    """The test set version and "+N new, M removed" of a run's ``data_info``, for its audit line."""
    return {k: data_info[k] for k in AUDIT_FIELDS if k in data_info}
