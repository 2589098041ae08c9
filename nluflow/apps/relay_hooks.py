"""What an incoming webhook means for retraining: Label Studio actions and generic payloads, parsed into
a hook with its de-duplication keys, or refused with :class:`Reject` (an answer other than 'emitted')."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nluflow.store import ID_PATTERN

# Label Studio actions that change the annotated data and start a retrain (deletions too: a deleted
# annotation or task must leave the training data).
CREATE_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTIONS = frozenset({"ANNOTATIONS_DELETED", "TASKS_DELETED"})
RETRAIN_ACTIONS = CREATE_ACTIONS | DELETE_ACTIONS


class Reject(Exception):
    """An answer other than 'emitted'; ``status`` < 300 means acknowledged and ignored."""

    def __init__(self, status: int, message: str, counter: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.counter = counter


@dataclass(frozen=True)
class LabelStudioHook:
    action: str
    project_id: str
    new_examples: int
    removed: int = 0
    keys: tuple[tuple[str, ...], ...] = ()  # de-duplication keys; empty: the delivery cannot be told apart


def _delivery_keys(
    project_id: str, items: Sequence[Mapping[str, Any]], kind: str
) -> tuple[tuple[str, ...], ...]:
    """One key per item: ``(annotation, project, id, updated_at)`` for created/updated annotations (the same
    annotation in the same state is the same data), ``(kind, project, id)`` for deleted ones. Empty when an
    item lacks what identifies it: such a delivery is never taken for a replay."""
    keys: list[tuple[str, ...]] = []
    for item in items:
        item_id = item.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, int | str):
            return ()
        if kind == "annotation":
            updated = item.get("updated_at")
            if not isinstance(updated, str) or not updated:
                return ()
            keys.append((kind, project_id, str(item_id), updated))
        else:
            keys.append((kind, project_id, str(item_id)))
    return tuple(keys)


class GenericPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str = Field(pattern=ID_PATTERN)
    data: str = Field(min_length=1, max_length=4096)
    new_examples: int = Field(default=0, ge=0)


def _label_studio_project_id(body: Mapping[str, Any], annotation: object) -> str | None:
    project = body.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    if project is None and isinstance(annotation, Mapping):
        project = annotation.get("project")
    if isinstance(project, bool) or not isinstance(project, int | str) or str(project) == "":
        return None
    return str(project)


def parse_label_studio(body: object) -> LabelStudioHook:
    """What a Label Studio webhook body means for retraining (raises ``Reject`` otherwise).

    ``new_examples`` counts annotations created and not cancelled (a skipped task adds no example);
    an ``ANNOTATION_UPDATED`` re-labels an existing example: 0 new, but the data changed, so it is emitted.
    """
    if not isinstance(body, Mapping):
        raise Reject(422, f"found a JSON {type(body).__name__}, expected a Label Studio webhook object")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise Reject(422, "found no 'action', expected a Label Studio webhook (e.g. ANNOTATION_CREATED)")
    if action not in RETRAIN_ACTIONS:
        shown = action if len(action) <= 60 else action[:59] + "…"  # a bomb is never echoed whole
        raise Reject(
            200,
            f"action {shown} does not start a retrain (only {', '.join(sorted(RETRAIN_ACTIONS))}); ignored",
            f"ignored:{shown}",
        )
    if action in DELETE_ACTIONS:
        return _parse_deletion(body, action)
    # ANNOTATIONS_CREATED carries a list under the singular key 'annotation' (Label Studio 1.23).
    annotation = body.get("annotation", body.get("annotations"))
    items = annotation if isinstance(annotation, list) else [annotation]
    if not items or not all(isinstance(item, Mapping) for item in items):
        raise Reject(422, f"{action}: found no annotation object(s) under 'annotation'; nothing emitted")
    project_id = _label_studio_project_id(body, items[0])
    if project_id is None:
        raise Reject(422, f"{action}: found no project id ('project.id'); nothing emitted")
    created = sum(1 for item in items if not item.get("was_cancelled"))
    keys = _delivery_keys(project_id, items, "annotation")
    if action == "ANNOTATION_UPDATED":
        return LabelStudioHook(action, project_id, 0, keys=keys)
    if created == 0:
        raise Reject(
            200,
            f"{action}: only skipped (cancelled) annotations, no new example; ignored",
            f"ignored:{action}",
        )
    return LabelStudioHook(action, project_id, created, keys=keys)


def _parse_deletion(body: Mapping[str, Any], action: str) -> LabelStudioHook:
    """``ANNOTATIONS_DELETED`` (``annotations: [{"id"}]``) or ``TASKS_DELETED`` (``tasks: [{"id"}]``, and
    ``project`` as a bare id in 1.23.2): 0 new examples, ``removed`` deleted items; the data changed."""
    key = "annotations" if action == "ANNOTATIONS_DELETED" else "tasks"
    items = body.get(key)
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise Reject(422, f"{action}: found no list of deleted items under {key!r}; nothing emitted")
    project_id = _label_studio_project_id(body, None)
    if project_id is None:
        raise Reject(422, f"{action}: found no project id ('project'); nothing emitted")
    kind = "deleted-annotation" if action == "ANNOTATIONS_DELETED" else "deleted-task"
    return LabelStudioHook(
        action, project_id, 0, removed=len(items), keys=_delivery_keys(project_id, items, kind)
    )
