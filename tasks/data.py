"""Data stages: load the batch, fix the frozen test set, validate."""

from __future__ import annotations

from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from nluflow.data.loaders import data_files_sha256, load_paths
from nluflow.data.schema import Dataset
from nluflow.data.splits import stratified_split
from nluflow.data.validation import ValidationPolicy, ValidationReport, validate
from nluflow.errors import StoreError
from nluflow.pipeline import DatasetSnapshot, remove_test_overlap, snapshot
from nluflow.sources.base import with_source_origins
from nluflow.store import ModelStore
from nluflow.store.testsets import (
    TestSetRecord,
    TestSetStore,
    keep_offered_data,
    stored_offered_data,
    stored_training_data,
)
from nluflow.store.testsets import keep_training_data as store_training_data
from nluflow.testset import (
    DEFAULT_MIN_TEST_PER_INTENT,
    data_delta,
    example_key,
    new_example_indices,
    refuse_unmeasurable,
    route_to_test,
    tiny_warning,
)
from tasks.common import StoreSpec, cache_key, cache_policy, workspace

# data_info key: sha256 of the test set version this run froze or grew (None: it changed nothing).
WRITTEN_KEY = "test_set_written_sha256"


def _load_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    label = [inputs["label"]] if inputs.get("label") else []  # keys of unlabelled loads stay as they were
    return cache_key("load-dataset", data_files_sha256(inputs["paths"]), inputs["workspace_path"], *label)


@task(name="load-dataset", cache_policy=cache_policy(_load_key), persist_result=True)
def load_dataset(paths: list[str], workspace_path: str, label: str | None = None) -> DatasetSnapshot:
    """Read the annotated files (JSONL, CSV, Rasa YAML) into a content-addressed snapshot.

    ``label`` names the data in messages instead of the paths, e.g. the source references whose pulled
    exports the paths are (the user never sees a workspace path).
    """
    data = load_paths(paths)
    if label:  # pulled sources: named as the user wrote them, examples pointing at their source items
        data = with_source_origins(Dataset(examples=data.examples, source=label, skipped=data.skipped))
    return snapshot(data, workspace(workspace_path))


class _Active(NamedTuple):
    """The active model as this run compares with it; every field None when there is none."""

    model_id: str | None = None
    dataset_sha256: str | None = None
    test_sha256: str | None = None
    training_data: Dataset | None = None
    offered: Dataset | None = None  # what its run was offered, before validation dropped examples


def _active(model_store: ModelStore, project: str) -> _Active:
    """The active model, its training data (None when it was stored before training data was kept) and the
    sha256 of the test set it was scored on. A pointer or manifest that cannot be read is left to
    fetch-active-model, which stops the run with the reason."""
    try:
        pointer = model_store.active(project)
    except StoreError:
        return _Active()
    if pointer is None:
        return _Active()
    try:
        manifest = model_store.manifest(project, pointer.model_id)
    except StoreError as exc:
        get_run_logger().warning("active model of %s not compared with: %s", project, exc)
        return _Active(pointer.model_id)
    sha = manifest.dataset_sha256
    return _Active(
        pointer.model_id,
        sha,
        manifest.test_sha256,
        stored_training_data(model_store.fs, project, sha),
        stored_offered_data(model_store.fs, project, sha),
    )


def _trained_by_stored_models(model_store: ModelStore, project: str) -> list[Dataset]:
    """The training data of every model the store keeps (rollback targets, kept rejected candidates that a
    person may still promote): no text any of them trained on may enter the test set."""
    found: list[Dataset] = []
    models, _ = model_store.scan_models(project)
    for sha in sorted({m.dataset_sha256 for m in models}):
        data = stored_training_data(model_store.fs, project, sha)
        if data is not None:
            found.append(data)
    return found


