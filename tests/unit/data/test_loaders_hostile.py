"""Loaders on hostile input: huge integers, deep nesting and lone surrogates end in a located DataError.

Before the guard, an integer literal over Python's 4,300-digit limit in an entity offset raised a bare
``ValueError`` traceback from every JSON-based loader (exit 1 instead of 2). Valid input is unchanged: the
last test shows an integer of exactly the limit still loads (as an out-of-range offset for the validator).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nluflow import jsonsafe
from nluflow.data.formats.rasa_annotations import ANNOTATION, find_annotations
from nluflow.data.loaders import load_file, load_must_pass, load_paths
from nluflow.data.schema import Dataset
from nluflow.errors import DataError

BIG = "9" * 5000  # over the 4,300-digit limit


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def entity_row(start: str, end: str = "1") -> str:
    return (
        '{"text": "hi there", "intent": "greet", "entities": '
        f'[{{"start": {start}, "end": {end}, "entity": "x", "value": "h"}}]}}'
    )


def error_of(path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_file(path)
    return info.value


@pytest.mark.parametrize(
    ("name", "text", "line", "needles"),
    [
        (
            "start.jsonl",
            '{"text": "hello", "intent": "greet"}\n' + entity_row(BIG) + "\n",
            2,
            ("an integer of 5000 digits (more than 4300) at column 64", "expected one JSON object per line"),
        ),
        ("end.jsonl", entity_row("1", "-" + BIG) + "\n", 1, ("an integer of 5000 digits", "column 74")),
        ("score.jsonl", '{"text": "hi", "intent": "g", "score": ' + BIG + "}\n", 1, ("5000 digits",)),
        (
            "list.json",
            "[\n" + entity_row("0") + ",\n" + entity_row(BIG) + "\n]",
            3,
            ("an integer of 5000 digits (more than 4300) at column 64", "expected a JSON list of examples"),
        ),
        (
            "rasa.json",
            '{"rasa_nlu_data": {"common_examples": [\n' + entity_row("0", BIG) + "]}}",
            2,
            ("5000 digits", "column 74"),
        ),
        (
            "ls.json",
            '[{"data": {"text": "hi"}, "annotations": [{"result": [\n{"type": "labels", "value": '
            '{"labels": ["x"], "start": ' + BIG + ', "end": 1, "text": "h"}}]}]}]',
            2,
            ("5000 digits", "column 56"),
        ),
        (
            "cell.csv",
            'text,intent,entities\nhi,greet,"[{""start"": 0, ""end"": ' + BIG + ', ""entity"": ""x"", '
            '""value"": ""h""}]"\n',
            2,
            (
                "'entities' cell holds an integer of 5000 digits",
                "column 22 of the cell",
                "expected a JSON list",
            ),
        ),
        (
            "annotated.yml",
            'nlu:\n- intent: greet\n  examples: |\n    - hi\n    - [hi]{"entity": "x", "value": '
            + BIG
            + "}\n",
            5,
            ("entity annotation", "an integer of 5000 digits", "expected [text]"),
        ),
    ],
)
def test_integers_over_the_digit_limit_are_a_located_data_error(
    tmp_path: Path, name: str, text: str, line: int, needles: tuple[str, ...]
) -> None:
    path = write(tmp_path, name, text)
    err = error_of(path)
    assert (err.path, err.line) == (str(path), line), str(err)
    assert "the file was not loaded" in str(err)
    for needle in needles:
        assert needle in str(err), str(err)
    assert "sys.set_int_max_str_digits" not in str(err)  # no Python-internal advice
    assert len(str(err)) < 600  # the number itself is never echoed


def test_the_digit_guard_reaches_load_paths_and_must_pass(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", entity_row(BIG) + "\n")
    for load in (lambda: load_paths([tmp_path]), lambda: load_must_pass(path)):
        with pytest.raises(DataError) as info:
            load()
        assert (info.value.path, info.value.line) == (str(path), 1)


def test_an_integer_of_exactly_the_limit_still_loads(tmp_path: Path) -> None:
    limit = "9" * jsonsafe.MAX_INT_DIGITS
    dataset = load_file(write(tmp_path, "ok.jsonl", entity_row("0", limit) + "\n"))
    assert dataset.examples[0].entities[0].end == int(limit)  # kept for the validator's offset rule


def test_long_floats_and_digit_strings_are_not_mistaken_for_integers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "floats.jsonl",
        '{"text": "' + BIG + '", "intent": "g", "note": 0.' + BIG + ', "x": 1e' + BIG + "}\n",
    )
    assert load_file(path).examples[0].text == BIG


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        (
            "deep.jsonl",
            '{"text": "hello", "intent": "g"}\n{"text": "a", "entities": ' + "[" * 100_000 + "\n",
            2,
        ),
        ("deep.csv", 'text,intent,entities\nhi,greet,"' + "[" * 100_000 + '"\n', 2),
        ("deep.yml", "nlu:\n- intent: g\n  examples: |\n    - [a][" + "[" * 100_000 + "]\n", 4),
    ],
)
def test_deep_nesting_is_a_located_data_error(tmp_path: Path, name: str, text: str, line: int) -> None:
    path = write(tmp_path, name, text)
    err = error_of(path)
    assert (err.path, err.line) == (str(path), line), str(err)
    assert "expected" in str(err)


# ------------------------------------------------------------------------------------------------ property


def _bomb(kind: str, depth: int, digits: int) -> str:
    if kind == "int":
        return "9" * digits
    if kind == "negint":
        return "-" + "9" * digits
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a": ' * depth + "1" + "}" * depth
    if kind == "open":
        return "[" * depth
    return json.dumps(chr(0xD800 + depth % 0x800))  # an escaped lone surrogate, e.g. "\ud800"


FIELDS = ("start", "end", "value", "entity", "text", "intent", "score", "entities", "locale")

bombs = st.builds(
    _bomb,
    st.sampled_from(["int", "negint", "list", "object", "open", "surrogate"]),
    st.sampled_from([1, 50, 400, 800, 950, 990, 1000, 1100, 5000]),
    st.sampled_from([1, 20, 4300, 4301, 6000]),
)


def _documents(field: str, bomb: str) -> dict[str, str]:
    """The same hostile value in one field of each JSON-based format (JSONL, JSON list, Label Studio, CSV)."""
    entity = {"start": "0", "end": "2", "entity": '"x"', "value": '"hi"'}
    row = {"text": '"hi there"', "intent": '"greet"', "entities": None, "locale": None, "score": None}
    if field in entity:
        entity[field] = bomb
    else:
        row[field] = bomb
    entity_json = "{" + ", ".join(f'"{k}": {v}' for k, v in entity.items()) + "}"
    if row["entities"] is None:
        row["entities"] = "[" + entity_json + "]"
    obj = "{" + ", ".join(f'"{k}": {v}' for k, v in row.items() if v is not None) + "}"
    ls_value = {"labels": '["x"]', "start": entity["start"], "end": entity["end"], "text": entity["value"]}
    ls = (
        '[{"data": {"text": ' + (row["text"] or '"hi"') + '}, "annotations": [{"result": ['
        '{"type": "choices", "value": {"choices": [' + (row["intent"] or '"g"') + "]}}, "
        '{"type": "labels", "value": {' + ", ".join(f'"{k}": {v}' for k, v in ls_value.items()) + "}}]}]}]"
    )
    cell = (row["entities"] or "").replace('"', '""')
    return {
        "d.jsonl": obj + "\n",
        "d.json": "[\n" + obj + "\n]",
        "ls.json": ls,
        "d.csv": f'text,intent,entities\nhi there,greet,"{cell}"\n',
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), bomb=bombs)
def test_hostile_values_give_a_dataset_or_a_located_data_error(tmp_path: Path, field: str, bomb: str) -> None:
    for name, text in _documents(field, bomb).items():
        path = write(tmp_path, name, text)
        try:
            result = load_file(path)
        except DataError as err:  # anything else fails the test with its traceback
            assert err.path == str(path)
            assert err.line is not None or "no examples found" in str(err) or "no line is known" in str(err)
            assert "expected" in str(err)
            assert len(str(err)) < 2000, str(err)[:300]
        else:
            assert isinstance(result, Dataset)


# ------------------------------------------------------------------------------- Rasa YAML annotations


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="[](){}:a\n", max_size=24))
@pytest.mark.slow
def test_the_linear_annotation_scan_finds_what_the_pattern_finds(raw: str) -> None:
    expected = [(m.start(), m.end(), m.groupdict()) for m in ANNOTATION.finditer(raw)]
    assert [(m.start(), m.end(), m.groupdict()) for m in find_annotations(raw)] == expected


@pytest.mark.parametrize(
    "line",
    [
        "[" * 80_000,
        "[" * 80_000 + "]",
        "[a](" * 20_000,
        "[a]{" * 20_000,
        "[a](x:" * 13_000,
        "[a](b)" * 13_000,
    ],
)
def test_a_long_line_of_brackets_is_a_dataset_or_a_located_error(tmp_path: Path, line: str) -> None:
    # was quadratic: 49.7 s for an 80 KB line of '[' (13.3 s for 40 KB); the time is bounded by ratio in
    # tests/fuzz/test_fuzz_loaders.py (no wall-clock limits in tests)
    path = write(tmp_path, "long.yml", "nlu:\n- intent: g\n  examples: |\n    - hi\n    - " + line + "\n")
    try:
        load_file(path)
    except DataError as err:
        assert err.line == 5, str(err)
