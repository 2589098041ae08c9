"""Read annotated NLU data (JSONL, CSV, Rasa YAML, JSON) into a :class:`Dataset`, with file:line per example.

Formats, by suffix:

- ``.jsonl`` — the shared format, one object a line: ``{"text", "intent", "entities": [{start, end, entity,
  value}], "locale"?, "score"?}``. Blank lines are ignored.
- ``.csv`` — a header with ``text`` and ``intent``, optional ``entities`` (a JSON list in the cell),
  ``locale`` and ``score``; other columns are ignored.
- ``.yml`` / ``.yaml`` — Rasa 2/3 NLU YAML: ``nlu:`` items with ``intent:`` and ``examples: |`` (or a list
  of ``{text, metadata}``), inline annotations ``[text](entity)``, ``[text](entity:value)``,
  ``[text]{"entity": ...}`` and ``[text][{...}, ...]``. ``synonym:``, ``regex:`` and ``lookup:`` items and
  ``metadata`` are skipped and counted in ``Dataset.skipped``.
- ``.json`` — a JSON list of shared-format objects, Rasa's JSON format
  (``{"rasa_nlu_data": {"common_examples": [...]}}``) or a Label Studio export (a list of tasks with
  ``data.text``, a ``choices`` result for the intent and ``labels`` results for entity spans). Of a task's
  annotations the ground-truth one is used, else the latest; cancelled (skipped) annotations never; tasks
  without a usable annotation, superseded annotations and disagreeing tasks are counted in
  ``Dataset.skipped`` (see :func:`choose_annotation`).

The loader checks the *format* only. Entity spans are kept as written even when
``text[start:end] != value`` or the offsets are out of range: :mod:`nluflow.data.validation` reports those
as a configurable rule, with file:line. Every problem raises :class:`~nluflow.errors.DataError` carrying
``path`` and ``line``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from nluflow import jsonsafe
from nluflow.data.schema import Dataset, Entity, Example, Origin
from nluflow.errors import DataError

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".yml", ".yaml", ".json")

_FIX = "the file was not loaded; fix the line and rerun"
_FIX_FILE = "the file was not loaded; fix the file and rerun"
_SHARED_FORMAT = (
    'one JSON object per line like {"text": "...", "intent": "...", "entities": '
    '[{"start": 0, "end": 4, "entity": "city", "value": "..."}]}'
)
_ENTITY_KEYS = ("start", "end", "entity", "value")
_CSV_REQUIRED = ("text", "intent")
_CSV_OPTIONAL = ("entities", "locale", "score")

# Rasa's inline annotation: [entity_text] then (type), (type:synonym), {json dict} or [list of json dicts].
_ANNOTATION = re.compile(
    r"\[(?P<text>[^\]]+?)\]"
    r"(?:\((?P<entity>[^:)]+?)(?::(?P<value>[^)]+))?\)"
    r"|\{(?P<dict>[^}]+?)\}"
    r"|\[(?P<list>.*?)\])"
)
# What is left of an annotation that did not parse, e.g. "[Paris](city" or "[x]{bad".
_BROKEN_ANNOTATION = re.compile(r"\][({\[]")
_RASA_STRIP = "\n\r "  # Rasa strips these around each example
_YAML_LINE_BREAK = re.compile("[\n\u2028\u2029]")  # the breaks PyYAML counts in marks and keeps in scalars
_JSON_WS = re.compile(r"[ \t\n\r]*")
_YAML_NULL = "tag:yaml.org,2002:null"
_HASH_CHUNK = 1 << 20
_NESTED = "JSON nested too deeply; expected {expected}; " + _FIX


# --------------------------------------------------------------------------------------------------- helpers


@dataclass
class _Parsed:
    """What one file gave: its examples and what was skipped on purpose."""

    examples: list[Example] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


_Model = TypeVar("_Model", bound=BaseModel)
_FIELDS_SETS: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}


def _compact(model: _Model) -> _Model:
    """``model`` sharing its set of explicitly set field names with the models of its class that set the same.

    pydantic keeps one ``set`` per instance, 216-728 bytes: more than the text of a typical example. The
    schema's models are frozen, so nothing adds to the set after validation, and ``model_copy`` copies it
    before changing it; sharing it saves about 1.1 KB per example with one entity (measured by
    ``bench/memory.py``), about half of what a loaded dataset costs.
    """
    names = model.__pydantic_fields_set__
    shared = _FIELDS_SETS.setdefault((type(model), frozenset(names)), names)
    if shared is not names:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
    return model


def _name(value: str) -> str:
    """One shared string per distinct intent, entity type, locale or path (they repeat on every example)."""
    return sys.intern(value) if type(value) is str else value


def _excerpt(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a huge or deeply nested value."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _check_file(path: Path) -> None:
    """Raise DataError unless ``path`` is an existing file (not a folder)."""
    if not path.exists():
        raise DataError(f"file not found; expected an existing data file; {_FIX_FILE}", path)
    if path.is_dir():
        raise DataError(
            f"is a folder; expected a file (use load_paths for folders); {_FIX_FILE}",
            path,
        )


def _unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot be read ({exc.strerror}); expected a readable file; {_FIX_FILE}", path)


def _not_utf8(path: Path, line: int, bad: bytes) -> DataError:
    return DataError(f"byte {bad!r} is not valid UTF-8; expected UTF-8 text; {_FIX}", path, line)


def _names(items: Iterable[object], limit: int = 8) -> str:
    """Up to ``limit`` names as ``'a', 'b'`` (each cut by :func:`_shown`), then how many more: a header or
    a mapping with thousands of huge keys never becomes a message of megabytes."""
    shown: list[str] = []
    more = 0
    for item in items:
        if len(shown) < limit:
            shown.append(_shown(item, 40))
        else:
            more += 1
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM is dropped); bad bytes raise DataError at their line."""
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _not_utf8(path, line, data[exc.start : exc.start + 1]) from exc
    return text.removeprefix("\ufeff")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its "\\n") of each line of a UTF-8 file, read one line at a time.

    The same lines as ``_read_text(path).split("\\n")``, without ever holding the whole file: a large
    JSONL file costs its examples, not its raw text and a list of its lines besides.
    """
    _check_file(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    with handle:
        lineno = 0
        while True:
            try:
                raw = handle.readline()
            except OSError as exc:
                raise _unreadable(path, exc) from exc
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, lineno, raw[exc.start : exc.start + 1]) from exc
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line.removesuffix("\n")


def _pydantic_problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    return ", ".join(parts)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _overlong_number(exc: jsonsafe.NumberTooLong, text: str) -> tuple[str, int | None]:
    """What an overlong integer literal in ``text`` is and its column, and its 1-based line in ``text``."""
    offset = jsonsafe.overlong_number_offset(text)
    what = f"an integer of {exc.digits} digits (more than {jsonsafe.MAX_INT_DIGITS})"
    if offset is None:  # pragma: no cover - loads only refuses literals the scan finds
        return what, None
    line, column = _position(text, offset)
    return f"{what} at column {column}", line


def _parse_entities(raw: object, path: Path, line: int) -> tuple[Entity, ...]:
    """Entities from a JSON list of {start, end, entity, value}; extra keys such as role are ignored."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DataError(
            f"'entities' is {type(raw).__name__} {_excerpt(json.dumps(raw, default=str))}; "
            f"expected a list of {{start, end, entity, value}} objects; {_FIX}",
            path,
            line,
        )
    out: list[Entity] = []
    for n, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise DataError(
                f"entity #{n} is {type(item).__name__}; expected an object with keys "
                f"{', '.join(_ENTITY_KEYS)}; {_FIX}",
                path,
                line,
            )
        missing = [k for k in _ENTITY_KEYS if k not in item]
        if missing:
            raise DataError(
                f"entity #{n} has no {', '.join(repr(k) for k in missing)} (keys found: "
                f"{_names(sorted(map(str, item))) or 'none'}); expected keys "
                f"{', '.join(_ENTITY_KEYS)}; {_FIX}",
                path,
                line,
            )
        start, end, etype, value = (item[k] for k in _ENTITY_KEYS)
        if not (_is_int(start) and _is_int(end)):
            raise DataError(
                f"entity #{n} has offsets start={_shown(start)} end={_shown(end)}; expected integer "
                f"code-point offsets; {_FIX}",
                path,
                line,
            )
        if not isinstance(etype, str) or not etype.strip():
            raise DataError(
                f"entity #{n} has entity type {_shown(etype)}; expected a non-empty string; {_FIX}",
                path,
                line,
            )
        if not isinstance(value, str):
            raise DataError(f"entity #{n} has value {_shown(value)}; expected a string; {_FIX}", path, line)
        try:
            out.append(_compact(Entity(start=start, end=end, entity=_name(etype), value=value)))
        except ValidationError as exc:
            raise DataError(
                f"entity #{n} is invalid ({_pydantic_problem(exc)}); expected offsets >= 0; {_FIX}",
                path,
                line,
            ) from exc
    return tuple(out)


