"""Configuration sweeps: several training configurations, scored by k-fold cross-validation on the training
data only, the best one chosen by a documented rule. Plain logic; the Prefect flow is ``flows/sweep.py``.

The configurations themselves (a list, or a grid of option values; the sweep file) are
``nluflow.sweep_configs``.

Scoring (``cross_validate_config``): stratified k-fold on the **training** data (seeded; the same folds for
every configuration, so the comparison is paired). Each fold fits the local NLU model (intent classifier +
entity CRF) on k-1 parts and parses the held-out part; the metrics are those of the retrain
(``nluflow.evaluation.metrics.evaluate``): intent accuracy, intent macro F1 over the fold's gold intents, and
exact-span entity micro F1 when the fold has gold entities. Scores are means over folds, with their standard
deviation. The test set never enters: the flow scores the training snapshot the retrain trains on, which has
the frozen test set removed. Probability calibration is switched off inside the folds: it rescales
confidences but never changes a prediction, so every score is the same without its extra fits.

Choosing (``choose_best``): the objective (``SweepMetric``) is, by default, ``mean_f1``: the mean of intent
macro F1 and entity F1 when the training data has entities, else intent macro F1. Ties are broken, in order,
by: higher CV intent accuracy, then the lower standard deviation of the objective over folds (the steadier
configuration), then the earlier position in the sweep (list your cheaper or simpler configuration first).
Scores are compared rounded to 9 decimals, so summation noise is never a win.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import StratifiedKFold

from nluflow.backends.base import TrainingConfig
from nluflow.data.schema import Dataset
from nluflow.errors import ConfigError, DataError
from nluflow.evaluation.metrics import evaluate
from nluflow.models.nlu import NLUModel
from nluflow.sweep_configs import config_labels

__all__ = [
    "CV_VERSION",
    "CVScore",
    "FoldScore",
    "SweepMetric",
    "check_metric",
    "choose_best",
    "comparison_rows",
    "cross_validate_config",
    "fold_indices",
    "objective",
    "rank",
]

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

# Bump when the scoring procedure changes, so cached cross-validation scores are not reused.
CV_VERSION = 1
# Scores are compared rounded to this many decimals (summing in another order is not an improvement).
_DECIMALS = 9

SweepMetric = Literal["mean_f1", "macro_f1", "accuracy", "entity_f1"]


class FoldScore(BaseModel):
    """One fold: fitted on ``n_train`` examples, scored on the ``n_test`` held out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fold: int
    n_train: int
    n_test: int
    accuracy: float
    macro_f1: float
    entity_f1: float | None = Field(description="None when the held-out fold has no gold entities.")
    fit_seconds: float


class CVScore(BaseModel):
    """Cross-validation scores of one configuration on one training set (means and std over folds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: TrainingConfig
    config_sha256: str
    dataset_sha256: str = Field(description="Content hash of the data that was scored, computed from it.")
    n_examples: int
    n_intents: int
    has_entities: bool = Field(description="Whether the scored training data has entity annotations.")
    folds: int
    seed: int = Field(description="Seed of the fold assignment (the model's own seed is in the config).")
    accuracy: float
    accuracy_std: float
    macro_f1: float
    macro_f1_std: float
    entity_f1: float | None
    entity_f1_std: float | None
    fit_seconds: float = Field(description="Fit time summed over the folds (informative, never compared).")
    fold_scores: tuple[FoldScore, ...]


# -- cross-validation --------------------------------------------------------------------------------------


def fold_indices(dataset: Dataset, folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Stratified, shuffled, seeded k-fold split of ``dataset``: ``(train indices, held-out indices)`` per
    fold. The same data, folds and seed always give the same split (so configurations are compared on the
    same folds). Too little data for ``folds`` raises ``DataError``."""
    if not 2 <= folds <= 10:
        raise ConfigError(f"cv folds is {folds}; expected 2 to 10; nothing was scored")
    counts = dataset.intent_counts()
    if len(counts) < 2:
        raise DataError(
            f"found {len(counts)} intent in {len(dataset)} examples; cross-validation needs at least 2 "
            "intents; nothing was scored",
            dataset.source,
        )
    largest = max(counts.values())
    if largest < folds:
        raise DataError(
            f"the largest intent has {largest} examples, fewer than the {folds} cross-validation folds; "
            f"expected at least {folds} examples in some intent; nothing was scored; lower cv_folds",
            dataset.source,
        )
    smallest = min(counts.values())
    if smallest < folds:
        logger.info(
            "cross-validation: the smallest intent has %d examples (< %d folds); held out in fewer folds",
            smallest,
            folds,
        )
    labels = np.asarray(dataset.intents, dtype=object)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # the small-intent case is logged above
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(labels)), labels))
    return [([int(i) for i in tr], [int(i) for i in te]) for tr, te in splits]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(statistics.fmean(values)), float(statistics.pstdev(values)) if len(values) > 1 else 0.0


