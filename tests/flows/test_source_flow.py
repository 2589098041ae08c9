"""Retrains whose data is a LabelStudioSource, against the Label Studio emulator, under the session harness.

One emulator per module, and one project history made once by the ``history`` fixture: the first run trains
on the exported annotations, more annotations make the next run train again on a new dataset, an unchanged
export is served from the cache, deletions leave the next dataset, and webhooks through the relay start a run.
The fixture records each run's result and the audit log around it; the tests only read that record, so each
one runs alone or in any order.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from blocks.sources import FolderSource, LabelStudioSource
from flows.retrain import RetrainParams, RetrainResult, retrain
from nluflow.errors import SourceError
from nluflow.store.audit_log import AuditLog
from nluflow.testing.emulators import LabelStudioEmulator
from nluflow.testing.emulators._serving import ServedApp


def task_states(flow_run_id: str) -> dict[str, list[str]]:
    """Task run state names by task name, read once every task run is terminal (states arrive async)."""

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )

    deadline = time.monotonic() + 30
    while True:
        runs = asyncio.run(read())
        if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name if run.state else "?")
    return states


PROJECT = "ls-flow"
BLOCK = "ls-flow-source"
REF = f"nluflow-label-studio-source/{BLOCK}"


def _examples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _annotate(emulator: LabelStudioEmulator, examples: list[dict[str, Any]]) -> None:
    for example in examples:
        task = emulator.add_task(example["text"])
        spans = [(e["start"], e["end"], e["entity"]) for e in example["entities"]]
        emulator.annotate(task, example["intent"], spans)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("source-home")


@pytest.fixture(scope="module")
def emulator(demo_data: Path) -> LabelStudioEmulator:
    emu = LabelStudioEmulator(legacy_enabled=False)  # as in a new Label Studio 1.23 organisation: PAT only
    batch = _examples(demo_data / "batch-1.jsonl")
    _annotate(emu, batch)
    emu.annotate(emu.add_task("skip me, I am noise"), None, cancelled=True)
    emu.add_task("nobody annotated this yet")
    return emu


@pytest.fixture(scope="module")
def served(emulator: LabelStudioEmulator) -> Iterator[ServedApp]:
    with emulator.serve() as app:
        LabelStudioSource(
            url=app.url, project_id=1, token=emulator.personal_access_token, token_kind="pat"
        ).save(BLOCK, overwrite=True)
        yield app


def params(home: Path, demo_data: Path, data: list[str], project: str = PROJECT) -> RetrainParams:
    return RetrainParams(
        project=project,
        data=data,
        test=[str(demo_data / "test.jsonl")],
        store=str(home / "store"),
        workspace=str(home / "work"),
    )


def audit(home: Path, project: str = PROJECT) -> list[dict[str, Any]]:
    return AuditLog(home / "store" / project / "audit.jsonl").records()


def snapshot_texts(home: Path, sha: str) -> set[str]:
    path = home / "work" / "datasets" / f"{sha}.jsonl"
    return {e["text"] for e in _examples(path)}


@dataclass
class History:
    """Each step's result, the audit log before and after it, and what the step changed in Label Studio."""

    home: Path
    results: dict[str, RetrainResult] = field(default_factory=dict)
    before: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    after: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    new: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # annotated before the step
    exports: dict[str, tuple[int, int]] = field(default_factory=dict)  # export count before, after
    gone: tuple[dict[str, Any], dict[str, Any]] | None = None  # the deleted annotation's task, deleted task
    events: list[dict[str, Any]] = field(default_factory=list)  # what the relay emitted


