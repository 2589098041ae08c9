"""Intent and entity metrics of one model on one frozen test set.

``evaluate(test, parses)`` lines predictions up with gold examples and returns an ``EvaluationResult``:
accuracy, macro / weighted precision, recall and F1, a per-intent report and an error list in the shapes Rasa
writes (``intent_report.json``, ``intent_errors.json``), the confusion matrix, the precision-recall curve of
"the top intent is correct" against its confidence, the confidence threshold that reaches a target precision,
and exact-span entity precision / recall / F1.

Choices worth knowing:

* Averages run over the intents of the **gold test set**. A prediction of an intent the test set does not
  contain is an error (a false negative of the true intent) but adds no class of its own to the macro
  average, so two models evaluated on the same test set are always averaged over the same intents.
  The confusion matrix does show such intents, as columns.
* ``pr_auc`` is **average precision** (``sklearn.metrics.average_precision_score``): the step-wise area, no
  trapezoid interpolation, so it is not optimistic for the coarse curves that calibrated classifiers give.
* Entities are scored by exact span: a predicted entity is a true positive only when ``(start, end, entity)``
  equals a gold span of the same utterance (micro average over all spans; per type as well).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support

from nluflow.backends.base import Parse
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import ConfigError

__all__ = [
    "EntityMetrics",
    "EntityTypeMetrics",
    "EvaluationResult",
    "entity_metrics",
    "evaluate",
    "threshold_for_precision",
]

# Precision is compared with the target with this slack, so 19/20 reaches a target of 0.95 whatever the
# rounding of either side.
_EPS = 1e-12
_CONFUSED_WITH_TOP = 3
_SpanKey = tuple[int, int, str]


class EntityTypeMetrics(BaseModel):
    """Exact-span precision, recall and F1 of one entity type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: float
    recall: float
    f1: float
    support: int = Field(description="Gold spans of this type in the test set.")