def _make_example(
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
            "missing" if text is None else f"{type(text).__name__} {_shown(text)}" if text != "" else "empty"
        )
        raise DataError(f"'text' is {found}; expected a non-empty string; {_FIX}", path, line)
    if not isinstance(intent, str) or not intent.strip():
        found = (
            "missing"
            if intent is None
            else f"{type(intent).__name__} {_shown(intent)}"
            if intent != ""
            else "empty"
        )
        raise DataError(
            f"'intent' of {_excerpt(text)} is {found}; expected a non-empty intent name; {_FIX}", path, line
        )
    if locale is not None and not isinstance(locale, str):
        raise DataError(
            f"'locale' is {type(locale).__name__} {_shown(locale)}; expected a string such as 'en-US'; "
            f"{_FIX}",
            path,
            line,
        )
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0
    ):
        raise DataError(f"'score' is {_shown(score)}; expected a number between 0 and 1; {_FIX}", path, line)
    try:
        locale = locale or default_locale
        example = Example(
            text=text,
            intent=_name(intent),
            entities=entities,
            locale=_name(locale) if isinstance(locale, str) else locale,
            score=float(score) if score is not None else None,
            origin=_compact(Origin(path=_name(str(path)), line=line)),
        )
    except ValidationError as exc:  # e.g. an unpaired surrogate from a "\ud800" escape
        raise DataError(
            f"example is invalid ({_pydantic_problem(exc)}); expected valid Unicode text; {_FIX}", path, line
        ) from exc
    return _compact(example)


