"""Champion vs challenger: is the candidate really better than the active model on the same test set?

``paired_bootstrap`` resamples test utterances with replacement and recomputes the metric of both models on
the *same* resample, so the confidence interval of the difference reflects how much the verdict depends on
which utterances happened to be in the test set (and not the much larger variance of each model alone).
The resampling is vectorised with numpy: counts per (resample, class) come from one ``bincount``.

Macro F1 here matches ``evaluate``: it averages over the intents present in the gold labels (of the resample),
and predictions of any other intent count as errors without adding a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from nluflow.errors import ConfigError
from nluflow.evaluation.metrics import EvaluationResult

__all__ = ["BootstrapResult", "macro_f1_from_labels", "paired_bootstrap", "per_intent_deltas"]

Metric = Literal["macro_f1", "accuracy"]
# Resamples per numpy pass: bounds memory (chunk x n x 8 bytes per array) on large test sets.
_CHUNK_ELEMENTS = 4_000_000


class BootstrapResult(BaseModel):
    """Point estimate and percentile confidence interval of ``metric(candidate) - metric(active)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(description="'macro_f1' or 'accuracy'.")
    delta: float = Field(description="Candidate minus active on the full test set.")
    low: float = Field(description="Lower end of the percentile interval of the resampled deltas.")
    high: float = Field(description="Upper end of the percentile interval of the resampled deltas.")
    n_resamples: int
    confidence: float = Field(description="Coverage of the interval, e.g. 0.95.")


