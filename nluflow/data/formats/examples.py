"""Building :class:`~nluflow.data.schema.Example` and :class:`~nluflow.data.schema.Entity` from what a
reader found, with the field checks every format shares (one DataError at file:line per problem)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from nluflow.data.formats.base import FIX, excerpt, is_int, names, pydantic_problem, shown
from nluflow.data.schema import Entity, Example, Origin
from nluflow.errors import DataError

ENTITY_KEYS = ("start", "end", "entity", "value")

_Model = TypeVar("_Model", bound=BaseModel)
_FIELDS_SETS: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}


def compact(model: _Model) -> _Model:
    """``model`` sharing its set of explicitly set field names with the models of its class that set the same.

    pydantic keeps one ``set`` per instance, 216-728 bytes: more than the text of a typical example. The
    schema's models are frozen, so nothing adds to the set after validation, and ``model_copy`` copies it
    before changing it; sharing it saves about 1.1 KB per example with one entity (measured by
    ``bench/memory.py``), about half of what a loaded dataset costs.
    """
    fields = model.__pydantic_fields_set__
    shared = _FIELDS_SETS.setdefault((type(model), frozenset(fields)), fields)
    if shared is not fields:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
    return model


def intern_name(value: str) -> str:
    """One shared string per distinct intent, entity type, locale or path (they repeat on every example)."""
    return sys.intern(value) if type(value) is str else value


def parse_entities(raw: object, path: Path, line: int) -> tuple[Entity, ...]:
    """Entities from a JSON list of {start, end, entity, value}; extra keys such as role are ignored."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DataError(
            f"'entities' is {type(raw).__name__} {excerpt(json.dumps(raw, default=str))}; "
            f"expected a list of {{start, end, entity, value}} objects; {FIX}",
            path,
            line,
        )
    out: list[Entity] = []
    for n, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise DataError(
                f"entity #{n} is {type(item).__name__}; expected an object with keys "
                f"{', '.join(ENTITY_KEYS)}; {FIX}",
                path,
                line,
            )
        missing = [k for k in ENTITY_KEYS if k not in item]
        if missing:
            raise DataError(
                f"entity #{n} has no {', '.join(repr(k) for k in missing)} (keys found: "
                f"{names(sorted(map(str, item))) or 'none'}); expected keys "
                f"{', '.join(ENTITY_KEYS)}; {FIX}",
                path,
                line,
            )
        start, end, etype, value = (item[k] for k in ENTITY_KEYS)
        if not (is_int(start) and is_int(end)):
            raise DataError(
                f"entity #{n} has offsets start={shown(start)} end={shown(end)}; expected integer "
                f"code-point offsets; {FIX}",
                path,
                line,
            )
        if not isinstance(etype, str) or not etype.strip():
            raise DataError(
                f"entity #{n} has entity type {shown(etype)}; expected a non-empty string; {FIX}",
                path,
                line,
            )
        if not isinstance(value, str):
            raise DataError(f"entity #{n} has value {shown(value)}; expected a string; {FIX}", path, line)
        try:
            out.append(compact(Entity(start=start, end=end, entity=intern_name(etype), value=value)))
        except ValidationError as exc:
            raise DataError(
                f"entity #{n} is invalid ({pydantic_problem(exc)}); expected offsets >= 0; {FIX}",
                path,
                line,
            ) from exc
    return tuple(out)


def make_example(
    path: Path,
    line: int,
    *,
    text: object,
    intent: object,
    entities: tuple[Entity, ...] = (),
    locale: object = None,
    score: object = None,
    default_locale: str | None,
) -> Example:
    """Check the fields' types and build the Example; every problem is a DataError at path:line."""
    if not isinstance(text, str) or not text.strip():
        found = (
            "missing" if text is None else f"{type(text).__name__} {shown(text)}" if text != "" else "empty"
        )
        raise DataError(f"'text' is {found}; expected a non-empty string; {FIX}", path, line)
    if not isinstance(intent, str) or not intent.strip():
        found = (
            "missing"
            if intent is None
            else f"{type(intent).__name__} {shown(intent)}"
            if intent != ""
            else "empty"
        )
        raise DataError(
            f"'intent' of {excerpt(text)} is {found}; expected a non-empty intent name; {FIX}", path, line
        )
    if locale is not None and not isinstance(locale, str):
        raise DataError(
            f"'locale' is {type(locale).__name__} {shown(locale)}; expected a string such as 'en-US'; {FIX}",
            path,
            line,
        )
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0
    ):
        raise DataError(f"'score' is {shown(score)}; expected a number between 0 and 1; {FIX}", path, line)
    try:
        locale = locale or default_locale
        example = Example(
            text=text,
            intent=intern_name(intent),
            entities=entities,
            locale=intern_name(locale) if isinstance(locale, str) else locale,
            score=float(score) if score is not None else None,
            origin=compact(Origin(path=intern_name(str(path)), line=line)),
        )
    except ValidationError as exc:  # e.g. an unpaired surrogate from a "\ud800" escape
        raise DataError(
            f"example is invalid ({pydantic_problem(exc)}); expected valid Unicode text; {FIX}", path, line
        ) from exc
    return compact(example)


def example_from_object(
    obj: object, path: Path, line: int, default_locale: str | None, with_entities: bool
) -> Example:
    """One example from a shared-format (or Rasa JSON) object."""
    if not isinstance(obj, dict):
        raise DataError(
            f"found a JSON {type(obj).__name__}; expected an object with 'text' and 'intent'; {FIX}",
            path,
            line,
        )
    entities = parse_entities(obj.get("entities"), path, line) if with_entities else ()
    return make_example(
        path,
        line,
        text=obj.get("text"),
        intent=obj.get("intent"),
        entities=entities,
        locale=obj.get("locale"),
        score=obj.get("score"),
        default_locale=default_locale,
    )