@pytest.fixture(scope="module")
def history(home: Path, demo_data: Path, served: ServedApp, emulator: LabelStudioEmulator) -> History:
    """The project's five runs, in order, on the module's emulator (the steps' tests only read the record)."""
    from nluflow.apps.relay import LabelStudioRoute, RelayConfig, create_app
    from nluflow.testing.emulators._serving import serve

    made = History(home)

    def run(step: str, data: list[str] | None = None, project: str = PROJECT) -> None:
        made.before[step] = audit(home) if (home / "store" / PROJECT / "audit.jsonl").exists() else []
        exports = emulator.exports
        made.results[step] = retrain(params(home, demo_data, data or [REF], project=project))
        made.exports[step] = (exports, emulator.exports)
        made.after[step] = audit(home)

    run("first")
    made.new["more"] = _examples(demo_data / "batch-2.jsonl")[:70]
    _annotate(emulator, made.new["more"])
    run("more")
    run("unchanged")
    tasks = emulator.projects[1]
    made.gone = (tasks[0], tasks[1])  # ANNOTATIONS_DELETED, TASKS_DELETED in Label Studio
    emulator.delete_annotation(tasks[0]["annotations"][0]["id"])
    emulator.delete_task(tasks[1]["id"])
    run("deleted")
    secret = "relay-secret-for-flow-tests-1234"
    config = RelayConfig(secret=secret, label_studio={"1": LabelStudioRoute(project=PROJECT, source=BLOCK)})
    made.new["webhooks"] = _examples(demo_data / "batch-2.jsonl")[200:209]  # 9 new annotations
    with serve(create_app(config, made.events.append)) as relay:
        emulator.add_webhook(f"{relay}/hooks/label-studio", {"X-Relay-Secret": secret})
        _annotate(emulator, made.new["webhooks"])
    emulator.webhooks.clear()
    payload = made.events[0]["payload"] if made.events else {}  # what prefect.yaml's trigger templates
    run("webhooks", [payload.get("data", REF)], payload.get("project", PROJECT))
    return made


def test_a_label_studio_source_trains_on_the_exported_annotations(
    history: History, demo_data: Path, served: ServedApp, emulator: LabelStudioEmulator
) -> None:
    home, result = history.home, history.results["first"]
    assert history.before["first"] == []

    assert isinstance(result, RetrainResult) and result.promoted
    [source] = result.data_info["data_sources"]
    assert source["kind"] == "label-studio" and source["reference"] == REF
    assert source["description"] == f"Label Studio project 1 at {served.url}"
    assert (source["tasks"], source["annotations"], source["used_annotations"]) == (142, 141, 140)
    assert (source["cancelled"], source["skipped_tasks"], source["unannotated_tasks"]) == (1, 1, 1)
    assert result.data_info["train_examples"] == 140
    assert emulator.refreshes >= 1  # the PAT was exchanged for an access token
    intent, line = history.after["first"]  # a promotion: its intent line, then the run's line
    assert intent["decision"] == "promote-intent" and line["intent_seq"] == intent["seq"]
    assert line["data_sources"][0]["tasks"] == 142
    assert snapshot_texts(home, line["dataset_sha256"]) == {
        e["text"] for e in _examples(demo_data / "batch-1.jsonl")
    }
    report = Path(result.report_path).read_text(encoding="utf-8")
    assert f"data source: Label Studio project 1 at {served.url}, pulled " in report
    assert "142 tasks, 141 annotations (140 used, 1 cancelled, 0 tasks with disagreements)" in report
    assert re.search(r"\| loader: cancelled annotations \| 1 \|", report)
    assert emulator.personal_access_token not in report + json.dumps(line)
    states = task_states(str(result.flow_run_id))
    assert states["pull-sources"] == ["Completed"], states
    origins = json.loads((home / "work" / "datasets" / f"{line['dataset_sha256']}.origins.json").read_text())
    assert all(o[0].startswith(f"{served.url}/projects/1/data?task=") and o[1] is None for o in origins)


def test_new_annotations_give_a_new_dataset_and_train_again(history: History) -> None:
    home, before, new = history.home, history.before["more"][-1], history.new["more"]
    result = history.results["more"]

    line = history.after["more"][-1]
    assert line["dataset_sha256"] != before["dataset_sha256"]
    assert result.candidate_id != before["model_id"]
    assert {e["text"] for e in new} <= snapshot_texts(home, line["dataset_sha256"])
    assert result.data_info["data_sources"][0]["used_annotations"] == 210
    states = task_states(str(result.flow_run_id))
    assert states["load-dataset"][0] == "Completed", states  # [1] is the given test set
    assert states["submit-training"] == ["Completed"], states


def test_an_unchanged_export_is_a_cache_hit(history: History) -> None:
    before, result = history.before["unchanged"][-1], history.results["unchanged"]
    exports, exports_after = history.exports["unchanged"]

    assert exports_after == exports + 1  # the source was pulled again, not trusted from the cache
    line = history.after["unchanged"][-1]
    assert line["dataset_sha256"] == before["dataset_sha256"]
    assert result.candidate_id == before["model_id"]
    states = task_states(str(result.flow_run_id))
    assert states["load-dataset"] == ["Cached", "Cached"], states  # the data, and the given test set
    assert states["submit-training"] == ["Cached"], states


