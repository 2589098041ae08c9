"""The growing frozen test set and "+N new, M removed": pure functions and the store layout (milliseconds)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import normalize_text
from nluflow.errors import DataError, IntegrityError
from nluflow.store import LocalFileSystem
from nluflow.store.testsets import TestSetStore, keep_training_data, stored_training_data
from nluflow.testset import (
    audit_fields,
    data_delta,
    new_example_indices,
    refuse_unmeasurable,
    route_to_test,
    tiny_warning,
)


def ds(*pairs: tuple[str, str], source: str = "<memory>") -> Dataset:
    return Dataset(examples=tuple(Example(text=t, intent=i) for t, i in pairs), source=source)


def batch(intent: str, n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"{intent} request number {k}", intent) for k in range(start, start + n)]


def test_new_examples_are_neither_in_the_test_set_nor_in_the_previous_training_data() -> None:
    data = ds(
        ("Hello there!", "greet"),
        ("bye", "goodbye"),
        ("book a flight", "book"),
        ("hello there", "other"),
        ("BYE", "farewell"),
    )
    test = ds(("hello THERE", "greet"))  # normalised text, any intent: both "hello there" are held out
    previous = ds(("Bye.", "goodbye"))  # trained on: never routed, not even relabelled
    assert new_example_indices(data, test, previous) == [2]
    assert new_example_indices(data, test, None) == [1, 2, 4]


def test_routing_is_deterministic_and_independent_of_order() -> None:
    rows = batch("a", 30) + batch("b", 40)
    data = ds(*rows)
    test = ds()
    picked = route_to_test(data, test, range(len(data)), 0.2, seed=7)
    shuffled_rows = rows[:]
    random.Random(3).shuffle(shuffled_rows)
    shuffled = ds(*shuffled_rows)
    picked_shuffled = route_to_test(shuffled, test, range(len(shuffled)), 0.2, seed=7)
    texts = {data.examples[i].text for i in picked}
    assert texts == {shuffled.examples[i].text for i in picked_shuffled}
    assert route_to_test(data, test, range(len(data)), 0.2, seed=7) == picked
    assert texts != {data.examples[i].text for i in route_to_test(data, test, range(len(data)), 0.2, seed=8)}


def test_routing_is_stratified_per_intent() -> None:
    data = ds(*batch("a", 50), *batch("b", 10), *batch("c", 5))
    picked = route_to_test(data, ds(), range(len(data)), 0.2, seed=1)
    per_intent: dict[str, int] = {}
    for i in picked:
        per_intent[data.examples[i].intent] = per_intent.get(data.examples[i].intent, 0) + 1
    assert per_intent == {"a": 10, "b": 2, "c": 1}


def test_routing_tops_up_to_the_fraction_and_a_rerun_routes_nothing_more() -> None:
    old = ds(*batch("a", 40), *batch("b", 40))
    test = ds(*batch("a", 10, start=100), *batch("b", 10, start=100))  # 20 % of each intent already
    data = Dataset(examples=old.examples + ds(*batch("a", 25, 40)).examples)
    new = new_example_indices(data, test, old)
    assert len(new) == 25
    picked = route_to_test(data, test, new, 0.2, seed=42)
    # intent a: 10 in the test set, 65 outside → round(0.2 * 75) - 10 = 5; intent b has nothing new.
    assert len(picked) == 5 and {data.examples[i].intent for i in picked} == {"a"}
    assert set(picked) <= set(new)
    grown = Dataset(examples=test.examples + tuple(data.examples[i] for i in picked))
    again = new_example_indices(data, grown, old)
    assert route_to_test(data, grown, again, 0.2, seed=42) == []


def test_one_new_example_per_batch_reaches_the_test_set_every_few_batches() -> None:
    train = [f"a old {k}" for k in range(16)]
    test = [f"a test {k}" for k in range(4)]  # 20 % of 20
    routed_batches = []
    for n in range(10):
        train.append(f"a fresh {n}")
        data = ds(*[(t, "a") for t in train])
        test_set = ds(*[(t, "a") for t in test])
        previous = ds(*[(t, "a") for t in train[:-1]])
        picked = route_to_test(data, test_set, new_example_indices(data, test_set, previous), 0.2, 0)
        if picked:
            routed_batches.append(n)
            moved = data.examples[picked[0]].text
            test.append(moved)
            train.remove(moved)
    assert routed_batches == [2, 7]  # 23 texts → 5 in the test set, 28 texts → 6 (half-up rounding)


def test_a_new_intent_keeps_one_example_for_training() -> None:
    data = ds(("only one", "rare"), ("just two", "pair"), ("and two", "pair"))
    picked = route_to_test(data, ds(), range(3), 0.5, seed=0)
    assert [data.examples[i].intent for i in picked] == ["pair"]


def test_duplicates_of_one_text_travel_together() -> None:
    data = ds(*batch("a", 20), ("Same text!", "a"), ("same text", "a"))
    together = 0
    for seed in range(20):
        norms = [
            normalize_text(data.examples[i].text) for i in route_to_test(data, ds(), range(22), 0.2, seed)
        ]
        assert norms.count("same text") in (0, 2)
        assert len(set(norms)) == 4  # 21 distinct texts → round(0.2 * 21) = 4 of them
        together += norms.count("same text") == 2
    assert together > 0


def test_delta_counts_new_and_removed_on_normalised_text_and_intent() -> None:
    previous = ds(("Book a flight", "book"), ("hi", "greet"), ("cancel it", "cancel"))
    data = ds(("book a flight!", "book"), ("hi", "other"), ("new one", "book"), ("another", "book"))
    test = ds(("Another.", "book"))  # routed in by this run
    train = ds(*((e.text, e.intent) for e in data if e.text != "another"))
    delta = data_delta(
        data, train, test, previous, baseline_test=ds(), active_model_id="m-1", compared_with="abc"
    )
    # "hi" changed intent: new as (hi, other), removed as (hi, greet); "cancel it" was dropped.
    assert (delta.new, delta.removed, delta.to_test) == (3, 2, 1)
    assert delta.summary() == "+3 new (2 to training, 1 to the test set), 2 removed"
    assert audit_fields({"new_examples": 3, "removed_examples": 2, "other": 1}) == {
        "new_examples": 3,
        "removed_examples": 2,
    }


def test_delta_counts_from_the_test_set_the_active_model_was_scored_on() -> None:
    previous = ds(("old", "a"))
    data = ds(("old", "a"), ("was routed earlier", "a"), ("fresh", "a"), ("in the test set long ago", "a"))
    scored_on = ds(("in the test set long ago", "a"))
    test = ds(("in the test set long ago", "a"), ("was routed earlier", "a"))  # grown by a later run
    train = ds(("old", "a"), ("fresh", "a"))
    delta = data_delta(
        data, train, test, previous, baseline_test=scored_on, active_model_id="m-1", compared_with="abc"
    )
    assert delta.summary() == "+2 new (1 to training, 1 to the test set), 0 removed"


def test_delta_without_stored_training_data_is_unknown_not_a_guess() -> None:
    delta = data_delta(
        ds(("a", "x")),
        ds(("a", "x")),
        ds(),
        None,
        baseline_test=ds(),
        active_model_id="m-old",
        compared_with="f00",
    )
    assert not delta.known and delta.new is None and delta.removed is None
    assert delta.summary().startswith("unknown: the training data of the active model m-old")
    first = data_delta(
        ds(("a", "x"), ("b", "x")),
        ds(("a", "x")),
        ds(("b", "x")),
        None,
        baseline_test=ds(),
        active_model_id=None,
        compared_with=None,
    )
    assert first.summary() == "+2 new (1 to training, 1 to the test set); no active model yet"


def test_refusal_names_the_users_files_and_suggests_test() -> None:
    data = ds(
        *batch("a", 20), ("one", "b"), ("two", "b"), source="/home/u/data/nlu.yml, /home/u/data/more.csv"
    )
    test = ds(*batch("a", 4), ("one", "b"))
    with pytest.raises(DataError) as err:
        refuse_unmeasurable(test, data, 2, 0.2, data.source)
    message = str(err.value)
    assert message.startswith("/home/u/data/nlu.yml, /home/u/data/more.csv: cannot freeze a test set")
    assert "b (1)" in message and "--test" in message and "Nothing was frozen" in message
    assert ".nluflow" not in message and "snapshot" not in message
    with pytest.raises(DataError, match="no utterance at all"):
        refuse_unmeasurable(ds(), data, 2, 0.2, data.source)
    refuse_unmeasurable(ds(*batch("a", 4), ("one", "b"), ("two", "b")), data, 2, 0.2, data.source)


def test_tiny_test_sets_are_warned_about() -> None:
    warning = tiny_warning(ds(*batch("a", 3), *batch("b", 12)))
    assert warning is not None and "a (3)" in warning and "b (" not in warning
    assert tiny_warning(ds(*batch("a", 10))) is None


def test_store_versions_grow_and_keep_their_history(tmp_path: Path) -> None:
    fs = LocalFileSystem(tmp_path, create=True)
    store = TestSetStore(fs, "bot")
    assert store.current() is None
    first = ds(*batch("a", 4), *batch("b", 4))
    v1 = store.freeze(first, "/data/nlu.jsonl", "split")
    record, data = store.current() or (None, None)
    assert record is not None and data is not None
    assert (record.version, record.sha256, len(data)) == (1, first.sha256(), 8)
    v2 = store.grow(record, data, ds(*batch("a", 2, start=50)), "+2 new")
    assert v2.version == 2 and v2.sha256 != v1.sha256 and v2.n_examples == 10
    assert [(v.version, v.sha256, v.added) for v in v2.history] == [(1, v1.sha256, 0), (2, v2.sha256, 2)]
    assert v2.intent_counts == {"a": 6, "b": 4}
    record2, data2 = store.current() or (None, None)
    assert record2 == v2 and data2 is not None and data2.sha256() == v2.sha256
    assert (tmp_path / "bot/testset/versions" / f"{v1.sha256}.jsonl").exists()
    assert (tmp_path / "bot/testset/test.jsonl").read_bytes() == data2.to_jsonl().encode()
    assert store.reset() == v2
    assert store.current() is None and store.reset() is None


def test_store_reads_a_test_set_frozen_before_versions(tmp_path: Path) -> None:
    data = ds(*batch("a", 3))
    (tmp_path / "bot/testset").mkdir(parents=True)
    (tmp_path / "bot/testset/test.jsonl").write_text(data.to_jsonl(), encoding="utf-8")
    legacy = {
        "sha256": data.sha256(),
        "created_at": "2026-01-01T00:00:00+00:00",
        "source": "x",
        "n_examples": 3,
    }
    (tmp_path / "bot/testset/testset.json").write_text(json.dumps(legacy), encoding="utf-8")
    store = TestSetStore(LocalFileSystem(tmp_path), "bot")
    record, loaded = store.current() or (None, None)
    assert record is not None and record.version == 1 and [v.version for v in record.versions()] == [1]
    assert loaded is not None and loaded.sha256() == data.sha256()
    grown = store.grow(record, loaded, ds(("extra", "a")), "+1")
    assert [v.version for v in grown.history] == [1, 2]


def test_an_edited_frozen_test_set_is_refused(tmp_path: Path) -> None:
    fs = LocalFileSystem(tmp_path, create=True)
    store = TestSetStore(fs, "bot")
    record = store.freeze(ds(*batch("a", 3)), "x", "split")
    (tmp_path / "bot/testset/versions" / f"{record.sha256}.jsonl").write_text(
        ds(*batch("a", 2)).to_jsonl(), encoding="utf-8"
    )
    with pytest.raises(IntegrityError, match="changed after it was frozen"):
        store.current()


def test_training_data_is_kept_once_and_read_back_by_sha(tmp_path: Path) -> None:
    fs = LocalFileSystem(tmp_path, create=True)
    data = ds(*batch("a", 3))
    key = keep_training_data(fs, "bot", data)
    assert key == f"bot/datasets/{data.sha256()}.jsonl"
    mtime = (tmp_path / key).stat().st_mtime_ns
    keep_training_data(fs, "bot", data)
    assert (tmp_path / key).stat().st_mtime_ns == mtime
    loaded = stored_training_data(fs, "bot", data.sha256())
    assert loaded is not None and loaded.sha256() == data.sha256()
    assert stored_training_data(fs, "bot", "0" * 64) is None
