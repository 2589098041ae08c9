"""Loaders: every format, file:line on every example and every error, the vendored benchmark raw files."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from nluflow.data.loaders import (
    SUPPORTED_SUFFIXES,
    data_files_sha256,
    load_csv,
    load_file,
    load_json,
    load_jsonl,
    load_must_pass,
    load_paths,
    load_rasa_yaml,
)
from nluflow.data.schema import Dataset, Example
from nluflow.errors import DataError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"


def spans(example: Example) -> list[tuple[int, int, str, str]]:
    return [(e.start, e.end, e.entity, e.value) for e in example.entities]


def content_key(example: Example) -> tuple[str, str, tuple[tuple[int, int, str, str], ...]]:
    return example.text, example.intent, tuple(sorted(spans(example)))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_data_error(err: DataError, path: Path, line: int | None, *needles: str) -> None:
    assert err.path == str(path)
    assert err.line == line, str(err)
    text = str(err)
    assert "expected" in text
    for needle in needles:
        assert needle in text, text


# ------------------------------------------------------------------------------------------------------ JSONL


def test_jsonl_reads_fields_and_real_line_numbers() -> None:
    ds = load_jsonl(FIXTURES / "nlu.jsonl", default_locale="fr-FR")
    assert [e.origin.line for e in ds if e.origin] == [1, 3, 4, 5]  # the blank line 2 is skipped
    hey, fly, flieg, bye = ds.examples
    assert (hey.text, hey.intent, hey.entities, hey.locale) == ("hey", "greet", (), "fr-FR")
    assert spans(fly) == [(7, 12, "city", "Paris")]
    assert (fly.locale, fly.score) == ("en-US", 0.9)
    assert spans(flieg) == [(11, 14, "city", "Rom")]  # the extra "role" key is ignored
    assert flieg.locale == "de-DE"
    assert bye.entities == ()
    assert ds.source == str(FIXTURES / "nlu.jsonl")


def test_jsonl_keeps_spans_that_do_not_match_for_the_validator(tmp_path: Path) -> None:
    rows = [
        {
            "text": "to Paris",
            "intent": "go",
            "entities": [{"start": 3, "end": 7, "entity": "city", "value": "Pari"}],
        },
        {
            "text": "to Rome",
            "intent": "go",
            "entities": [{"start": 5, "end": 99, "entity": "city", "value": "x"}],
        },
    ]
    path = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    ds = load_jsonl(path)
    assert spans(ds.examples[0]) == [(3, 7, "city", "Pari")]
    assert spans(ds.examples[1]) == [(5, 99, "city", "x")]


ENT = '{"text": "hi", "intent": "g", "entities": [%s]}'


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"text": "hi", "intent": "greet"', "invalid JSON"),
        ('{"intent": "greet"}', "'text' is missing"),
        ('{"text": "  ", "intent": "greet"}', "'text' is str"),
        ('{"text": "", "intent": "greet"}', "'text' is empty"),
        ('{"text": "hi"}', "'intent' of 'hi' is missing"),
        ('{"text": "hi", "intent": 3}', "'intent' of 'hi' is int 3"),
        ('["hi", "greet"]', "found a JSON list"),
        ('{"text": "hi", "intent": "g", "entities": {"start": 0}}', "'entities' is dict"),
        (ENT % '{"start": 0, "end": 2, "value": "hi"}', "no 'entity'"),
        (
            ENT % '{"start": 0.0, "end": 2, "entity": "e", "value": "hi"}',
            "expected integer",
        ),
        (
            ENT % '{"start": true, "end": 2, "entity": "e", "value": "hi"}',
            "expected integer",
        ),
        (
            ENT % '{"start": -1, "end": 2, "entity": "e", "value": "hi"}',
            "entity #1 is invalid",
        ),
        (
            ENT % '{"start": 0, "end": 2, "entity": "", "value": "hi"}',
            "entity type ''",
        ),
        ('{"text": "hi", "intent": "g", "score": 1.5}', "'score' is 1.5"),
        ('{"text": "hi", "intent": "g", "score": "high"}', "'score' is 'high'"),
        ('{"text": "hi", "intent": "g", "locale": 5}', "'locale' is int"),
        ('{"text": "\\ud800", "intent": "g"}', "valid Unicode"),
    ],
)
def test_jsonl_errors_name_file_line_and_what_was_expected(tmp_path: Path, line: str, needle: str) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "ok", "intent": "greet"}\n\n' + line + "\n")
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert_data_error(info.value, path, 3, needle, "the file was not loaded; fix the line and rerun")
    assert str(info.value).startswith(f"{path}:3: ")


def test_empty_file_says_no_examples_and_what_was_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", "\n  \n")
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, None, f"no examples found in {path}", '"text"')


def test_invalid_utf8_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok", "intent": "a"}\n{"text": "caf\xe9", "intent": "a"}\n')
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, 2, "not valid UTF-8")


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "ok", "intent": "a"}\n')
    assert load_file(path).examples[0].text == "ok"


# ------------------------------------------------------------------------------------------------------ CSV


def test_csv_reads_columns_and_record_lines_across_quoted_newlines() -> None:
    ds = load_csv(FIXTURES / "nlu.csv")
    assert [(e.text, e.intent, e.origin.line if e.origin else None) for e in ds] == [
        ("hey", "greet", 2),
        ("fly to Paris, please", "book_flight", 3),
        ("two\nlines", "greet", 4),
        ("bye", "goodbye", 7),  # after the quoted newline (line 5) and a blank line 6
    ]
    fly = ds.examples[1]
    assert spans(fly) == [(7, 12, "city", "Paris")]
    assert (fly.locale, fly.score) == ("en-US", 0.75)
    assert (ds.examples[3].locale, ds.examples[3].score) == ("fr-FR", 1.0)
    assert ds.examples[0].locale is None


def test_csv_missing_column_names_found_and_expected_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,category\nhello,greet\n")
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(
        info.value, path, 1, "'text', 'category'", "no 'intent'", "expected columns 'text' and 'intent'"
    )


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ('hi,greet,\n"a, b",c,"[{""start"": 0}]"\n', 3, "no 'end'"),
        ("hi,greet,\nhello,there,greet,x\n", 3, "record has 4 fields"),
        ("hi,greet,\nhello,greet,[{bad\n", 3, "is not valid JSON"),
        ('hi,greet,\n"multi\nline",greet,\nhello,,\n', 5, "'intent' of 'hello' is empty"),
    ],
)
def test_csv_errors_point_at_the_record_line(tmp_path: Path, body: str, line: int, needle: str) -> None:
    path = write(tmp_path, "d.csv", "text,intent,entities\n" + body)
    with pytest.raises(DataError) as info:
        load_csv(path)
    assert_data_error(info.value, path, line, needle)


def test_csv_score_must_be_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,intent,score\nhi,greet,nan\n")
    with pytest.raises(DataError) as info:
        load_csv(path)
    assert_data_error(info.value, path, 2, "'score' is 'nan'")


# -------------------------------------------------------------------------------------------------- Rasa YAML


def test_rasa_yaml_annotations_offsets_lines_and_skipped_items() -> None:
    ds = load_rasa_yaml(FIXTURES / "nlu.yml")
    got = [(e.origin.line if e.origin else None, e.text, e.intent, spans(e)) for e in ds]
    assert got == [
        (5, "hey", "greet", []),
        (6, "hello there", "greet", []),
        (8, "good morning", "greet", []),
        (13, "fly to Paris tomorrow", "book_flight", [(7, 12, "city", "Paris")]),
        (
            14,
            "a flight from Berlin to New York",
            "book_flight",
            [(14, 20, "city", "Berlin"), (24, 32, "city", "New York")],  # surface text, not the synonym
        ),
        (15, "I want to go to Rome", "book_flight", [(16, 20, "city", "Rome")]),
        (16, "book two seats to Oslo", "book_flight", [(5, 8, "count", "two"), (18, 22, "city", "Oslo")]),
        (20, "bye for now", "goodbye", []),  # Rasa 3 list of {text, metadata}; block scalar text
        (23, "see you tomorrow", "goodbye", [(8, 16, "date", "tomorrow")]),
    ]
    for example in ds:
        for ent in example.entities:
            assert example.text[ent.start : ent.end] == ent.value
    assert ds.skipped == {
        "entity_groups": 1,
        "entity_roles": 1,
        "lookup": 1,
        "metadata": 2,
        "regex": 1,
        "synonym": 1,
        "synonym_values": 2,
    }


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            "nlu:\n- intent: a\n  examples: |\n    - ok\n    - fly to [Paris(city)\n",
            5,
            "a '[' without its ']'",
        ),
        ("nlu:\n- intent: a\n  examples: |\n    - ok\n    - fly to [Paris](city\n", 5, "does not close"),
        (
            'nlu:\n- intent: a\n  examples: |\n    - ok\n    - to [Paris]{"entity": city}\n',
            5,
            "not valid JSON",
        ),
        (
            'nlu:\n- intent: a\n  examples: |\n    - ok\n    - to [Paris]{"value": "x"}\n',
            5,
            "entity type None",
        ),
        ("nlu:\n- intent: a\n  examples: |\n    - ok\n  - bad: [\n", 5, "malformed YAML"),
        (
            "nlu:\n- intent: a\n  examples: |\n    - ok\n- intent:\n  examples: |\n    - x\n",
            5,
            "empty or non-text",
        ),
        ("nlu:\n- intent: a\n  examples: |\n    - ok\n- utter: x\n", 5, "expected one of 'intent'"),
        ("version: '3.1'\nrules:\n- rule: x\n", 1, "no 'nlu:' key (top-level keys: 'version', 'rules')"),
        ("- just\n- a list\n", 1, "the document is a YAML list"),
        ("nlu:\n- intent: a\n  examples:\n  - metadata: {}\n", 4, "has no text"),
        ("nlu:\n\t- intent: a\n", 2, "malformed YAML"),
    ],
)
def test_rasa_yaml_errors_point_at_the_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = write(tmp_path, "nlu.yml", text)
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, line, needle)


def test_rasa_yaml_lines_without_dash_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path, "nlu.yml", "nlu:\n- intent: a\n  examples: |\n    - ok\n    not a list item\n    - fine\n"
    )
    ds = load_file(path)
    assert [(e.text, e.origin.line if e.origin else None) for e in ds] == [("ok", 4), ("fine", 6)]
    assert ds.skipped == {"lines_without_dash": 1}


def test_rasa_yaml_stray_closing_bracket_is_text_as_in_rasa(tmp_path: Path) -> None:
    path = write(tmp_path, "nlu.yml", "nlu:\n- intent: a\n  examples: |\n    - hello]\n")
    assert load_file(path).examples[0].text == "hello]"


def test_rasa_yaml_with_only_lookups_has_no_examples(tmp_path: Path) -> None:
    path = write(tmp_path, "lookups.yml", "nlu:\n- lookup: city\n  examples: |\n    - Paris\n")
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, None, "no examples found", "only 1 lookup items")


def test_rasa_financial_demo_raw_yaml_matches_its_converted_jsonl(datasets: Path) -> None:
    raw = load_file(datasets.joinpath("rasa_financial_demo", "raw", "data", "nlu", "nlu.yml"))
    converted = load_file(datasets.joinpath("rasa_financial_demo", "all.jsonl"))
    assert len(raw) == len(converted) == 578
    assert Counter(map(content_key, raw)) == Counter(map(content_key, converted))
    assert raw.skipped["synonym"] == 3
    assert raw.skipped["synonym_values"] == 11  # README: entities_with_synonym_value_replaced_by_surface: 11


@pytest.mark.parametrize(
    ("raw", "converted"),
    [
        (
            ("rasa_examples", "raw", "examples", "formbot", "data", "nlu.yml"),
            ("rasa_examples", "formbot.jsonl"),
        ),
        (
            ("rasa_examples", "raw", "data", "examples", "rasa", "demo-rasa.yml"),
            ("rasa_examples", "demo_rasa.jsonl"),
        ),
    ],
)
def test_other_raw_rasa_files_match_their_converted_jsonl(
    raw: tuple[str, ...], converted: tuple[str, ...], datasets: Path
) -> None:
    loaded = load_paths([datasets.joinpath(*raw)])
    expected = load_file(datasets.joinpath(*converted))
    assert Counter(map(content_key, loaded)) == Counter(map(content_key, expected))


def test_a_folder_of_raw_rasa_files_matches_their_converted_jsonl(datasets: Path, tmp_path: Path) -> None:
    """A folder of several YAML files, one in a subfolder, with synonym and regex blocks beside the intents
    (the shape of a Rasa project's data/nlu/; it replaces the GPL rasa_demo folder, never copied here)."""
    raw = {
        "formbot.yml": ("rasa_examples", "raw", "examples", "formbot", "data", "nlu.yml"),
        "demo-rasa.yml": ("rasa_examples", "raw", "data", "examples", "rasa", "demo-rasa.yml"),
        "more/financial.yml": ("rasa_financial_demo", "raw", "data", "nlu", "nlu.yml"),
    }
    for name, parts in raw.items():
        (tmp_path / "nlu" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "nlu" / name).write_bytes(datasets.joinpath(*parts).read_bytes())
    loaded = load_paths([tmp_path / "nlu"])
    converted = [
        datasets / "rasa_examples" / "formbot.jsonl",
        datasets / "rasa_examples" / "demo_rasa.jsonl",
        datasets / "rasa_financial_demo" / "all.jsonl",
    ]
    expected = [example for path in converted for example in load_file(path)]
    assert len(loaded) == len(expected) == 289 + 46 + 578
    assert Counter(map(content_key, loaded)) == Counter(map(content_key, expected))
    assert {e.origin.path for e in loaded if e.origin} == {str(tmp_path / "nlu" / name) for name in raw}


def test_rasa_example_lines_point_at_the_raw_line(datasets: Path) -> None:
    root = datasets / "rasa_financial_demo" / "raw"
    for path in [*sorted(root.rglob("*.yml")), *sorted((datasets / "rasa_examples" / "raw").rglob("*.yml"))]:
        lines = path.read_text(encoding="utf-8").split("\n")
        for example in load_file(path):
            assert example.origin is not None and example.origin.line is not None
            raw = lines[example.origin.line - 1].strip()
            assert raw.startswith("- ")
            if not example.entities:
                assert raw[2:].strip() == example.text, (path, example.origin.line)


# ------------------------------------------------------------------------------------------------------ JSON


def test_json_list_rasa_json_and_label_studio() -> None:
    plain = load_json(FIXTURES / "nlu.json")
    assert [(e.text, e.origin.line if e.origin else None) for e in plain] == [("hey", 2), ("fly to Paris", 3)]
    rasa = load_file(FIXTURES / "rasa_nlu.json")
    assert [(e.text, e.origin.line if e.origin else None) for e in rasa] == [("hey", 6), ("fly to Paris", 7)]
    assert spans(rasa.examples[1]) == [(7, 12, "city", "Paris")]
    assert rasa.skipped == {"regex_features": 1}
    studio = load_file(FIXTURES / "label_studio.json")
    assert [(e.text, e.intent, e.origin.line if e.origin else None) for e in studio] == [
        ("fly to Paris", "book_flight", 2),
        ("hello", "greet", 16),
    ]
    assert spans(studio.examples[0]) == [(7, 12, "city", "Paris")]
    assert studio.skipped == {"unannotated_tasks": 1}


def test_json_errors_have_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", '[\n  {"text": "a", "intent": "x"},\n  {"text": "b", "intent": }\n]\n')
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, 3, "invalid JSON")
    path = write(tmp_path, "e.json", '[\n  {"text": "a", "intent": "x"},\n\n  {"text": "b"}\n]\n')
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, 4, "'intent' of 'b' is missing")


