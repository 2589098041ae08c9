"""The Rasa NLU YAML reader: lines of block and listed examples, skipped items, non-NLU files."""

from __future__ import annotations

from pathlib import Path

import pytest

from nluflow.data.formats.base import ReadOptions
from nluflow.data.formats.rasa_yaml import RASA_EXPECTED, parse_rasa_yaml
from nluflow.errors import DataError

P = Path("data/nlu.yml")


def parse(text: str, **options: object) -> list[tuple[str, str, int]]:
    parsed = parse_rasa_yaml(text, P, ReadOptions(**options))  # type: ignore[arg-type]
    assert parsed is not None
    return [(e.text, e.intent, e.origin.line if e.origin else 0) for e in parsed.examples]


def test_block_examples_keep_their_file_lines_and_annotations() -> None:
    text = (
        'version: "3.1"\n'
        "nlu:\n"
        "- intent: book\n"
        "  examples: |\n"
        "    - fly to [Paris](city)\n"
        "\n"
        '    - book [Rome]{"entity": "city"}\n'
    )
    parsed = parse_rasa_yaml(text, P, ReadOptions())
    assert parsed is not None
    assert [(e.text, e.origin.line if e.origin else 0) for e in parsed.examples] == [
        ("fly to Paris", 5),
        ("book Rome", 7),
    ]
    assert [(x.start, x.end, x.entity) for x in parsed.examples[0].entities] == [(7, 12, "city")]


def test_listed_examples_start_a_line_below_a_block_scalar() -> None:
    text = (
        "nlu:\n- intent: greet\n  examples:\n  - text: hi\n    metadata: {a: 1}\n  - text: |\n      hello\n"
    )
    parsed = parse_rasa_yaml(text, P, ReadOptions())
    assert parsed is not None
    assert [(e.text, e.origin.line if e.origin else 0) for e in parsed.examples] == [("hi", 4), ("hello", 7)]
    assert parsed.skipped == {"metadata": 1}


def test_synonym_regex_lookup_and_dashless_lines_are_counted_not_loaded() -> None:
    text = (
        "nlu:\n- synonym: nyc\n  examples: |\n    - New York\n- regex: zip\n  examples: |\n    - \\d{5}\n"
        "- lookup: city\n  examples: |\n    - Paris\n- intent: greet\n  examples: |\n    - hi\n    hello\n"
    )
    parsed = parse_rasa_yaml(text, P, ReadOptions())
    assert parsed is not None
    assert [e.text for e in parsed.examples] == ["hi"]
    assert parsed.skipped == {"synonym": 1, "regex": 1, "lookup": 1, "lines_without_dash": 1}


def test_a_file_without_nlu_is_none_when_allowed_and_an_error_otherwise() -> None:
    stories = "stories:\n- story: one\n  steps: []\n"
    assert parse_rasa_yaml(stories, P, ReadOptions(require_nlu=False)) is None
    with pytest.raises(DataError) as info:
        parse_rasa_yaml(stories, P, ReadOptions())
    assert str(info.value) == (
        f"{P}:1: no 'nlu:' key (top-level keys: 'stories'); expected {RASA_EXPECTED}; the file was not "
        "loaded; fix the file and rerun"
    )


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("- a\n- b\n", 1, "the document is a YAML list; expected a mapping with an 'nlu:' key"),
        ("nlu: {a: 1}\n", 1, "'nlu:' holds a YAML mapping; expected a list of items"),
        ("nlu:\n- just text\n", 2, "an 'nlu:' item is a YAML scalar; expected a mapping"),
        ("nlu:\n- story: x\n", 2, "'nlu:' item with 'story'; expected one of 'intent', 'synonym'"),
        ("nlu:\n- intent: ''\n", 2, "intent with an empty or non-text name"),
        ("nlu:\n- intent: a\n  examples: {x: 1}\n", 3, "'examples' of intent 'a' is a YAML mapping"),
        ("nlu:\n- intent: a\n  examples:\n  - meta: 1\n", 4, "an example of intent 'a' has no text"),
        ("nlu:\n- intent: a\n  examples: |\n    - [Paris](city\n", 4, "broken entity annotation"),
        ("nlu:\n  - intent: [a\n", 3, "malformed YAML ("),
    ],
)
def test_problems_are_reported_at_their_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        parse(text)
    assert info.value.line == line and fragment in str(info.value), str(info.value)


def test_an_empty_document_or_empty_nlu_gives_no_examples() -> None:
    assert parse("") == [] and parse("nlu:\n") == []
    assert parse_rasa_yaml("", P, ReadOptions(require_nlu=False)) is None
