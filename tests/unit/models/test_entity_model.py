"""The entity CRF: BIO encoding, exact offsets, unicode, no-entity data, estimator contract, SNIPS F1."""

from __future__ import annotations

import json
import logging
import pickle
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from sklearn.base import clone

from nluflow.backends.base import LocalModelOptions
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import NotFittedError
from nluflow.models.entities import (
    CRFEntityExtractor,
    bio_tags,
    build_gazetteer,
    gazetteer_matches,
    sentence_features,
    span_scores,
    spans_from_tags,
)
from nluflow.models.nlu import NLUModel
from nluflow.models.tokenize import tokenize

CITIES = [
    "Paris",
    "Berlin",
    "München",
    "Besançon",
    "Cádiz",
    "São Paulo",
    "New York",
    "Zürich",
    "Kraków",
    "Oslo",
]
DAYS = ["today", "tomorrow", "Monday", "next Friday", "mañana"]
TEMPLATES = [
    ("book a flight to {city} {day}", "book_flight"),
    ("I want to fly to {city} on {day}", "book_flight"),
    ("what's the weather in {city} {day}?", "weather"),
    ("Wetter in {city} {day}", "weather"),
]


def _example(template: str, intent: str, city: str, day: str) -> Example:
    text = template.format(city=city, day=day)
    c = text.index(city)
    d = text.index(day, c + len(city))
    entities = (
        Entity(start=c, end=c + len(city), entity="city", value=city),
        Entity(start=d, end=d + len(day), entity="date", value=day),
    )
    return Example(text=text, intent=intent, entities=entities)


def _synthetic() -> list[Example]:
    return [
        _example(template, intent, city, day)
        for i, city in enumerate(CITIES)
        for j, (template, intent) in enumerate(TEMPLATES)
        for day in [DAYS[(i + j) % len(DAYS)]]
    ]


EXAMPLES = _synthetic()
TEXTS = [e.text for e in EXAMPLES]
ENTITIES = [list(e.entities) for e in EXAMPLES]
INTENTS = [e.intent for e in EXAMPLES]


def _read_jsonl(path: Path) -> Dataset:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Dataset.of((Example.model_validate(row) for row in rows), source=str(path))


@pytest.fixture(scope="module")
def fitted() -> CRFEntityExtractor:
    return CRFEntityExtractor().fit(TEXTS, ENTITIES, intents=INTENTS)


# -- BIO encoding and decoding -------------------------------------------------------------------------------


def test_bio_tags_and_spans_round_trip() -> None:
    text = "fly to New York on Monday"
    tokens = tokenize(text)
    ents = [
        Entity(start=7, end=15, entity="city", value="New York"),
        Entity(start=19, end=25, entity="date", value="Monday"),
    ]
    problems: Counter[str] = Counter()
    tags = bio_tags(text, ents, tokens, problems)
    assert tags == ["O", "O", "B-city", "I-city", "O", "B-date"]
    assert not problems
    assert spans_from_tags(text, tokens, tags) == ents


def test_annotation_off_token_boundaries_is_tagged_on_overlapping_tokens() -> None:
    text = "flights to Parisian suburbs"
    tokens = tokenize(text)
    problems: Counter[str] = Counter()
    tags = bio_tags(text, [Entity(start=11, end=16, entity="city", value="Paris")], tokens, problems)
    assert tags == ["O", "O", "B-city", "O"]
    assert sum(problems.values()) == 1 and "token boundaries" in next(iter(problems))
    # the predicted span covers the whole token, with exact offsets
    assert spans_from_tags(text, tokens, tags) == [Entity(start=11, end=19, entity="city", value="Parisian")]


def test_overlapping_and_impossible_annotations_are_skipped_and_counted() -> None:
    text = "to New York"
    tokens = tokenize(text)
    problems: Counter[str] = Counter()
    ents = [
        Entity(start=3, end=11, entity="city", value="New York"),
        Entity(start=3, end=6, entity="state", value="New"),  # overlaps the longer one: skipped
        Entity(start=20, end=25, entity="x", value=""),  # outside the text
    ]
    assert bio_tags(text, ents, tokens, problems) == ["O", "B-city", "I-city"]
    assert problems == Counter(
        {"span overlaps an earlier entity; skipped": 1, "span outside the text or empty; skipped": 1}
    )


def test_skipped_annotations_are_reported_once_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    text = "to New York"
    city = Entity(start=3, end=11, entity="city", value="New York")
    state = Entity(start=3, end=6, entity="state", value="New")
    with caplog.at_level(logging.WARNING, logger="nluflow.models.entities"):
        CRFEntityExtractor().fit(
            [text, text, "hi"], [[city, state], [city, state], []], source="data/nlu.yml"
        )
    assert [r.getMessage() for r in caplog.records] == [
        "data/nlu.yml: 2 entity annotation(s): span overlaps an earlier entity; skipped"
    ]


