"""Configuration sweeps: several training configurations, scored by k-fold cross-validation on the training
data only, the best one chosen by a documented rule. Plain logic; the Prefect flow is ``flows/sweep.py``.

A sweep compares training configurations of the local model, listed one by one or given as a grid of option
values (dotted names: ``local.C``, ``local.word_ngram_max``, ``seed``; every combination is tried). A sweep
file (``load_sweep_file``, YAML or JSON)::

    base:                       # optional: options every configuration shares
      local: {calibration_folds: 3}
    grid:                       # every combination: 3 x 2 = 6 configurations
      local.C: [0.3, 1.0, 3.0]
      local.word_ngram_max: [1, 2]
    # or, instead of grid, a list (each entry is laid over base):
    # configs:
    #   - {local: {C: 0.5}}
    #   - {local: {C: 2.0, char_ngram_max: 4}}

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

import itertools
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import StratifiedKFold

from nluflow.backends.base import LocalModelOptions, TrainingConfig
from nluflow.data.schema import Dataset
from nluflow.errors import ConfigError, DataError
from nluflow.evaluation.metrics import evaluate
from nluflow.models.nlu import NLUModel

__all__ = [
    "CV_VERSION",
    "MAX_SWEEP_CONFIGS",
    "CVScore",
    "FoldScore",
    "SweepMetric",
    "check_metric",
    "choose_best",
    "comparison_rows",
    "config_labels",
    "cross_validate_config",
    "expand_grid",
    "fold_indices",
    "load_sweep_file",
    "objective",
    "rank",
    "resolve_configs",
]

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

# Bump when the scoring procedure changes, so cached cross-validation scores are not reused.
CV_VERSION = 1
# A grid multiplies quickly; more configurations than this is almost always a typo in the grid.
MAX_SWEEP_CONFIGS = 128
# Scores are compared rounded to this many decimals (summing in another order is not an improvement).
_DECIMALS = 9
_SECTIONS = ("base", "grid", "configs")

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


# -- configurations ----------------------------------------------------------------------------------------


def _option_names() -> dict[str, set[str] | None]:
    """Dotted option prefixes a grid may name; ``None``: any sub-key (backend-specific ``extra``)."""
    sections: dict[str, set[str] | None] = {"local": set(LocalModelOptions.model_fields), "extra": None}
    return {**{n: set() for n in TrainingConfig.model_fields if n not in sections}, **sections}


def _check_grid_key(key: str) -> None:
    names = _option_names()
    head, _, rest = key.partition(".")
    if head not in names:
        raise ConfigError(
            f"grid option {key!r} is not a training option; expected one of "
            f"{', '.join(sorted(n for n in names if n not in ('local', 'extra')))}, 'local.<option>' or "
            "'extra.<option>'; nothing was trained"
        )
    allowed = names[head]
    if head in ("local", "extra"):
        if not rest or "." in rest:
            raise ConfigError(
                f"grid option {key!r} needs exactly one option name after '{head}.' (e.g. 'local.C'); "
                "nothing was trained"
            )
        if allowed is not None and rest not in allowed:
            raise ConfigError(
                f"grid option {key!r}: {rest!r} is not a local model option; expected one of "
                f"{', '.join(sorted(allowed))}; nothing was trained"
            )
    elif rest:
        raise ConfigError(f"grid option {key!r}: {head!r} has no sub-options; nothing was trained")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``; nested mappings (``local``, ``extra``) are merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _base_dict(base: TrainingConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, TrainingConfig):
        return base.model_dump(mode="json", exclude_unset=False)
    return dict(base)


def expand_grid(
    grid: Mapping[str, Sequence[Any]], base: TrainingConfig | Mapping[str, Any] | None = None
) -> list[TrainingConfig]:
    """Every combination of the grid's values laid over ``base``, in the grid's key order (the last key
    varies fastest). Unknown option names, empty value lists and out-of-range values raise ``ConfigError``."""
    if not grid:
        raise ConfigError(
            "the grid is empty; expected option names with lists of values; nothing was trained"
        )
    keys = list(grid)
    values: list[list[Any]] = []
    for key in keys:
        _check_grid_key(key)
        options = grid[key]
        if isinstance(options, str | bytes) or not isinstance(options, Sequence) or len(options) == 0:
            raise ConfigError(
                f"grid option {key!r} is {options!r}; expected a non-empty list of values; "
                "nothing was trained"
            )
        values.append(list(options))
    total = 1
    for v in values:
        total *= len(v)
    if total > MAX_SWEEP_CONFIGS:
        raise ConfigError(
            f"the grid makes {total} configurations ({' x '.join(str(len(v)) for v in values)}); expected at "
            f"most {MAX_SWEEP_CONFIGS}; nothing was trained; use fewer values or a list of configurations"
        )
    start = _base_dict(base)
    configs: list[TrainingConfig] = []
    for combo in itertools.product(*values):
        layer: dict[str, Any] = {}
        for key, value in zip(keys, combo, strict=True):
            head, _, rest = key.partition(".")
            if rest:
                layer.setdefault(head, {})[rest] = value
            else:
                layer[head] = value
        label = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
        try:
            configs.append(TrainingConfig.parse(_merge(start, layer)))
        except ConfigError as exc:
            raise ConfigError(f"grid combination {label}: {exc}") from None
    return configs


def resolve_configs(
    configs: Sequence[TrainingConfig | Mapping[str, Any]] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    base: TrainingConfig | Mapping[str, Any] | None = None,
) -> list[TrainingConfig]:
    """The sweep's configurations: a list or a grid, exactly one of them. ``base`` is laid under every grid
    combination and under every *mapping* in the list; a ``TrainingConfig`` in the list is complete and taken
    as it is (so a configuration means the same whether it arrives as an object or as JSON). Duplicates
    (same config hash) are dropped, keeping the first."""
    if (configs is None) == (grid is None):
        raise ConfigError(
            "a sweep needs either a list of configurations or a grid of option values (exactly one); "
            "nothing was trained"
        )
    if grid is not None:
        expanded = expand_grid(grid, base)
    else:
        assert configs is not None
        if not configs:
            raise ConfigError(
                "the list of configurations is empty; expected at least one; nothing was trained"
            )
        start = _base_dict(base)
        expanded = []
        for i, entry in enumerate(configs):
            if isinstance(entry, TrainingConfig):
                expanded.append(entry)
                continue
            try:
                expanded.append(TrainingConfig.parse(_merge(start, entry)))
            except ConfigError as exc:
                raise ConfigError(f"configuration {i + 1}: {exc}") from None
    if len(expanded) > MAX_SWEEP_CONFIGS:
        raise ConfigError(
            f"{len(expanded)} configurations given; expected at most {MAX_SWEEP_CONFIGS}; nothing was trained"
        )
    unique: dict[str, TrainingConfig] = {}
    for cfg in expanded:
        unique.setdefault(cfg.sha256(), cfg)
    if len(unique) < len(expanded):
        logger.info("sweep: %d duplicate configurations dropped", len(expanded) - len(unique))
    return list(unique.values())


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            out.update(_flatten(item, name + "."))
        else:
            out[name] = item
    return out


def config_labels(configs: Sequence[TrainingConfig]) -> list[str]:
    """A short label per configuration: the options whose values differ between them (``C=0.5,
    word_ngram_max=1``; ``local.`` is left out). ``base`` when nothing differs."""
    flat = [_flatten(c.model_dump(mode="json")) for c in configs]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    labels = []
    for f in flat:
        parts = [f"{k.removeprefix('local.')}={f.get(k)}" for k in varying]
        labels.append(", ".join(parts) or "base")
    return labels


# -- the sweep file ----------------------------------------------------------------------------------------


def _line_of(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _key_lines(node: yaml.Node | None) -> dict[str, int]:
    """Line of each key of a YAML mapping node."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.Node):
                return v
    return None


