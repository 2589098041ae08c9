"""Data stages: load the batch, fix the frozen test set, validate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from nluflow.data.loaders import files_sha256, load_paths
from nluflow.data.schema import Dataset
from nluflow.data.splits import stratified_split
from nluflow.data.validation import ValidationPolicy, ValidationReport, validate
from nluflow.errors import ModelNotFoundError
from nluflow.pipeline import (
    DatasetSnapshot,
    FrozenTestSet,
    remove_test_overlap,
    snapshot,
)
from nluflow.sources.base import with_source_origins
from tasks.common import StoreSpec, cache_key, cache_policy, workspace


def _load_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    label = [inputs["label"]] if inputs.get("label") else []  # keys of unlabelled loads stay as they were
    return cache_key("load-dataset", files_sha256(inputs["paths"]), inputs["workspace_path"], *label)


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


_FROZEN_DATA = "testset/test.jsonl"
_FROZEN_META = "testset/testset.json"


@task(name="freeze-test-set", cache_policy=NO_CACHE)
def freeze_test_set(
    project: str,
    data: DatasetSnapshot,
    test: DatasetSnapshot | None,
    store: StoreSpec,
    workspace_path: str,
    test_fraction: float,
    seed: int,
) -> tuple[DatasetSnapshot, DatasetSnapshot, dict[str, Any]]:
    """Fix the test set both models are judged on, and keep it out of the training data.

    An explicit test set wins. Otherwise the project's frozen test set in the store is reused; the first run
    of a project without one splits it off the data (stratified) and freezes it in the store.
    """
    ws = workspace(workspace_path)
    model_store = store.build(create=True)
    info: dict[str, Any] = {}
    if test is not None:
        test_set = test.load()
        info["test_source"] = "given"
    else:
        fs = model_store.fs
        try:
            raw = fs.read_bytes(f"{project}/{_FROZEN_DATA}").decode("utf-8")
        except ModelNotFoundError:
            raw = None
        if raw is not None:
            tmp = ws.datasets / f"frozen-{project}.jsonl"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(raw, encoding="utf-8")
            from nluflow.data.loaders import load_jsonl

            test_set = load_jsonl(tmp)
            info["test_source"] = "frozen in store"
        else:
            full = data.load()
            _, test_set = stratified_split(full, test_fraction=test_fraction, seed=seed)
            test_set = Dataset(examples=test_set.examples, source=f"split of {data.source}")
            record = FrozenTestSet(
                sha256=test_set.sha256(),
                created_at=datetime.now(UTC).isoformat(),
                source=data.source,
                n_examples=len(test_set),
            )
            fs.write_bytes(f"{project}/{_FROZEN_DATA}", test_set.to_jsonl().encode("utf-8"))
            fs.write_bytes(f"{project}/{_FROZEN_META}", json.dumps(record.model_dump(), indent=2).encode())
            info["test_source"] = f"split off the data ({test_fraction:.0%}) and frozen in the store"
    train, removed = remove_test_overlap(data.load(), test_set)
    info["removed_from_train"] = removed
    return snapshot(train, ws), snapshot(test_set, ws), info


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
