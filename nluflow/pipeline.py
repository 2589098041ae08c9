"""The retrain's plain logic, without Prefect: keys, the frozen test set, locations, and the run summary.

The Prefect flow in ``flows/retrain.py`` wires these functions through tasks; everything here is testable
without a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import nluflow
from nluflow.backends.base import TrainingConfig
from nluflow.data.schema import Dataset, Origin
from nluflow.data.validation import normalize_text
from nluflow.errors import DataError
from nluflow.hashing import sha256_file, sha256_json
from nluflow.store import MANIFEST_NAME

# Bump when a change to nluflow's training or evaluation code should invalidate cached results.
CODE_VERSION = f"nluflow-{nluflow.__version__}-2"  # -2: Label Studio ground truth / latest annotation


def training_key(dataset_sha256: str, config: TrainingConfig, backend: str) -> str:
    """One key per logical training request: same data, config, backend and code → same key."""
    return sha256_json(
        {"dataset": dataset_sha256, "config": config.sha256(), "backend": backend, "code": CODE_VERSION}
    )


def model_id_for(key: str) -> str:
    """A short, stable model id derived from the training key (so retries and reruns agree on it)."""
    return f"m-{key[:12]}"


def model_files_sha256(folder: str | Path) -> str:
    """One hash over the model files below ``folder`` (relative names and contents), the store's manifest
    excluded: a candidate and the same model once stored hash alike."""
    root = Path(folder)
    entries = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME
    }
    if not entries:
        raise DataError(f"model folder {root} holds no files; expected the files of a trained model")
    return sha256_json(entries)


@dataclass(frozen=True)
class Workspace:
    """Where a run keeps local working files: dataset snapshots, trained jobs, candidates, reports."""

    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def jobs(self) -> Path:
        return self.root / "backends"

    def candidate(self, project: str, model_id: str) -> Path:
        return self.root / "candidates" / project / model_id

    def champion(self, project: str, model_id: str) -> Path:
        return self.root / "champions" / project / model_id

    def run_dir(self, project: str, run_id: str) -> Path:
        return self.root / "runs" / project / run_id

    def snapshot_path(self, sha256: str) -> Path:
        return self.datasets / f"{sha256}.jsonl"

    def origins_path(self, sha256: str) -> Path:
        return self.datasets / f"{sha256}.origins.json"


class DatasetSnapshot(BaseModel):
    """A dataset frozen to a content-addressed JSONL file: what tasks pass instead of the data itself."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    origins_path: str | None = Field(default=None, description="Where each example came from (file, line).")
    n_examples: int
    n_intents: int
    source: str
    skipped: dict[str, int] = Field(default_factory=dict)

    def load(self) -> Dataset:
        from nluflow.data.loaders import load_jsonl

        data = load_jsonl(self.path)
        examples = data.examples
        if self.origins_path and Path(self.origins_path).exists():
            # Messages should name the user's files and lines, not this snapshot's.
            origins = json.loads(Path(self.origins_path).read_text(encoding="utf-8"))
            if len(origins) == len(examples):
                examples = tuple(
                    e.model_copy(update={"origin": Origin(path=o[0], line=o[1])}) if o else e
                    for e, o in zip(examples, origins, strict=True)
                )
        return Dataset(examples=examples, source=self.source, skipped=self.skipped)


def snapshot(dataset: Dataset, workspace: Workspace) -> DatasetSnapshot:
    """Write ``dataset`` to its content-addressed file (once) and describe it."""
    sha = dataset.sha256()
    path = workspace.snapshot_path(sha)
    if not path.exists():
        dataset.write_jsonl(path)
    origins = workspace.origins_path(sha)
    tmp = origins.with_name(origins.name + ".tmp")
    tmp.write_text(
        json.dumps([[e.origin.path, e.origin.line] if e.origin else None for e in dataset.examples]),
        encoding="utf-8",
    )
    tmp.replace(origins)
    return DatasetSnapshot(
        path=str(path),
        sha256=sha,
        origins_path=str(origins),
        n_examples=len(dataset),
        n_intents=len(dataset.intent_counts()),
        source=dataset.source,
        skipped=dict(dataset.skipped),
    )


def remove_test_overlap(train: Dataset, test: Dataset) -> tuple[Dataset, int]:
    """Drop training examples whose normalised text is in the test set, so no model trains on the test set."""
    held_out = {normalize_text(e.text) for e in test}
    keep = tuple(e for e in train if normalize_text(e.text) not in held_out)
    removed = len(train) - len(keep)
    return Dataset(examples=keep, source=train.source, skipped=train.skipped), removed


def headline_delta(candidate: dict[str, float], active: dict[str, float] | None) -> dict[str, float]:
    if not active:
        return {}
    return {k: candidate[k] - active[k] for k in candidate if k in active}


def jsonable(value: Any) -> Any:
    """Plain JSON for audit lines and artifacts (pydantic models dumped, paths as strings)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
