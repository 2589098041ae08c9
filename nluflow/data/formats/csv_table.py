"""``.csv`` — a header with ``text`` and ``intent``, optional ``entities`` (a JSON list in the cell),
``locale`` and ``score``; other columns are ignored. Read record by record (the raw text is never held
whole); a record's line is the line it starts on, also when a quoted cell spans lines."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from nluflow import jsonsafe
from nluflow.data.formats.base import (
    FIX,
    FIX_FILE,
    Parsed,
    ReadOptions,
    check_file,
    excerpt,
    names,
    overlong_number,
    read_text,
    shown,
    unreadable,
)
from nluflow.data.formats.examples import make_example, parse_entities
from nluflow.data.schema import Entity, Example
from nluflow.errors import DataError

if TYPE_CHECKING:
    from _csv import Reader as _reader

REQUIRED = ("text", "intent")
OPTIONAL = ("entities", "locale", "score")


class CsvReader:
    """A table with a header row."""

    name = "CSV"
    suffixes = (".csv",)
    expected = "a header row with text,intent and at least one record"

    def read(self, path: Path, options: ReadOptions) -> Parsed:
        check_file(path)
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                return parse_csv_rows(handle, path, options)
        except UnicodeDecodeError as exc:
            read_text(path)  # raises the DataError that names the bad byte and its line
            raise DataError(  # pragma: no cover - the file changed between the two reads
                f"is not valid UTF-8; expected UTF-8 text; {FIX_FILE}", path
            ) from exc
        except OSError as exc:
            raise unreadable(path, exc) from exc


@dataclass(frozen=True)
class _Header:
    """The header row: its cells, where it ends, and the index of each known column."""

    cells: list[str]
    line: int
    index: dict[str, int]


def parse_csv_rows(handle: TextIO, path: Path, options: ReadOptions) -> Parsed:
    """Examples from an open CSV text stream, one record at a time."""
    out = Parsed()
    reader = csv.reader(handle)
    try:
        header = _read_header(reader, path)
        if header is None:
            return out
        prev_end = header.line
        for row in reader:
            start_line, prev_end = prev_end + 1, reader.line_num
            if row and any(cell.strip() for cell in row):
                out.examples.append(_record(row, header, path, start_line, options))
    except csv.Error as exc:
        raise DataError(
            f"malformed CSV ({exc}); expected a CSV file with a header row; {FIX}",
            path,
            reader.line_num or 1,
        ) from exc
    return out


def _read_header(reader: _reader, path: Path) -> _Header | None:
    """The first non-blank row, checked for the required columns; None for a file of blank lines."""
    cells = next(reader, None)
    while cells is not None and not any(cell.strip() for cell in cells):  # leading blank lines
        cells = next(reader, None)
    if cells is None:
        return None
    columns = [h.strip().lower() for h in cells]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(
            f"CSV header has columns {names(cells)}, no "
            f"{', '.join(repr(c) for c in missing)}; expected columns 'text' and 'intent' (optional: "
            f"{', '.join(OPTIONAL)}); {FIX_FILE}",
            path,
            reader.line_num,
        )
    index = {name: columns.index(name) for name in (*REQUIRED, *OPTIONAL) if name in columns}
    return _Header(cells, reader.line_num, index)


def _record(row: Sequence[str], header: _Header, path: Path, line: int, options: ReadOptions) -> Example:
    """One record as an example; a short or long record, a bad cell or field is a DataError at ``line``."""
    width = len(header.cells)
    if len(row) < width or any(cell.strip() for cell in row[width:]):
        raise DataError(
            f"record has {len(row)} fields; expected {width} as in the header "
            f"({names(header.cells)}); quote a text that contains commas; {FIX}",
            path,
            line,
        )
    index = header.index
    entities: tuple[Entity, ...] = ()
    if options.with_entities and "entities" in index and row[index["entities"]].strip():
        entities = _entities_cell(row[index["entities"]], path, line)
    score = _score_cell(row[index["score"]], path, line) if "score" in index else None
    locale = row[index["locale"]].strip() if "locale" in index else ""
    return make_example(
        path,
        line,
        text=row[index["text"]],
        intent=row[index["intent"]],
        entities=entities,
        locale=locale or None,
        score=score,
        default_locale=options.default_locale,
    )


def _entities_cell(cell: str, path: Path, line: int) -> tuple[Entity, ...]:
    try:
        return parse_entities(jsonsafe.loads(cell), path, line)
    except jsonsafe.NumberTooLong as exc:
        what, _ = overlong_number(exc, cell)
        raise DataError(
            f"'entities' cell holds {what} of the cell; expected a JSON list of "
            f"{{start, end, entity, value}} objects with offsets of ordinary size; {FIX}",
            path,
            line,
        ) from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataError(
            f"'entities' cell {excerpt(cell)} is not valid JSON; expected a JSON list of "
            f"{{start, end, entity, value}} objects; {FIX}",
            path,
            line,
        ) from exc


def _score_cell(raw: str, path: Path, line: int) -> float | None:
    """A score cell as a finite float (None when blank); the 0..1 range is checked with the example."""
    cell = raw.strip()
    if not cell:
        return None
    problem = DataError(f"'score' is {shown(cell)}; expected a number between 0 and 1; {FIX}", path, line)
    try:
        score = float(cell)
    except ValueError as exc:
        raise problem from exc
    if not math.isfinite(score):
        raise problem
    return score