def _example_from_object(
    obj: object, path: Path, line: int, default_locale: str | None, with_entities: bool
) -> Example:
    """One example from a shared-format (or Rasa JSON) object."""
    if not isinstance(obj, dict):
        raise DataError(
            f"found a JSON {type(obj).__name__}; expected an object with 'text' and 'intent'; {_FIX}",
            path,
            line,
        )
    entities = _parse_entities(obj.get("entities"), path, line) if with_entities else ()
    return _make_example(
        path,
        line,
        text=obj.get("text"),
        intent=obj.get("intent"),
        entities=entities,
        locale=obj.get("locale"),
        score=obj.get("score"),
        default_locale=default_locale,
    )


def _no_examples(path: Path, expected: str, skipped: Counter[str] | None = None) -> DataError:
    note = ""
    if skipped:
        note = " (only " + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())) + " items)"
    return DataError(f"no examples found in {path}{note}; expected {expected}; {_FIX_FILE}", path)


def _dataset(parsed: _Parsed, source: str) -> Dataset:
    return Dataset(
        examples=tuple(parsed.examples), source=source, skipped=dict(sorted(parsed.skipped.items()))
    )


# --------------------------------------------------------------------------------------------------- JSONL


def _parse_jsonl(
    lines: Iterable[tuple[int, str]], path: Path, default_locale: str | None, with_entities: bool
) -> _Parsed:
    out = _Parsed()
    unknown: set[str] = set()
    for lineno, raw in lines:
        if not raw.strip():
            continue
        try:
            obj = jsonsafe.loads(raw)
        except jsonsafe.NumberTooLong as exc:
            what, _ = _overlong_number(exc, raw)
            raise DataError(
                f"{what}; expected {_SHARED_FORMAT} (offsets and numbers of ordinary size); {_FIX}",
                path,
                lineno,
            ) from exc
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON ({exc.msg} at column {exc.colno}); expected {_SHARED_FORMAT}; {_FIX}",
                path,
                lineno,
            ) from exc
        except RecursionError as exc:
            raise DataError(_NESTED.format(expected=_SHARED_FORMAT), path, lineno) from exc
        if isinstance(obj, dict):
            unknown.update(k for k in obj if k not in ("text", "intent", "entities", "locale", "score"))
        try:
            out.examples.append(_example_from_object(obj, path, lineno, default_locale, with_entities))
        except RecursionError as exc:  # a value nested just below the parser's limit, shown in a message
            raise DataError(_NESTED.format(expected=_SHARED_FORMAT), path, lineno) from exc
    if unknown:
        logger.warning("%s: ignored unknown keys %s", path, ", ".join(sorted(map(repr, unknown))))
    return out


