"""A change of the active model made by a person — activate a stored model, roll back, force a promotion —
as one core function the CLI calls on any store (:func:`change_active`).

Order, as a retrain's promotion: the pointer moves (verified first, atomically), a remote platform is made to
serve the model (if it refuses, the pointer is put back and the error propagates), a forced candidate comes
off the rejected list, and one audit line records the change (none when nothing changed). The caller holds
the project's promotion slot around it and hands in an audit log it checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nluflow.audit import AuditLog, pointer_change_record
from nluflow.backends.base import ModelRef
from nluflow.errors import ConfigError
from nluflow.registry import ActivePointer, Manifest, ModelStore

ChangeKind = Literal["activate", "rollback", "forced-promote"]
RESTORED_REASON = "restored: the platform refused the activation"

# Makes a remote platform serve a stored model (its manifest, its files materialised); raises if it refuses.
Serve = Callable[[Manifest, ModelRef], None]


class PointerChange(BaseModel):
    """What a person asked for: which change, of which project, to which model, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    kind: ChangeKind
    model_id: str | None = Field(default=None, description="The model to make active; None: roll back once.")
    reason: str = Field(default="", description="Why (on the audit line); required for a forced promote.")
    actor: str = "cli"


def _move(model_store: ModelStore, change: PointerChange) -> tuple[ActivePointer, bool]:
    """Move the pointer; returns it and whether the change overrides the gates (a rejected candidate)."""
    project, model_id, why = change.project, change.model_id, " ".join(change.reason.split())
    rejected = {e.model_id for e in model_store.rejected(project)}
    forced = change.kind == "forced-promote" or (change.kind == "activate" and model_id in rejected)
    if (forced or change.kind == "rollback") and model_id in rejected and not why:
        raise ConfigError(
            f"{model_id} is a candidate the gates rejected (kept in the store for a forced promotion); "
            "making it active overrides the gates, so it needs a reason on the audit log; nothing was changed"
        )
    if change.kind == "rollback":
        return model_store.rollback(project, to=model_id), False
    if model_id is None:
        raise ConfigError(f"{change.kind} needs a model id; nothing was changed")
    before = model_store.active(project)
    if change.kind == "forced-promote" and before is not None and before.model_id == model_id:
        raise ConfigError(f"{model_id} is already the active model of {project}; nothing was changed")
    text = f"forced promote: {why}" if forced else (why or "activated from CLI")
    return model_store.activate(project, model_id, reason=text), forced


def change_active(
    model_store: ModelStore, log: AuditLog, change: PointerChange, serve: Serve | None = None
) -> ActivePointer:
    """Make the change, have a remote platform serve the model (``serve``; the pointer goes back when it
    refuses), and record it on ``log``. Returns the active pointer afterwards."""
    project = change.project
    before = model_store.active(project)
    pointer, forced = _move(model_store, change)
    manifest = model_store.manifest(project, pointer.model_id)
    if manifest.backend != "local":
        try:
            if serve is None:
                raise ConfigError(
                    f"model {manifest.model_id} was trained on the {manifest.backend!r} backend; expected a "
                    "backend block to make the platform serve it"
                )
            serve(manifest, ModelRef.stored(manifest, model_store.materialize(project, manifest.model_id)))
        except Exception:
            if before is not None:
                model_store.activate(project, before.model_id, reason=RESTORED_REASON)
            raise
    if forced:
        model_store.forget_rejected(project, pointer.model_id)
    if before is None or before.model_id != pointer.model_id:
        decision = "forced-promote" if forced else change.kind
        log.append(
            pointer_change_record(
                project=project,
                decision=decision,
                model_id=pointer.model_id,
                previous_model_id=before.model_id if before else None,
                manifest_sha256=pointer.manifest_sha256,
                reason=" ".join(change.reason.split()) or pointer.reason,
                actor=change.actor,
            )
        )
    return pointer
