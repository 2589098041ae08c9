"""Rasa's inline annotations: spans in the clean text, counted extras, broken annotations refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nluflow.data.formats.rasa_annotations import ANNOTATION, find_annotations, parse_annotated
from nluflow.errors import DataError

P = Path("data/nlu.yml")


def test_every_annotation_form_becomes_a_span_of_the_clean_text() -> None:
    skipped: Counter[str] = Counter()
    raw = 'fly [NYC](city:New York) to [Rome]{"entity": "city", "role": "to"} on [may 1][{"entity": "date"}]'
    clean, entities = parse_annotated(raw, P, 7, skipped)
    assert clean == "fly NYC to Rome on may 1"
    assert [(e.start, e.end, e.entity, e.value) for e in entities] == [
        (4, 7, "city", "NYC"),
        (11, 15, "city", "Rome"),
        (19, 24, "date", "may 1"),
    ]
    assert [clean[e.start : e.end] for e in entities] == ["NYC", "Rome", "may 1"]
    assert skipped == {"synonym_values": 1, "entity_roles": 1}


def test_a_stray_closing_bracket_stays_text() -> None:
    assert parse_annotated("hello]", P, 1, Counter()) == ("hello]", ())


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("to [Paris](city", "an annotation that does not close"),
        ("to [Paris", "a '[' without its ']'"),
        ("to [Paris]{oops}", "is not valid JSON"),
        ('to [Paris]{"value": "x"}', "has entity type None"),
        ('to [Paris]{"entity": "city", "value": 3}', "has value 3; expected a string"),
    ],
)
def test_a_broken_annotation_is_refused_at_the_example_line(raw: str, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        parse_annotated(raw, P, 12, Counter())
    assert info.value.line == 12 and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("raw", ["[a](b) [c]{d} [e][f]", "[[x](y)", "[](e) [a](b:c:d)", "[" * 200 + "](x)"])
def test_the_linear_scan_finds_what_the_pattern_finds(raw: str) -> None:
    expected = [(m.start(), m.end(), m.groupdict()) for m in ANNOTATION.finditer(raw)]
    assert [(m.start(), m.end(), m.groupdict()) for m in find_annotations(raw)] == expected
