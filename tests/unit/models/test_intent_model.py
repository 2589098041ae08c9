"""The intent classifier: scikit-learn estimator contract, probabilities, and Banking77 accuracy."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from nluflow.backends.base import LocalModelOptions
from nluflow.errors import NotFittedError
from nluflow.models.intent import IntentClassifier, TemperatureScaledSVC, WordPairs

TRAIN = {
    "greet": ["hi", "hello there", "hey", "good morning", "hello friend", "hi bot", "greetings", "howdy"],
    "goodbye": ["bye", "goodbye", "see you later", "bye bye", "farewell", "good night", "so long", "later"],
    "book_flight": [
        "book a flight to Paris",
        "I need a flight to Berlin",
        "fly me to Madrid tomorrow",
        "get me a plane ticket to Rome",
        "book flights to Oslo",
        "a flight to Vienna please",
        "reserve a flight to Lisbon",
        "I want to fly to Prague",
    ],
    "weather": [
        "what is the weather in Paris",
        "will it rain tomorrow",
        "is it sunny in Berlin",
        "weather forecast for Madrid",
        "how cold is it outside",
        "do I need an umbrella today",
        "temperature in Rome",
        "is it going to snow",
    ],
}
TEXTS = [t for texts in TRAIN.values() for t in texts]
LABELS = [label for label, texts in TRAIN.items() for _ in texts]
PROBES = ["hello", "see you", "book a flight to Tokyo", "weather in Tokyo", "zzz", ""]


def _read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["intent"] for r in rows]


@pytest.fixture(scope="module")
def fitted() -> IntentClassifier:
    return IntentClassifier(random_state=0).fit(TEXTS, LABELS)


def test_init_only_stores_parameters_and_clone_works() -> None:
    clf = IntentClassifier(C=2.5, word_pair_window=7, random_state=3)
    assert clf.get_params() == {
        "C": 2.5,
        "calibration_folds": 3,
        "char_ngram_max": 5,
        "char_ngram_min": 2,
        "embedding_cache_dir": None,
        "embedding_model": "all-MiniLM-L6-v2",
        "embedding_weight": 2.0,
        "embeddings": False,
        "random_state": 3,
        "word_ngram_max": 2,
        "word_pair_window": 7,
    }
    assert not [k for k in vars(clf) if k.endswith("_")]
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params()


def test_clone_of_a_fitted_classifier_is_unfitted(fitted: IntentClassifier) -> None:
    copy = clone(fitted)
    with pytest.raises(NotFittedError):
        copy.predict(["hi"])


def test_fit_returns_self_and_sets_fitted_attributes() -> None:
    clf = IntentClassifier(random_state=0)
    assert clf.fit(TEXTS, LABELS) is clf
    assert list(clf.classes_) == sorted(TRAIN)
    assert clf.n_features_ > 0 and clf.temperature_ > 0
    assert [name for name, _ in clf.pipeline_.named_steps["features"].transformer_list] == [
        "words",
        "chars",
        "pairs",
    ]


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_predict_before_fit_raises_not_fitted(method: str) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(IntentClassifier(), method)(["hello"])
    # ...which scikit-learn code catches as its own NotFittedError too
    with pytest.raises(SklearnNotFittedError):
        getattr(TemperatureScaledSVC(), method)(np.zeros((1, 2)))


def test_probabilities_sum_to_one_and_agree_with_predict(fitted: IntentClassifier) -> None:
    proba = fitted.predict_proba(PROBES)
    assert proba.shape == (len(PROBES), len(TRAIN))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(fitted.classes_[proba.argmax(axis=1)]) == list(fitted.predict(PROBES))
    assert list(fitted.predict(PROBES[:4])) == ["greet", "goodbye", "book_flight", "weather"]


def test_training_data_is_learned(fitted: IntentClassifier) -> None:
    assert fitted.score(TEXTS, LABELS) == 1.0


def test_pickle_round_trip_keeps_predictions_and_score(fitted: IntentClassifier) -> None:
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(PROBES), fitted.predict_proba(PROBES))
    assert restored.score(TEXTS, LABELS) == fitted.score(TEXTS, LABELS)


def test_same_seed_same_model() -> None:
    a = IntentClassifier(random_state=5).fit(TEXTS, LABELS).predict_proba(PROBES)
    b = IntentClassifier(random_state=5).fit(TEXTS, LABELS).predict_proba(PROBES)
    np.testing.assert_array_equal(a, b)


def test_two_intents_give_two_probability_columns() -> None:
    texts = TRAIN["greet"] + TRAIN["goodbye"]
    clf = IntentClassifier(random_state=0).fit(texts, ["greet"] * 8 + ["goodbye"] * 8)
    proba = clf.predict_proba(["hello friend", "bye bye"])
    assert proba.shape == (2, 2)
    assert list(clf.predict(["hello friend", "bye bye"])) == ["greet", "goodbye"]
    assert proba[0, list(clf.classes_).index("greet")] > 0.5


def test_intents_with_a_single_example_still_train_and_calibrate() -> None:
    texts = [*TEXTS, "what time is it"]
    clf = IntentClassifier(random_state=0).fit(texts, [*LABELS, "time"])
    assert "time" in clf.classes_
    assert clf.temperature_ != 1.0  # calibrated on the intents that have 2+ examples
    assert clf.predict(["what time is it"])[0] == "time"


def test_calibration_can_be_turned_off() -> None:
    clf = IntentClassifier(calibration_folds=0, random_state=0).fit(TEXTS, LABELS)
    assert clf.temperature_ == 1.0


def test_temperature_sharpens_probabilities_of_an_svm() -> None:
    """SVM decision values are small: the fitted temperature is < 1, so clear cases get high probability."""
    calibrated = IntentClassifier(random_state=0).fit(TEXTS, LABELS)
    raw = IntentClassifier(calibration_folds=0, random_state=0).fit(TEXTS, LABELS)
    assert calibrated.temperature_ < 1.0
    assert (
        calibrated.predict_proba(["book a flight to Paris"]).max()
        > raw.predict_proba(["book a flight to Paris"]).max()
    )


def test_short_texts_without_word_pairs_or_words() -> None:
    clf = IntentClassifier(random_state=0).fit(["hi", "hey", "bye", "ciao", "?", "!"], list("aabbcc"))
    blocks = [name for name, _ in clf.pipeline_.named_steps["features"].transformer_list]
    assert blocks == ["words", "chars"]  # no text has 3 words: no pair features
    assert clf.predict(["hi", "bye"]).tolist() == ["a", "b"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 intents"):
        IntentClassifier().fit(["a b", "c d"], ["x", "x"])
    with pytest.raises(ValueError, match="single str"):
        IntentClassifier().fit("hello", ["x"])
    with pytest.raises(ValueError, match="2 texts but y has 1"):
        IntentClassifier().fit(["a", "b"], ["x"])


def test_word_pairs_are_unordered_and_skip_neighbours() -> None:
    pairs = WordPairs(window=3)
    # distance 2..3 only: (card, arrived), (card, home), (never, home); words in alphabetical order
    assert pairs("card never arrived home") == ["arrived card", "card home", "home never"]
    assert pairs("arrived never card") == pairs("card never arrived")
    assert pairs("hi there") == []
    assert WordPairs(3) == WordPairs(3) and WordPairs(3) != WordPairs(4)


def test_from_options_takes_the_local_options() -> None:
    options = LocalModelOptions(C=0.3, word_pair_window=0, calibration_folds=2)
    clf = IntentClassifier.from_options(options, seed=9)
    assert (clf.C, clf.word_pair_window, clf.calibration_folds, clf.random_state) == (0.3, 0, 2, 9)
    assert (clf.embeddings, clf.embedding_cache_dir) == (False, None)
    with_emb = IntentClassifier.from_options(
        LocalModelOptions(embeddings=True, embedding_weight=1.5), seed=1, embedding_cache_dir=Path("/c")
    )
    assert (with_emb.embeddings, with_emb.embedding_weight, with_emb.embedding_cache_dir) == (True, 1.5, "/c")


@pytest.mark.slow
def test_banking77_accuracy_with_default_options(datasets: Path) -> None:
    folder = datasets / "banking77"
    train_x, train_y = _read_jsonl(folder / "train.jsonl")
    test_x, test_y = _read_jsonl(folder / "test.jsonl")
    clf = IntentClassifier.from_options(LocalModelOptions(), seed=42).fit(train_x, train_y)
    accuracy = clf.score(test_x, test_y)
    assert accuracy >= 0.90, f"Banking77 intent accuracy {accuracy:.4f} < 0.90"


@pytest.mark.parametrize("n_classes", [2, 4])
def test_decision_values_on_sparse_weights_equal_linearsvc_and_pickles_do_not_change(n_classes: int) -> None:
    """The classifier scores with a cached CSR transpose of LinearSVC's sparsified weights: the same values
    as LinearSVC's own decision_function, and the cache never reaches a pickle (model files keep their
    sha256 whether or not the model has predicted)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [t for examples in TRAIN.values() for t in examples] * 3
    labels = np.array([k % n_classes for k in range(len(texts))])
    X = TfidfVectorizer(ngram_range=(1, 2)).fit_transform(texts)
    clf = TemperatureScaledSVC(calibration_folds=0).fit(X, labels)
    clf.svc_.sparsify()
    before = pickle.dumps(clf)
    expected = clf.svc_.decision_function(X)
    if expected.ndim == 1:
        expected = np.column_stack([-expected, expected])
    np.testing.assert_allclose(clf.decision_function(X), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(clf.decision_function(X[:1]), expected[:1], rtol=1e-12, atol=1e-12)
    assert pickle.dumps(clf) == before
    assert "_coef_t" in clf.__dict__ and "_coef_t" not in pickle.loads(before).__dict__
