"""Data stages: load the batch, fix the frozen test set, validate."""

from __future__ import annotations

from typing import Any, Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from nluflow.data.loaders import data_files_sha256, load_paths
from nluflow.data.schema import Dataset
from nluflow.data.validation import ValidationPolicy, ValidationReport, validate
from nluflow.pipeline import DatasetSnapshot, snapshot
from nluflow.retrain import RunData
from nluflow.retrain.testset import TestSetPlan, choose_test_set, undo_test_set
from nluflow.sources.base import with_source_origins
from nluflow.store.testsets import keep_offered_data
from nluflow.store.testsets import keep_training_data as store_training_data
from tasks.common import StoreSpec, cache_key, cache_policy, workspace
from tasks.sources import data_label, provenance_info, resolve_data


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


@task(name="freeze-test-set", cache_policy=NO_CACHE)
def freeze_test_set(
    store: StoreSpec,
    plan: TestSetPlan,
    data: DatasetSnapshot,
    test: DatasetSnapshot | None,
    workspace_path: str,
) -> tuple[DatasetSnapshot, DatasetSnapshot, dict[str, Any]]:
    """Fix the test set both models are judged on, and keep it out of the training data: the given one, or
    the project's frozen one (split off on the first run, grown with new annotations after; see
    :mod:`nluflow.retrain.testset`). Also says how the data differs from the active model's ("+9 new")."""
    given = test.load() if test is not None else None
    chosen = choose_test_set(store.build(create=True), data.load(), given, plan)
    ws = workspace(workspace_path)
    return snapshot(chosen.train, ws), snapshot(chosen.test, ws), chosen.info


@task(name="restore-test-set", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def restore_test_set(store: StoreSpec, project: str, data_info: dict[str, Any]) -> bool:
    """Undo this run's own change of the frozen test set: a run that validation blocked changes nothing, so
    a bad first batch cannot freeze the project's test set. Only the version this run froze or grew
    (``data_info``, from freeze-test-set) is taken back, and only while it is still the current one: a set
    another run froze first, or grew since, stays. Returns whether it put one back."""
    return undo_test_set(store.build(create=True), project, data_info)


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


class DataSettings(Protocol):
    """The data settings a run's data stages read (``flows.retrain.RunSettings`` has them)."""

    @property
    def project(self) -> str: ...
    @property
    def data(self) -> list[str]: ...
    @property
    def test(self) -> list[str] | None: ...
    @property
    def test_fraction(self) -> float: ...
    @property
    def min_test_per_intent(self) -> int: ...
    @property
    def validation(self) -> ValidationPolicy: ...


class PreparedData(BaseModel):
    """The data stages' result: the data as loaded, the training data (validated) and the test set, the
    validation report, and what the run records of them."""

    model_config = ConfigDict(frozen=True)

    loaded: DatasetSnapshot
    train: DatasetSnapshot
    test: DatasetSnapshot
    report: ValidationReport
    run_data: RunData


def prepare_data(settings: DataSettings, store: StoreSpec, work: str, seed: int) -> PreparedData:
    """Load the data (pulling source blocks), fix the frozen test set, validate: the retrain's and the
    sweep's data stages (cached, so a sweep's retrain reuses them)."""
    data_paths, sources = resolve_data(settings.data, work)  # pulls Label Studio / folder / S3 sources
    data = load_dataset(data_paths, work, data_label(settings.data, sources))
    given_test = load_dataset(settings.test, work) if settings.test else None
    plan = TestSetPlan(
        project=settings.project,
        test_fraction=settings.test_fraction,
        seed=seed,
        min_test_per_intent=settings.min_test_per_intent,
    )
    train, test, data_info = freeze_test_set(store, plan, data, given_test, work)
    report, train = validate_dataset(train, test, settings.validation, work)
    run_data = RunData(
        dataset_sha256=train.sha256,
        test_sha256=test.sha256,
        train_examples=train.n_examples,
        test_examples=test.n_examples,
        info={**provenance_info(sources, brief=True), **data_info},
        sources=provenance_info(sources),
    )
    return PreparedData(loaded=data, train=train, test=test, report=report, run_data=run_data)