def load_jsonl(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a JSONL file in the shared format."""
    path = Path(path)
    parsed = _parse_jsonl(_read_lines(path), path, default_locale, with_entities=True)
    if not parsed.examples:
        raise _no_examples(path, _SHARED_FORMAT)
    return _dataset(parsed, str(path))


# --------------------------------------------------------------------------------------------------- CSV


def _parse_csv(path: Path, default_locale: str | None, with_entities: bool) -> _Parsed:
    """Parse a CSV file record by record (the raw text is never held whole)."""
    _check_file(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return _parse_csv_rows(handle, path, default_locale, with_entities)
    except UnicodeDecodeError as exc:
        _read_text(path)  # raises the DataError that names the bad byte and its line
        raise DataError(  # pragma: no cover - the file changed between the two reads
            f"is not valid UTF-8; expected UTF-8 text; {_FIX_FILE}", path
        ) from exc
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _parse_csv_rows(handle: TextIO, path: Path, default_locale: str | None, with_entities: bool) -> _Parsed:
    out = _Parsed()
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):  # leading blank lines
            header = next(reader, None)
        if header is None:
            return out
        header_line = reader.line_num
        columns = [h.strip().lower() for h in header]
        missing = [c for c in _CSV_REQUIRED if c not in columns]
        if missing:
            raise DataError(
                f"CSV header has columns {_names(header)}, no "
                f"{', '.join(repr(c) for c in missing)}; expected columns 'text' and 'intent' (optional: "
                f"{', '.join(_CSV_OPTIONAL)}); {_FIX_FILE}",
                path,
                header_line,
            )
        index = {name: columns.index(name) for name in (*_CSV_REQUIRED, *_CSV_OPTIONAL) if name in columns}
        width = len(header)
        prev_end = header_line
        for row in reader:
            start_line, prev_end = prev_end + 1, reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < width or any(cell.strip() for cell in row[width:]):
                raise DataError(
                    f"record has {len(row)} fields; expected {width} as in the header "
                    f"({_names(header)}); quote a text that contains commas; {_FIX}",
                    path,
                    start_line,
                )
            entities: tuple[Entity, ...] = ()
            if with_entities and "entities" in index and row[index["entities"]].strip():
                cell = row[index["entities"]]
                try:
                    raw = jsonsafe.loads(cell)
                    entities = _parse_entities(raw, path, start_line)
                except jsonsafe.NumberTooLong as exc:
                    what, _ = _overlong_number(exc, cell)
                    raise DataError(
                        f"'entities' cell holds {what} of the cell; expected a JSON list of "
                        f"{{start, end, entity, value}} objects with offsets of ordinary size; {_FIX}",
                        path,
                        start_line,
                    ) from exc
                except (json.JSONDecodeError, RecursionError) as exc:
                    raise DataError(
                        f"'entities' cell {_excerpt(cell)} is not valid JSON; expected a JSON list of "
                        f"{{start, end, entity, value}} objects; {_FIX}",
                        path,
                        start_line,
                    ) from exc
            score: float | None = None
            if "score" in index and row[index["score"]].strip():
                cell = row[index["score"]].strip()
                try:
                    score = float(cell)
                except ValueError as exc:
                    raise DataError(
                        f"'score' is {_shown(cell)}; expected a number between 0 and 1; {_FIX}",
                        path,
                        start_line,
                    ) from exc
                if not math.isfinite(score):
                    raise DataError(
                        f"'score' is {_shown(cell)}; expected a number between 0 and 1; {_FIX}",
                        path,
                        start_line,
                    )
            locale = row[index["locale"]].strip() if "locale" in index else ""
            out.examples.append(
                _make_example(
                    path,
                    start_line,
                    text=row[index["text"]],
                    intent=row[index["intent"]],
                    entities=entities,
                    locale=locale or None,
                    score=score,
                    default_locale=default_locale,
                )
            )
    except csv.Error as exc:
        raise DataError(
            f"malformed CSV ({exc}); expected a CSV file with a header row; {_FIX}",
            path,
            reader.line_num or 1,
        ) from exc
    return out


def load_csv(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a CSV file with columns text, intent and optional entities (JSON list), locale, score."""
    path = Path(path)
    parsed = _parse_csv(path, default_locale, with_entities=True)
    if not parsed.examples:
        raise _no_examples(path, "a header row with text,intent and at least one record")
    return _dataset(parsed, str(path))


# ------------------------------------------------------------------------------------------------- Rasa YAML


def _rasa_entity_dicts(match: re.Match[str], path: Path, line: int) -> list[dict[str, Any]]:
    blob = match.group("dict")
    source = "{" + blob + "}" if blob is not None else "[" + match.group("list") + "]"
    try:
        data = jsonsafe.loads(source)
    except jsonsafe.NumberTooLong as exc:
        raise DataError(
            f"entity annotation {_excerpt(match.group(0))} holds an integer of {exc.digits} digits (more "
            f"than {jsonsafe.MAX_INT_DIGITS}); expected "
            f'[text]{{"entity": "type", "value": "..."}}; {_FIX}',
            path,
            line,
        ) from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataError(
            f"entity annotation {_excerpt(match.group(0))} is not valid JSON; expected "
            f'[text]{{"entity": "type", "value": "..."}}; {_FIX}',
            path,
            line,
        ) from exc
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(d, dict) for d in items):
        raise DataError(
            f"entity annotation {_excerpt(match.group(0))} has no entity object; expected "
            f'[text]{{"entity": "type"}}; {_FIX}',
            path,
            line,
        )
    return items


