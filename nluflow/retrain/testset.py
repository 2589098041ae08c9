"""Stage: choose the test set both models are judged on, and keep it out of the training data.

An explicit test set wins. Otherwise the project's frozen test set in the store is used: the first run splits
one off the data (stratified; refused when it could not measure anything), later runs route a stratified
share of the new annotations into it, which makes a new version (see :mod:`nluflow.testset`). The choice also
says how the data differs from the active model's training data ("+9 new, 0 removed").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from nluflow.data.schema import Dataset
from nluflow.data.splits import stratified_split
from nluflow.errors import StoreError
from nluflow.pipeline import remove_test_overlap
from nluflow.store import ModelStore
from nluflow.store.testsets import TestSetRecord, TestSetStore, stored_offered_data, stored_training_data
from nluflow.testset import (
    DEFAULT_MIN_TEST_PER_INTENT,
    data_delta,
    example_key,
    new_example_indices,
    refuse_unmeasurable,
    route_to_test,
    tiny_warning,
)

logger = logging.getLogger("nluflow.retrain")

# data_info key: sha256 of the test set version this run froze or grew (None: it changed nothing).
WRITTEN_KEY = "test_set_written_sha256"


class TestSetPlan(BaseModel):
    """How a project's test set is split off and grown."""

    __test__ = False  # not a pytest class

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 42
    min_test_per_intent: int = Field(default=DEFAULT_MIN_TEST_PER_INTENT, ge=1)


@dataclass(frozen=True)
class TestSetChoice:
    """The training data without the test set, the test set, and what the report says of both."""

    __test__ = False

    train: Dataset
    test: Dataset
    info: dict[str, Any] = field(default_factory=dict)


class ActiveData(NamedTuple):
    """The active model as this run compares with it; every field None when there is none."""

    model_id: str | None = None
    dataset_sha256: str | None = None
    test_sha256: str | None = None
    training_data: Dataset | None = None
    offered: Dataset | None = None  # what its run was offered, before validation dropped examples


def active_data(model_store: ModelStore, project: str) -> ActiveData:
    """The active model, its training data (None when it was stored before training data was kept) and the
    sha256 of the test set it was scored on. A pointer or manifest that cannot be read is left to the
    active-model stage, which stops the run with the reason."""
    try:
        pointer = model_store.active(project)
    except StoreError:
        return ActiveData()
    if pointer is None:
        return ActiveData()
    try:
        manifest = model_store.manifest(project, pointer.model_id)
    except StoreError as exc:
        logger.warning("active model of %s not compared with: %s", project, exc)
        return ActiveData(pointer.model_id)
    sha = manifest.dataset_sha256
    return ActiveData(
        pointer.model_id,
        sha,
        manifest.test_sha256,
        stored_training_data(model_store.fs, project, sha),
        stored_offered_data(model_store.fs, project, sha),
    )


def trained_by_stored_models(model_store: ModelStore, project: str) -> list[Dataset]:
    """The training data of every model the store keeps (rollback targets, kept rejected candidates that a
    person may still promote): no text any of them trained on may enter the test set."""
    found: list[Dataset] = []
    models, _ = model_store.scan_models(project)
    for sha in sorted({m.dataset_sha256 for m in models}):
        data = stored_training_data(model_store.fs, project, sha)
        if data is not None:
            found.append(data)
    return found


@dataclass
class _Chosen:
    """The test set as chosen so far: its record (None when given), the set, the version the new examples
    count from, and the version this run wrote (the only one it may undo)."""

    test: Dataset
    baseline: Dataset
    source: str
    record: TestSetRecord | None = None
    written: str | None = None


def _freeze_first(
    testsets: TestSetStore, full: Dataset, seen: list[Dataset], active: ActiveData, plan: TestSetPlan
) -> _Chosen | None:
    """The project's first test set, split off the data; None when another run froze one a moment before."""
    pool = full
    if active.training_data is not None or seen:
        # A new test set while models are stored (after `nluflow testset reset`): split it off the texts
        # they did not train on, or a model would be scored on its own training data.
        pool = full.subset(new_example_indices(full, Dataset(), active.training_data, seen))
    elif active.model_id is not None:
        logger.warning(
            "a new test set for %s is split off data that may include what the active model %s trained on "
            "(its training data was not kept): its scores may be too good",
            plan.project,
            active.model_id,
        )
    _, split = stratified_split(pool, test_fraction=plan.test_fraction, seed=plan.seed)
    refuse_unmeasurable(split, pool, plan.min_test_per_intent, plan.test_fraction, full.source)
    how = f"split off the data ({plan.test_fraction:.0%})"
    frozen = testsets.freeze_first(split, full.source, how)
    if frozen is None:
        logger.info("another run froze the test set of %s first; this run uses it", plan.project)
        return None
    return _Chosen(split, Dataset(), f"{how} and frozen in the store", frozen, frozen.sha256)