def test_decoding_is_lenient_about_stray_inside_tags() -> None:
    text = "a b c d"
    tokens = tokenize(text)
    spans = spans_from_tags(text, tokens, ["I-x", "I-x", "I-y", "B-y"])
    assert [(e.start, e.end, e.entity) for e in spans] == [(0, 3, "x"), (4, 5, "y"), (6, 7, "y")]


def test_features_include_window_boundaries_and_intent() -> None:
    feats = sentence_features(tokenize("Fly to Paris"), intent="book", window=2)
    assert "BOS" in feats[0] and "EOS" in feats[2]
    assert "w=paris" in feats[2] and "sh=Xxx" in feats[2] and "title" in feats[2]
    assert "-2w=fly" in feats[2] and "+1w=to" in feats[0]
    assert "i=book" in feats[1] and "iw=book|to" in feats[1]


def test_rich_features_add_affixes_and_bigrams() -> None:
    tokens = tokenize("Fly to Paris")
    assert not any(f.startswith(("p4=", "b-=")) for f in sentence_features(tokens)[2])
    feats = sentence_features(tokens, rich=True)
    assert {"p2=pa", "s2=is", "p4=pari", "s4=aris", "b-=to|paris", "b+=paris|</s>"} <= set(feats[2])
    assert "b-=<s>|fly" in feats[0]


def test_gazetteer_is_built_from_annotations_and_matches_phrases() -> None:
    gazetteer = build_gazetteer(
        ["fly to New York", "weather in new york", "play New York"],
        [
            [Entity(start=7, end=15, entity="city", value="New York")],
            [Entity(start=11, end=19, entity="city", value="new york")],
            [Entity(start=5, end=13, entity="song", value="New York")],
        ],
    )
    assert gazetteer == {"new york": ("city", "song")}
    tokens = tokenize("trains to NEW YORK today")
    assert gazetteer_matches(tokens, gazetteer) == [
        [],
        [],
        ["gB=city", "gB=song"],
        ["gI=city", "gI=song"],
        [],
    ]
    feats = sentence_features(tokens, gazetteer=gazetteer)
    assert "gB=city" in feats[2] and "gI=song" in feats[3]


def test_the_fitted_gazetteer_holds_the_training_phrases(fitted: CRFEntityExtractor) -> None:
    assert fitted.gazetteer_["são paulo"] == ("city",)
    assert fitted.gazetteer_["next friday"] == ("date",)
    assert CRFEntityExtractor(gazetteer=False).fit(TEXTS, ENTITIES).gazetteer_ == {}


def test_unknown_feature_set_is_refused() -> None:
    with pytest.raises(ValueError, match="features must be one of"):
        CRFEntityExtractor(features="fancy").fit(TEXTS, ENTITIES)


def test_span_scores_are_exact_span_micro() -> None:
    gold = [[Entity(start=0, end=5, entity="city", value="Paris")], []]
    pred = [
        [Entity(start=0, end=4, entity="city", value="Pari")],
        [Entity(start=0, end=1, entity="x", value="a")],
    ]
    assert span_scores(gold, pred) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert span_scores(gold, gold)["f1"] == 1.0
    assert span_scores([[]], [[]])["f1"] == 1.0


# -- the estimator -------------------------------------------------------------------------------------------


def test_init_only_stores_parameters_and_clone_works(fitted: CRFEntityExtractor) -> None:
    extractor = CRFEntityExtractor(c1=0.2, max_iterations=30)
    assert not [k for k in vars(extractor) if k.endswith("_")]
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        copy.predict(["fly to Paris"])


def test_predict_before_fit_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        CRFEntityExtractor().predict(["fly to Paris"])
    with pytest.raises(NotFittedError):
        CRFEntityExtractor().save_model(Path("unused.crfsuite"))


def test_fit_returns_self_and_learns_the_training_data() -> None:
    extractor = CRFEntityExtractor()
    assert extractor.fit(TEXTS, ENTITIES, intents=INTENTS) is extractor
    assert extractor.entity_types_ == ("city", "date")
    assert extractor.uses_intents_ is True
    assert extractor.score(TEXTS, ENTITIES, intents=INTENTS) == 1.0


def test_every_predicted_entity_has_exact_offsets(fitted: CRFEntityExtractor) -> None:
    texts = [
        "book a flight to Lyon tomorrow",
        "I want to fly to Saint-Étienne on Sunday",
        unicodedata.normalize("NFD", "Wetter in Göteborg mañana"),
        "what's the weather in   Zürich today?!",
        "🎵 fly to Oslo 🎵",
    ]
    predictions = fitted.predict(
        texts, intents=["book_flight", "book_flight", "weather", "weather", "book_flight"]
    )
    assert any(predictions)
    for text, entities in zip(texts, predictions, strict=True):
        for e in entities:
            assert text[e.start : e.end] == e.value


