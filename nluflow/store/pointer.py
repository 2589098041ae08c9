"""The active pointer and the kept rejected candidates of a project: the :class:`ActivePointers` part of
:class:`~nluflow.store.models.ModelStore` (activate, roll back, record and prune rejected candidates).

Every change is one atomic write of ``active.json`` or ``rejected.json`` (keys from
:mod:`nluflow.store.layout`); a model is verified before the pointer names it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from nluflow.errors import IntegrityError, ModelNotFoundError, StoreError
from nluflow.store.fs import FileSystem
from nluflow.store.layout import check_id, layout
from nluflow.store.manifest import (
    ActivePointer,
    Manifest,
    PointerEntry,
    RejectedEntry,
    RejectedIndex,
    rollback_plan,
)

logger = logging.getLogger("nluflow.store.models")

_POINTER_ADVICE = (
    "nothing was changed. Restore it from a backup, or move it aside and reactivate a stored model with "
    "`nluflow models activate`"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("store clock must return an aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class ActivePointers:
    """The pointer and rejected-list operations of a store; :class:`~nluflow.store.models.ModelStore`
    supplies the filesystem, the clock and model verification."""

    fs: FileSystem
    _clock: Callable[[], datetime]

    def describe(self) -> str:
        return self.fs.describe()

    def _where(self, project: str, model_id: str) -> str:
        return f"model {model_id!r} of project {project!r} in the {self.describe()}"

    def verify(self, project: str, model_id: str) -> Manifest:  # pragma: no cover - ModelStore's
        raise NotImplementedError

    def has_model(self, project: str, model_id: str) -> bool:  # pragma: no cover - ModelStore's
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- pointer

    def active(self, project: str) -> ActivePointer | None:
        """The project's active pointer, or None when no model was ever activated."""
        check_id(project, "project")
        key = layout(project).pointer
        try:
            raw = self.fs.read_bytes(key)
        except ModelNotFoundError:
            return None
        try:
            pointer = ActivePointer.model_validate_json(raw)
        except ValidationError as exc:
            raise IntegrityError(
                f"{key} in the {self.describe()} is not a valid active pointer ({exc.error_count()} "
                f"problems, first: {exc.errors()[0]['msg']}); {_POINTER_ADVICE}"
            ) from None
        if pointer.project != project:
            raise IntegrityError(
                f"{key} names project {pointer.project!r}, expected {project!r}; {_POINTER_ADVICE}"
            )
        return pointer

    def _switch(
        self, manifest: Manifest, run_id: str | None, reason: str, history: list[PointerEntry]
    ) -> ActivePointer:
        """Point the project at ``manifest``'s model (one atomic write of ``active.json``)."""
        pointer = ActivePointer(
            project=manifest.project,
            model_id=manifest.model_id,
            manifest_sha256=manifest.sha256(),
            activated_at=iso(self._clock()),
            run_id=run_id,
            reason=reason,
            history=history,
        )
        self._write_pointer(pointer)
        return pointer

    def _write_pointer(self, pointer: ActivePointer) -> None:
        text = json.dumps(pointer.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        self.fs.write_bytes(layout(pointer.project).pointer, (text + "\n").encode("utf-8"))

    def activate(
        self, project: str, model_id: str, *, run_id: str | None = None, reason: str = ""
    ) -> ActivePointer:
        """Make a verified model the active one; the previous active goes on top of the history.

        Activating the active model again changes nothing and returns the current pointer.
        """
        check_id(project, "project")
        check_id(model_id, "model id")
        current = self.active(project)
        manifest = self.verify(project, model_id)
        if current is not None and current.model_id == model_id:
            logger.info("%s is already active; nothing to do", self._where(project, model_id))
            return current
        history = [current.entry(), *current.history] if current is not None else []
        pointer = self._switch(manifest, run_id, reason, history)
        logger.info(
            "activated %s (previous: %s)",
            self._where(project, model_id),
            current.model_id if current is not None else "none",
        )
        return pointer

    # ----------------------------------------------------------------------------------------- rejected

    def rejected(self, project: str) -> list[RejectedEntry]:
        """The rejected candidates kept in the store, oldest first."""
        check_id(project, "project")
        key = layout(project).rejected
        try:
            raw = self.fs.read_bytes(key)
        except ModelNotFoundError:
            return []
        try:
            index = RejectedIndex.model_validate_json(raw)
        except ValidationError as exc:
            raise IntegrityError(
                f"{key} in the {self.describe()} is not a valid list of rejected candidates "
                f"({exc.errors()[0]['msg']}); move it aside to start a new list. Nothing was changed"
            ) from None
        return list(index.rejected)

    def _write_rejected(self, project: str, entries: list[RejectedEntry]) -> None:
        index = RejectedIndex(project=project, rejected=entries)
        text = json.dumps(index.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        self.fs.write_bytes(layout(project).rejected, (text + "\n").encode("utf-8"))

    def record_rejected(
        self, project: str, model_id: str, *, run_id: str | None = None, reason: str = ""
    ) -> None:
        """Note that the stored model ``model_id`` is a rejected candidate (kept for a forced promotion)."""
        check_id(model_id, "model id")
        if not self.has_model(project, model_id):
            raise ModelNotFoundError(f"{self._where(project, model_id)} is not stored; nothing was recorded")
        entries = [e for e in self.rejected(project) if e.model_id != model_id]
        entries.append(
            RejectedEntry(model_id=model_id, stored_at=iso(self._clock()), run_id=run_id, reason=reason)
        )
        self._write_rejected(project, entries)

    def forget_rejected(self, project: str, model_id: str) -> None:
        """Take ``model_id`` off the rejected list (e.g. after a forced promotion); no-op if not on it."""
        entries = self.rejected(project)
        kept = [e for e in entries if e.model_id != model_id]
        if len(kept) != len(entries):
            self._write_rejected(project, kept)

    def prune_rejected(self, project: str, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` rejected candidates; return the ids removed.

        Never removes the active model or a model in the pointer's history (a rollback target): those stay
        stored and listed, whatever their age.
        """
        if keep < 0:
            raise StoreError(f"keep must be 0 or more, got {keep}; nothing was removed")
        entries = self.rejected(project)
        excess = len(entries) - keep
        if excess <= 0:
            return []
        pointer = self.active(project)
        protected = (
            {pointer.model_id, *(e.model_id for e in pointer.history)} if pointer is not None else set()
        )
        kept = [e for i, e in enumerate(entries) if i >= excess or e.model_id in protected]
        removed = [e.model_id for e in entries if e not in kept]
        # The list first: a crash part-way leaves an unlisted folder behind, never a listed missing model.
        self._write_rejected(project, kept)
        for model_id in removed:
            if self.fs.exists(layout(project).model(model_id)):
                self.fs.remove_tree(layout(project).model(model_id))
        if removed:
            logger.info("pruned %d rejected candidates of %r: %s", len(removed), project, ", ".join(removed))
        return removed

    def rollback(self, project: str, *, to: str | None = None, run_id: str | None = None) -> ActivePointer:
        """Return to the previous active model (or to ``to``), verifying it first.

        Rolling back undoes activations: the target and everything newer leave the history, so two
        rollbacks step back two models instead of toggling between the last two. ``to`` may also name a
        stored model that is not in the history; it is then activated like ``activate`` (the current model
        goes on the history).
        A model that is in the history must still have the manifest it was activated with.
        """
        check_id(project, "project")
        if to is not None:
            check_id(to, "model id")
        current = self.active(project)
        if current is None:
            raise StoreError(
                f"project {project!r} has no active model in the {self.describe()}; nothing to roll back"
            )
        if to == current.model_id:
            self.verify(project, to)
            return current
        target_id, index = rollback_plan(current, to)
        manifest = self.verify(project, target_id)
        if index is not None:
            recorded = current.history[index].manifest_sha256
            if manifest.sha256() != recorded:
                raise IntegrityError(
                    f"{layout(project).manifest(target_id)}: the manifest changed since the "
                    f"model was active (sha256 {manifest.sha256()}, history records {recorded}); "
                    f"{current.model_id!r} stays active"
                )
            history = current.history[index + 1 :]
        else:
            history = [current.entry(), *current.history]
        pointer = self._switch(manifest, run_id, f"rollback from {current.model_id}", history)
        logger.info("rolled project %r back from %r to %r", project, current.model_id, target_id)
        return pointer
