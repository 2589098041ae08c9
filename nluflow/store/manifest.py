"""The store's documents: a model's :class:`Manifest`, the :class:`ActivePointer` and the rejected index."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nluflow.errors import StoreError, UnsafePathError
from nluflow.hashing import sha256_json
from nluflow.store.fs import split_key
from nluflow.store.layout import _SHA256_RE, MANIFEST_NAME


def check_relative_file(rel: str) -> str:
    """``rel`` if it can name a model file (a relative key that is not the manifest's own name)."""
    split_key(rel, allow_root=False)
    if rel == MANIFEST_NAME:
        raise ValueError(f"{MANIFEST_NAME!r} is reserved for the manifest itself")
    return rel


class Manifest(BaseModel):
    """What a stored model is: its files with their sha256, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    model_id: str = Field(description="The model's id in the store (one path segment).")
    project: str = Field(description="The project the model belongs to.")
    created_at: str = Field(description="When the model was stored (ISO 8601, UTC).")
    backend: str = Field(description="The training backend that produced it.")
    backend_model_id: str | None = Field(default=None, description="The platform's own id, if remote.")
    backend_block: str | None = Field(
        default=None,
        description="The backend block ('<block-type-slug>/<name>') that trained it, if remote: what a "
        "rollback uses to make the platform serve it again.",
    )
    files: dict[str, str] = Field(description="Relative path -> sha256 of every model file.")
    dataset_sha256: str = Field(description="sha256 of the training dataset.")
    test_sha256: str | None = Field(default=None, description="sha256 of the frozen test set.")
    config: dict[str, Any] = Field(default_factory=dict, description="The training config.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Headline metrics on the test set.")
    training_metrics: dict[str, float] = Field(default_factory=dict, description="Metrics from training.")
    run_id: str | None = Field(default=None, description="The retrain run that stored it.")
    nluflow_version: str = Field(description="The nluflow version that stored it.")

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str]) -> dict[str, str]:
        if not files:
            raise ValueError("a model has at least one file")
        for rel, digest in files.items():
            try:
                check_relative_file(rel)
            except UnsafePathError as exc:
                raise ValueError(str(exc)) from None
            if _SHA256_RE.fullmatch(digest) is None:
                raise ValueError(f"{rel!r}: {digest!r} is not a lowercase hex sha256")
        return files

    @field_validator("created_at")
    @classmethod
    def _utc_timestamp(cls, value: str) -> str:
        moment = datetime.fromisoformat(value)
        if moment.utcoffset() is None:
            raise ValueError("created_at needs a time zone (UTC)")
        return value

    def sha256(self) -> str:
        """The governance hash: sha256 of the canonical JSON of the whole manifest."""
        return sha256_json(self.model_dump(mode="json"))

    def to_json_bytes(self) -> bytes:
        """The bytes of ``manifest.json``: sorted keys, indented for people, the values ``sha256`` hashes."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        return (text + "\n").encode("utf-8")


class PointerEntry(BaseModel):
    """One activation of a model: which one, its manifest hash, when, by which run, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    manifest_sha256: str
    activated_at: str
    run_id: str | None = None
    reason: str = ""


class ActivePointer(BaseModel):
    """The content of ``<project>/active.json``: the active model and the previous actives, newest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    model_id: str
    manifest_sha256: str
    activated_at: str
    run_id: str | None = None
    reason: str = ""
    history: list[PointerEntry] = Field(default_factory=list)

    def entry(self) -> PointerEntry:
        """The current activation as a history entry."""
        return PointerEntry(
            model_id=self.model_id,
            manifest_sha256=self.manifest_sha256,
            activated_at=self.activated_at,
            run_id=self.run_id,
            reason=self.reason,
        )


class RejectedEntry(BaseModel):
    """A candidate that the gates rejected, kept in the store so a person can still promote it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    stored_at: str
    run_id: str | None = None
    reason: str = ""


class RejectedIndex(BaseModel):
    """The content of ``<project>/rejected.json``: the kept rejected candidates, oldest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    rejected: list[RejectedEntry] = Field(default_factory=list)


def rollback_plan(current: ActivePointer, to: str | None) -> tuple[str, int | None]:
    """Which model a rollback activates, and its index in ``current.history`` (None: ``to`` is not in the
    history and is activated like ``activate``). The newest history entry that is not the current model, or
    the newest entry naming ``to``; StoreError when the history is empty and no ``to`` was given."""
    for index, entry in enumerate(current.history):
        if entry.model_id == current.model_id:
            continue
        if to is None or entry.model_id == to:
            return entry.model_id, index
    if to is None:
        raise StoreError(
            f"project {current.project!r} has no previous model to roll back to (its history is empty); "
            f"{current.model_id!r} stays active"
        )
    return to, None
