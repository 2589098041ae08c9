"""Converting a Label Studio 1.23.2 JSON export: which annotation becomes the example, and what is counted."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nluflow.data.formats.label_studio import choose_annotation
from nluflow.data.loaders import load_paths
from nluflow.errors import DataError
from nluflow.sources.labelstudio import export_counts

EXPORT = Path(__file__).resolve().parents[2] / "fixtures" / "label-studio" / "export.json"


@pytest.fixture
def tasks() -> list[dict[str, Any]]:
    return json.loads(EXPORT.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def second(task: dict[str, Any], *, intent: str, aid: int, updated: str, **flags: Any) -> dict[str, Any]:
    """Another annotation of ``task`` (a copy of its first one) with another intent."""
    other: dict[str, Any] = copy.deepcopy(task["annotations"][0])
    other.update(id=aid, updated_at=updated, **flags)
    other["result"][0]["value"]["choices"] = [intent]
    return other


def write(tmp_path: Path, tasks: list[dict[str, Any]]) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def test_the_captured_export_gives_five_examples_with_code_point_spans(tasks: list[dict[str, Any]]) -> None:
    data = load_paths([EXPORT])

    assert [(e.text, e.intent) for e in data][:2] == [
        ("book a flight to Paris tomorrow", "book_flight"),
        ("what's the weather in Berlin on Friday", "weather"),
    ]
    rain = data.examples[4]
    assert [(s.start, s.end, s.entity, rain.text[s.start : s.end]) for s in rain.entities] == [
        (16, 25, "city", "São Paulo"),
        (28, 37, "date", "next week"),
    ]
    assert data.skipped == {}
    assert +export_counts(tasks) == {"tasks": 5, "annotations": 5, "used_annotations": 5}


def test_cancelled_annotations_and_unannotated_tasks_are_counted_not_trained_on(
    tmp_path: Path, tasks: list[dict[str, Any]]
) -> None:
    tasks[0]["annotations"][0]["was_cancelled"] = True  # a skip: the only annotation of task 1
    tasks[1]["annotations"] = []  # task 2 never annotated
    tasks[2]["annotations"].append(second(tasks[2], intent="greet", aid=9, updated="2026-11-23T00:00:00Z"))
    tasks[2]["annotations"][1]["was_cancelled"] = True  # a later skip does not beat a real annotation

    data = load_paths([write(tmp_path, tasks)])

    assert [e.text for e in data] == [t["data"]["text"] for t in tasks[2:]]
    assert data.examples[0].intent == "book_flight"
    assert data.skipped == {"cancelled_annotations": 2, "cancelled_only_tasks": 1, "unannotated_tasks": 1}
    counts = export_counts(tasks)
    assert (counts["tasks"], counts["annotations"], counts["used_annotations"]) == (5, 5, 3)
    assert counts["disagreements"] == 0


def test_the_ground_truth_annotation_wins_over_a_later_one(
    tmp_path: Path, tasks: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    task = tasks[1]  # weather, annotation 2
    task["annotations"].append(second(task, intent="greet", aid=8, updated="2030-01-01T00:00:00Z"))
    task["annotations"][0]["ground_truth"] = True

    with caplog.at_level(logging.WARNING, logger="nluflow.data.formats.label_studio"):
        data = load_paths([write(tmp_path, tasks)])

    assert data.examples[1].intent == "weather"
    assert data.skipped == {"annotation_disagreements": 1, "superseded_annotations": 1}
    assert "Label Studio task 2 disagree; used annotation 2 (the ground-truth one)" in caplog.text
    assert f"{tmp_path / 'export.json'}:" in caplog.text  # names the file and the task's line


def test_without_ground_truth_the_latest_annotation_wins(tasks: list[dict[str, Any]]) -> None:
    task = tasks[1]
    newer = second(task, intent="greet", aid=8, updated="2030-01-01T00:00:00Z")
    older = second(task, intent="book_flight", aid=9, updated="2020-01-01T00:00:00Z")
    task["annotations"] += [newer, older]

    chosen, counts, disagree = choose_annotation(task["annotations"])

    assert chosen is not None and chosen["id"] == 8
    assert counts["superseded_annotations"] == 2
    assert disagree


def test_equal_timestamps_fall_back_to_the_higher_id(tasks: list[dict[str, Any]]) -> None:
    task = tasks[0]
    same = task["annotations"][0]["updated_at"]
    task["annotations"].append(second(task, intent="greet", aid=7, updated=same))

    chosen, _, _ = choose_annotation(task["annotations"])

    assert chosen is not None and chosen["id"] == 7


def test_agreeing_annotations_are_no_disagreement(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    task = tasks[0]
    task["annotations"].append(second(task, intent="book_flight", aid=7, updated="2030-01-01T00:00:00Z"))

    data = load_paths([write(tmp_path, tasks)])

    assert data.skipped == {"superseded_annotations": 1}
    assert export_counts(tasks)["disagreements"] == 0


def test_a_disagreement_on_entity_spans_alone_counts(tasks: list[dict[str, Any]]) -> None:
    task = tasks[0]
    other = second(task, intent="book_flight", aid=7, updated="2030-01-01T00:00:00Z")
    other["result"] = other["result"][:2]  # the 'tomorrow' date span missing
    task["annotations"].append(other)

    assert export_counts(tasks)["disagreements"] == 1


def test_the_cli_passes_source_references_through_and_preflights_paths_only(tmp_path: Path) -> None:
    from flows.cli import RunInputs, _params, _preflight
    from flows.retrain import RetrainParams

    ref = Path("nluflow-label-studio-source/bookings")
    inputs = RunInputs(
        data=[ref, EXPORT], test=None, project="bookings", store=tmp_path / "store", must_pass=None
    )
    params = _params(RetrainParams, inputs, None, {})

    assert params.data == ["nluflow-label-studio-source/bookings", str(EXPORT.resolve())]
    _preflight([ref], None, None)  # nothing to read before the run: the run pulls the source
    (tmp_path / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        _preflight([ref, tmp_path / "bad.jsonl"], None, None)


@pytest.mark.parametrize(
    ("item", "is_ref"),
    [
        ("nluflow-label-studio-source/bookings", True),
        ("nluflow-folder-source/inbox", True),
        ("nluflow-rasa-backend/prod", False),  # a block, but not a data source
        ("./nluflow-folder-source/inbox", False),
        ("nluflow-folder-source/inbox/batch.jsonl", False),  # a file below a folder of that name
        ("nluflow-folder-source/", False),
        ("data/nlu.yml", False),
    ],
)
def test_source_references_are_recognised_by_their_slug(item: str, is_ref: bool) -> None:
    from nluflow.sources import is_source_ref

    assert is_source_ref(item) is is_ref
