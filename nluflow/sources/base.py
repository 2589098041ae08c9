"""What every data source shares: the reference syntax, the provenance record, and the pull contract.

A *data source* is somewhere annotations accumulate that a run pulls itself, instead of reading a fixed path:
a Label Studio project (exported at run time) or a folder / S3 prefix where batches land. A source writes
what it pulled into local files (content-addressed, so an unchanged export is the same file) and says where
the data came from in a :class:`SourceProvenance`; the ordinary loaders then read those files, so the
dataset snapshot and the cache stay keyed on content.

In ``RetrainParams.data`` a source is written as ``<source-slug>/<block-name>``, e.g.
``nluflow-label-studio-source/bookings``. An item is a reference exactly when the text before its first
``/`` is one of :data:`SOURCE_SLUGS`; everything else is a path (write ``./nluflow-folder-source/x`` for a
local folder that happens to carry such a name).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from nluflow.data.schema import Dataset, Origin

LABEL_STUDIO_SLUG = "nluflow-label-studio-source"
FOLDER_SLUG = "nluflow-folder-source"
SOURCE_SLUGS: tuple[str, ...] = (LABEL_STUDIO_SLUG, FOLDER_SLUG)


def is_source_ref(item: str) -> bool:
    """Whether a ``data`` item names a source block (``<source-slug>/<block-name>``) rather than a path."""
    slug, sep, name = item.partition("/")
    return bool(sep) and slug in SOURCE_SLUGS and bool(name) and "/" not in name


def split_data(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(paths, source references)`` of a ``data`` list, each in the given order."""
    return [i for i in items if not is_source_ref(i)], [i for i in items if is_source_ref(i)]


class SourceProvenance(BaseModel):
    """Where a run's data came from: one record per source, for the report, the audit line and the result.

    Never holds a secret: ``description`` is built from the URL's host and path and the project id only.
    """

    model_config = ConfigDict(frozen=True)

    kind: str = Field(description="'label-studio', 'folder' or 's3'.")
    reference: str | None = Field(default=None, description="The block reference as given, if any.")
    description: str = Field(
        description="Human-readable origin, e.g. 'Label Studio project 1 at http://...'."
    )
    exported_at: str = Field(description="When the data was pulled (UTC, ISO 8601).")
    sha256: str = Field(description="sha256 of the pulled bytes (the export, or the files in order).")
    files: int = Field(default=1, ge=0, description="Files pulled.")
    tasks: int | None = Field(default=None, description="Label Studio tasks in the export.")
    annotations: int | None = Field(
        default=None, description="Annotations in the export, cancelled included."
    )
    used_annotations: int | None = Field(default=None, description="Annotations that became examples.")
    cancelled: int = Field(default=0, ge=0, description="Cancelled (skipped) annotations, never trained on.")
    skipped_tasks: int = Field(default=0, ge=0, description="Tasks whose annotations were all cancelled.")
    unannotated_tasks: int = Field(default=0, ge=0, description="Tasks without any annotation.")
    disagreements: int = Field(
        default=0, ge=0, description="Tasks whose annotations disagree (ground truth, else latest, used)."
    )

    def summary(self) -> str:
        """One line for the report and logs: origin, time, and the counts that matter."""
        parts = [f"{self.description}, pulled {self.exported_at}"]
        if self.tasks is not None:
            parts.append(
                f"{self.tasks} tasks, {self.annotations} annotations ({self.used_annotations} used, "
                f"{self.cancelled} cancelled, {self.disagreements} tasks with disagreements), "
                f"{self.unannotated_tasks} tasks without annotations, {self.skipped_tasks} skipped tasks"
            )
        else:
            parts.append(f"{self.files} file{'s' if self.files != 1 else ''}")
        return "; ".join(parts) + f"; sha256 {self.sha256[:12]}"


class PulledData(BaseModel):
    """What a pull produced: local files (or folders) the loaders read, and their provenance."""

    model_config = ConfigDict(frozen=True)

    paths: list[str]
    provenance: SourceProvenance


class DataSource(Protocol):
    """Pulls its current data into ``dest`` (a local folder it may fill) and says where it came from."""

    def describe(self) -> str: ...

    def pull(self, dest: Path) -> PulledData: ...


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_content_addressed(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write ``data`` once to ``<folder>/<stem>-<sha12><suffix>`` (atomic); the same bytes give the same
    file, so the loaders' content hash (and Prefect's cache) see an unchanged pull as unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{sha256_bytes(data)[:12]}{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def origins_sidecar(path: Path) -> Path:
    """Where a pulled file keeps the origin of its items: a hidden file beside it (folder walks skip it)."""
    return path.with_name(f".{path.name}.origins")


def write_origins(path: Path, origins: Mapping[int, str]) -> None:
    """Record, for lines of ``path`` where an item starts, where that item lives in its source."""
    sidecar = origins_sidecar(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps({str(k): v for k, v in origins.items()}), encoding="utf-8")
    tmp.replace(sidecar)


def with_source_origins(dataset: Dataset) -> Dataset:
    """Examples read from a pulled file point at their item in the source (a Label Studio task's page)
    instead of a line of a workspace file the user never edits; others are left as they are."""
    sidecars: dict[str, dict[str, str]] = {}
    examples = []
    for example in dataset.examples:
        origin = example.origin
        if origin is not None and origin.line is not None:
            if origin.path not in sidecars:
                sidecar = origins_sidecar(Path(origin.path))
                sidecars[origin.path] = (
                    json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
                )
            where = sidecars[origin.path].get(str(origin.line))
            if where is not None:
                example = example.model_copy(update={"origin": Origin(path=where, line=None)})
        examples.append(example)
    return Dataset(examples=tuple(examples), source=dataset.source, skipped=dict(dataset.skipped))