def cross_validate_config(
    dataset: Dataset,
    config: TrainingConfig,
    folds: int = 5,
    seed: int = 42,
    on_progress: Progress | None = None,
) -> CVScore:
    """k-fold cross-validation score of one configuration of the local model on ``dataset`` (pass training
    data only). ``seed`` fixes the folds; the model is fitted with ``config.seed``."""
    splits = fold_indices(dataset, folds, seed)
    has_entities = any(e.entities for e in dataset.examples)
    # Calibration only rescales confidences; predictions, hence every score here, are the same without it.
    options = config.local.model_copy(update={"calibration_folds": 0})
    scores: list[FoldScore] = []
    for k, (train_idx, test_idx) in enumerate(splits):
        if on_progress:
            on_progress(k / folds, f"fold {k + 1} of {folds}")
        train, held_out = dataset.subset(train_idx), dataset.subset(test_idx)
        started = time.perf_counter()
        model = NLUModel(options, random_state=config.seed).fit(train)
        fit_seconds = time.perf_counter() - started
        result = evaluate(held_out, model.parse(held_out.texts))
        scores.append(
            FoldScore(
                fold=k,
                n_train=len(train),
                n_test=len(held_out),
                accuracy=result.accuracy,
                macro_f1=result.macro_f1,
                entity_f1=result.entity.f1 if result.entity is not None else None,
                fit_seconds=round(fit_seconds, 4),
            )
        )
    if on_progress:
        on_progress(1.0, "cross-validation done")
    accuracy, accuracy_std = _mean_std([s.accuracy for s in scores])
    macro_f1, macro_f1_std = _mean_std([s.macro_f1 for s in scores])
    entity = [s.entity_f1 for s in scores if s.entity_f1 is not None]
    entity_f1, entity_f1_std = _mean_std(entity) if has_entities and entity else (None, None)
    return CVScore(
        config=config,
        config_sha256=config.sha256(),
        dataset_sha256=dataset.sha256(),
        n_examples=len(dataset),
        n_intents=len(dataset.intent_counts()),
        has_entities=has_entities,
        folds=folds,
        seed=seed,
        accuracy=accuracy,
        accuracy_std=accuracy_std,
        macro_f1=macro_f1,
        macro_f1_std=macro_f1_std,
        entity_f1=entity_f1,
        entity_f1_std=entity_f1_std,
        fit_seconds=round(sum(s.fit_seconds for s in scores), 4),
        fold_scores=tuple(scores),
    )


# -- choosing ----------------------------------------------------------------------------------------------


def check_metric(metric: SweepMetric, has_entities: bool) -> None:
    """``entity_f1`` needs training data with entities; raise ``ConfigError`` before anything is scored."""
    if metric == "entity_f1" and not has_entities:
        raise ConfigError(
            "sweep metric 'entity_f1' needs training data with entity annotations, and this data has none; "
            "expected 'mean_f1', 'macro_f1' or 'accuracy'; nothing was scored"
        )


def _fold_objective(fold: FoldScore, metric: SweepMetric, has_entities: bool) -> float | None:
    if metric == "accuracy":
        return fold.accuracy
    if metric == "macro_f1":
        return fold.macro_f1
    if metric == "entity_f1":
        return fold.entity_f1
    if has_entities and fold.entity_f1 is not None:
        return (fold.macro_f1 + fold.entity_f1) / 2
    return fold.macro_f1


def objective(score: CVScore, metric: SweepMetric = "mean_f1") -> tuple[float, float]:
    """The objective of one configuration: (mean over folds, standard deviation over folds)."""
    check_metric(metric, score.has_entities)
    values = [
        v for f in score.fold_scores if (v := _fold_objective(f, metric, score.has_entities)) is not None
    ]
    if not values:
        raise ConfigError(f"no fold of config {score.config_sha256[:12]} has a {metric} score")
    return _mean_std(values)


def rank(scores: Sequence[CVScore], metric: SweepMetric = "mean_f1") -> list[int]:
    """Positions of ``scores`` from best to worst (the rule is in the module docstring)."""
    if not scores:
        raise ConfigError("no configuration was scored; expected at least one; nothing to choose from")
    keys = []
    for i, s in enumerate(scores):
        mean, std = objective(s, metric)
        keys.append((-round(mean, _DECIMALS), -round(s.accuracy, _DECIMALS), round(std, _DECIMALS), i))
    return [k[-1] for k in sorted(keys)]


def choose_best(scores: Sequence[CVScore], metric: SweepMetric = "mean_f1") -> int:
    """Position of the best configuration: highest objective; ties → higher accuracy → lower std → earlier."""
    return rank(scores, metric)[0]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def comparison_rows(
    scores: Sequence[CVScore], metric: SweepMetric = "mean_f1", labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The comparison table, best first: one row per configuration (a Prefect table artifact, or print)."""
    labels = list(labels) if labels is not None else config_labels([s.config for s in scores])
    order = rank(scores, metric)
    rows: list[dict[str, Any]] = []
    for place, i in enumerate(order, 1):
        s = scores[i]
        mean, std = objective(s, metric)
        rows.append(
            {
                "rank": place,
                "chosen": "yes" if place == 1 else "",
                "config": labels[i],
                "position": i + 1,
                "config_sha256": s.config_sha256[:12],
                f"cv_{metric}": _r(mean),
                f"cv_{metric}_std": _r(std),
                "cv_accuracy": _r(s.accuracy),
                "cv_macro_f1": _r(s.macro_f1),
                "cv_entity_f1": _r(s.entity_f1),
                "folds": s.folds,
                "train_examples": s.n_examples,
                "fit_seconds_per_fold": _r(s.fit_seconds / max(1, s.folds)),
            }
        )
    return rows
