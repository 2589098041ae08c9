"""Property tests: loaders round-trip valid files, and damaged files end in a Dataset or a located DataError.

Every generated file is valid JSONL, CSV or Rasa YAML; the damage is byte-level (truncation, replaced bytes,
inserted garbage lines), so invalid UTF-8, broken quoting, broken annotations and broken YAML all come up.
``validate`` then runs on whatever parsed and must never raise.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nluflow.data.loaders import load_file
from nluflow.data.schema import Dataset
from nluflow.data.validation import validate
from nluflow.errors import DataError

# Errors that cannot name a line say why in their message.
NO_LINE_REASONS = ("no examples found", "no line is known")

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éüßçñ日本語кот"
_PUNCT = "'?!,.-#:&*%$€"

word = st.text(alphabet=_LETTERS, min_size=1, max_size=7) | st.builds(
    lambda w, p: w + p, st.text(alphabet=_LETTERS, min_size=1, max_size=5), st.sampled_from(_PUNCT)
)
INTENTS = ["greet", "book_flight", "faq/ask_price", "bye"]
TYPES = ["city", "date", "amount-of-money"]


@st.composite
def examples(draw: st.DrawFn) -> dict[str, Any]:
    words = draw(st.lists(word, min_size=1, max_size=6))
    annotated = draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    entities, pos = [], 0
    for w, is_entity in zip(words, annotated, strict=True):
        if is_entity and w[0].isalnum():
            entities.append(
                {"start": pos, "end": pos + len(w), "entity": draw(st.sampled_from(TYPES)), "value": w}
            )
        pos += len(w) + 1
    row: dict[str, Any] = {
        "text": " ".join(words),
        "intent": draw(st.sampled_from(INTENTS)),
        "entities": entities,
    }
    if draw(st.booleans()):
        row["locale"] = draw(st.sampled_from(["en-US", "de-DE", "xx-YY"]))
    if draw(st.booleans()):
        row["score"] = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    return row


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "intent", "entities", "locale", "score"])
    for r in rows:
        ents = json.dumps(r["entities"], ensure_ascii=False) if r["entities"] else ""
        writer.writerow([r["text"], r["intent"], ents, r.get("locale", ""), r.get("score", "")])
    return out.getvalue()


def annotate(row: dict[str, Any], dict_style: bool) -> str:
    text, out, pos = row["text"], [], 0
    for ent in row["entities"]:
        out.append(text[pos : ent["start"]])
        span = text[ent["start"] : ent["end"]]
        out.append(f'[{span}]{{"entity": "{ent["entity"]}"}}' if dict_style else f"[{span}]({ent['entity']})")
        pos = ent["end"]
    out.append(text[pos:])
    return "".join(out)


def to_rasa_yaml(rows: list[dict[str, Any]], dict_style: bool) -> str:
    lines = ['version: "3.1"', "nlu:"]
    for intent in INTENTS:
        mine = [r for r in rows if r["intent"] == intent]
        if mine:
            lines += [f"- intent: {intent}", "  examples: |"]
            lines += [f"    - {annotate(r, dict_style)}" for r in mine]
    lines += ["- synonym: paris", "  examples: |", "    - Paris"]
    return "\n".join(lines) + "\n"


def content(ds: Dataset, with_meta: bool) -> Counter[str]:
    out: Counter[str] = Counter()
    for e in ds:
        row = e.content()
        if not with_meta:
            row.pop("locale", None)
            row.pop("score", None)
        out[json.dumps(row, sort_keys=True)] += 1
    return out


def expected(rows: list[dict[str, Any]], with_meta: bool) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in rows:
        row = {"text": r["text"], "intent": r["intent"], "entities": r["entities"]}
        if with_meta:
            row.update({k: r[k] for k in ("locale", "score") if k in r})
            if "score" in row:
                row["score"] = float(row["score"])
        out[json.dumps(row, sort_keys=True)] += 1
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props")


FORMATS = ["jsonl", "csv", "yml"]


def render(fmt: str, rows: list[dict[str, Any]], dict_style: bool) -> str:
    if fmt == "jsonl":
        return to_jsonl(rows)
    if fmt == "csv":
        return to_csv(rows)
    return to_rasa_yaml(rows, dict_style)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(FORMATS),
    rows=st.lists(examples(), min_size=1, max_size=8),
    dict_style=st.booleans(),
)
@pytest.mark.slow
def test_valid_files_round_trip(
    workdir: Path, fmt: str, rows: list[dict[str, Any]], dict_style: bool
) -> None:
    path = workdir / f"valid.{fmt}"
    path.write_text(render(fmt, rows, dict_style), encoding="utf-8")
    ds = load_file(path)
    assert content(ds, with_meta=fmt != "yml") == expected(rows, with_meta=fmt != "yml")
    lines = path.read_text(encoding="utf-8").split("\n")
    for e in ds:
        assert e.origin is not None and e.origin.path == str(path)
        assert e.origin.line is not None and 1 <= e.origin.line <= len(lines)
        if fmt != "csv":  # CSV quoting changes the raw text; JSONL and YAML keep the text on its own line
            assert e.text.split(" ")[0].strip("'\"")[:1] in lines[e.origin.line - 1]
    report = validate(ds, ds)
    assert report.n_examples == len(ds)


damage = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "replace", "insert_line", "delete"]),
        st.integers(min_value=0, max_value=99),  # where, in percent of the file
        st.binary(min_size=1, max_size=12)
        | st.sampled_from(
            [
                b"[",
                b"]",
                b"{",
                b'"',
                b":",
                b"- ",
                b"\t",
                b"\x00",
                b"\xff",
                b"\xe2\x82",
                b"\r",
                b"\n",
                b",",
                b"*a",
            ]
        ),
    ),
    min_size=1,
    max_size=3,
)


def apply(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    for kind, where, payload in edits:
        pos = where * len(data) // 100
        if kind == "truncate":
            data = data[:pos]
        elif kind == "replace":
            data = data[:pos] + payload + data[pos + len(payload) :]
        elif kind == "delete":
            data = data[:pos] + data[pos + len(payload) :]
        else:  # a garbage line at a line boundary
            start = data.rfind(b"\n", 0, pos) + 1
            data = data[:start] + payload + b"\n" + data[start:]
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(FORMATS),
    rows=st.lists(examples(), min_size=1, max_size=6),
    dict_style=st.booleans(),
    edits=damage,
)
@pytest.mark.slow
def test_damaged_files_give_a_dataset_or_a_located_data_error(
    workdir: Path,
    fmt: str,
    rows: list[dict[str, Any]],
    dict_style: bool,
    edits: list[tuple[str, int, bytes]],
) -> None:
    data = apply(render(fmt, rows, dict_style).encode("utf-8"), edits)
    path = workdir / f"damaged.{fmt}"
    path.write_bytes(data)
    n_lines = len(data.decode("utf-8", "replace").splitlines()) + 1  # \r, \u2028... count in YAML and CSV
    try:
        ds = load_file(path)
    except DataError as err:
        assert err.path == str(path)
        if err.line is None:
            assert any(reason in err.message for reason in NO_LINE_REASONS), err.message
        else:
            assert 1 <= err.line <= n_lines, (err.line, n_lines, str(err))
        assert "expected" in err.message
        return
    for e in ds:
        assert e.origin is not None and e.origin.path == str(path)
        assert e.origin.line is not None and 1 <= e.origin.line <= n_lines
    report = validate(ds, ds)  # never raises, whatever parsed
    report.to_markdown()
    ds.sha256()  # every loaded text encodes: hashing never fails downstream