@task(name="freeze-test-set", cache_policy=NO_CACHE)
def freeze_test_set(
    project: str,
    data: DatasetSnapshot,
    test: DatasetSnapshot | None,
    store: StoreSpec,
    workspace_path: str,
    test_fraction: float,
    seed: int,
    min_test_per_intent: int = DEFAULT_MIN_TEST_PER_INTENT,
) -> tuple[DatasetSnapshot, DatasetSnapshot, dict[str, Any]]:
    """Fix the test set both models are judged on, and keep it out of the training data.

    An explicit test set wins. Otherwise the project's frozen test set in the store is used: the first run
    splits one off the data (stratified; refused when it could not measure anything), later runs route a
    stratified share of the new annotations into it, which makes a new version (see ``nluflow.testset``).
    Also says how the data differs from the active model's training data ("+9 new, 0 removed").
    """
    logger = get_run_logger()
    ws = workspace(workspace_path)
    model_store = store.build(create=True)
    full = data.load()
    active = _active(model_store, project)
    previous = active.training_data
    # Never routed into the test set: what any stored model trained on, what the active model's run was
    # offered (an example validation dropped was seen, not new).
    seen = [*_trained_by_stored_models(model_store, project), *([active.offered] if active.offered else [])]
    info: dict[str, Any] = {}
    record: TestSetRecord | None = None
    written: str | None = None  # sha256 of the version this run wrote, the only one it may undo
    if test is not None:
        test_set = baseline = test.load()
        info["test_source"] = "given (--test)"
    else:
        testsets = TestSetStore(model_store.fs, project)
        current = testsets.current()
        frozen: TestSetRecord | None = None
        if current is None:
            pool = full
            if previous is not None or seen:
                # A new test set while models are stored (after `nluflow testset reset`): split it off the
                # texts they did not train on, or a model would be scored on its own training data.
                pool = full.subset(new_example_indices(full, Dataset(), previous, seen))
            elif active.model_id is not None:
                logger.warning(
                    "a new test set for %s is split off data that may include what the active model %s "
                    "trained on (its training data was not kept): its scores may be too good",
                    project,
                    active.model_id,
                )
            _, split = stratified_split(pool, test_fraction=test_fraction, seed=seed)
            refuse_unmeasurable(split, pool, min_test_per_intent, test_fraction, data.source)
            frozen = testsets.freeze_first(split, data.source, f"split off the data ({test_fraction:.0%})")
            if frozen is None:  # another run froze the project's first test set a moment before: use it
                current = testsets.current()
                logger.info("another run froze the test set of %s first; this run uses it", project)
        if frozen is not None:
            record, test_set, baseline = frozen, split, Dataset()
            written = frozen.sha256
            info["test_source"] = f"split off the data ({test_fraction:.0%}) and frozen in the store"
        elif current is None:
            raise StoreError(
                f"{model_store.describe()}: the test set of {project!r} was frozen by another run and then "
                "removed before this run could read it; nothing was trained. Run again"
            )
        else:
            record, test_set = current
            # "New" counts from the test set the active model was scored on, whichever run grew it since.
            scored_on = testsets.version(active.test_sha256) if active.test_sha256 else None
            baseline = scored_on if scored_on is not None else test_set
            info["test_source"] = "frozen in the store"
            if active.model_id is None or previous is not None:  # unknown training data: route nothing
                new = new_example_indices(full, test_set, previous, seen)
                picked = route_to_test(full, test_set, new, test_fraction, seed)
                if picked:
                    added = full.subset(picked)
                    moved = len({example_key(e) for e in added})
                    record = testsets.grow(record, test_set, added, f"+{moved} new annotations routed in")
                    written = record.sha256
                    test_set = Dataset(examples=test_set.examples + added.examples, source=test_set.source)
                    logger.info(
                        "test set of %s grew to version %d: +%d new annotations (%d utterances)",
                        project,
                        record.version,
                        moved,
                        record.n_examples,
                    )
    train, removed = remove_test_overlap(full, test_set)
    delta = data_delta(
        full,
        train,
        test_set,
        previous,
        baseline_test=baseline,
        active_model_id=active.model_id,
        compared_with=active.dataset_sha256,
        offered=active.offered,
    )
    info["removed_from_train"] = removed
    info[WRITTEN_KEY] = written
    info["test_set_version"] = record.version if record else None
    info["test_set"] = (
        f"version {record.version}, sha256 {record.sha256[:16]}…, {record.n_examples} utterances"
        if record
        else f"given, sha256 {test_set.sha256()[:16]}…, {len(test_set)} utterances"
    )
    info["new_since_active"] = delta.summary()
    info["new_examples"] = delta.new
    info["removed_examples"] = delta.removed
    info["routed_to_test"] = delta.to_test
    logger.info("data of %s since the active model: %s", project, delta.summary())
    warning = tiny_warning(test_set)
    if warning:
        logger.warning("%s: %s", project, warning)
        info["warning"] = warning
    return snapshot(train, ws), snapshot(test_set, ws), info


@task(name="restore-test-set", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def restore_test_set(store: StoreSpec, project: str, data_info: dict[str, Any]) -> bool:
    """Undo this run's own change of the frozen test set: a run that validation blocked changes nothing, so
    a bad first batch cannot freeze the project's test set. Only the version this run froze or grew
    (``data_info``, from freeze-test-set) is taken back, and only while it is still the current one: a set
    another run froze first, or grew since, stays. Returns whether it put one back."""
    written = data_info.get(WRITTEN_KEY)
    undone = TestSetStore(store.build(create=True).fs, project).undo(written)
    if written and not undone:
        get_run_logger().warning(
            "the test set of %s changed after this run wrote it; it is left as the other run made it", project
        )
    return undone


@task(name="keep-training-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def keep_training_data(
    store: StoreSpec, project: str, train: DatasetSnapshot, offered: DatasetSnapshot | None = None
) -> str:
    """Keep this run's training data in the store (content-addressed, written once), so the next run can
    say what is new since the model trained on it; and what the run was ``offered`` (before validation
    dropped examples) beside it, so what validation dropped is not counted as new again."""
    fs = store.build(create=True).fs
    data = train.load()
    key = store_training_data(fs, project, data)
    if offered is not None:
        keep_offered_data(fs, project, data.sha256(), offered.load())
    return key


def _validate_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    policy: ValidationPolicy = inputs["policy"]
    return cache_key(
        "validate-dataset",
        inputs["train"].sha256,
        inputs["test"].sha256,
        inputs["train"].skipped,  # the report shows the loader's counts (e.g. Label Studio disagreements)
        policy.model_dump(mode="json"),
        inputs["workspace_path"],
    )


@task(name="validate-dataset", cache_policy=cache_policy(_validate_key), persist_result=True)
def validate_dataset(
    train: DatasetSnapshot, test: DatasetSnapshot, policy: ValidationPolicy, workspace_path: str
) -> tuple[ValidationReport, DatasetSnapshot]:
    """Check the data against the policy's rules (the flow stops on blocking findings) and return the
    training data without the examples a warn-level rule skipped (e.g. broken entity spans)."""
    data = train.load()
    report = validate(data, test.load(), policy)
    if report.dropped:
        train = snapshot(report.usable(data), workspace(workspace_path))
    return report, train