def test_deleted_annotations_and_tasks_leave_the_next_dataset(history: History) -> None:
    before, result = history.before["deleted"][-1], history.results["deleted"]
    assert history.gone is not None
    gone_annotation, gone_task = history.gone  # ANNOTATIONS_DELETED, TASKS_DELETED in Label Studio

    line = history.after["deleted"][-1]
    assert line["dataset_sha256"] != before["dataset_sha256"]
    texts = snapshot_texts(history.home, line["dataset_sha256"])
    assert gone_annotation["data"]["text"] not in texts and gone_task["data"]["text"] not in texts
    source = result.data_info["data_sources"][0]
    assert (source["tasks"], source["used_annotations"], source["unannotated_tasks"]) == (211, 208, 2)


def test_webhooks_through_the_relay_start_a_run_that_pulls_the_new_annotations(history: History) -> None:
    """Label Studio → webhook → relay → event → the trigger's parameters → a run that exports the project."""
    events, before, new = history.events, history.before["webhooks"][-1], history.new["webhooks"]
    assert len(events) == 9 and {e["payload"]["data"] for e in events} == {REF}
    payload = events[0]["payload"]  # what prefect.yaml's trigger templates into params
    assert (payload["data"], payload["project"]) == (REF, PROJECT)  # the run the fixture made from it
    result = history.results["webhooks"]

    line = history.after["webhooks"][-1]
    assert line["dataset_sha256"] != before["dataset_sha256"]
    assert {e["text"] for e in new} <= snapshot_texts(history.home, line["dataset_sha256"])
    assert result.data_info["data_sources"][0]["used_annotations"] == 208 + 9


def test_a_refused_token_fails_the_run_naming_the_source_and_trains_nothing(
    home: Path, demo_data: Path, served: ServedApp
) -> None:
    LabelStudioSource(url=served.url, project_id=1, token="not-the-token-123", token_kind="pat").save(
        "ls-flow-bad", overwrite=True
    )

    with pytest.raises(SourceError) as info:
        retrain(params(home, demo_data, ["nluflow-label-studio-source/ls-flow-bad"], project="ls-flow-bad"))

    message = str(info.value)
    assert f"Label Studio project 1 at {served.url}" in message
    assert "nothing was pulled and nothing was trained" in message
    assert "not-the-token-123" not in message
    assert not (home / "store" / "ls-flow-bad" / "models").exists()


def test_a_folder_source_reads_every_batch_and_picks_up_new_ones(
    home: Path, demo_data: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "batch-1.jsonl").write_bytes((demo_data / "batch-1.jsonl").read_bytes())
    FolderSource(path=str(inbox)).save("ls-flow-inbox", overwrite=True)
    ref = "nluflow-folder-source/ls-flow-inbox"

    first = retrain(params(home, demo_data, [ref], project="ls-flow-folder"))
    (inbox / "later").mkdir()
    (inbox / "later" / "batch-2.jsonl").write_bytes((demo_data / "batch-2.jsonl").read_bytes())
    second = retrain(params(home, demo_data, [ref], project="ls-flow-folder"))

    assert first.data_info["data_sources"][0]["files"] == 1
    assert second.data_info["data_sources"][0]["files"] == 2
    assert first.data_info["train_examples"] == 140 and second.data_info["train_examples"] == 840
    assert second.candidate_id != first.candidate_id


def test_the_label_studio_block_example_runs(
    served: ServedApp,
    emulator: LabelStudioEmulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    LabelStudioSource(
        url=served.url, project_id=1, token=emulator.personal_access_token, token_kind="pat"
    ).save("block-name", overwrite=True)
    monkeypatch.chdir(tmp_path)

    text = LabelStudioSource.get_code_example() or ""
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, text
    exec(match.group(1).replace('"BLOCK_NAME"', '"block-name"'), {})

    out = capsys.readouterr().out
    assert out.startswith(f"Label Studio project 1 at {served.url}, pulled ")
    assert list((tmp_path / "exports" / "label-studio").rglob("export-*.json"))
