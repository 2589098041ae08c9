"""Stratified splits: deterministic, stratified, stable, no leakage of identical texts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nluflow.data.loaders import load_file
from nluflow.data.schema import Dataset, Example
from nluflow.data.splits import stratified_split
from nluflow.data.validation import normalize_text
from nluflow.errors import ConfigError


def make(counts: dict[str, int], prefix: str = "") -> Dataset:
    return Dataset.of(
        [
            Example(text=f"{prefix}{intent} utterance {i}", intent=intent)
            for intent, n in counts.items()
            for i in range(n)
        ],
        source="mem",
    )


def keys(ds: Dataset) -> list[tuple[str, str]]:
    return [(e.text, e.intent) for e in ds]


def test_split_is_a_partition_that_keeps_order() -> None:
    data = make({"a": 30, "b": 17, "c": 5})
    train, test = stratified_split(data, 0.2, seed=7)
    assert Counter(keys(train)) + Counter(keys(test)) == Counter(keys(data))
    position = {k: i for i, k in enumerate(keys(data))}
    assert [position[k] for k in keys(train)] == sorted(position[k] for k in keys(train))
    assert [position[k] for k in keys(test)] == sorted(position[k] for k in keys(test))
    assert train.source == test.source == "mem"


def test_per_intent_test_share_is_the_rounded_fraction() -> None:
    data = make({"a": 30, "b": 17, "c": 5, "d": 2})
    _, test = stratified_split(data, 0.2)
    assert test.intent_counts() == {"a": 6, "b": 3, "c": 1, "d": 1}


def test_every_intent_with_two_examples_is_in_both_parts_and_singletons_stay_in_train() -> None:
    data = make({"a": 2, "b": 3, "c": 1, "d": 50})
    for fraction in (0.01, 0.5, 0.99):
        train, test = stratified_split(data, fraction)
        for intent in ("a", "b", "d"):
            assert train.intent_counts()[intent] >= 1 and test.intent_counts()[intent] >= 1
        assert train.intent_counts()["c"] == 1 and "c" not in test.intent_counts()


def test_same_seed_same_split_other_seed_other_split() -> None:
    data = make({"a": 40, "b": 40})
    first = stratified_split(data, 0.25, seed=1)
    assert keys(stratified_split(data, 0.25, seed=1)[1]) == keys(first[1])
    assert keys(stratified_split(data, 0.25, seed=2)[1]) != keys(first[1])


def test_adding_examples_of_one_intent_leaves_the_others_alone() -> None:
    data = make({"a": 40, "b": 40})
    grown = Dataset.of([*make({"a": 45}, prefix="new ").examples, *data.examples])
    before = [k for k in keys(stratified_split(data, 0.2)[1]) if k[1] == "b"]
    after = [k for k in keys(stratified_split(grown, 0.2)[1]) if k[1] == "b"]
    assert before == after


def test_identical_normalised_texts_stay_on_one_side() -> None:
    examples = []
    for i in range(20):
        examples.append(Example(text=f"Book flight {i}", intent="book"))
        examples.append(Example(text=f"book flight {i}!", intent="book"))  # same after normalisation
    train, test = stratified_split(Dataset.of(examples), 0.3)
    train_norm = {normalize_text(e.text) for e in train}
    assert not train_norm & {normalize_text(e.text) for e in test}
    assert len(test) == 12  # six pairs: round(0.3 * 40)


def test_an_intent_with_a_single_repeated_text_still_reaches_the_test_set() -> None:
    data = Dataset.of([Example(text="yes", intent="affirm")] * 4 + list(make({"b": 10}).examples))
    train, test = stratified_split(data, 0.25)
    assert test.intent_counts()["affirm"] == 1 and train.intent_counts()["affirm"] == 3


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), True])
def test_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        stratified_split(make({"a": 5}), fraction)


def test_empty_dataset_gives_empty_parts() -> None:
    train, test = stratified_split(Dataset(), 0.2)
    assert len(train) == len(test) == 0


@pytest.mark.slow
def test_banking77_train_split_is_stratified(datasets: Path) -> None:
    path = datasets / "banking77" / "train.jsonl"
    data = load_file(path)
    train, test = stratified_split(data, 0.2, seed=42)
    assert abs(len(test) - 0.2 * len(data)) < 0.01 * len(data)
    assert set(test.intent_counts()) == set(train.intent_counts()) == set(data.intent_counts())
    for intent, n in data.intent_counts().items():
        assert test.intent_counts()[intent] == round(0.2 * n)