class _NextChar:
    """``text.find(char, pos)`` (``len(text)`` when absent) that remembers its answers, so that a scan whose
    positions grow never reads the same stretch twice, however often it asks."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.known: dict[str, tuple[int, int]] = {}  # char -> (searched from, found at)

    def __call__(self, char: str, pos: int) -> int:
        start, found = self.known.get(char, (-1, -1))
        if not start <= pos <= found:
            found = self.text.find(char, pos)
            found = len(self.text) if found < 0 else found
            self.known[char] = (pos, found)
        return found


def _annotation_at(raw: str, i: int, j: int, after: _NextChar) -> bool:
    """Whether ``_ANNOTATION`` matches at ``i`` (``raw[i] == "["``; ``j`` is the first ``]`` after it).

    The entity text can hold no ``]``, so it ends at ``j`` and the outcome depends on what follows ``j``
    only: the caller tries one start per ``]`` instead of every ``[`` (``finditer`` was quadratic on a line
    of ``[``). Each branch mirrors one alternative of the pattern.
    """
    if j == i + 1:  # empty entity text
        return False
    s = j + 1
    opener = raw[s : s + 1]
    if opener == "(":  # (entity) or (entity:value): entity up to the first ':' or ')', never empty
        close, colon = after(")", s + 1), after(":", s + 1)
        k = min(close, colon)
        if k >= len(raw) or k == s + 1:
            return False
        return raw[k] == ")" or k + 1 < close < len(raw)
    if opener == "{":  # {dict}: up to the first '}', never empty
        close = after("}", s + 1)
        return s + 1 < close < len(raw)
    if opener == "[":  # [list]: up to the first ']' on the same line (may be empty)
        close = after("]", s + 1)
        return close < len(raw) and after("\n", s + 1) > close
    return False


def _annotations(raw: str) -> Iterator[re.Match[str]]:
    """``_ANNOTATION.finditer(raw)`` in linear time (same matches, same order)."""
    after = _NextChar(raw)
    pos = 0
    while True:
        i = raw.find("[", pos)
        if i < 0:
            return
        j = after("]", i + 1)
        if j >= len(raw):
            return  # no ']' after: nothing from here on can match
        if not _annotation_at(raw, i, j, after):
            # every '[' before j shares this ']' and its outcome; an empty text at j - 1 fails too
            pos = i + 1 if j == i + 1 else j + 1
            continue
        match = _ANNOTATION.match(raw, i)
        if match is None:  # pragma: no cover - _annotation_at mirrors the pattern (property-tested)
            pos = i + 1
            continue
        yield match
        pos = match.end()


def _parse_annotated(
    raw: str, path: Path, line: int, skipped: Counter[str]
) -> tuple[str, tuple[Entity, ...]]:
    """Strip Rasa's inline annotations: the clean text and its entity spans (value = the span's text)."""
    pieces: list[str] = []
    residual: list[str] = []
    entities: list[Entity] = []
    pos = 0
    length = 0  # length of the clean text so far
    for match in _annotations(raw):
        before = raw[pos : match.start()]
        pieces.append(before)
        residual.append(before)
        length += len(before)
        span = match.group("text")
        start, end = length, length + len(span)
        if match.group("entity") is not None:
            annotations: list[dict[str, Any]] = [
                {"entity": match.group("entity"), "value": match.group("value")}
            ]
        else:
            annotations = _rasa_entity_dicts(match, path, line)
        for ann in annotations:
            etype = ann.get("entity")
            if not isinstance(etype, str) or not etype.strip():
                raise DataError(
                    f"entity annotation {_excerpt(match.group(0))} has entity type {_shown(etype)}; "
                    f"expected a non-empty name as in [text](entity); {_FIX}",
                    path,
                    line,
                )
            synonym = ann.get("value")
            if synonym is not None and not isinstance(synonym, str):
                raise DataError(
                    f"entity annotation {_excerpt(match.group(0))} has value {_shown(synonym)}; expected a "
                    f"string; {_FIX}",
                    path,
                    line,
                )
            if synonym is not None and synonym != span:
                skipped["synonym_values"] += 1  # the synonym mapping is dropped; value stays the span text
            for extra in ("role", "group"):
                if ann.get(extra) is not None:
                    skipped[f"entity_{extra}s"] += 1
            try:
                entities.append(_compact(Entity(start=start, end=end, entity=_name(etype), value=span)))
            except ValidationError as exc:  # e.g. an unpaired surrogate from a "\ud800" escape
                raise DataError(
                    f"entity annotation {_excerpt(match.group(0))} is invalid ({_pydantic_problem(exc)}); "
                    f"expected valid Unicode text; {_FIX}",
                    path,
                    line,
                ) from exc
        pieces.append(span)
        length = end
        pos = match.end()
    pieces.append(raw[pos:])
    residual.append(raw[pos:])
    _check_brackets("\x00".join(residual), raw, path, line)
    return "".join(pieces), tuple(entities)


def _check_brackets(residual: str, raw: str, path: Path, line: int) -> None:
    """Text outside parsed annotations must not hold a broken annotation: a '[' never closed, or "[x](y".

    A stray ']' is kept as text, as Rasa does (rasa-demo has the example "hello]").
    """
    depth = 0
    for ch in residual:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(depth - 1, 0)
    problem = "a '[' without its ']'" if depth > 0 else ""
    if not problem and _BROKEN_ANNOTATION.search(residual):
        problem = "an annotation that does not close"
    if problem:
        raise DataError(
            f"broken entity annotation in {_excerpt(raw)}: {problem}; expected [text](entity), "
            f'[text](entity:value) or [text]{{"entity": "type"}}; {_FIX}',
            path,
            line,
        )


def _scalar(node: yaml.Node | None) -> str | None:
    """A scalar node's text (None for null, empty or non-scalar nodes)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == _YAML_NULL:
        return None
    value = node.value
    return value if isinstance(value, str) and value.strip() else None


def _mapping(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            out.setdefault(str(key.value), value)
    return out


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    return "list" if isinstance(node, yaml.SequenceNode) else "scalar"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _compose_yaml(text: str, path: Path) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise DataError(f"malformed YAML ({what}); expected Rasa NLU YAML; {_FIX}", path, line) from exc
    except yaml.reader.ReaderError as exc:
        line = len(_YAML_LINE_BREAK.split(text[: exc.position].replace("\r\n", "\n").replace("\r", "\n")))
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        raise DataError(
            f"character {shown} is not allowed in YAML; expected printable text; {_FIX}", path, line
        ) from exc
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error is marked or a ReaderError
        raise DataError(f"malformed YAML ({exc}); expected Rasa NLU YAML; {_FIX_FILE}", path) from exc
    except RecursionError as exc:
        raise DataError(
            f"YAML nested too deeply to read; expected Rasa NLU YAML; {_FIX_FILE}; no line is known because "
            "the parser gave up before reaching a position",
            path,
        ) from exc


_RASA_EXPECTED = "Rasa NLU YAML with 'nlu:' items such as '- intent: greet' and 'examples: |' lines"


def _parse_rasa_yaml(
    text: str, path: Path, default_locale: str | None, *, require_nlu: bool = True
) -> _Parsed | None:
    """Parse Rasa NLU YAML; None if ``require_nlu`` is false and there is no ``nlu:`` key (stories etc.)."""
    out = _Parsed()
    root = _compose_yaml(text, path)
    if root is None:
        return out if require_nlu else None
    if not isinstance(root, yaml.MappingNode):
        if not require_nlu:
            return None
        raise DataError(
            f"the document is a YAML {_kind(root)}; expected a mapping with an 'nlu:' key "
            f"({_RASA_EXPECTED}); "
            f"{_FIX_FILE}",
            path,
            _line(root),
        )
    top = _mapping(root)
    if "nlu" not in top:
        if not require_nlu:
            return None
        found = _names(top) or "none"
        raise DataError(
            f"no 'nlu:' key (top-level keys: {found}); expected {_RASA_EXPECTED}; {_FIX_FILE}",
            path,
            _line(root),
        )
    nlu = top["nlu"]
    if _scalar(nlu) is None and isinstance(nlu, yaml.ScalarNode):
        return out  # "nlu:" with nothing under it
    if not isinstance(nlu, yaml.SequenceNode):
        raise DataError(
            f"'nlu:' holds a YAML {_kind(nlu)}; expected a list of items; {_FIX}", path, _line(nlu)
        )
    for item in nlu.value:
        if not isinstance(item, yaml.MappingNode):
            raise DataError(
                f"an 'nlu:' item is a YAML {_kind(item)}; expected a mapping such as '- intent: greet'; "
                f"{_FIX}",
                path,
                _line(item),
            )
        keys = _mapping(item)
        kind = next((k for k in ("intent", "synonym", "regex", "lookup") if k in keys), None)
        if kind is None:
            found = _names(keys) or "no keys"
            raise DataError(
                f"'nlu:' item with {found}; expected one of 'intent', 'synonym', 'regex', 'lookup'; {_FIX}",
                path,
                _line(item),
            )
        if kind != "intent":
            out.skipped[kind] += 1
            continue
        intent = _scalar(keys["intent"])
        if intent is None:
            raise DataError(
                f"intent with an empty or non-text name; expected '- intent: <name>'; {_FIX}",
                path,
                _line(item),
            )
        if "metadata" in keys:
            out.skipped["metadata"] += 1
        examples = keys.get("examples")
        for line, raw in _rasa_example_lines(examples, intent, path, item, out.skipped):
            clean, entities = _parse_annotated(raw, path, line, out.skipped)
            if not clean.strip():
                out.skipped["empty_examples"] += 1
                continue
            out.examples.append(
                _make_example(
                    path, line, text=clean, intent=intent, entities=entities, default_locale=default_locale
                )
            )
    return out


def _rasa_example_lines(
    node: yaml.Node | None, intent: str, path: Path, item: yaml.Node, skipped: Counter[str]
) -> Iterator[tuple[int, str]]:
    """(file line, raw annotated example) for each example of one intent."""
    if node is None or (isinstance(node, yaml.ScalarNode) and _scalar(node) is None):
        logger.warning("%s:%d: intent '%s' has no examples", path, _line(item), intent)
        return
    if isinstance(node, yaml.SequenceNode):  # Rasa 3: examples as a list of {text, metadata}
        for entry in node.value:
            fields = _mapping(entry) if isinstance(entry, yaml.MappingNode) else {}
            text_node = fields.get("text")
            text = _scalar(text_node)
            if text_node is None or text is None:
                raise DataError(
                    f"an example of intent '{intent}' has no text; expected '- text: ...' items; {_FIX}",
                    path,
                    _line(entry),
                )
            if "metadata" in fields:
                skipped["metadata"] += 1
            block = isinstance(text_node, yaml.ScalarNode) and text_node.style in ("|", ">")
            yield _line(text_node) + block, text.strip(_RASA_STRIP)  # block scalars start a line below
        return
    if not isinstance(node, yaml.ScalarNode):
        raise DataError(
            f"'examples' of intent '{intent}' is a YAML {_kind(node)}; expected a '|' block of '- ' "
            f"lines; {_FIX}",
            path,
            _line(node),
        )
    # A literal block starts on the line after "examples: |" and keeps every line, so line i of the value is
    # file line start+1+i. Other scalar styles fold lines; there we can only point at the scalar's first line.
    literal = node.style == "|"
    first = _line(node) + 1 if literal else _line(node)
    for i, raw in enumerate(_YAML_LINE_BREAK.split(node.value)):
        line = first + i if literal else first
        if not raw.strip():
            continue
        if not raw.startswith("-"):
            skipped["lines_without_dash"] += 1
            logger.warning(
                "%s:%d: line %r of intent '%s' does not start with '-'; line skipped (as Rasa does)",
                path,
                line,
                raw[:60],
                intent,
            )
            continue
        yield line, raw[1:].strip(_RASA_STRIP)


def load_rasa_yaml(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a Rasa 2/3 NLU YAML file (intents; synonym/regex/lookup items are counted, not loaded)."""
    path = Path(path)
    parsed = _parse_rasa_yaml(_read_text(path), path, default_locale)
    assert parsed is not None
    if not parsed.examples:
        raise _no_examples(path, _RASA_EXPECTED, parsed.skipped)
    return _dataset(parsed, str(path))


# --------------------------------------------------------------------------------------------------- JSON


def _skip_ws(text: str, i: int) -> int:
    match = _JSON_WS.match(text, i)
    return match.end() if match else i


def _skip_json_value(text: str, i: int) -> int:
    return int(jsonsafe.decoder().raw_decode(text, i)[1])


def _array_offsets(text: str, keys: Sequence[str]) -> list[int]:
    """Character offsets of the items of the array found under ``keys`` (object keys from the root)."""
    decoder = jsonsafe.decoder()
    i = _skip_ws(text, 0)
    for key in keys:
        if text[i : i + 1] != "{":
            raise ValueError("not an object")
        i = _skip_ws(text, i + 1)
        while True:
            name, i = decoder.raw_decode(text, i)
            i = _skip_ws(text, i)
            i = _skip_ws(text, i + 1)  # past ':'
            if name == key:
                break
            i = _skip_ws(text, _skip_json_value(text, i))
            i = _skip_ws(text, i + 1)  # past ','
    if text[i : i + 1] != "[":
        raise ValueError("not an array")
    offsets: list[int] = []
    i = _skip_ws(text, i + 1)
    while text[i : i + 1] != "]":
        offsets.append(i)
        i = _skip_ws(text, _skip_json_value(text, i))
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
    return offsets


def _item_lines(text: str, keys: Sequence[str], count: int) -> list[int]:
    """1-based line of each array item; the file was already parsed, so this walk cannot meet bad JSON."""
    try:
        offsets = _array_offsets(text, keys)
    except (ValueError, IndexError, RecursionError):  # pragma: no cover - defensive: duplicate keys etc.
        offsets = []
    if len(offsets) != count:  # pragma: no cover - duplicate keys; point at the file start rather than guess
        return [1] * count
    lines: list[int] = []
    line, last = 1, 0
    for off in offsets:
        line += text.count("\n", last, off)
        last = off
        lines.append(line)
    return lines


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
    return when, ident if _is_int(ident) else -1  # type: ignore[return-value]


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


def _label_studio_example(
    task: dict[str, Any], path: Path, line: int, default_locale: str | None, with_entities: bool, out: _Parsed
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
    return _make_example(
        path,
        line,
        text=text,
        intent=intent,
        entities=_parse_entities(entities, path, line) if with_entities else (),
        default_locale=default_locale,
    )


def _parse_json(text: str, path: Path, default_locale: str | None, with_entities: bool) -> _Parsed:
    out = _Parsed()
    if not text.strip():
        return out
    try:
        data = jsonsafe.loads(text)
    except jsonsafe.NumberTooLong as exc:
        what, line = _overlong_number(exc, text)
        raise DataError(
            f"{what}; expected a JSON list of examples, Rasa JSON or a Label Studio export, with offsets "
            f"and numbers of ordinary size; {_FIX}",
            path,
            line,
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno}); expected a JSON list of examples or "
            f"Rasa JSON; {_FIX}",
            path,
            exc.lineno,
        ) from exc
    except RecursionError as exc:
        raise DataError(
            f"JSON nested too deeply to read; expected a JSON list of examples; {_FIX_FILE}; no line is "
            "known because the parser gave up before reaching a position",
            path,
        ) from exc
    keys: tuple[str, ...] = ()
    if isinstance(data, dict) and isinstance(data.get("rasa_nlu_data"), dict):
        keys = ("rasa_nlu_data", "common_examples")
        for kind in ("entity_synonyms", "regex_features", "lookup_tables"):
            n = len(data["rasa_nlu_data"].get(kind) or [])
            if n:
                out.skipped[kind] += n
        items = data["rasa_nlu_data"].get("common_examples") or []
    elif isinstance(data, list):
        items = data
    else:
        raise DataError(
            f"the JSON document is a {type(data).__name__}; expected a list of examples, Rasa JSON "
            f'({{"rasa_nlu_data": {{"common_examples": [...]}}}}) or a Label Studio export; {_FIX_FILE}',
            path,
            1,
        )
    if not isinstance(items, list):
        raise DataError(f"'common_examples' is not a list; expected a list of examples; {_FIX_FILE}", path, 1)
    lines = _item_lines(text, keys, len(items))
    del text, data  # the raw text is no longer needed; each item is released once it became an example
    for index, line in enumerate(lines):
        item, items[index] = items[index], None
        try:
            if isinstance(item, dict) and "data" in item and "text" not in item:
                example = _label_studio_example(item, path, line, default_locale, with_entities, out)
                if example is None:
                    continue
                out.examples.append(example)
            else:
                out.examples.append(_example_from_object(item, path, line, default_locale, with_entities))
        except RecursionError as exc:  # a value nested just below the parser's limit, shown in a message
            raise DataError(_NESTED.format(expected="examples of ordinary depth"), path, line) from exc
    return out


def load_json(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load a JSON file: a list of shared-format examples, Rasa JSON, or a Label Studio export."""
    path = Path(path)
    parsed = _parse_json(_read_text(path), path, default_locale, with_entities=True)
    if not parsed.examples:
        raise _no_examples(
            path, "a JSON list of examples, Rasa JSON or a Label Studio export", parsed.skipped
        )
    return _dataset(parsed, str(path))


# --------------------------------------------------------------------------------------------------- dispatch


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _parse_any(
    path: Path, default_locale: str | None, *, with_entities: bool = True, require_nlu: bool = True
) -> _Parsed | None:
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        if path.is_dir() or not path.exists():
            _read_text(path)  # raises the clearer "file not found" / "is a folder"
        raise DataError(
            f"unsupported file type {suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}; "
            f"{_FIX_FILE}",
            path,
        )
    if suffix == ".jsonl":
        return _parse_jsonl(_read_lines(path), path, default_locale, with_entities)
    if suffix == ".csv":
        return _parse_csv(path, default_locale, with_entities)
    if suffix == ".json":
        return _parse_json(_read_text(path), path, default_locale, with_entities)
    return _parse_rasa_yaml(_read_text(path), path, default_locale, require_nlu=require_nlu)


_EXPECTED_BY_SUFFIX = {
    ".jsonl": _SHARED_FORMAT,
    ".csv": "a header row with text,intent and at least one record",
    ".json": "a JSON list of examples, Rasa JSON or a Label Studio export",
    ".yml": _RASA_EXPECTED,
    ".yaml": _RASA_EXPECTED,
}


def load_file(path: str | Path, *, default_locale: str | None = None) -> Dataset:
    """Load one data file, choosing the format by its suffix (see ``SUPPORTED_SUFFIXES``)."""
    path = Path(path)
    parsed = _parse_any(path, default_locale)
    assert parsed is not None
    if not parsed.examples:
        raise _no_examples(path, _EXPECTED_BY_SUFFIX[_suffix(path)], parsed.skipped)
    return _dataset(parsed, str(path))


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _collect(paths: Sequence[str | Path]) -> list[tuple[Path, str, bool]]:
    """(file, name relative to its argument, found in a folder?) for every file to read, in order."""
    if isinstance(paths, str | Path):
        raise TypeError("load_paths takes a sequence of paths; wrap a single path in a list")
    found: list[tuple[Path, str, bool]] = []
    seen: set[Path] = set()
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            files: list[tuple[str, Path]] = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    file = Path(dirpath) / name
                    rel = file.relative_to(root)
                    if _suffix(file) in SUPPORTED_SUFFIXES and not _is_hidden(rel):
                        files.append((rel.as_posix(), file))
            entries = [(file, name, True) for name, file in sorted(files)]
        elif root.exists():
            entries = [(root, root.name, False)]
        else:
            raise DataError(
                f"no such file or folder; expected data files ({', '.join(SUPPORTED_SUFFIXES)}) or folders "
                f"holding them; nothing was loaded; fix the path and rerun",
                root,
            )
        for file, name, in_folder in entries:
            key = file.resolve()
            if key not in seen:  # a file named twice (directly and through its folder) is read once
                seen.add(key)
                found.append((file, name, in_folder))
    return found


def load_paths(paths: Sequence[str | Path], *, default_locale: str | None = None) -> Dataset:
    """Load files and folders (recursively, sorted; hidden entries skipped) into one Dataset.

    In folders, YAML files without an ``nlu:`` key (stories, rules, domain) are skipped and counted as
    ``skipped["non_nlu_yaml_files"]``, and files holding only synonym/regex/lookup items are fine; any other
    file without examples is an error, as is an empty result.
    """
    merged = _Parsed()
    for file, _rel, in_folder in _collect(paths):
        parsed = _parse_any(file, default_locale, require_nlu=not in_folder)
        if parsed is None:
            merged.skipped["non_nlu_yaml_files"] += 1
            logger.info("%s: no 'nlu:' key; file skipped", file)
            continue
        if not parsed.examples and not parsed.skipped:
            raise _no_examples(file, _EXPECTED_BY_SUFFIX[_suffix(file)])
        merged.examples.extend(parsed.examples)
        merged.skipped.update(parsed.skipped)
    source = ", ".join(str(p) for p in paths)
    if not merged.examples:
        raise DataError(
            f"no examples found in {source or 'the given paths'}; expected at least one data file with "
            "examples "
            f"({', '.join(SUPPORTED_SUFFIXES)}); nothing was loaded; fix the paths and rerun",
            source or None,
        )
    return _dataset(merged, source)


def load_must_pass(path: str | Path) -> list[Example]:
    """Examples the model must get right (any supported format); entities are ignored."""
    path = Path(path)
    parsed = _parse_any(path, None, with_entities=False)
    assert parsed is not None
    if not parsed.examples:
        raise _no_examples(path, _EXPECTED_BY_SUFFIX[_suffix(path)], parsed.skipped)
    return [e.model_copy(update={"entities": ()}) if e.entities else e for e in parsed.examples]


def files_sha256(paths: Sequence[str | Path]) -> str:
    """sha256 over the relative names and bytes of every file ``load_paths`` would read: a cheap cache key."""
    digest = hashlib.sha256()
    for n, (file, rel, _in_folder) in enumerate(_collect(paths)):
        try:
            with file.open("rb") as handle:  # in chunks: a large file is never held whole
                size = os.fstat(handle.fileno()).st_size
                digest.update(f"{n}\0{rel}\0{size}\0".encode())
                read = 0
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
                    read += len(chunk)
        except OSError as exc:
            raise _unreadable(file, exc) from exc
        if read != size:
            raise DataError(
                f"changed while it was being read ({size} bytes, then {read}); expected a file nobody writes "
                f"during a run; {_FIX_FILE}",
                file,
            )
    return digest.hexdigest()
