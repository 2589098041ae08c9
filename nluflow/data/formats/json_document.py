"""``.json`` — a JSON list of shared-format objects, Rasa's JSON format
(``{"rasa_nlu_data": {"common_examples": [...]}}``) or a Label Studio export (a list of tasks with ``data``;
see :mod:`nluflow.data.formats.label_studio`).

The document is parsed whole (JSON has no streaming form here), then each item is released once it became
an example; a second, light walk over the text finds the line each item starts on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nluflow import jsonsafe
from nluflow.data.formats.base import FIX, FIX_FILE, NESTED, Parsed, ReadOptions, overlong_number, read_text
from nluflow.data.formats.examples import example_from_object
from nluflow.data.formats.label_studio import label_studio_example
from nluflow.errors import DataError

JSON_EXPECTED = "a JSON list of examples, Rasa JSON or a Label Studio export"
_JSON_WS = re.compile(r"[ \t\n\r]*")
_RASA_SKIPPED = ("entity_synonyms", "regex_features", "lookup_tables")


class JsonReader:
    """A JSON document: a list of examples, Rasa JSON or a Label Studio export."""

    name = "JSON"
    suffixes = (".json",)
    expected = JSON_EXPECTED

    def read(self, path: Path, options: ReadOptions) -> Parsed:
        return parse_json(read_text(path), path, options)


def parse_json(text: str, path: Path, options: ReadOptions) -> Parsed:
    out = Parsed()
    if not text.strip():
        return out
    data = _decode(text, path)
    keys, items = _items(data, path, out)
    lines = _item_lines(text, keys, len(items))
    del text, data  # the raw text is no longer needed; each item is released once it became an example
    for index, line in enumerate(lines):
        item, items[index] = items[index], None
        try:
            if isinstance(item, dict) and "data" in item and "text" not in item:
                example = label_studio_example(item, path, line, options, out)
                if example is None:
                    continue
            else:
                example = example_from_object(item, path, line, options.default_locale, options.with_entities)
        except RecursionError as exc:  # a value nested just below the parser's limit, shown in a message
            raise DataError(NESTED.format(expected="examples of ordinary depth"), path, line) from exc
        out.examples.append(example)
    return out


def _decode(text: str, path: Path) -> Any:
    """The parsed document; every way it can fail is a DataError (at its line where the parser knows it)."""
    try:
        return jsonsafe.loads(text)
    except jsonsafe.NumberTooLong as exc:
        what, line = overlong_number(exc, text)
        raise DataError(
            f"{what}; expected a JSON list of examples, Rasa JSON or a Label Studio export, with offsets "
            f"and numbers of ordinary size; {FIX}",
            path,
            line,
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno}); expected a JSON list of examples or "
            f"Rasa JSON; {FIX}",
            path,
            exc.lineno,
        ) from exc
    except RecursionError as exc:
        raise DataError(
            f"JSON nested too deeply to read; expected a JSON list of examples; {FIX_FILE}; no line is "
            "known because the parser gave up before reaching a position",
            path,
        ) from exc


def _items(data: Any, path: Path, out: Parsed) -> tuple[tuple[str, ...], list[Any]]:
    """The keys from the root to the list of examples, and that list; Rasa's other sections are counted."""
    keys: tuple[str, ...] = ()
    if isinstance(data, dict) and isinstance(data.get("rasa_nlu_data"), dict):
        keys = ("rasa_nlu_data", "common_examples")
        for kind in _RASA_SKIPPED:
            n = len(data["rasa_nlu_data"].get(kind) or [])
            if n:
                out.skipped[kind] += n
        items = data["rasa_nlu_data"].get("common_examples") or []
    elif isinstance(data, list):
        items = data
    else:
        raise DataError(
            f"the JSON document is a {type(data).__name__}; expected a list of examples, Rasa JSON "
            f'({{"rasa_nlu_data": {{"common_examples": [...]}}}}) or a Label Studio export; {FIX_FILE}',
            path,
            1,
        )
    if not isinstance(items, list):
        raise DataError(f"'common_examples' is not a list; expected a list of examples; {FIX_FILE}", path, 1)
    return keys, items


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