def macro_f1_from_labels(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float:
    """Macro F1 over ``labels``, equal to ``sklearn.metrics.f1_score(y_true, y_pred, labels=labels,
    average="macro", zero_division=0)``, computed with ``numpy.bincount``.

    A label with neither gold nor predicted examples scores 0 (sklearn's ``zero_division=0``); predictions
    outside ``labels`` count as misses of the true label.
    """
    if len(y_true) != len(y_pred):
        raise ConfigError(f"macro F1 got {len(y_true)} gold labels but {len(y_pred)} predictions")
    if not labels:
        raise ConfigError("macro F1 needs at least one label to average over")
    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    t = np.fromiter((index.get(y, k) for y in y_true), dtype=np.intp, count=len(y_true))
    p = np.fromiter((index.get(y, k) for y in y_pred), dtype=np.intp, count=len(y_pred))
    tp = np.bincount(t[(t == p) & (t < k)], minlength=k + 1)[:k]
    n_true = np.bincount(t, minlength=k + 1)[:k]
    n_pred = np.bincount(p, minlength=k + 1)[:k]
    return float(_f1(tp, n_true, n_pred).mean())


def paired_bootstrap(
    y_true: Sequence[str],
    pred_candidate: Sequence[str],
    pred_active: Sequence[str],
    metric: Metric = "macro_f1",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap of ``metric(candidate) - metric(active)``; deterministic for a ``seed``.

    Each resample draws ``n`` utterance indices with replacement and scores both models on them; the interval
    is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resampled deltas.
    """
    _check_bootstrap_args(len(y_true), len(pred_candidate), len(pred_active), metric, n_resamples, confidence)
    t, pc, pa, k = _encode(y_true, pred_candidate, pred_active)
    if metric == "accuracy":
        point = float(np.mean(pc == t) - np.mean(pa == t))
    else:
        point = _macro_f1_present(t, pc, k) - _macro_f1_present(t, pa, k)
    deltas = _resampled_deltas(t, pc, pa, k, metric, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(deltas, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(
        metric=metric,
        delta=point,
        low=float(low),
        high=float(high),
        n_resamples=n_resamples,
        confidence=confidence,
    )


def _check_bootstrap_args(
    n: int, n_candidate: int, n_active: int, metric: str, n_resamples: int, confidence: float
) -> None:
    if n == 0:
        raise ConfigError("paired bootstrap needs at least one test utterance")
    if n_candidate != n or n_active != n:
        raise ConfigError(
            f"paired bootstrap got {n} gold labels, {n_candidate} candidate and {n_active} "
            "active predictions; expected both models' predictions on the same test utterances"
        )
    if metric not in ("macro_f1", "accuracy"):
        raise ConfigError(f"bootstrap metric {metric!r} is not supported; expected 'macro_f1' or 'accuracy'")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples is {n_resamples}; expected at least 1")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"bootstrap confidence {confidence} is out of range; expected 0 < confidence < 1")


def _encode(
    y_true: Sequence[str], pred_candidate: Sequence[str], pred_active: Sequence[str]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], int]:
    """Gold labels and both models' predictions as class indices, and the number of gold classes ``k``."""
    n = len(y_true)
    labels = sorted(set(y_true))
    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    t = np.fromiter((index[y] for y in y_true), dtype=np.intp, count=n)
    # Intents outside the gold labels share the extra class k: a miss for the true intent, never averaged.
    pc = np.fromiter((index.get(y, k) for y in pred_candidate), dtype=np.intp, count=n)
    pa = np.fromiter((index.get(y, k) for y in pred_active), dtype=np.intp, count=n)
    return t, pc, pa, k


def _resampled_deltas(
    t: NDArray[np.intp],
    pc: NDArray[np.intp],
    pa: NDArray[np.intp],
    k: int,
    metric: Metric,
    n_resamples: int,
    seed: int,
) -> NDArray[np.float64]:
    """The metric delta on each of ``n_resamples`` resamples, drawn in chunks that bound the memory used."""
    n = len(t)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    deltas = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        if metric == "accuracy":
            diff = (pc == t).astype(np.int8) - (pa == t).astype(np.int8)
            deltas[start : start + b] = diff[idx].mean(axis=1)
        else:
            deltas[start : start + b] = _resampled_macro_f1_delta(t, pc, pa, k, idx)
    return deltas


def per_intent_deltas(candidate: EvaluationResult, active: EvaluationResult) -> dict[str, float]:
    """F1 of the candidate minus F1 of the active model, per gold intent of the shared test set."""
    if candidate.test_sha256 != active.test_sha256:
        raise ConfigError(
            f"candidate was evaluated on test set {candidate.test_sha256[:12]} but the active model on "
            f"{active.test_sha256[:12]}; per-intent deltas need the same frozen test set"
        )
    cand = candidate.intent_f1()
    act = active.intent_f1()
    return {label: cand[label] - act.get(label, 0.0) for label in cand}


def _f1(tp: NDArray[np.int_], n_true: NDArray[np.int_], n_pred: NDArray[np.int_]) -> NDArray[np.float64]:
    denom = n_true + n_pred
    out: NDArray[np.float64] = np.divide(
        2.0 * tp, denom, out=np.zeros(denom.shape, dtype=float), where=denom > 0
    )
    return out


def _macro_f1_present(t: NDArray[np.intp], p: NDArray[np.intp], k: int) -> float:
    """Macro F1 over the gold classes present in ``t``; class ``k`` (outside intents) is never averaged."""
    tp = np.bincount(t[t == p], minlength=k + 1)[:k]
    n_true = np.bincount(t, minlength=k + 1)[:k]
    n_pred = np.bincount(p, minlength=k + 1)[:k]
    present = n_true > 0
    return float(_f1(tp, n_true, n_pred)[present].mean())


def _resampled_macro_f1_delta(
    t: NDArray[np.intp], pc: NDArray[np.intp], pa: NDArray[np.intp], k: int, idx: NDArray[np.int64]
) -> NDArray[np.float64]:
    b = idx.shape[0]
    width = k + 1
    # Row r of the resample matrix counts into bins [r*width, (r+1)*width).
    offset = (np.arange(b, dtype=np.intp) * width)[:, None]
    size = b * width

    def counts(values: NDArray[np.intp], mask: NDArray[np.bool_] | None = None) -> NDArray[np.int_]:
        keys = values[idx] + offset
        if mask is not None:
            keys = keys[mask[idx]]
        return np.bincount(keys.ravel(), minlength=size).reshape(b, width)[:, :k]

    n_true = counts(t)
    present = n_true > 0
    n_present = present.sum(axis=1)

    def macro(p: NDArray[np.intp]) -> NDArray[np.float64]:
        f1 = _f1(counts(t, t == p), n_true, counts(p))
        mean: NDArray[np.float64] = np.where(present, f1, 0.0).sum(axis=1) / n_present
        return mean

    return macro(pc) - macro(pa)
