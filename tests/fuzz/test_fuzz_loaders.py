"""Every loader on mutated and hostile files: a Dataset or a located DataError, never a traceback; crafted
bombs in linear time and bounded memory.

The mutations start from a valid file of each format (JSONL, CSV, JSON list, Rasa JSON, Rasa YAML and a
real Label Studio export) and insert, delete or replace bytes, or splice in a bomb (an integer of 5,000
digits, deep nesting, a lone surrogate escape, a line of '['). Bounds are ratios measured in the same test,
never absolute seconds: linear time means 8x the input costs about 8x the time (quadratic would be 64x);
bounded memory means tracemalloc's peak stays a small multiple of the file, and what the load holds besides
its examples (peak minus what the dataset keeps) stays below the size of the file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nluflow.data.loaders import data_files_sha256, load_file
from nluflow.data.schema import Dataset, Example
from nluflow.errors import DataError

LABEL_STUDIO_EXPORT = Path(__file__).resolve().parents[1] / "fixtures" / "label-studio" / "export.json"

ENTITY = '{"start": 11, "end": 16, "entity": "city", "value": "Paris"}'
SEEDS: dict[str, bytes] = {
    "data.jsonl": (
        '{"text": "fly me to Paris", "intent": "book", "entities": [' + ENTITY.replace("11", "10") + "]}\n"
        '{"text": "hello", "intent": "greet", "locale": "en-US", "score": 0.5}\n'
    ).encode(),
    "data.csv": (
        b'text,intent,entities,locale,score\n"fly me to Paris",book,"[{""start"": 10, ""end"": 15, '
        b'""entity"": ""city"", ""value"": ""Paris""}]",en-US,0.9\nhello,greet,,,\n'
    ),
    "list.json": (
        '[{"text": "flying to Paris", "intent": "book", "entities": ['
        + ENTITY.replace("11", "10")
        + ']},\n {"text": "hi", "intent": "greet"}]'
    ).encode(),
    "rasa.json": (
        b'{"rasa_nlu_data": {"common_examples": [{"text": "hi", "intent": "greet", "entities": []}],'
        b' "entity_synonyms": [{"value": "x", "synonyms": ["y"]}]}}'
    ),
    "nlu.yml": (
        b'version: "3.1"\nnlu:\n- intent: book\n  examples: |\n    - fly me to [Paris](city)\n'
        b'    - [Rome]{"entity": "city", "value": "Roma"} please\n'
        b'    - [x][{"entity": "a"}, {"entity": "b"}]\n'
        b"- synonym: roma\n  examples: |\n    - Rome\n- intent: greet\n  examples:\n  - text: hello\n"
    ),
    "export.json": LABEL_STUDIO_EXPORT.read_bytes(),
}
BOMBS = (
    b"9" * 5000,
    b"-" + b"9" * 4301,
    b"[" * 5000,
    b'{"a":' * 3000,
    b'"\\ud800"',
    b"\\udfff",
    b"\xed\xa0\x80",  # a raw CESU-8 surrogate: not UTF-8
    b"\xff",
    b"[" * 20_000,
    b"](",
    b"\n- [",
    b"\x00",
    b"\r",
    "\u2028".encode(),  # a line break to PyYAML, not to str.split("\n")
    b"&a *a",
    b"!!python/object:os.system",
    b'"',
    b",",
    "\ufeff".encode(),
)


def load_or_data_error(path: Path) -> Dataset | DataError:
    """The dataset, or the DataError; any other exception fails the calling test with its traceback."""
    try:
        return load_file(path)
    except DataError as err:
        return err


def assert_located(err: DataError, path: Path) -> None:
    message = str(err)
    assert err.path == str(path), message[:300]
    assert "expected" in message, message[:300]
    assert err.line is not None or any(
        known in message
        for known in ("no examples found", "no line is known", "not valid UTF-8", "no 'nlu:' key", "a folder")
    ), message[:300]
    assert len(message) < 2000, message[:300]  # a bomb is never echoed whole
    assert "Traceback" not in message and "sys.set_int_max_str_digits" not in message


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(("insert", "delete", "replace", "bomb")))
        chunk = (
            draw(st.sampled_from(BOMBS))
            if action == "bomb"
            else draw(st.binary(min_size=1, max_size=8))
            if draw(st.booleans())
            else draw(st.text(alphabet='[](){}:,"\\-\n 0123456789aé', min_size=1, max_size=8)).encode()
        )
        if action == "delete":
            del data[at : at + len(chunk)]
        elif action == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = chunk
    return name, bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated())
def test_mutated_files_give_a_dataset_or_a_located_data_error(
    tmp_path: Path, case: tuple[str, bytes]
) -> None:
    name, data = case
    path = tmp_path / name
    path.write_bytes(data)
    result = load_or_data_error(path)
    if isinstance(result, DataError):
        assert_located(result, path)
    else:
        assert result.examples and all(e.origin is not None and e.origin.path == str(path) for e in result)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.sampled_from([".jsonl", ".csv", ".json", ".yml"]),
    text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200),
)
def test_arbitrary_text_gives_a_dataset_or_a_located_data_error(
    tmp_path: Path, suffix: str, text: str
) -> None:
    path = tmp_path / f"any{suffix}"
    path.write_text(text, encoding="utf-8")
    result = load_or_data_error(path)
    if isinstance(result, DataError):
        assert_located(result, path)


@pytest.mark.parametrize("after", ["null", "x", "]", ",", " ", "}", "e", ".", "E+"])
def test_an_overlong_integer_followed_by_garbage_is_located(tmp_path: Path, after: str) -> None:
    """json hands "999…9null" to parse_int before it sees the garbage: the message must still find it."""
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "hi", "intent": "g",\n "n": ' + "9" * 5000 + after + "}]", encoding="utf-8")
    err = load_or_data_error(path)
    assert isinstance(err, DataError) and err.line == 3 and "at column 7" in str(err), err


def test_the_seeds_are_valid(tmp_path: Path) -> None:
    """The mutations start from files that load (so the fuzzing reaches past the first check)."""
    for name, data in SEEDS.items():
        (tmp_path / name).write_bytes(data)
        assert len(load_file(tmp_path / name)) >= 1, name


# ------------------------------------------------------------------------------------------- crafted bombs


def best_seconds(call: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def rasa_file(tmp_path: Path, line: str) -> Path:
    path = tmp_path / f"long-{len(line)}.yml"
    path.write_text("nlu:\n- intent: g\n  examples: |\n    - hi\n    - " + line + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("unit", ["[", "[a](", "[a]{", "[a](x:", "[a][", "[[a]"])
def test_a_long_rasa_line_of_brackets_is_read_in_linear_time(tmp_path: Path, unit: str) -> None:
    # was quadratic: an 80 KB line of '[' took 49.7 s, 40 KB 13.3 s
    small, large = (rasa_file(tmp_path, unit * (n // len(unit))) for n in (10_000, 80_000))

    def load(path: Path) -> Callable[[], object]:
        return lambda: load_or_data_error(path)

    for path in (small, large):
        result = load(path)()
        assert isinstance(result, Dataset) or result.line == 5, result
    ratio = best_seconds(load(large)) / best_seconds(load(small))
    assert ratio < 24, f"8x the line took {ratio:.1f}x the time (linear: ~8x; quadratic: ~64x)"


def jsonl_rows(n: int) -> str:
    return "".join(
        json.dumps(
            {
                "text": f"play song number {i} by queen in the kitchen",
                "intent": ("play", "stop", "skip")[i % 3],
                "entities": [{"start": 27, "end": 32, "entity": "artist", "value": "queen"}],
            }
        )
        + "\n"
        for i in range(n)
    )


def csv_rows(n: int) -> str:
    cell = '"[{""start"": 27, ""end"": 32, ""entity"": ""artist"", ""value"": ""queen""}]"'
    return "text,intent,entities\n" + "".join(
        f"play song number {i} by queen in the kitchen,{('play', 'stop', 'skip')[i % 3]},{cell}\n"
        for i in range(n)
    )


def traced_load(path: Path) -> tuple[Dataset, int, int]:
    """Load ``path`` under tracemalloc: (dataset, peak bytes, bytes still held by the dataset)."""
    tracemalloc.start()
    try:
        dataset = load_file(path)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return dataset, peak, held


def json_rows(n: int) -> str:
    return "[\n" + jsonl_rows(n).rstrip("\n").replace("\n", ",\n") + "\n]\n"


@pytest.mark.parametrize(
    ("name", "rows"), [("big.jsonl", jsonl_rows), ("big.csv", csv_rows), ("big.json", json_rows)]
)
def test_a_large_file_is_streamed_in_bounded_memory(
    tmp_path: Path, name: str, rows: Callable[[int], str]
) -> None:
    # was: raw bytes + decoded text + a list of every line + ~2.8 KB per example (112 MB JSONL: 2.2 GB peak)
    peaks = []
    for n in (2_500, 10_000):
        path = tmp_path / name
        path.write_text(rows(n), encoding="utf-8")
        size = path.stat().st_size
        dataset, peak, held = traced_load(path)
        assert len(dataset) == n
        # Beside its examples, the load holds less than the file: no whole text, no list of lines.
        assert peak - held < size // 2, (peak - held, size)
        # The examples themselves: pydantic's per-instance field sets and repeated names are shared.
        assert peak < 10 * size, f"peak {peak / size:.1f}x the file"
        peaks.append(peak / n)
    assert peaks[1] < 1.5 * peaks[0], peaks  # per example, the same at 4x the size: linear


def test_the_streamed_jsonl_reader_keeps_lines_bom_and_bad_bytes_located(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        "\ufeff".encode() + b'{"text": "a", "intent": "x"}\r\n\n{"text": "b", "intent": "y"}\n'
        b'{"text": "\xff", "intent": "z"}\n'
    )
    err = load_or_data_error(path)
    assert isinstance(err, DataError) and err.line == 4 and "not valid UTF-8" in str(err), err
    path.write_bytes("\ufeff".encode() + b'{"text": "a", "intent": "x"}\r\n\n{"text": "b", "intent": "y"}')
    dataset = load_file(path)
    assert [(e.text, e.origin.line if e.origin else None) for e in dataset] == [("a", 1), ("b", 3)]


def test_a_csv_with_bad_bytes_names_their_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,intent\n" + b"hello,greet\n" * 5000 + b"caf\xe9,greet\n")
    err = load_or_data_error(path)
    assert isinstance(err, DataError) and err.line == 5002 and "not valid UTF-8" in str(err), err


def test_files_are_hashed_in_chunks_with_the_same_key(tmp_path: Path) -> None:
    """``data_files_sha256`` streams each file; the key is the one it always was (names, sizes, bytes)."""
    (tmp_path / "a.jsonl").write_bytes(b"x" * 8_000_000)
    (tmp_path / "b.csv").write_bytes(b"text,intent\nhi,g\n")
    expected = hashlib.sha256()
    for n, name in enumerate(("a.jsonl", "b.csv")):
        data = (tmp_path / name).read_bytes()
        expected.update(f"{n}\0{name}\0{len(data)}\0".encode() + data)
    tracemalloc.start()
    try:
        key = data_files_sha256([tmp_path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert key == expected.hexdigest()
    assert peak < 4_000_000  # the 8 MB file was read whole before


def test_examples_that_share_field_sets_behave_like_any_other(tmp_path: Path) -> None:
    """The loader shares pydantic's per-instance field sets; copies, equality and pickling are unaffected."""
    path = tmp_path / "d.jsonl"
    path.write_text(jsonl_rows(3), encoding="utf-8")
    first, second, _ = load_file(path).examples
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__  # shared (the memory saving)
    shared = set(first.__pydantic_fields_set__)
    copy = first.model_copy(update={"entities": (), "score": 0.5})
    assert copy.score == 0.5 and copy.entities == () and first.entities and first.score is None
    assert first.__pydantic_fields_set__ == shared  # the copy changed its own set, not the shared one
    assert first == Example(**{k: getattr(first, k) for k in ("text", "intent", "entities", "origin")})
    assert pickle.loads(pickle.dumps(first)) == first
    assert first.model_dump(exclude_unset=True) == {
        "text": first.text,
        "intent": first.intent,
        "entities": (first.entities[0].model_dump(),),
        "locale": None,
        "score": None,
    }
