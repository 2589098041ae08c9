"""Evaluating a model on a Rasa server without replacing the served one: ``POST /model/test/intents``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nluflow.backends.base import IntentScore, Parse
from nluflow.backends.errors import ContractError
from nluflow.backends.http import HttpSession, require
from nluflow.backends.rasa.documents import FORMAT_VERSION, YAML_CONTENT_TYPE, nlu_yaml
from nluflow.data.schema import Entity, Example

# Intent given to unlabelled texts sent to /model/test/intents (Rasa needs one; its value is ignored).
PLACEHOLDER_INTENT = "nluflow_unlabelled"
# Rasa 3.x evaluates intents only with ≥ 2 distinct intents: a one-intent set gets a copy of its first text
# under this intent (its prediction is the same text's; Rasa's own figures are never used).
PADDING_INTENT = "nluflow_padding"


def _rasa_text(text: str) -> str:
    """The text as Rasa reads it back from our YAML: one line, stripped (its YAML reader strips examples)."""
    return text.replace("\n", " ").strip()


def _shifted(example: Example) -> tuple[Entity, ...]:
    """The example's entities with offsets into ``_rasa_text`` (leading whitespace stripped)."""
    text = example.text.replace("\n", " ")
    offset = len(text) - len(text.lstrip())
    if not offset:
        return example.entities
    return tuple(
        e.model_copy(update={"start": e.start - offset, "end": e.end - offset})
        for e in example.entities
        if e.start >= offset
    )


def _entity_from_rasa(item: Any) -> Entity | None:
    """One entity in Rasa's shape (``start``, ``end``, ``entity``, ``value``), or None if it is not one."""
    if not isinstance(item, dict):
        return None
    start, end, entity = item.get("start"), item.get("end"), item.get("entity")
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(entity, str) and entity):
        return None
    if start < 0 or end < start:
        return None
    value = item.get("value")
    return Entity(start=start, end=end, entity=entity, value=value if isinstance(value, str) else str(value))


# Where a model has several entity extractors, Rasa evaluates each; nluflow scores one, this one first.
PREFERRED_EXTRACTOR = "DIETClassifier"


def _entity_predictions(
    section: Any, targets: dict[str, tuple[Entity, ...]], where: str
) -> dict[str, tuple[Entity, ...]]:
    """Per-utterance entity predictions from Rasa's ``entity_evaluation`` section.

    Null (no entity extractor in the model): the model extracts nothing, so every prediction is empty. Else
    the section maps extractor name to ``{"report", "precision", "f1_score", "accuracy", "errors"}``, where
    ``errors`` lists ``{"text", "entities", "predicted_entities"}`` for the utterances that extractor got
    wrong (``collect_incorrect_entity_predictions``); every other utterance was predicted as annotated.
    """
    if section is None:
        return {text: () for text in targets}
    if not isinstance(section, dict) or not section:
        raise ContractError(
            f"{where}: expected entity_evaluation to be null or an object keyed by extractor, found "
            f"{json.dumps(section)[:60]}; the platform's API may have changed"
        )
    extractor = PREFERRED_EXTRACTOR if PREFERRED_EXTRACTOR in section else sorted(section)[0]
    errors = require(section[extractor], "errors", list, f"{where}: entity_evaluation.{extractor}")
    out = dict(targets)
    for error in errors:
        if not isinstance(error, dict) or not isinstance(error.get("text"), str):
            continue
        text = error["text"].strip()
        if text not in out:
            continue
        predicted = error.get("predicted_entities") or []
        if not isinstance(predicted, list):
            raise ContractError(
                f"{where}: entity_evaluation.{extractor} errors: predicted_entities not a list"
            )
        entities = []
        for item in predicted:
            if isinstance(item, dict) and item.get("extractor", extractor) != extractor:
                continue  # the errors list every extractor's predictions; score the chosen one's
            entity = _entity_from_rasa(item)
            if entity is not None:
                entities.append(entity)
        out[text] = tuple(sorted(entities, key=lambda e: (e.start, e.end)))
    return out


