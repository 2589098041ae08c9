"""The JSONL reader: one object a line, streamed, file:line errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from nluflow.data.formats.base import ReadOptions
from nluflow.data.formats.jsonl import SHARED_FORMAT, JsonlReader, parse_jsonl
from nluflow.errors import DataError

P = Path("data/train.jsonl")


def test_reads_examples_with_their_lines_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"text": "hi", "intent": "greet", "locale": "en-US"}\n\n'
        '{"text": "to Paris", "intent": "book", "entities": '
        '[{"start": 3, "end": 8, "entity": "city", "value": "Paris"}], "score": 0.9}\n',
        encoding="utf-8",
    )
    parsed = JsonlReader().read(path, ReadOptions(default_locale="de-DE"))
    assert [(e.text, e.origin.line if e.origin else None) for e in parsed.examples] == [
        ("hi", 1),
        ("to Paris", 3),
    ]
    assert parsed.examples[0].locale == "en-US" and parsed.examples[1].locale == "de-DE"
    assert parsed.examples[1].entities[0].value == "Paris" and parsed.examples[1].score == 0.9


def test_entities_are_dropped_when_not_wanted() -> None:
    line = (
        '{"text": "to Paris", "intent": "b", '
        '"entities": [{"start": 3, "end": 8, "entity": "c", "value": "Paris"}]}'
    )
    parsed = parse_jsonl([(1, line)], P, ReadOptions(with_entities=False))
    assert parsed.examples[0].entities == ()


def test_the_lines_are_consumed_one_at_a_time_and_an_error_stops_at_its_line() -> None:
    consumed: list[int] = []

    def lines() -> Iterator[tuple[int, str]]:
        for n in range(1, 1000):
            consumed.append(n)
            yield n, '{"text": "x", "intent": "a"}' if n != 3 else "{not json"

    with pytest.raises(DataError) as info:
        parse_jsonl(lines(), P, ReadOptions())
    assert consumed == [1, 2, 3]  # streamed: nothing after the bad line was read
    assert (info.value.path, info.value.line) == (str(P), 3)
    assert str(info.value).startswith(f"{P}:3: invalid JSON (")
    assert f"expected {SHARED_FORMAT}; the file was not loaded; fix the line and rerun" in str(info.value)


def test_unknown_keys_are_logged_once_per_file(caplog: pytest.LogCaptureFixture) -> None:
    lines = [(1, '{"text": "a", "intent": "x", "extra": 1}'), (2, '{"text": "b", "intent": "x", "extra": 2}')]
    with caplog.at_level(logging.WARNING, logger="nluflow.data.formats.jsonl"):
        parse_jsonl(lines, P, ReadOptions())
    assert [r.getMessage() for r in caplog.records] == [f"{P}: ignored unknown keys 'extra'"]


def test_a_non_object_line_names_what_it_found() -> None:
    with pytest.raises(DataError, match=r"^data/train.jsonl:1: found a JSON list; expected an object"):
        parse_jsonl([(1, "[1, 2]")], P, ReadOptions())
