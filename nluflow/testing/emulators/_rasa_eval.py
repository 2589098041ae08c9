"""Rasa 3.x's ``/model/test/intents`` answer, computed from the local model's parses (see ``rasa.py``)."""

from __future__ import annotations

from typing import Any

from nluflow.data.schema import Dataset, Entity, Example


def from_rasa_json(body: Any) -> Dataset:
    items = body["rasa_nlu_data"]["common_examples"]
    examples = [
        Example(
            text=i["text"],
            intent=i["intent"],
            entities=tuple(
                Entity(**{k: e[k] for k in ("start", "end", "entity", "value")})
                for e in i.get("entities", [])
            ),
        )
        for i in items
    ]
    return Dataset.of(examples)


def intent_evaluation(data: Dataset, parses: list[Any]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, classification_report, f1_score, precision_score

    targets = data.intents
    predicted = [p.intent.name for p in parses]
    labels = sorted(set(targets))
    report = classification_report(targets, predicted, labels=labels, output_dict=True, zero_division=0)
    return {
        "predictions": [
            {"text": p.text, "intent": t, "predicted": p.intent.name, "confidence": p.intent.confidence}
            for t, p in zip(targets, parses, strict=True)
        ],
        "report": report,
        "precision": float(
            precision_score(targets, predicted, labels=labels, average="weighted", zero_division=0)
        ),
        "f1_score": float(f1_score(targets, predicted, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(targets, predicted)),
        "errors": [
            {
                "text": p.text,
                "intent": t,
                "intent_prediction": {"name": p.intent.name, "confidence": p.intent.confidence},
            }
            for t, p in zip(targets, parses, strict=True)
            if t != p.intent.name
        ],
    }


def sanitize(data: Dataset) -> Dataset:
    """Rasa's ``TrainingData.sanitize_examples``: identical examples (text, intent, entities) kept once."""
    seen: set[tuple[str, str, tuple[tuple[int, int, str, str], ...]]] = set()
    kept = []
    for example in data.examples:
        key = (
            example.text,
            example.intent,
            tuple((e.start, e.end, e.entity, e.value) for e in example.entities),
        )
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return Dataset.of(kept)


def _entity_dicts(entities: Any, extractor: str | None) -> list[dict[str, Any]]:
    out = []
    for e in entities:
        item: dict[str, Any] = {"start": e.start, "end": e.end, "value": e.value, "entity": e.entity}
        if extractor is not None:
            item.update(confidence_entity=0.99, extractor=extractor)
        out.append(item)
    return out


def entity_evaluation(data: Dataset, parses: list[Any]) -> dict[str, Any]:
    """Rasa's ``evaluate_entities`` for one extractor: summary figures and the utterances it got wrong."""
    extractor = "DIETClassifier"
    tp = n_pred = n_gold = 0
    errors = []
    for example, parse in zip(data.examples, parses, strict=True):
        gold = {(e.start, e.end, e.entity) for e in example.entities}
        pred = {(e.start, e.end, e.entity) for e in parse.entities}
        tp, n_pred, n_gold = tp + len(gold & pred), n_pred + len(pred), n_gold + len(gold)
        if gold != pred:
            errors.append(
                {
                    "text": example.text,
                    "entities": _entity_dicts(example.entities, None),
                    "predicted_entities": _entity_dicts(parse.entities, extractor),
                }
            )
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        extractor: {
            "report": {},
            "precision": precision,
            "f1_score": f1,
            "accuracy": 1.0 - len(errors) / len(data),
            "errors": errors,
        }
    }