def evaluate_intents(session: HttpSession, path: str, examples: Sequence[Example]) -> list[Parse]:
    """``POST /model/test/intents?model=<path>``: Rasa 3.x's ``rasa.nlu.test.run_evaluation``.

    What Rasa answers (rasa/nlu/test.py, ``get_eval_data``, ``evaluate_intents``, ``evaluate_entities``,
    ``run_evaluation``): ``intent_evaluation`` is null unless the data has ≥ 2 distinct intents, so a
    single-intent set is padded with a copy of its first text under ``PADDING_INTENT`` (its prediction is
    the same text's); identical examples are de-duplicated (``TrainingData.sanitize_examples``), so
    predictions are matched back by text and duplicates share one; ``entity_evaluation`` is null without
    an entity extractor (the model then extracts nothing), else keyed by extractor with no per-utterance
    predictions but ``errors``: the utterances whose predicted entities differ from the targets. An
    utterance not among them was predicted as annotated, so its entities are its targets.
    """
    sent = [e.model_copy(update={"text": _rasa_text(e.text), "entities": _shifted(e)}) for e in examples]
    if len({e.intent for e in sent}) < 2:
        sent.append(sent[0].model_copy(update={"intent": PADDING_INTENT}))
    where = f"POST /model/test/intents?model={path}"
    body = session.json(
        "POST",
        "/model/test/intents",
        params={"model": path},
        content=("version: " + json.dumps(FORMAT_VERSION) + "\n" + nlu_yaml(sent)).encode("utf-8"),
        headers={"Content-Type": YAML_CONTENT_TYPE},
        retry_safe=True,
    )
    by_text, count = _intent_predictions(body, where, len({e.intent for e in sent}))
    targets: dict[str, tuple[Entity, ...]] = {}
    for example in sent:
        targets.setdefault(example.text, example.entities)
    predicted_entities = _entity_predictions(body.get("entity_evaluation"), targets, where)
    out = []
    for original, example in zip(examples, sent, strict=False):
        item = by_text.get(example.text)
        if item is None:
            raise ContractError(
                f"{where} returned no prediction for test utterance {original.text!r} "
                f"({count} predictions for {len(by_text)} distinct texts); nothing was scored"
            )
        out.append(_parse(original, item, predicted_entities.get(example.text, ())))
    return out


def _intent_predictions(body: Any, where: str, intents: int) -> tuple[dict[str, dict[str, Any]], int]:
    """The answer's intent predictions by (stripped) text, the first one of each text; and how many."""
    if not isinstance(body, dict):
        raise ContractError(f"{where}: expected a JSON object, found {type(body).__name__}")
    if body.get("intent_evaluation") is None:
        raise ContractError(
            f"{where} answered without an intent evaluation (intent_evaluation is null) although "
            f"{intents} distinct intents were sent; Rasa does this when the model "
            "has no intent classifier; add one (e.g. DIETClassifier) to the pipeline; nothing was scored"
        )
    evaluation = require(body, "intent_evaluation", dict, where)
    predictions = require(evaluation, "predictions", list, f"{where}: intent_evaluation")
    by_text: dict[str, dict[str, Any]] = {}
    for item in predictions:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            by_text.setdefault(item["text"].strip(), item)
    return by_text, len(predictions)


def _parse(original: Example, item: dict[str, Any], entities: tuple[Entity, ...]) -> Parse:
    """The parse of ``original`` from its prediction, entity offsets moved back past stripped whitespace."""
    name = item.get("predicted")
    confidence = item.get("confidence")
    score = IntentScore(
        name=str(name) if name is not None else "",
        confidence=float(confidence) if isinstance(confidence, int | float) else 0.0,
    )
    offset = len(original.text) - len(original.text.lstrip())
    moved = tuple(e.model_copy(update={"start": e.start + offset, "end": e.end + offset}) for e in entities)
    return Parse(text=original.text, intent=score, intent_ranking=(score,), entities=moved)
