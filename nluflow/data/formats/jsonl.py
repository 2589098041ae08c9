"""``.jsonl`` — the shared format, one object a line, read one line at a time.

``{"text", "intent", "entities": [{start, end, entity, value}], "locale"?, "score"?}``; blank lines are
ignored, unknown keys are logged once per file. The file is never held whole: a large file costs its
examples, not its raw text (``bench/memory.py`` measures it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from nluflow import jsonsafe
from nluflow.data.formats.base import FIX, NESTED, Parsed, ReadOptions, overlong_number, read_lines
from nluflow.data.formats.examples import example_from_object
from nluflow.errors import DataError

logger = logging.getLogger(__name__)

SHARED_FORMAT = (
    'one JSON object per line like {"text": "...", "intent": "...", "entities": '
    '[{"start": 0, "end": 4, "entity": "city", "value": "..."}]}'
)
_KNOWN_KEYS = ("text", "intent", "entities", "locale", "score")


class JsonlReader:
    """The shared one-object-a-line format."""

    name = "JSONL"
    suffixes = (".jsonl",)
    expected = SHARED_FORMAT

    def read(self, path: Path, options: ReadOptions) -> Parsed:
        return parse_jsonl(read_lines(path), path, options)


def _decode(raw: str, path: Path, lineno: int) -> object:
    """One line's JSON value; every way it can fail is a DataError at its line."""
    try:
        return jsonsafe.loads(raw)
    except jsonsafe.NumberTooLong as exc:
        what, _ = overlong_number(exc, raw)
        raise DataError(
            f"{what}; expected {SHARED_FORMAT} (offsets and numbers of ordinary size); {FIX}", path, lineno
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno}); expected {SHARED_FORMAT}; {FIX}", path, lineno
        ) from exc
    except RecursionError as exc:
        raise DataError(NESTED.format(expected=SHARED_FORMAT), path, lineno) from exc


def parse_jsonl(lines: Iterable[tuple[int, str]], path: Path, options: ReadOptions) -> Parsed:
    """Examples from ``(line number, line)`` pairs, consumed one at a time."""
    out = Parsed()
    unknown: set[str] = set()
    for lineno, raw in lines:
        if not raw.strip():
            continue
        obj = _decode(raw, path, lineno)
        if isinstance(obj, dict):
            unknown.update(k for k in obj if k not in _KNOWN_KEYS)
        try:
            example = example_from_object(obj, path, lineno, options.default_locale, options.with_entities)
        except RecursionError as exc:  # a value nested just below the parser's limit, shown in a message
            raise DataError(NESTED.format(expected=SHARED_FORMAT), path, lineno) from exc
        out.examples.append(example)
    if unknown:
        logger.warning("%s: ignored unknown keys %s", path, ", ".join(sorted(map(repr, unknown))))
    return out