# --------------------------------------------------------------------------------------------------- dispatch


def test_unknown_suffix_names_the_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "nlu.md", "## intent:greet\n- hi\n")
    with pytest.raises(DataError) as info:
        load_file(path)
    assert_data_error(info.value, path, None, "'.md'", *SUPPORTED_SUFFIXES)


def test_missing_file_and_folder_to_load_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        load_file(tmp_path)


def test_load_file_dispatches_on_suffix_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "NLU.JSONL"
    shutil.copy(FIXTURES / "nlu.jsonl", path)
    assert len(load_file(path)) == 4


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "nlu").mkdir(parents=True)
    (root / ".hidden").mkdir()
    shutil.copy(FIXTURES / "nlu.yml", root / "nlu" / "b.yml")
    shutil.copy(FIXTURES / "nlu.jsonl", root / "a.jsonl")
    (root / "stories.yml").write_text("version: '3.1'\nstories:\n- story: x\n  steps: []\n", encoding="utf-8")
    (root / "nlu" / "lookups.yml").write_text("nlu:\n- lookup: c\n  examples: |\n    - x\n", encoding="utf-8")
    (root / "README.md").write_text("not data\n", encoding="utf-8")
    (root / ".hidden" / "x.jsonl").write_text("not json\n", encoding="utf-8")
    return root


