"""Label Studio exports: which annotation of a task becomes the example, and the example it gives.

A task carries ``data.text``, a ``choices`` result for the intent and ``labels`` results for entity spans.
Of a task's annotations the ground-truth one is used, else the latest; cancelled (skipped) annotations never;
tasks without a usable annotation, superseded annotations and disagreeing tasks are counted in
``Dataset.skipped`` (see :func:`choose_annotation`). The file itself is read by
:mod:`nluflow.data.formats.json_document`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from nluflow.data.formats.base import Parsed, ReadOptions, is_int
from nluflow.data.formats.examples import make_example, parse_entities
from nluflow.data.schema import Example

logger = logging.getLogger(__name__)


def annotation_label(annotation: Mapping[str, Any]) -> tuple[object, tuple[tuple[object, ...], ...]]:
    """What an annotation says (intent, sorted entity spans), to tell agreeing annotations from others."""
    intent: object = None
    spans: list[tuple[object, ...]] = []
    results = annotation.get("result")
    for result in results if isinstance(results, list) else []:
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(value, dict):
            continue
        if result.get("type") == "choices" and intent is None:
            choices = value.get("choices")
            intent = choices[0] if isinstance(choices, list) and choices else None
        elif result.get("type") == "labels":
            labels = value.get("labels")
            label = labels[0] if isinstance(labels, list) and labels else None
            spans.append((value.get("start"), value.get("end"), str(label), str(value.get("text"))))
    return intent, tuple(sorted(spans, key=repr))


def _annotation_order(annotation: Mapping[str, Any]) -> tuple[float, int]:
    """Sort key "latest": ``updated_at`` (else ``created_at``), then the id (ids grow in Label Studio)."""
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    when = float("-inf")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):  # an unreadable stamp sorts first
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    ident = annotation.get("id")
    return when, ident if is_int(ident) else -1  # type: ignore[return-value]


def choose_annotation(annotations: object) -> tuple[dict[str, Any] | None, Counter[str], bool]:
    """The annotation of a Label Studio task that becomes the example, what was left out, and disagreement.

    Cancelled (skipped) annotations are never used. Among the others the ground-truth one wins (the latest of
    several), else the latest (``updated_at``, then id). Returns ``(chosen or None, counts, disagree)``:
    counts of ``cancelled_annotations``, ``superseded_annotations`` (usable but not chosen),
    ``unannotated_tasks`` / ``cancelled_only_tasks`` (no example from this task); ``disagree`` is true when
    the usable annotations do not all say the same (intent and entity spans).
    """
    counts: Counter[str] = Counter()
    items = [a for a in (annotations if isinstance(annotations, list) else []) if isinstance(a, dict)]
    live = [a for a in items if not a.get("was_cancelled")]
    counts["cancelled_annotations"] += len(items) - len(live)
    if not items:
        counts["unannotated_tasks"] += 1
        return None, counts, False
    if not live:
        counts["cancelled_only_tasks"] += 1
        return None, counts, False
    pool = [a for a in live if a.get("ground_truth")] or live
    chosen = max(pool, key=_annotation_order)
    counts["superseded_annotations"] += len(live) - 1
    disagree = len({repr(annotation_label(a)) for a in live}) > 1
    return chosen, counts, disagree


def label_studio_example(
    task: dict[str, Any], path: Path, line: int, options: ReadOptions, out: Parsed
) -> Example | None:
    """One Label Studio task: data.text, the chosen annotation's first 'choices' result as intent and its
    'labels' results as entities (see :func:`choose_annotation`); counts go to ``out.skipped``."""
    data = task.get("data")
    text = data.get("text") if isinstance(data, dict) else None
    annotation, counts, disagree = choose_annotation(task.get("annotations"))
    out.skipped.update({k: v for k, v in counts.items() if v})
    if annotation is None:
        return None
    if disagree:
        out.skipped["annotation_disagreements"] += 1
        reason = "the ground-truth one" if annotation.get("ground_truth") else "the latest one"
        logger.warning(
            "%s:%d: the annotations of Label Studio task %s disagree; used annotation %s (%s), the others "
            "were skipped",
            path,
            line,
            task.get("id"),
            annotation.get("id"),
            reason,
        )
    intent, _ = annotation_label(annotation)
    entities: list[dict[str, Any]] = []
    results = annotation.get("result")
    for result in results if isinstance(results, list) else []:
        value = result.get("value") if isinstance(result, dict) else None
        if isinstance(value, dict) and result.get("type") == "labels":
            labels = value.get("labels")
            entities.append(
                {
                    "start": value.get("start"),
                    "end": value.get("end"),
                    "entity": labels[0] if isinstance(labels, list) and labels else None,
                    "value": value.get("text"),
                }
            )
    return make_example(
        path,
        line,
        text=text,
        intent=intent,
        entities=parse_entities(entities, path, line) if options.with_entities else (),
        default_locale=options.default_locale,
    )
