"""scikit-learn's estimator conventions, for every local estimator: ``__init__`` only stores parameters
(validation waits for ``fit``), ``get_params``/``set_params`` round-trip, ``clone`` gives an unfitted copy,
``fit`` returns ``self``, fitted attributes end in ``_``; and the hyperparameters' defaults are declared once,
in ``LocalModelOptions``.

The checks that need no data are scikit-learn's own (``sklearn.utils.estimator_checks``); the ones that
fit use our data types (texts, entity spans, a ``Dataset``), which scikit-learn's generic checks cannot make.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import NotFittedError
from nluflow.models.embeddings import SentenceEmbedder
from nluflow.models.entities import CRFEntityExtractor
from nluflow.models.intent import IntentClassifier, TemperatureScaledSVC
from nluflow.models.nlu import NLUModel
from nluflow.models.options import ENTITY_OPTIONS, INTENT_OPTIONS, LocalModelOptions

ESTIMATORS: list[Callable[[], BaseEstimator]] = [
    IntentClassifier,
    TemperatureScaledSVC,
    CRFEntityExtractor,
    SentenceEmbedder,
    NLUModel,
]
SKLEARN_CHECKS = [
    check_parameters_default_constructible,
    check_no_attributes_set_in_init,
    check_get_params_invariance,
    check_set_params,
    check_estimator_cloneable,
    check_do_not_raise_errors_in_init_or_set_params,
]

TEXTS = ["fly to Paris", "a flight to Rome", "book a flight to Oslo", "hi there", "hello", "hey you"]
INTENTS = ["flight", "flight", "flight", "greet", "greet", "greet"]
ENTITIES = [
    [Entity(start=7, end=12, entity="city", value="Paris")],
    [Entity(start=12, end=16, entity="city", value="Rome")],
    [Entity(start=17, end=21, entity="city", value="Oslo")],
    [],
    [],
    [],
]
DATASET = Dataset.of(
    [Example(text=t, intent=i, entities=tuple(e)) for t, i, e in zip(TEXTS, INTENTS, ENTITIES, strict=True)]
)


@pytest.mark.parametrize("check", SKLEARN_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("make", ESTIMATORS, ids=lambda m: m.__name__)
def test_sklearn_parameter_checks(make: Callable[[], BaseEstimator], check: Callable[..., None]) -> None:
    estimator = make()
    check(type(estimator).__name__, estimator)


@pytest.mark.parametrize("make", ESTIMATORS, ids=lambda m: m.__name__)
def test_every_init_argument_is_a_stored_parameter(make: Callable[[], BaseEstimator]) -> None:
    estimator = make()
    names = [p for p in inspect.signature(type(estimator).__init__).parameters if p != "self"]
    assert sorted(estimator.get_params(deep=False)) == sorted(names)
    assert not [k for k in vars(estimator) if k.endswith("_")]


def test_init_does_not_validate_fit_does() -> None:
    # Out-of-range values are stored as given (clone and set_params must not fail); fit refuses them.
    clf = IntentClassifier(char_ngram_min=6, char_ngram_max=2)
    assert clf.get_params()["char_ngram_min"] == 6
    with pytest.raises(ValueError, match="char_ngram_min must not exceed char_ngram_max"):
        clf.fit(TEXTS, INTENTS)
    crf = CRFEntityExtractor(features="fancy")
    assert clone(crf).features == "fancy"
    with pytest.raises(ValueError, match="features must be one of"):
        crf.fit(TEXTS, ENTITIES)


def test_estimator_defaults_are_the_options_defaults() -> None:
    defaults = LocalModelOptions()
    assert {k: v for k, v in IntentClassifier().get_params().items() if k in INTENT_OPTIONS} == (
        defaults.intent_params()
    )
    assert {k: v for k, v in CRFEntityExtractor().get_params().items() if k in ENTITY_OPTIONS} == (
        defaults.entity_params()
    )
    assert SentenceEmbedder().model_name == defaults.embedding_model
    options = LocalModelOptions(C=0.5, crf_c1=0.2, crf_features="basic", word_pair_window=3)
    assert IntentClassifier.from_options(options, seed=4).get_params() == {
        **IntentClassifier().get_params(),
        "C": 0.5,
        "word_pair_window": 3,
        "random_state": 4,
    }
    assert CRFEntityExtractor.from_options(options).get_params() == {
        **CRFEntityExtractor().get_params(),
        "c1": 0.2,
        "features": "basic",
    }


# -- NLUModel: its parameters are the options object, the seed and the cache folder ------------------------


def test_nlu_model_params_round_trip_and_set_params_changes_the_fit() -> None:
    options = LocalModelOptions(C=0.5, calibration_folds=0)
    model = NLUModel(options, random_state=3)
    assert model.get_params() == {"options": options, "random_state": 3, "embedding_cache_dir": None}
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert copy.set_params(random_state=9, options=LocalModelOptions(crf_c1=0.3)) is copy
    assert copy.get_params()["random_state"] == 9 and model.get_params()["random_state"] == 3
    assert copy.fit(DATASET) is copy
    assert copy.seed_ == 9 and copy.options_ == LocalModelOptions(crf_c1=0.3)
    assert copy.intent_.get_params()["random_state"] == 9
    assert copy.entities_.get_params()["c1"] == 0.3
    assert copy.options is not None  # params are never replaced by fit
    assert NLUModel().fit(DATASET).options is None and NLUModel().fit(DATASET).options_ == LocalModelOptions()


def test_a_clone_of_a_fitted_nlu_model_is_unfitted_and_refits_the_same() -> None:
    fitted = NLUModel(LocalModelOptions(), random_state=1).fit(DATASET)
    copy = clone(fitted)
    assert not [k for k in vars(copy) if k.endswith("_")]
    with pytest.raises(NotFittedError, match="not fitted"):
        copy.parse(["hi"])
    refit = copy.fit(DATASET)
    probes = ["fly to Berlin", "hello there"]
    assert refit.parse(probes) == fitted.parse(probes)


def test_intent_classifier_set_params_then_fit_uses_them() -> None:
    clf = clone(IntentClassifier(random_state=0)).set_params(word_pair_window=0, calibration_folds=0)
    clf.fit(TEXTS, INTENTS)
    assert clf.temperature_ == 1.0  # calibration off
    assert [name for name, _ in clf.pipeline_.named_steps["features"].transformer_list] == ["words", "chars"]
    assert np.isclose(clf.predict_proba(["hi"]).sum(), 1.0)


def _fitted_attributes(estimator: Any) -> list[str]:
    return sorted(k for k in vars(estimator) if k.endswith("_") and not k.startswith("_"))


def test_fit_adds_only_fitted_attributes_and_keeps_the_parameters() -> None:
    for estimator, fit in [
        (IntentClassifier(random_state=0), lambda e: e.fit(TEXTS, INTENTS)),
        (CRFEntityExtractor(), lambda e: e.fit(TEXTS, ENTITIES, intents=INTENTS)),
        (NLUModel(), lambda e: e.fit(DATASET)),
    ]:
        before = dict(estimator.get_params(deep=False))
        public = {k for k in vars(estimator) if not k.startswith("_")}
        assert fit(estimator) is estimator
        assert estimator.get_params(deep=False) == before
        added = {k for k in vars(estimator) if not k.startswith("_")} - public
        assert added and all(k.endswith("_") for k in added), added
        assert _fitted_attributes(estimator)