def _grow(
    testsets: TestSetStore,
    current: tuple[TestSetRecord, Dataset],
    full: Dataset,
    seen: list[Dataset],
    active: ActiveData,
    plan: TestSetPlan,
) -> _Chosen:
    """The frozen test set, grown by a stratified share of the new annotations (a new version)."""
    record, test_set = current
    # "New" counts from the test set the active model was scored on, whichever run grew it since.
    scored_on = testsets.version(active.test_sha256) if active.test_sha256 else None
    chosen = _Chosen(
        test_set, scored_on if scored_on is not None else test_set, "frozen in the store", record
    )
    if active.model_id is not None and active.training_data is None:  # unknown training data: route nothing
        return chosen
    new = new_example_indices(full, test_set, active.training_data, seen)
    picked = route_to_test(full, test_set, new, plan.test_fraction, plan.seed)
    if not picked:
        return chosen
    added = full.subset(picked)
    moved = len({example_key(e) for e in added})
    grown = testsets.grow(record, test_set, added, f"+{moved} new annotations routed in")
    logger.info(
        "test set of %s grew to version %d: +%d new annotations (%d utterances)",
        plan.project,
        grown.version,
        moved,
        grown.n_examples,
    )
    chosen.test = Dataset(examples=test_set.examples + added.examples, source=test_set.source)
    chosen.record, chosen.written = grown, grown.sha256
    return chosen


def _from_store(
    model_store: ModelStore, full: Dataset, seen: list[Dataset], active: ActiveData, plan: TestSetPlan
) -> _Chosen:
    testsets = TestSetStore(model_store.fs, plan.project)
    current = testsets.current()
    if current is None:
        chosen = _freeze_first(testsets, full, seen, active, plan)
        if chosen is not None:
            return chosen
        current = testsets.current()  # another run froze the project's first test set: use it
    if current is None:
        raise StoreError(
            f"{model_store.describe()}: the test set of {plan.project!r} was frozen by another run and then "
            "removed before this run could read it; nothing was trained. Run again"
        )
    return _grow(testsets, current, full, seen, active, plan)


def choose_test_set(
    model_store: ModelStore, data: Dataset, given: Dataset | None, plan: TestSetPlan
) -> TestSetChoice:
    """Fix the test set both models are judged on (``given`` wins over the store's), remove it from the
    training data, and say how the data differs from the active model's (``info``, for report and audit)."""
    active = active_data(model_store, plan.project)
    # Never routed into the test set: what any stored model trained on, what the active model's run was
    # offered (an example validation dropped was seen, not new).
    seen = [
        *trained_by_stored_models(model_store, plan.project),
        *([active.offered] if active.offered else []),
    ]
    if given is not None:
        chosen = _Chosen(given, given, "given (--test)")
    else:
        chosen = _from_store(model_store, data, seen, active, plan)
    train, removed = remove_test_overlap(data, chosen.test)
    delta = data_delta(
        data,
        train,
        chosen.test,
        active.training_data,
        baseline_test=chosen.baseline,
        active_model_id=active.model_id,
        compared_with=active.dataset_sha256,
        offered=active.offered,
    )
    record, test = chosen.record, chosen.test
    info: dict[str, Any] = {
        "test_source": chosen.source,
        "removed_from_train": removed,
        WRITTEN_KEY: chosen.written,
        "test_set_version": record.version if record else None,
        "test_set": f"version {record.version}, sha256 {record.sha256[:16]}…, {record.n_examples} utterances"
        if record
        else f"given, sha256 {test.sha256()[:16]}…, {len(test)} utterances",
        "new_since_active": delta.summary(),
        "new_examples": delta.new,
        "removed_examples": delta.removed,
        "routed_to_test": delta.to_test,
    }
    logger.info("data of %s since the active model: %s", plan.project, delta.summary())
    warning = tiny_warning(test)
    if warning:
        logger.warning("%s: %s", plan.project, warning)
        info["warning"] = warning
    return TestSetChoice(train, test, info)


def undo_test_set(model_store: ModelStore, project: str, info: dict[str, Any]) -> bool:
    """Undo this run's own change of the frozen test set (a run that validation blocked changes nothing):
    only the version it froze or grew (``info[WRITTEN_KEY]``), and only while that is still the current one.
    Returns whether it put one back."""
    written = info.get(WRITTEN_KEY)
    undone = TestSetStore(model_store.fs, project).undo(written)
    if written and not undone:
        logger.warning(
            "the test set of %s changed after this run wrote it; it is left as the other run made it", project
        )
    return undone
