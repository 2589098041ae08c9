"""Metrics of one model on a frozen test set: intents, threshold at target precision, entities, tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

from nluflow.backends.base import IntentScore, Parse
from nluflow.data.schema import Dataset, Entity, Example, Origin
from nluflow.errors import ConfigError
from nluflow.evaluation import (
    EvaluationResult,
    error_rows,
    evaluate,
    metrics_table_markdown,
    threshold_for_precision,
)


def _dataset(rows: list[tuple[str, str]], entities: dict[int, tuple[Entity, ...]] | None = None) -> Dataset:
    entities = entities or {}
    return Dataset.of(
        Example(text=t, intent=i, entities=entities.get(n, ()), origin=Origin(path="test.yml", line=n + 1))
        for n, (t, i) in enumerate(rows)
    )


def _parses(
    test: Dataset, preds: list[tuple[str, float]], entities: dict[int, tuple[Entity, ...]] | None = None
) -> list[Parse]:
    entities = entities or {}
    return [
        Parse(text=e.text, intent=IntentScore(name=name, confidence=conf), entities=entities.get(n, ()))
        for n, (e, (name, conf)) in enumerate(zip(test.examples, preds, strict=True))
    ]


# Gold a,a,a,b,b,c; two mistakes: a->b (0.7) and b->z (0.9), z being an intent the test set does not have.
GOLD = [("u0", "a"), ("u1", "a"), ("u2", "a"), ("u3", "b"), ("u4", "b"), ("u5", "c")]
PRED = [("a", 0.95), ("a", 0.8), ("b", 0.7), ("b", 0.85), ("z", 0.9), ("c", 0.6)]


@pytest.fixture
def small() -> EvaluationResult:
    test = _dataset(GOLD)
    return evaluate(test, _parses(test, PRED))


def test_intent_metrics_match_hand_computed_values(small: EvaluationResult) -> None:
    assert small.n == 6
    assert small.accuracy == pytest.approx(4 / 6)
    # per gold intent: a P=2/2 R=2/3; b P=1/2 R=1/2; c P=1 R=1 (z is an error, not a class of the average)
    f1 = {"a": 0.8, "b": 0.5, "c": 1.0}
    assert small.macro_precision == pytest.approx((1 + 0.5 + 1) / 3)
    assert small.macro_recall == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert small.macro_f1 == pytest.approx(sum(f1.values()) / 3)
    assert small.weighted_f1 == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 1.0) / 6)
    y_true = [i for _, i in GOLD]
    y_pred = [p for p, _ in PRED]
    assert small.macro_f1 == pytest.approx(f1_score(y_true, y_pred, labels=["a", "b", "c"], average="macro"))
    assert small.intent_f1() == pytest.approx(f1)


def test_intent_report_has_rasa_shape(small: EvaluationResult) -> None:
    report = small.intent_report
    assert set(report) == {"a", "b", "c", "accuracy", "macro avg", "weighted avg"}
    assert report["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1-score": pytest.approx(0.8),
        "support": 3,
        "confused_with": {"b": 1},
    }
    assert report["b"]["confused_with"] == {"z": 1}
    assert report["c"]["confused_with"] == {}
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["macro avg"]["f1-score"] == pytest.approx(small.macro_f1)
    assert report["weighted avg"]["support"] == 6
    json.dumps(report)  # plain JSON, as Rasa writes it


def test_confused_with_keeps_the_three_most_frequent() -> None:
    gold = [(f"u{i}", "a") for i in range(10)]
    preds = [("b", 0.5)] * 4 + [("c", 0.5)] * 3 + [("d", 0.5)] * 2 + [("e", 0.5)]
    test = _dataset(gold)
    result = evaluate(test, _parses(test, preds))
    assert result.intent_report["a"]["confused_with"] == {"b": 4, "c": 3, "d": 2}


def test_errors_are_most_confident_first_in_rasa_shape(small: EvaluationResult) -> None:
    assert small.errors == [
        {"text": "u4", "intent": "b", "intent_prediction": {"name": "z", "confidence": 0.9}},
        {"text": "u2", "intent": "a", "intent_prediction": {"name": "b", "confidence": 0.7}},
    ]
    assert error_rows(small, limit=1) == [{"text": "u4", "intent": "b", "predicted": "z", "confidence": 0.9}]


def test_confusion_matrix_rows_true_columns_predicted_including_unknown_predictions(
    small: EvaluationResult,
) -> None:
    assert small.labels == ["a", "b", "c", "z"]
    assert small.confusion == [
        [2, 1, 0, 0],
        [0, 1, 0, 1],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
    ]
    assert sum(map(sum, small.confusion)) == small.n


def test_pr_auc_is_average_precision_of_top_intent_correct(small: EvaluationResult) -> None:
    correct = [t == p for t, p in zip(small.y_true, small.y_pred, strict=True)]
    assert small.pr_auc == pytest.approx(average_precision_score(correct, small.confidences))
    assert len(small.pr_precision) == len(small.pr_recall) == len(small.pr_thresholds) + 1


def test_threshold_is_the_smallest_that_reaches_target(small: EvaluationResult) -> None:
    # by confidence: .95 T, .9 F, .85 T, .8 T, .7 F, .6 T -> precision 1.0 at .95, below that < 0.95
    assert small.threshold == 0.95
    assert small.coverage == pytest.approx(1 / 6)
    assert small.precision_at_threshold == 1.0
    lenient = evaluate(_dataset(GOLD), _parses(_dataset(GOLD), PRED), target_precision=0.6)
    # at .8: 2 of 4 correct; at .6: 4 of 6 = 0.667 >= 0.6 -> the lowest confidence is the threshold
    assert lenient.threshold == 0.6
    assert lenient.coverage == 1.0
    assert lenient.precision_at_threshold == pytest.approx(4 / 6)


def test_threshold_for_precision_hand_cases() -> None:
    correct = [True, True, False, True]
    conf = [0.9, 0.8, 0.7, 0.6]
    assert threshold_for_precision(correct, conf, 0.75) == (0.6, 1.0, 0.75)
    assert threshold_for_precision(correct, conf, 0.8) == (0.8, 0.5, 1.0)
    # precision dips at 0.7 (2/3) and recovers at 0.6 (3/4): the smallest reaching threshold wins
    assert threshold_for_precision(correct, conf, 0.7) == (0.6, 1.0, 0.75)
    assert threshold_for_precision([False, False], [0.9, 0.1], 0.5) == (None, 0.0, None)
    assert threshold_for_precision([], [], 0.9) == (None, 0.0, None)


def test_threshold_cannot_split_equal_confidences() -> None:
    # Both utterances have confidence 0.9: a threshold accepts both or neither.
    assert threshold_for_precision([True, False], [0.9, 0.9], 1.0) == (None, 0.0, None)
    threshold, coverage, precision = threshold_for_precision([True, False, True], [0.9, 0.9, 0.95], 1.0)
    assert (threshold, precision) == (0.95, 1.0)
    assert coverage == pytest.approx(1 / 3)


def test_threshold_for_precision_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="2 correctness flags but 1 confidences"):
        threshold_for_precision([True, False], [0.5], 0.9)
    with pytest.raises(ConfigError, match="out of range"):
        threshold_for_precision([True], [0.5], 1.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0])),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.5, 0.75, 0.9, 0.95, 1.0]),
)
def test_threshold_for_precision_matches_brute_force(pairs: list[tuple[bool, float]], target: float) -> None:
    correct = [c for c, _ in pairs]
    conf = [x for _, x in pairs]
    expected: tuple[float | None, float, float | None] = (None, 0.0, None)
    for t in sorted(set(conf), reverse=True):  # the last reaching one is the smallest
        accepted = [c for c, x in pairs if x >= t]
        precision = sum(accepted) / len(accepted)
        if precision >= target - 1e-12:
            expected = (t, len(accepted) / len(pairs), precision)
    got = threshold_for_precision(correct, conf, target)
    assert got[0] == expected[0]
    assert got[1] == pytest.approx(expected[1])
    assert got[2] == pytest.approx(expected[2])


def test_all_wrong_gives_zero_auc_and_no_threshold_without_nan() -> None:
    test = _dataset([("x", "a"), ("y", "b")])
    result = evaluate(test, _parses(test, [("b", 0.9), ("a", 0.4)]))
    assert result.accuracy == 0.0
    assert result.pr_auc == 0.0
    assert result.threshold is None and result.coverage == 0.0 and result.precision_at_threshold is None
    assert not any(math.isnan(x) for x in result.pr_precision + result.pr_recall)
    assert "threshold" not in result.headline()
    assert EvaluationResult.model_validate_json(result.model_dump_json()) == result


def test_all_correct_gives_full_marks() -> None:
    test = _dataset([("x", "a"), ("y", "b"), ("z", "b")])
    result = evaluate(test, _parses(test, [("a", 0.3), ("b", 0.9), ("b", 0.5)]))
    assert result.accuracy == result.macro_f1 == result.pr_auc == 1.0
    assert result.threshold == 0.3 and result.coverage == 1.0
    assert result.errors == []


def test_entities_exact_span_micro_and_per_type() -> None:
    rows = [("fly to paris", "book"), ("fly to rome at 9", "book"), ("hi", "greet")]
    gold = {
        0: (Entity(start=7, end=12, entity="city", value="paris"),),
        1: (
            Entity(start=7, end=11, entity="city", value="rome"),
            Entity(start=15, end=16, entity="time", value="9"),
        ),
    }
    pred = {
        0: (Entity(start=7, end=12, entity="city", value="paris"),),  # exact: TP
        1: (
            Entity(start=6, end=11, entity="city", value=" rome"),  # off by one: FP + FN
            Entity(start=15, end=16, entity="time", value="9"),  # TP
        ),
        2: (Entity(start=0, end=2, entity="greeting", value="hi"),),  # FP of a type the gold set lacks
    }
    test = _dataset(rows, gold)
    result = evaluate(test, _parses(test, [("book", 0.9), ("book", 0.9), ("greet", 0.9)], pred))
    ent = result.entity
    assert ent is not None
    assert ent.support == 3
    assert ent.precision == pytest.approx(2 / 4)
    assert ent.recall == pytest.approx(2 / 3)
    assert ent.f1 == pytest.approx(2 * 2 / (4 + 3))
    assert ent.per_type["city"].precision == pytest.approx(1 / 2)
    assert ent.per_type["city"].recall == pytest.approx(1 / 2)
    assert ent.per_type["time"].f1 == 1.0
    assert ent.per_type["greeting"].support == 0 and ent.per_type["greeting"].precision == 0.0
    headline = result.headline()
    assert headline["entity_f1"] == pytest.approx(ent.f1)
    assert headline["entity_recall"] == pytest.approx(2 / 3)


def test_no_gold_entities_means_no_entity_metrics(small: EvaluationResult) -> None:
    assert small.entity is None
    assert set(small.headline()) == {
        "intent_accuracy",
        "macro_f1",
        "macro_precision",
        "weighted_f1",
        "pr_auc",
        "coverage_at_target",
        "threshold",
    }


def test_misaligned_predictions_are_refused_with_location() -> None:
    test = _dataset(GOLD)
    parses = _parses(test, PRED)
    with pytest.raises(ConfigError, match="6 utterances but 5 predictions"):
        evaluate(test, parses[:5])
    swapped = [parses[1], parses[0], *parses[2:]]
    with pytest.raises(
        ConfigError,
        match=r"test\.yml:1: test utterance 0 is 'u0' but prediction 0 is for 'u1' "
        r"\(1 more utterances do not line up\)",
    ):
        evaluate(test, swapped)
    with pytest.raises(ConfigError, match="empty"):
        evaluate(Dataset(), [])


def test_whitespace_differences_still_line_up() -> None:
    test = _dataset([("book  a flight ", "book")])
    parse = Parse(text="book a flight", intent=IntentScore(name="book", confidence=0.9))
    assert evaluate(test, [parse]).accuracy == 1.0


def test_non_finite_confidence_is_refused() -> None:
    test = _dataset([("x", "a")])
    parse = Parse(text="x", intent=IntentScore(name="a", confidence=float("nan")))
    with pytest.raises(ConfigError, match="expected a finite number"):
        evaluate(test, [parse])


def test_result_round_trips_through_json_and_pins_the_test_hash(small: EvaluationResult) -> None:
    assert small.test_sha256 == _dataset(GOLD).sha256()
    assert EvaluationResult.model_validate_json(small.model_dump_json()) == small


def test_banking77_sized_case_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = [f"intent_{i:02d}" for i in range(77)]
    y_true = [labels[i % 77] for i in range(3000)]
    y_pred = [t if rng.random() < 0.9 else labels[int(rng.integers(77))] for t in y_true]
    test = Dataset.of(Example(text=f"utterance {i}", intent=t) for i, t in enumerate(y_true))
    parses = [
        Parse(text=f"utterance {i}", intent=IntentScore(name=p, confidence=float(rng.random())))
        for i, p in enumerate(y_pred)
    ]
    result = evaluate(test, parses)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert (result.macro_precision, result.macro_recall, result.macro_f1) == pytest.approx((p, r, f))
    wf = f1_score(y_true, y_pred, average="weighted")
    assert result.weighted_f1 == pytest.approx(wf)
    assert np.asarray(result.confusion).shape == (77, 77)


def test_metrics_table_markdown_with_and_without_active(small: EvaluationResult) -> None:
    alone = metrics_table_markdown(small, None)
    assert "| metric | candidate | active | delta |" in alone
    assert f"| macro F1 | {small.macro_f1:.3f} | — | — |" in alone
    test = _dataset(GOLD)
    better = evaluate(test, _parses(test, [(i, 0.9) for _, i in GOLD]))
    table = metrics_table_markdown(better, small)
    assert f"| intent accuracy | 1.000 | 0.667 | +{1 - 4 / 6:.3f} |" in table
    assert "| confidence threshold | 0.900 | 0.950 | — |" in table


def test_gold_labels_as_predictions_on_snips_score_perfectly(datasets: Path) -> None:
    path = datasets / "snips2017" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    test = Dataset.of(
        Example(text=r["text"], intent=r["intent"], entities=tuple(Entity(**e) for e in r["entities"]))
        for r in rows
    )
    parses = [
        Parse(text=e.text, intent=IntentScore(name=e.intent, confidence=1.0), entities=e.entities)
        for e in test.examples
    ]
    result = evaluate(test, parses)
    assert result.accuracy == result.macro_f1 == 1.0
    assert result.entity is not None and result.entity.f1 == 1.0
    assert result.entity.support == sum(len(e.entities) for e in test.examples)