class EntityMetrics(BaseModel):
    """Exact-span ``(start, end, entity)`` micro precision, recall and F1, overall and per type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: float
    recall: float
    f1: float
    support: int = Field(description="Gold spans in the test set.")
    per_type: dict[str, EntityTypeMetrics] = Field(
        description="Per entity type, gold or predicted; a type only ever predicted has support 0."
    )


class EvaluationResult(BaseModel):
    """Everything measured for one model on one frozen test set (plain data; JSON round-trips)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(description="Test utterances.")
    test_sha256: str = Field(description="Content hash of the test set; comparisons need equal hashes.")
    target_precision: float = Field(description="Precision the confidence threshold was chosen for.")
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    intent_report: dict[str, Any] = Field(description="Rasa intent_report.json shape.")
    errors: list[dict[str, Any]] = Field(description="Rasa intent_errors.json shape, most confident first.")
    labels: list[str] = Field(description="Sorted gold and predicted intents; confusion matrix order.")
    confusion: list[list[int]] = Field(description="Rows: true intent; columns: predicted intent.")
    pr_precision: list[float]
    pr_recall: list[float]
    pr_thresholds: list[float]
    pr_auc: float = Field(description="Average precision of 'top intent is correct' against its confidence.")
    threshold: float | None = Field(description="Smallest confidence threshold reaching target_precision.")
    coverage: float = Field(description="Share of utterances accepted at the threshold (0 without one).")
    precision_at_threshold: float | None
    entity: EntityMetrics | None = Field(
        description="None when the gold test set has no entities or the platform predicts none (see "
        "``entity_absent_reason``): absent, never a 0."
    )
    entity_absent_reason: str | None = Field(
        default=None,
        description="Why entity metrics are absent although the test set has entities (the platform "
        "returned no entity predictions); None otherwise.",
    )
    y_true: list[str]
    y_pred: list[str]
    confidences: list[float]

    @property
    def gold_labels(self) -> list[str]:
        """The intents of the test set, sorted: the classes every average runs over."""
        return sorted(set(self.y_true))

    def intent_f1(self) -> dict[str, float]:
        """F1 per gold intent."""
        return {label: float(self.intent_report[label]["f1-score"]) for label in self.gold_labels}

    def headline(self) -> dict[str, float]:
        """The few numbers a run is judged by (and that the model store keeps in the manifest)."""
        out: dict[str, float] = {
            "intent_accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "macro_precision": self.macro_precision,
            "weighted_f1": self.weighted_f1,
            "pr_auc": self.pr_auc,
            "coverage_at_target": self.coverage,
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.entity is not None:
            out["entity_f1"] = self.entity.f1
            out["entity_precision"] = self.entity.precision
            out["entity_recall"] = self.entity.recall
        return out


def threshold_for_precision(
    correct: Sequence[bool], confidences: Sequence[float], target: float
) -> tuple[float | None, float, float | None]:
    """The smallest confidence threshold whose accepted utterances reach ``target`` precision.

    An utterance is accepted when its confidence is ``>= threshold``. Returns ``(threshold, coverage,
    precision)``: the threshold (``None`` when no threshold reaches the target), the share of utterances it
    accepts (0 without a threshold) and the precision on them. The smallest such threshold accepts the most
    utterances, so it is the operating point a fallback rule would use.
    """
    if len(correct) != len(confidences):
        raise ConfigError(
            f"threshold_for_precision got {len(correct)} correctness flags but {len(confidences)} "
            "confidences; expected one of each per utterance; no threshold was computed"
        )
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target precision {target} is out of range; expected 0 < target <= 1")
    n = len(correct)
    if n == 0:
        return None, 0.0, None
    conf = np.asarray(confidences, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    cum_correct = np.cumsum(ok[order])
    cum_n = np.arange(1, n + 1)
    # A threshold accepts whole groups of equal confidence: only the last index of each group is reachable.
    group_end = np.flatnonzero(np.append(conf_sorted[1:] != conf_sorted[:-1], True))
    precision = cum_correct[group_end] / cum_n[group_end]
    reaching = np.flatnonzero(precision >= target - _EPS)
    if reaching.size == 0:
        return None, 0.0, None
    best = int(reaching[-1])
    end = int(group_end[best])
    return float(conf_sorted[end]), float((end + 1) / n), float(precision[best])


def entity_metrics(gold: Sequence[Sequence[Entity]], predicted: Sequence[Sequence[Entity]]) -> EntityMetrics:
    """Exact-span micro precision / recall / F1 over all utterances, and per entity type."""
    tp: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    for gold_ents, pred_ents in zip(gold, predicted, strict=True):
        gold_spans: Counter[_SpanKey] = Counter((e.start, e.end, e.entity) for e in gold_ents)
        pred_spans: Counter[_SpanKey] = Counter((e.start, e.end, e.entity) for e in pred_ents)
        for key, count in (gold_spans & pred_spans).items():
            tp[key[2]] += count
        for key, count in gold_spans.items():
            n_gold[key[2]] += count
        for key, count in pred_spans.items():
            n_pred[key[2]] += count
    per_type = {
        etype: EntityTypeMetrics(**_prf(tp[etype], n_pred[etype], n_gold[etype]), support=n_gold[etype])
        for etype in sorted(set(n_gold) | set(n_pred))
    }
    totals = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    return EntityMetrics(**totals, support=sum(n_gold.values()), per_type=per_type)


def evaluate(test: Dataset, parses: Sequence[Parse], target_precision: float = 0.95) -> EvaluationResult:
    """Score ``parses`` (one per test utterance, in test order) against the gold ``test`` set.

    Raises ``ConfigError`` when the test set is empty, the counts differ, a text does not line up with its
    prediction (compared with whitespace collapsed), or a confidence is not a finite number.
    """
    _check_inputs(test, parses, target_precision)
    examples = test.examples
    y_true = [e.intent for e in examples]
    y_pred = [p.intent.name for p in parses]
    confidences = [float(p.intent.confidence) for p in parses]
    correct = np.asarray([t == p for t, p in zip(y_true, y_pred, strict=True)], dtype=bool)
    pr_precision, pr_recall, pr_thresholds, pr_auc = _pr_curve(correct, confidences)
    threshold, coverage, precision_at = threshold_for_precision(
        correct.tolist(), confidences, target_precision
    )
    entity, entity_absent_reason = _entity_scores(examples, parses)
    return EvaluationResult(
        n=len(examples),
        test_sha256=test.sha256(),
        target_precision=target_precision,
        **_intent_scores(y_true, y_pred, correct),
        errors=_errors(examples, parses),
        pr_precision=pr_precision,
        pr_recall=pr_recall,
        pr_thresholds=pr_thresholds,
        pr_auc=pr_auc,
        threshold=threshold,
        coverage=coverage,
        precision_at_threshold=precision_at,
        entity=entity,
        entity_absent_reason=entity_absent_reason,
        y_true=y_true,
        y_pred=y_pred,
        confidences=confidences,
    )


def _check_inputs(test: Dataset, parses: Sequence[Parse], target_precision: float) -> None:
    if not 0.0 < target_precision <= 1.0:
        raise ConfigError(f"target precision {target_precision} is out of range; expected 0 < target <= 1")
    examples = test.examples
    if not examples:
        raise ConfigError(
            f"test set {test.source} is empty; expected at least one utterance; nothing evaluated"
        )
    if len(parses) != len(examples):
        raise ConfigError(
            f"test set {test.source} has {len(examples)} utterances but {len(parses)} predictions were "
            "given; expected one prediction per test utterance, in test order; nothing was evaluated"
        )
    _check_alignment(examples, parses)


def _intent_scores(y_true: list[str], y_pred: list[str], correct: NDArray[np.bool_]) -> dict[str, Any]:
    """Accuracy, macro and weighted averages, the per-intent report and the confusion matrix."""
    gold_labels = sorted(set(y_true))
    labels = sorted(set(gold_labels) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    true_idx = np.fromiter((index[t] for t in y_true), dtype=np.intp, count=len(y_true))
    pred_idx = np.fromiter((index[p] for p in y_pred), dtype=np.intp, count=len(y_pred))
    k = len(labels)
    confusion = np.bincount(true_idx * k + pred_idx, minlength=k * k).reshape(k, k)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=gold_labels, zero_division=0
    )
    weights = support / support.sum()
    intent_report = _intent_report(gold_labels, labels, confusion, index, precision, recall, f1, support)
    accuracy = float(correct.mean())
    intent_report["accuracy"] = accuracy
    intent_report["macro avg"] = _avg_entry(precision.mean(), recall.mean(), f1.mean(), len(y_true))
    intent_report["weighted avg"] = _avg_entry(
        weights @ precision, weights @ recall, weights @ f1, len(y_true)
    )
    return {
        "accuracy": accuracy,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_precision": float(weights @ precision),
        "weighted_recall": float(weights @ recall),
        "weighted_f1": float(weights @ f1),
        "intent_report": intent_report,
        "labels": labels,
        "confusion": confusion.tolist(),
    }


def _entity_scores(
    examples: Sequence[Example], parses: Sequence[Parse]
) -> tuple[EntityMetrics | None, str | None]:
    """Entity metrics, or None with the reason they are absent (never a 0 for a platform that is blind)."""
    if not any(e.entities for e in examples):
        return None, None
    # A platform that returns no entity predictions is not scored 0 on entities: its metrics are absent.
    if not all(p.entities_predicted for p in parses):
        return None, (
            "the platform returned no entity predictions, so entity metrics were not computed (absent, not 0)"
        )
    return entity_metrics([e.entities for e in examples], [p.entities for p in parses]), None


def _check_alignment(examples: Sequence[Example], parses: Sequence[Parse]) -> None:
    mismatched = [
        i for i, (e, p) in enumerate(zip(examples, parses, strict=True)) if _norm(e.text) != _norm(p.text)
    ]
    if mismatched:
        i = mismatched[0]
        more = f" ({len(mismatched) - 1} more utterances do not line up)" if len(mismatched) > 1 else ""
        raise ConfigError(
            f"{examples[i].where()}: test utterance {i} is {examples[i].text!r} but prediction {i} is for "
            f"{parses[i].text!r}{more}; expected predictions in test-set order; nothing was evaluated"
        )
    bad = [i for i, p in enumerate(parses) if not math.isfinite(p.intent.confidence)]
    if bad:
        i = bad[0]
        raise ConfigError(
            f"{examples[i].where()}: prediction {i} for {parses[i].text!r} has confidence "
            f"{parses[i].intent.confidence}; expected a finite number ({len(bad)} such predictions); "
            "nothing was evaluated"
        )


def _norm(text: str) -> str:
    return " ".join(text.split())


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _avg_entry(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    return {"precision": float(precision), "recall": float(recall), "f1-score": float(f1), "support": support}


def _intent_report(
    gold_labels: list[str],
    labels: list[str],
    confusion: NDArray[np.int_],
    index: dict[str, int],
    precision: NDArray[np.float64],
    recall: NDArray[np.float64],
    f1: NDArray[np.float64],
    support: NDArray[np.int_],
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for j, label in enumerate(gold_labels):
        row = confusion[index[label]].copy()
        row[index[label]] = 0
        # Most frequent wrong predictions first; ties by label order, so the report is stable.
        top = [int(c) for c in np.argsort(-row, kind="stable")[:_CONFUSED_WITH_TOP] if row[c] > 0]
        report[label] = {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1-score": float(f1[j]),
            "support": int(support[j]),
            "confused_with": {labels[c]: int(row[c]) for c in top},
        }
    return report


def _errors(examples: Sequence[Example], parses: Sequence[Parse]) -> list[dict[str, Any]]:
    wrong: list[dict[str, Any]] = [
        {
            "text": e.text,
            "intent": e.intent,
            "intent_prediction": {"name": p.intent.name, "confidence": float(p.intent.confidence)},
        }
        for e, p in zip(examples, parses, strict=True)
        if e.intent != p.intent.name
    ]
    # Confident mistakes first: they are the ones a confidence threshold cannot catch. The sort is stable.
    wrong.sort(key=lambda err: -err["intent_prediction"]["confidence"])
    return wrong


def _pr_curve(
    correct: NDArray[np.bool_], confidences: Sequence[float]
) -> tuple[list[float], list[float], list[float], float]:
    if not correct.any():
        # No correct prediction: precision is 0 everywhere and recall is undefined; sklearn would warn and
        # return NaN, which does not survive JSON. Report the degenerate curve instead.
        return [0.0, 1.0], [0.0, 0.0], [min(float(c) for c in confidences)], 0.0
    precision, recall, thresholds = precision_recall_curve(correct.astype(int), np.asarray(confidences))
    auc = float(average_precision_score(correct.astype(int), np.asarray(confidences)))
    return precision.tolist(), recall.tolist(), thresholds.tolist(), auc