def test_load_paths_reads_folders_recursively_in_sorted_order(tmp_path: Path) -> None:
    root = _project(tmp_path)
    ds = load_paths([root, root / "a.jsonl"])  # a.jsonl is named twice but read once
    files = [Path(e.origin.path).relative_to(root).as_posix() for e in ds if e.origin]
    assert sorted(set(files)) == ["a.jsonl", "nlu/b.yml"]
    assert files == sorted(files)  # a.jsonl, then nlu/b.yml
    assert len(ds) == 4 + 9
    assert ds.skipped["non_nlu_yaml_files"] == 1  # stories.yml
    assert ds.skipped["lookup"] == 2  # one in b.yml, one in lookups.yml
    assert ds.source == f"{root}, {root / 'a.jsonl'}"


def test_load_paths_refuses_a_named_non_nlu_file_missing_paths_and_empty_results(tmp_path: Path) -> None:
    root = _project(tmp_path)
    with pytest.raises(DataError, match="no 'nlu:' key"):
        load_paths([root / "stories.yml"])
    with pytest.raises(DataError, match="no such file or folder") as info:
        load_paths([root / "missing"])
    assert info.value.path == str(root / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no examples found"):
        load_paths([tmp_path / "empty"])
    (tmp_path / "empty" / "e.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no examples found") as info:
        load_paths([tmp_path / "empty"])
    assert info.value.path == str(tmp_path / "empty" / "e.jsonl")
    with pytest.raises(TypeError):
        load_paths(str(root))


def test_load_paths_error_in_a_folder_file_names_that_file(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "nlu" / "c.jsonl").write_text('{"text": "x", "intent": "a"}\n{"text": 1}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_paths([root])
    assert (info.value.path, info.value.line) == (str(root / "nlu" / "c.jsonl"), 2)


def test_default_locale_fills_only_missing_locales() -> None:
    ds = load_paths([FIXTURES / "nlu.jsonl"], default_locale="es-ES")
    assert [e.locale for e in ds] == ["es-ES", "en-US", "de-DE", "es-ES"]


def test_load_must_pass_drops_entities_and_ignores_broken_ones(tmp_path: Path) -> None:
    examples = load_must_pass(FIXTURES / "must_pass.yml")
    assert [(e.text, e.intent, e.entities) for e in examples] == [
        ("fly to Paris please", "book_flight", ()),
        ("hi", "greet", ()),
    ]
    path = write(tmp_path, "must.jsonl", '{"text": "hi", "intent": "greet", "entities": [{"start": "x"}]}\n')
    assert load_must_pass(path)[0].entities == ()
    with pytest.raises(DataError, match="no examples found"):
        load_must_pass(write(tmp_path, "empty.csv", "text,intent\n"))


def test_data_files_sha256_is_a_content_key(tmp_path: Path) -> None:
    root = _project(tmp_path)
    key = data_files_sha256([root])
    assert key == data_files_sha256([root])
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    assert data_files_sha256([moved]) == key  # names are relative: moving the folder keeps the key
    (root / "README.md").write_text("changed, but not data\n", encoding="utf-8")
    (root / ".hidden" / "x.jsonl").write_text("changed, but hidden\n", encoding="utf-8")
    assert data_files_sha256([root]) == key
    (root / "a.jsonl").write_text((FIXTURES / "nlu.jsonl").read_text() + '{"text": "x", "intent": "y"}\n')
    changed = data_files_sha256([root])
    assert changed != key
    (root / "a.jsonl").rename(root / "z.jsonl")
    assert data_files_sha256([root]) != changed  # a rename changes the key too
    with pytest.raises(DataError):
        data_files_sha256([tmp_path / "missing"])


def test_dataset_from_loader_round_trips_through_jsonl(tmp_path: Path) -> None:
    ds = load_file(FIXTURES / "nlu.yml")
    out = ds.write_jsonl(tmp_path / "out.jsonl")
    again = load_file(out)
    assert isinstance(again, Dataset)
    assert again.sha256() == ds.sha256()
