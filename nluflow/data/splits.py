"""Deterministic, stratified train/test splits.

Within each intent, examples are grouped by normalised text and the groups ordered by a seeded hash of that
text; groups go to the test set in that order while they fit ``round(test_fraction * n)`` (at least one
example, and at least one left for training).
Because the order depends on the texts and not on their positions, adding or removing other examples leaves
most assignments unchanged, and examples with the same normalised text always land on the same side (no
leakage created by the split), unless an intent has nothing else to put in the test set.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

from nluflow.data.schema import Dataset
from nluflow.data.validation import normalize_text
from nluflow.errors import ConfigError


def _rank(seed: int, intent: str, norm: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{intent}\0{norm}".encode()).digest()


def stratified_split(dataset: Dataset, test_fraction: float = 0.2, seed: int = 42) -> tuple[Dataset, Dataset]:
    """Split into (train, test), stratified by intent; the same seed always gives the same split.

    Every intent with at least two examples appears in both parts; an intent with one example stays in train.
    Both parts keep the dataset's order. ``test_fraction`` outside (0, 1) raises ConfigError.
    """
    if isinstance(test_fraction, bool) or not (
        isinstance(test_fraction, int | float) and math.isfinite(test_fraction) and 0.0 < test_fraction < 1.0
    ):
        raise ConfigError(
            f"test_fraction is {test_fraction!r}; expected a number strictly between 0 and 1 (e.g. 0.2); "
            "nothing was split; fix the parameter and rerun"
        )
    # intent -> normalised text -> indices of its examples (insertion order = dataset order)
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, ex in enumerate(dataset.examples):
        groups[ex.intent][normalize_text(ex.text)].append(i)

    test: set[int] = set()
    for intent, by_text in groups.items():
        n = sum(len(ix) for ix in by_text.values())
        if n < 2:
            continue
        target = min(max(round(test_fraction * n), 1), n - 1)
        ordered = sorted(by_text.items(), key=lambda kv: _rank(seed, intent, kv[0]))
        if len(ordered) == 1:  # every example has the same text: split the group itself
            test.update(ordered[0][1][:target])
            continue
        taken = 0
        for _norm, indices in ordered:  # whole groups, in hash order, as long as they fit the target
            if taken + len(indices) <= target:
                test.update(indices)
                taken += len(indices)
                if taken == target:
                    break
        if (
            taken == 0
        ):  # every group is bigger than the target: take the first (with >= 2 groups it leaves one)
            test.update(ordered[0][1])
    train_ix = [i for i in range(len(dataset)) if i not in test]
    test_ix = sorted(test)
    skipped = dict(dataset.skipped)
    return (
        Dataset(
            examples=tuple(dataset.examples[i] for i in train_ix), source=dataset.source, skipped=skipped
        ),
        Dataset(examples=tuple(dataset.examples[i] for i in test_ix), source=dataset.source),
    )
