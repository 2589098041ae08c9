"""The one YAML position helper, and that every YAML file nluflow reads reports malformed YAML at its line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blocks.blocks_file import parse_blocks_file
from nluflow.data import yaml_positions as yp
from nluflow.data.loaders import load_file
from nluflow.errors import ConfigError, DataError
from nluflow.sweep_configs import load_sweep_file

TEXT = "top:\n  a: 1\n  b:\n    - x\n    - y\nother: &anchor {k: v}\nmerged:\n  <<: *anchor\n  z: [1, 2]\n"


def test_nodes_keep_their_lines() -> None:
    root = yp.compose(TEXT)
    assert isinstance(root, yaml.MappingNode)
    assert yp.key_lines(root) == {"top": 1, "other": 6, "merged": 7}
    top = yp.child(root, "top")
    assert yp.key_lines(top) == {"a": 2, "b": 3}
    items = yp.child(top, "b")
    assert isinstance(items, yaml.SequenceNode) and [yp.line_of(n) for n in items.value] == [4, 5]
    assert yp.child(root, "missing") is None and yp.child(items, "a") is None and yp.key_lines(items) == {}
    assert set(yp.mapping(root)) == {"top", "other", "merged"}
    assert [yp.kind_of(n) for n in (root, items, items.value[0])] == ["mapping", "list", "scalar"]


def test_construct_gives_what_safe_load_gives() -> None:
    assert yp.construct(yp.compose(TEXT)) == yaml.safe_load(TEXT)
    assert yp.compose("") is None and yp.construct(None) is None


def test_scalar_text_is_none_for_null_blank_and_non_scalars() -> None:
    root = yp.compose("a: ~\nb: '  '\nc: [1]\nd: word\n")
    assert isinstance(root, yaml.MappingNode)
    values = yp.mapping(root)
    assert [yp.scalar_text(values[k]) for k in "abcd"] == [None, None, None, "word"]


@pytest.mark.parametrize(
    ("text", "kind", "line"),
    [
        ("a: 1\nb: [unclosed\nc: 2\n", "syntax", 3),
        ("a: 1\nb: *nowhere\n", "syntax", 2),
        ("a: 1\nb: bell \x07\n", "character", 2),
        ("[" * 5000 + "]" * 5000, "nested", None),
    ],
)
def test_a_bad_file_raises_one_error_with_its_kind_and_line(text: str, kind: str, line: int | None) -> None:
    with pytest.raises(yp.YamlPositionError) as info:
        yp.compose(text)
    assert (info.value.kind, info.value.line) == (kind, line)
    if kind == "character":
        assert info.value.character == "U+0007"
    if kind == "syntax":
        assert info.value.problem


def test_the_rasa_reader_reports_malformed_yaml_at_its_line(tmp_path: Path) -> None:
    data = tmp_path / "nlu.yml"
    data.write_text("a: 1\nb: *nowhere\n", encoding="utf-8")
    with pytest.raises(DataError) as loaded:
        load_file(data)
    assert str(loaded.value) == (
        f"{data}:2: malformed YAML (found undefined alias 'nowhere'); expected Rasa NLU YAML; the file was "
        "not loaded; fix the line and rerun"
    )


def test_the_sweep_and_blocks_files_report_malformed_yaml_at_its_line(tmp_path: Path) -> None:
    bad = "a: 1\nb: *nowhere\n"
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(bad, encoding="utf-8")
    with pytest.raises(DataError) as swept:
        load_sweep_file(sweep)
    assert str(swept.value) == (
        f"{sweep}:2: the sweep file is not valid YAML/JSON: found undefined alias 'nowhere'; "
        "nothing was trained"
    )
    blocks = tmp_path / "blocks.yml"
    blocks.write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError) as parsed:
        parse_blocks_file(blocks)
    assert str(parsed.value).startswith(f"{blocks}:2: not valid YAML (found undefined alias 'nowhere'); ")


def test_a_sweep_file_nested_too_deeply_is_a_data_error_not_a_traceback(tmp_path: Path) -> None:
    sweep = tmp_path / "deep.yml"
    sweep.write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    with pytest.raises(DataError, match=r"the sweep file is not valid YAML/JSON: .*; nothing was trained"):
        load_sweep_file(sweep)