def test_unicode_entities_are_found_whole(fitted: CRFEntityExtractor) -> None:
    text = "book a flight to Kraków mañana"
    [entities] = fitted.predict([text], intents=["book_flight"])
    assert {(e.value, e.entity) for e in entities} == {("Kraków", "city"), ("mañana", "date")}


def test_empty_and_blank_texts_have_no_entities(fitted: CRFEntityExtractor) -> None:
    assert fitted.predict(["", "  "], intents=["weather", "weather"]) == [[], []]


def test_pickle_round_trip_keeps_predictions_and_score(fitted: CRFEntityExtractor) -> None:
    fitted.predict(TEXTS[:1], intents=INTENTS[:1])  # opens the crfsuite tagger, which must not be pickled
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.predict(TEXTS, intents=INTENTS) == fitted.predict(TEXTS, intents=INTENTS)
    assert restored.score(TEXTS, ENTITIES, INTENTS) == fitted.score(TEXTS, ENTITIES, INTENTS)


def test_saved_crfsuite_file_rebuilds_the_extractor(fitted: CRFEntityExtractor, tmp_path: Path) -> None:
    path = fitted.save_model(tmp_path / "entities.crfsuite")
    assert path is not None and path.stat().st_size > 0
    rebuilt = CRFEntityExtractor.from_fitted(
        fitted.get_params(), path.read_bytes(), fitted.labels_, True, fitted.gazetteer_
    )
    assert rebuilt.predict(TEXTS, intents=INTENTS) == fitted.predict(TEXTS, intents=INTENTS)


def test_a_model_saved_before_the_rich_features_keeps_its_features(tmp_path: Path) -> None:
    old = CRFEntityExtractor(features="basic", gazetteer=False).fit(TEXTS, ENTITIES, intents=INTENTS)
    params = {
        k: v for k, v in old.get_params().items() if k not in ("features", "gazetteer", "gazetteer_folds")
    }
    assert old.model_bytes_ is not None
    rebuilt = CRFEntityExtractor.from_fitted(params, old.model_bytes_, old.labels_, True)
    assert (rebuilt.features, rebuilt.gazetteer) == ("basic", False)
    probes = ["book a flight to Lyon tomorrow", "Wetter in Göteborg mañana"]
    intents = ["book_flight", "weather"]
    assert rebuilt.predict(probes, intents=intents) == old.predict(probes, intents=intents)


def test_fitted_with_intents_needs_intents_to_predict(fitted: CRFEntityExtractor) -> None:
    with pytest.raises(ValueError, match="intents"):
        fitted.predict(["fly to Paris"])


def test_without_intent_features() -> None:
    extractor = CRFEntityExtractor(use_intents=False).fit(TEXTS, ENTITIES, intents=INTENTS)
    assert extractor.uses_intents_ is False
    assert extractor.score(TEXTS, ENTITIES) == 1.0


def test_data_without_entities_makes_a_no_op_extractor(tmp_path: Path) -> None:
    extractor = CRFEntityExtractor().fit(["hello there", "bye now"], [[], []])
    assert extractor.model_bytes_ is None and extractor.entity_types_ == ()
    assert extractor.predict(["fly to Paris", ""]) == [[], []]
    assert extractor.save_model(tmp_path / "entities.crfsuite") is None
    assert not (tmp_path / "entities.crfsuite").exists()


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="single str"):
        CRFEntityExtractor().fit("fly to Paris", [[]])
    with pytest.raises(ValueError, match="2 texts but y has 1"):
        CRFEntityExtractor().fit(["a", "b"], [[]])


# -- accuracy on the vendored benchmark ----------------------------------------------------------------------


@pytest.mark.slow
def test_snips_entity_exact_span_f1_with_default_options(datasets: Path) -> None:
    """End to end (entities use *predicted* intents): fit NLUModel with defaults, parse the SNIPS test set."""
    folder = datasets / "snips2017"
    train = _read_jsonl(folder / "train.jsonl")
    test = _read_jsonl(folder / "test.jsonl")
    model = NLUModel(LocalModelOptions(), random_state=42).fit(train)
    parses = model.parse(test.texts)
    for parse in parses:
        assert all(parse.text[e.start : e.end] == e.value for e in parse.entities)
    scores = span_scores([list(e.entities) for e in test], [list(p.entities) for p in parses])
    assert scores["f1"] >= 0.85, f"SNIPS entity exact-span micro F1 {scores['f1']:.4f} < 0.85"
