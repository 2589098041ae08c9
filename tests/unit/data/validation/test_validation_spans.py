"""The span rule on its own: one example's problems, and one finding per kind and split."""

from __future__ import annotations

import pytest

from nluflow.data.schema import Dataset, Entity, Example, Origin
from nluflow.data.validation import Severity, ValidationPolicy
from nluflow.data.validation.run import Run, Split
from nluflow.data.validation.spans import check_spans, span_problems


def ex(text: str, *spans: tuple[int, int, str, str], line: int = 1) -> Example:
    entities = tuple(Entity(start=s, end=e, entity=t, value=v) for s, e, t, v in spans)
    return Example(text=text, intent="a", entities=entities, origin=Origin(path="d.jsonl", line=line))


@pytest.mark.parametrize(
    ("example", "kinds"),
    [
        (ex("to Paris", (3, 8, "city", "Paris")), []),
        (ex("to Paris", (3, 20, "city", "Paris")), ["range"]),
        (ex("to Paris", (5, 5, "city", "")), ["empty"]),
        (ex("to Paris", (3, 8, "city", "Pari")), ["mismatch"]),
        (ex("to Paris", (0, 8, "trip", "to Paris"), (3, 8, "city", "Paris")), ["overlap"]),
        (ex("to Paris", (3, 20, "city", "x"), (0, 2, "w", "no")), ["range", "mismatch"]),
    ],
)
def test_span_problems_of_one_example(example: Example, kinds: list[str]) -> None:
    assert [kind for kind, _ in span_problems(example)] == kinds


def test_one_finding_per_kind_with_count_first_location_and_next_step() -> None:
    data = Dataset(
        examples=(
            ex("to Paris", (3, 8, "city", "Pari"), line=1),
            ex("ok", line=2),
            ex("to Rome", (3, 7, "city", "Rom"), line=3),
            ex("to Oslo", (3, 99, "city", "Oslo"), line=4),
        ),
        source="d.jsonl",
    )
    policy = ValidationPolicy(severity={"span": Severity.WARN})
    run = Run(policy)
    bad = check_spans(run, Split(data, "training"))
    assert bad == {0, 2, 3}
    assert [(f.rule, f.count, f.locations) for f in run.findings] == [
        ("span", 1, ["d.jsonl:4"]),
        ("span", 2, ["d.jsonl:1", "d.jsonl:3"]),
    ]
    assert run.findings[0].message == (
        "d.jsonl:4: entity 'city' span 3–99 is outside the text (length 7); expected offsets within the "
        "text; example skipped from training"
    )
    assert run.findings[1].message.endswith(
        "(and 1 more span like it); expected text[start:end] == value; examples skipped from training"
    )


def test_in_the_test_split_the_message_says_test_and_examples_are_kept() -> None:
    data = Dataset(examples=(ex("to Paris", (3, 8, "city", "Pari")),), source="t.jsonl")
    run = Run(ValidationPolicy(severity={"span": Severity.WARN}))
    check_spans(run, Split(data, "test"))
    (finding,) = run.findings
    assert finding.message.startswith("d.jsonl:1: test example: entity 'city' span 3–8 does not match")
    assert finding.message.endswith("test example kept; their entity scores may be off")