def load_sweep_file(path: str | Path) -> list[TrainingConfig]:
    """Read a sweep file (YAML or JSON; see the module docstring) into its configurations.

    Problems raise ``DataError`` at the file and line of the offending entry: unreadable or malformed file,
    an unknown section, both or neither of ``grid`` / ``configs``, an unknown option, an out-of-range value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the sweep file: {exc.strerror}; nothing was trained", path) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DataError(
            f"the sweep file is not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}; "
            "nothing was trained",
            path,
            mark.line + 1 if mark is not None else None,
        ) from None
    if not isinstance(raw, dict):
        raise DataError(
            f"found {type(raw).__name__}; expected a mapping with 'grid' or 'configs' (and optionally "
            "'base'); nothing was trained",
            path,
            1,
        )
    lines = _key_lines(root)
    for key in raw:
        if key not in _SECTIONS:
            raise DataError(
                f"unknown section {key!r}; expected 'base', and 'grid' or 'configs'; nothing was trained",
                path,
                lines.get(str(key)),
            )
    if ("grid" in raw) == ("configs" in raw):
        raise DataError(
            "expected exactly one of 'grid' (option -> list of values) or 'configs' (a list of "
            f"configurations), found {'both' if 'grid' in raw else 'neither'}; nothing was trained",
            path,
            1,
        )
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise DataError(
            "'base' must be a mapping of training options; nothing was trained", path, lines.get("base")
        )
    try:
        TrainingConfig.parse(base)
    except ConfigError as exc:
        raise DataError(f"base: {exc}", path, lines.get("base")) from None
    if "grid" in raw:
        grid = raw["grid"]
        grid_lines = _key_lines(_child(root, "grid"))
        if not isinstance(grid, dict):
            raise DataError(
                "'grid' must map option names to lists of values; nothing was trained",
                path,
                lines.get("grid"),
            )
        for key in grid:
            try:
                _check_grid_key(str(key))
            except ConfigError as exc:
                raise DataError(str(exc), path, grid_lines.get(str(key))) from None
        try:
            return resolve_configs(grid=grid, base=base)
        except ConfigError as exc:
            raise DataError(str(exc), path, lines.get("grid")) from None
    entries = raw["configs"]
    node = _child(root, "configs")
    items = node.value if isinstance(node, yaml.SequenceNode) else []
    if not isinstance(entries, list) or not entries:
        raise DataError(
            "'configs' must be a non-empty list of training option mappings; nothing was trained",
            path,
            lines.get("configs"),
        )
    for i, entry in enumerate(entries):
        where = _line_of(items[i]) if i < len(items) else lines.get("configs")
        if not isinstance(entry, dict):
            raise DataError(
                f"configuration {i + 1} is {type(entry).__name__}; expected a mapping of training options; "
                "nothing was trained",
                path,
                where,
            )
        try:
            TrainingConfig.parse(_merge(base, entry))
        except ConfigError as exc:
            raise DataError(f"configuration {i + 1}: {exc}", path, where) from None
    return resolve_configs(configs=entries, base=base)


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
        model = NLUModel().fit(train, options, seed=config.seed)
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
