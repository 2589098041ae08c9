"""Champion vs challenger: fast macro F1, the paired bootstrap, per-intent deltas and rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from nluflow.backends.base import IntentScore, Parse
from nluflow.data.schema import Dataset, Example
from nluflow.errors import ConfigError
from nluflow.evaluation import (
    BootstrapResult,
    EvaluationResult,
    evaluate,
    macro_f1_from_labels,
    paired_bootstrap,
    per_intent_deltas,
    per_intent_rows,
)
from nluflow.evaluation import compare as compare_module


def _synthetic(n: int, k: int, accuracy: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = [f"i{j:02d}" for j in range(k)]
    y_true = [labels[j % k] for j in range(n)]
    y_pred = [t if rng.random() < accuracy else labels[int(rng.integers(k))] for t in y_true]
    return y_true, y_pred


def _result(y_true: list[str], y_pred: list[str], texts: list[str] | None = None) -> EvaluationResult:
    texts = texts or [f"u{i}" for i in range(len(y_true))]
    test = Dataset.of(Example(text=t, intent=i) for t, i in zip(texts, y_true, strict=True))
    parses = [
        Parse(text=t, intent=IntentScore(name=p, confidence=0.9)) for t, p in zip(texts, y_pred, strict=True)
    ]
    return evaluate(test, parses)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcdxy")), min_size=1, max_size=60),
    st.lists(st.sampled_from("abcdez"), min_size=1, max_size=6, unique=True),
)
def test_macro_f1_from_labels_matches_sklearn(pairs: list[tuple[str, str]], labels: list[str]) -> None:
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    expected = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert macro_f1_from_labels(y_true, y_pred, labels) == pytest.approx(expected)


def test_macro_f1_from_labels_refuses_bad_input() -> None:
    with pytest.raises(ConfigError):
        macro_f1_from_labels(["a"], ["a", "b"], ["a"])
    with pytest.raises(ConfigError):
        macro_f1_from_labels(["a"], ["a"], [])


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    y_true, cand = _synthetic(600, 20, 0.9, seed=1)
    _, act = _synthetic(600, 20, 0.85, seed=2)
    first = paired_bootstrap(y_true, cand, act, n_resamples=300, seed=7)
    assert paired_bootstrap(y_true, cand, act, n_resamples=300, seed=7) == first
    other = paired_bootstrap(y_true, cand, act, n_resamples=300, seed=8)
    assert (other.low, other.high) != (first.low, first.high)
    assert other.delta == first.delta  # the point estimate does not depend on the resamples


def test_bootstrap_point_delta_equals_the_evaluated_difference() -> None:
    y_true, cand = _synthetic(500, 12, 0.9, seed=3)
    _, act = _synthetic(500, 12, 0.8, seed=4)
    act[0] = "never_in_test"  # predictions outside the gold intents count as errors, not as classes
    b = paired_bootstrap(y_true, cand, act, n_resamples=200)
    assert b.delta == pytest.approx(_result(y_true, cand).macro_f1 - _result(y_true, act).macro_f1)
    acc = paired_bootstrap(y_true, cand, act, metric="accuracy", n_resamples=200)
    assert acc.metric == "accuracy"
    assert acc.delta == pytest.approx(_result(y_true, cand).accuracy - _result(y_true, act).accuracy)
    assert acc.low <= acc.delta <= acc.high


def test_bootstrap_resamples_match_a_naive_sklearn_loop() -> None:
    y_true, cand = _synthetic(120, 8, 0.8, seed=5)
    _, act = _synthetic(120, 8, 0.7, seed=6)
    act[3] = "outside"
    n_resamples = 200
    # One numpy pass draws every resample here, so the naive loop can replay the same indices.
    assert n_resamples * len(y_true) <= compare_module._CHUNK_ELEMENTS
    idx = np.random.default_rng(11).integers(0, len(y_true), size=(n_resamples, len(y_true)))
    t, c, a = np.asarray(y_true), np.asarray(cand), np.asarray(act)
    naive = []
    for row in idx:
        present = sorted(set(t[row]))
        naive.append(
            f1_score(t[row], c[row], labels=present, average="macro", zero_division=0)
            - f1_score(t[row], a[row], labels=present, average="macro", zero_division=0)
        )
    expected_low, expected_high = np.quantile(naive, [0.05, 0.95])
    got = paired_bootstrap(y_true, cand, act, n_resamples=n_resamples, confidence=0.9, seed=11)
    assert got.low == pytest.approx(expected_low)
    assert got.high == pytest.approx(expected_high)


def test_identical_models_have_a_zero_interval() -> None:
    y_true, pred = _synthetic(300, 10, 0.8, seed=9)
    b = paired_bootstrap(y_true, pred, list(pred), n_resamples=200)
    assert (b.delta, b.low, b.high) == (0.0, 0.0, 0.0)


def test_a_candidate_that_only_fixes_errors_has_a_non_negative_interval() -> None:
    y_true, act = _synthetic(400, 10, 0.7, seed=10)
    cand = list(act)
    wrong = [i for i, (t, p) in enumerate(zip(y_true, act, strict=True)) if t != p]
    for i in wrong[: len(wrong) // 2]:
        cand[i] = y_true[i]
    for metric in ("macro_f1", "accuracy"):
        b = paired_bootstrap(y_true, cand, act, metric=metric, n_resamples=300)
        assert b.delta > 0
        assert 0.0 <= b.low <= b.delta <= b.high


def test_wider_confidence_gives_a_wider_interval() -> None:
    y_true, cand = _synthetic(400, 10, 0.85, seed=12)
    _, act = _synthetic(400, 10, 0.85, seed=13)
    narrow = paired_bootstrap(y_true, cand, act, confidence=0.5, n_resamples=500)
    wide = paired_bootstrap(y_true, cand, act, confidence=0.99, n_resamples=500)
    assert wide.low < narrow.low <= narrow.high < wide.high


def test_bootstrap_on_banking77_sized_data_runs_in_chunks_consistently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    y_true, cand = _synthetic(3000, 77, 0.93, seed=14)
    _, act = _synthetic(3000, 77, 0.91, seed=15)
    whole = paired_bootstrap(y_true, cand, act, n_resamples=1000)
    assert isinstance(whole, BootstrapResult) and whole.n_resamples == 1000
    assert whole.low < whole.delta < whole.high
    # A smaller chunk draws the same random stream in pieces: the interval must not change.
    monkeypatch.setattr(compare_module, "_CHUNK_ELEMENTS", 3000 * 64)
    assert paired_bootstrap(y_true, cand, act, n_resamples=1000) == whole


def test_bootstrap_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="same test utterances"):
        paired_bootstrap(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ConfigError, match="at least one"):
        paired_bootstrap([], [], [])
    with pytest.raises(ConfigError, match="confidence"):
        paired_bootstrap(["a"], ["a"], ["a"], confidence=1.0)
    with pytest.raises(ConfigError, match="n_resamples"):
        paired_bootstrap(["a"], ["a"], ["a"], n_resamples=0)
    with pytest.raises(ConfigError, match="not supported"):
        paired_bootstrap(["a"], ["a"], ["a"], metric="f2")  # type: ignore[arg-type]


def test_per_intent_deltas_and_rows() -> None:
    y_true = ["a"] * 4 + ["b"] * 4
    cand = _result(y_true, ["a"] * 4 + ["b"] * 4)
    act = _result(y_true, ["a"] * 4 + ["a", "a", "b", "b"])
    deltas = per_intent_deltas(cand, act)
    # active: a P=4/6 R=1 F1=0.8; b P=1 R=0.5 F1=2/3
    assert deltas == pytest.approx({"a": 0.2, "b": 1 / 3})
    rows = per_intent_rows(cand, act)
    assert [r["intent"] for r in rows] == ["a", "b"]  # smallest change first
    assert rows[0] == {
        "intent": "a",
        "support": 4,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "active_f1": 0.8,
        "delta": 0.2,
    }
    alone = per_intent_rows(act, None)
    assert [r["intent"] for r in alone] == ["b", "a"]  # worst first
    assert alone[0]["active_f1"] is None and alone[0]["delta"] is None


def test_per_intent_deltas_need_the_same_test_set() -> None:
    a = _result(["a", "b"], ["a", "b"])
    b = _result(["a", "b"], ["a", "b"], texts=["other", "texts"])
    with pytest.raises(ConfigError, match="same frozen test set"):
        per_intent_deltas(a, b)
