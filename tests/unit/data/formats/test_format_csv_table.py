"""The CSV reader: header checks, record lines (also for multi-line cells), cells, streaming."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from nluflow.data.formats.base import ReadOptions
from nluflow.data.formats.csv_table import CsvReader, parse_csv_rows
from nluflow.errors import DataError

P = Path("data/train.csv")


def rows(text: str, **options: object) -> list[tuple[str, str, int]]:
    parsed = parse_csv_rows(io.StringIO(text, newline=""), P, ReadOptions(**options))  # type: ignore[arg-type]
    return [(e.text, e.intent, e.origin.line if e.origin else 0) for e in parsed.examples]


def test_a_record_is_at_the_line_it_starts_on_and_blank_lines_are_skipped() -> None:
    text = '\n\nText,INTENT,extra\n"line one\nline two",a,x\n\nplain,b,y\n'
    assert rows(text) == [("line one\nline two", "a", 4), ("plain", "b", 7)]


def test_entities_score_and_locale_cells() -> None:
    text = (
        "text,intent,entities,score,locale\n"
        'to Paris,book,"[{""start"": 3, ""end"": 8, ""entity"": ""city"", ""value"": ""Paris""}]",0.5,fr-FR\n'
        "hi,greet,,,\n"
    )
    parsed = parse_csv_rows(io.StringIO(text, newline=""), P, ReadOptions(default_locale="en-US"))
    first, second = parsed.examples
    assert first.entities[0].entity == "city" and first.score == 0.5 and first.locale == "fr-FR"
    assert second.entities == () and second.score is None and second.locale == "en-US"


def test_a_header_without_the_required_columns_is_refused_at_its_line() -> None:
    with pytest.raises(DataError) as info:
        rows("\nutterance,label\nhi,greet\n")
    assert info.value.line == 2
    assert str(info.value) == (
        f"{P}:2: CSV header has columns 'utterance', 'label', no 'text', 'intent'; expected columns 'text' "
        "and 'intent' (optional: entities, locale, score); the file was not loaded; fix the file and rerun"
    )


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ("hi", "record has 1 fields; expected 2 as in the header ('text', 'intent'); quote a text"),
        ("hi,greet,oops", "record has 3 fields; expected 2"),
    ],
)
def test_a_record_of_the_wrong_width_is_refused_at_its_line(record: str, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        rows(f"text,intent\nok,a\n{record}\n")
    assert info.value.line == 3 and fragment in str(info.value)


@pytest.mark.parametrize("score", ["high", "nan", "inf"])
def test_a_score_that_is_not_a_finite_number_is_refused(score: str) -> None:
    with pytest.raises(DataError) as info:
        rows(f"text,intent,score\nhi,a,{score}\n")
    assert str(info.value) == (
        f"{P}:2: 'score' is '{score}'; expected a number between 0 and 1; the file was not loaded; fix the "
        "line and rerun"
    )


def test_an_entities_cell_that_is_not_json_is_refused() -> None:
    with pytest.raises(DataError, match=r"'entities' cell '\[oops' is not valid JSON") as info:
        rows('text,intent,entities\nhi,a,"[oops"\n')
    assert info.value.line == 2


def test_reading_a_file_goes_through_the_open_stream(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("\ufefftext,intent\nhé,a\n".encode())
    parsed = CsvReader().read(path, ReadOptions())
    assert [e.text for e in parsed.examples] == ["hé"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,intent\nh\xff,a\n")
    with pytest.raises(DataError, match=r"byte b'\\xff' is not valid UTF-8") as info:
        CsvReader().read(bad, ReadOptions())
    assert info.value.line == 2
