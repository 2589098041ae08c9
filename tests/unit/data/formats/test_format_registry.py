"""The reader registry: the suffix picks the reader, an unknown suffix is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from nluflow.data.formats import READERS, SUPPORTED_SUFFIXES, ReadOptions, accepts, reader_for
from nluflow.data.formats.csv_table import CsvReader
from nluflow.data.formats.json_document import JsonReader
from nluflow.data.formats.jsonl import JsonlReader
from nluflow.data.formats.rasa_yaml import RasaYamlReader
from nluflow.errors import DataError


@pytest.mark.parametrize(
    ("name", "reader"),
    [
        ("a.jsonl", JsonlReader),
        ("a.csv", CsvReader),
        ("a.yml", RasaYamlReader),
        ("a.yaml", RasaYamlReader),
        ("A.YML", RasaYamlReader),
        ("a.json", JsonReader),
    ],
)
def test_the_suffix_picks_the_reader(tmp_path: Path, name: str, reader: type) -> None:
    path = tmp_path / name
    path.write_text("", encoding="utf-8")
    assert isinstance(reader_for(path), reader)
    assert accepts(path)


def test_supported_suffixes_are_every_readers_in_registry_order() -> None:
    assert SUPPORTED_SUFFIXES == (".jsonl", ".csv", ".yml", ".yaml", ".json")
    assert [s for r in READERS for s in r.suffixes] == list(SUPPORTED_SUFFIXES)
    assert len({r.name for r in READERS}) == len(READERS)


def test_an_unknown_suffix_is_refused_naming_the_file_and_the_known_suffixes(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello\n", encoding="utf-8")
    assert not accepts(path)
    with pytest.raises(DataError) as info:
        reader_for(path)
    assert (info.value.path, info.value.line) == (str(path), None)
    assert str(info.value) == (
        f"{path}: unsupported file type '.txt'; expected one of .jsonl, .csv, .yml, .yaml, .json; "
        "the file was not loaded; fix the file and rerun"
    )


def test_no_suffix_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "README"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\(no suffix\)'"):
        reader_for(path)


def test_a_missing_file_or_a_folder_with_an_unknown_suffix_says_so_first(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found; expected an existing data file"):
        reader_for(tmp_path / "gone.txt")
    folder = tmp_path / "folder.d"
    folder.mkdir()
    with pytest.raises(DataError, match="is a folder; expected a file"):
        reader_for(folder)


def test_every_reader_reads_its_own_format_to_the_same_examples(tmp_path: Path) -> None:
    files = {
        ".jsonl": '{"text": "hi there", "intent": "greet"}\n',
        ".csv": "text,intent\nhi there,greet\n",
        ".yml": "nlu:\n- intent: greet\n  examples: |\n    - hi there\n",
        ".json": '[{"text": "hi there", "intent": "greet"}]',
    }
    for suffix, content in files.items():
        path = tmp_path / f"data{suffix}"
        path.write_text(content, encoding="utf-8")
        parsed = reader_for(path).read(path, ReadOptions())
        assert parsed is not None
        assert [(e.text, e.intent) for e in parsed.examples] == [("hi there", "greet")], suffix
