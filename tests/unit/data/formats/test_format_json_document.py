"""The JSON reader: a list, Rasa JSON or a Label Studio export, each item at the line it starts on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nluflow.data.formats.base import ReadOptions
from nluflow.data.formats.json_document import JSON_EXPECTED, parse_json
from nluflow.errors import DataError

P = Path("data/train.json")


def lines_of(text: str) -> list[tuple[str, int]]:
    parsed = parse_json(text, P, ReadOptions())
    return [(e.text, e.origin.line if e.origin else 0) for e in parsed.examples]


def test_a_list_of_examples_keeps_each_items_line() -> None:
    text = '[\n  {"text": "a", "intent": "x"},\n\n  {\n    "text": "b", "intent": "y"}\n]'
    assert lines_of(text) == [("a", 2), ("b", 4)]


def test_rasa_json_reads_common_examples_and_counts_the_other_sections() -> None:
    doc = {
        "rasa_nlu_data": {
            "regex_features": [{"name": "zip", "pattern": "[0-9]{5}"}],
            "entity_synonyms": [{"value": "nyc", "synonyms": ["NYC"]}, {"value": "la", "synonyms": ["LA"]}],
            "common_examples": [{"text": "hey", "intent": "greet", "entities": []}],
        }
    }
    text = json.dumps(doc, indent=2)
    item_line = text[: text.index('"text": "hey"')].rstrip().count("\n") + 1  # the line of its "{"
    parsed = parse_json(text, P, ReadOptions())
    assert [(e.text, e.intent) for e in parsed.examples] == [("hey", "greet")]
    assert parsed.skipped == {"regex_features": 1, "entity_synonyms": 2}
    assert parsed.examples[0].origin is not None and parsed.examples[0].origin.line == item_line > 10


def test_a_label_studio_task_becomes_an_example_from_its_chosen_annotation() -> None:
    task = {
        "id": 1,
        "data": {"text": "to Paris"},
        "annotations": [
            {
                "id": 10,
                "result": [
                    {"type": "choices", "value": {"choices": ["book"]}},
                    {"type": "labels", "value": {"start": 3, "end": 8, "labels": ["city"], "text": "Paris"}},
                ],
            }
        ],
    }
    parsed = parse_json(
        json.dumps([task, {"id": 2, "data": {"text": "x"}, "annotations": []}]), P, ReadOptions()
    )
    assert [(e.text, e.intent) for e in parsed.examples] == [("to Paris", "book")]
    assert [(x.start, x.end, x.entity) for x in parsed.examples[0].entities] == [(3, 8, "city")]
    assert parsed.skipped == {"unannotated_tasks": 1}


def test_an_empty_file_gives_no_examples() -> None:
    assert parse_json("  \n", P, ReadOptions()).examples == []


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('[\n{"text": "a",\n', 3, "invalid JSON ("),
        ('{"a": 1}', 1, "the JSON document is a dict; expected a list of examples, Rasa JSON"),
        ('{"rasa_nlu_data": {"common_examples": {"a": 1}}}', 1, "'common_examples' is not a list"),
        ('[\n{"text": "a", "intent": "x"},\n{"text": "b"}\n]', 3, "'intent' of 'b' is missing"),
        ("[\n" + "1" * 5000 + "\n]", 2, "an integer of 5000 digits"),
    ],
)
def test_problems_are_reported_at_their_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        parse_json(text, P, ReadOptions())
    assert info.value.line == line and fragment in str(info.value), str(info.value)


def test_the_expected_shape_names_all_three_forms() -> None:
    assert JSON_EXPECTED == "a JSON list of examples, Rasa JSON or a Label Studio export"
