"""The retrain flow under prefect_test_harness: promote, reject, cached rerun, failed promotion, artifacts.

A bot's history (first model, a better one, an unchanged rerun, a mislabelled batch) is made once per module
by the ``history`` fixture, which records the store and the audit log after each run; the tests only read
that record, so each one runs alone or in any order. Every other test has a project (or a home) of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort

from flows.retrain import RetrainParams, RetrainResult, retrain
from nluflow.errors import AuditError, DataError, StoreError
from nluflow.evaluation.gates import GatePolicy
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.store.testsets import TestSetStore

PROJECT = "flowtest"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("retrain-home")


def params(home: Path, demo_data: Path, files: list[str], project: str = PROJECT, **kw: Any) -> RetrainParams:
    return RetrainParams(
        project=project,
        data=[str(demo_data / f) for f in files],
        test=[str(demo_data / "test.jsonl")],
        must_pass=str(demo_data / "must-pass.jsonl"),
        store=str(home / "store"),
        workspace=str(home / "work"),
        **kw,
    )


def store(home: Path) -> ModelStore:
    return ModelStore.local(home / "store")


def audit_lines(home: Path, project: str = PROJECT) -> list[dict[str, Any]]:
    return AuditLog(home / "store" / project / "audit.jsonl").records()


# The history's runs: each step's data files, in the order a bot's annotators sent them.
HISTORY = {
    "first": ["batch-1.jsonl"],
    "second": ["batch-1.jsonl", "batch-2.jsonl"],
    "rerun": ["batch-1.jsonl", "batch-2.jsonl"],
    "mislabelled": ["batch-1.jsonl", "batch-2.jsonl", "batch-3-mislabelled.jsonl"],
}


@dataclass
class Snapshot:
    """The project's store and audit log at one point of the history."""

    active: Any  # the ActivePointer, or None before the first promotion
    models: list[str]
    rejected: list[str]
    audit: list[dict[str, Any]]


@dataclass
class History:
    """Each run's result, and the snapshot before it (``before[step]``) and after it (``after[step]``)."""

    home: Path
    results: dict[str, RetrainResult] = field(default_factory=dict)
    before: dict[str, Snapshot] = field(default_factory=dict)
    after: dict[str, Snapshot] = field(default_factory=dict)


def snapshot(home: Path) -> Snapshot:
    if not (home / "store").exists():  # before the first run: the run creates the store
        return Snapshot(active=None, models=[], rejected=[], audit=[])
    models = store(home)
    return Snapshot(
        active=models.active(PROJECT),
        models=[m.model_id for m in models.list_models(PROJECT)],
        rejected=[e.model_id for e in models.rejected(PROJECT)],
        audit=audit_lines(home) if (home / "store" / PROJECT / "audit.jsonl").exists() else [],
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> History:
    """The four runs of the history, in order, in a home of their own (no other test writes there)."""
    home = tmp_path_factory.mktemp("retrain-history")
    made = History(home)
    for step, files in HISTORY.items():
        made.before[step] = snapshot(home)
        made.results[step] = retrain(params(home, demo_data, files))
        made.after[step] = snapshot(home)
    return made


async def _read_task_runs(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )


async def _read_flow_run(flow_run_id: str) -> Any:
    async with get_client() as client:
        return await client.read_flow_run(UUID(flow_run_id))


def flow_run_of(flow_run_id: str) -> Any:
    return asyncio.run(_read_flow_run(flow_run_id))


def assert_run_says(flow_run_id: str, outcome: str, message: str, candidate_id: str | None) -> Any:
    """What the runs list shows of a run: its name, tags and state message carry the outcome."""
    run = flow_run_of(flow_run_id)
    assert run.state.message == message, run.state
    assert {"nluflow", f"project:{run.parameters['params']['project']}", f"outcome:{outcome}"} <= set(
        run.tags
    )
    assert [t for t in run.tags if t.startswith("outcome:")] == [f"outcome:{outcome}"], run.tags
    project = run.parameters["params"]["project"]
    assert run.name == f"retrain-{project}-{outcome}" + (f"-{candidate_id}" if candidate_id else ""), run.name
    return run


async def _read_artifacts(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            # No task-run filter: an empty one still joins task runs and hides the flow run's own artifacts.
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])),
            sort=ArtifactSort.CREATED_DESC,
            limit=200,
        )


# Task-run states reach the API asynchronously (Prefect's events pipeline): right after a run returns, a
# task run may still read Pending. Wait until every one is final; never accept a non-final state.
STATES_TIMEOUT_SECONDS = 60.0


def task_states(flow_run_id: str) -> dict[str, list[str]]:
    deadline = time.monotonic() + STATES_TIMEOUT_SECONDS
    while True:
        runs = asyncio.run(_read_task_runs(flow_run_id))
        if all(run.state is not None and run.state.is_final() for run in runs):
            break
        if time.monotonic() > deadline:
            pending = sorted(f"{r.name}: {r.state.name if r.state else None}" for r in runs)
            raise AssertionError(f"task runs not final after {STATES_TIMEOUT_SECONDS:.0f} s: {pending}")
        time.sleep(0.5)
    states: dict[str, list[str]] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        states.setdefault(name, []).append(run.state.name if run.state else "?")
    return states


def artifacts_of(flow_run_id: str) -> dict[str, Any]:
    found = asyncio.run(_read_artifacts(flow_run_id))
    return {a.key: a for a in found if a.key}


def test_first_run_promotes_the_first_model(history: History) -> None:
    home, result, after = history.home, history.results["first"], history.after["first"]
    assert history.before["first"].active is None and history.before["first"].audit == []
    assert isinstance(result, RetrainResult)
    assert result.promoted and result.decision.first_model
    assert result.outcome == "promoted"
    assert result.message == f"promoted {result.candidate_id}: {result.decision.reasons[0]}"
    assert result.message.startswith(f"promoted {result.candidate_id}: first model of the project; macro F1 ")
    run = assert_run_says(str(result.flow_run_id), "promoted", result.message, result.candidate_id)
    assert run.state.is_completed()
    assert result.previous_active is None and result.active == result.candidate_id
    pointer = after.active
    assert pointer is not None and pointer.model_id == result.candidate_id
    manifest = store(home).verify(PROJECT, result.candidate_id)
    for metric in ("intent_accuracy", "macro_f1", "entity_f1"):
        assert 0.0 < manifest.metrics[metric] <= 1.0
    # Exactly two lines: the intent before the pointer switch, then the run's line after it, completing it.
    intent, line = after.audit
    assert intent["decision"] == "promote-intent" and intent["model_id"] == result.candidate_id
    assert intent["previous_model_id"] is None and intent["run_id"] == result.flow_run_id
    assert intent["flow_run_id"] is None  # the run's own line is the completion line
    assert line["decision"] == "promote" and line["intent_seq"] == intent["seq"] == 1
    assert line["promoted"] is True and line["model_id"] == result.candidate_id
    assert line["manifest_sha256"] == manifest.sha256() and "recovered" not in line


def test_larger_batch_beats_the_active_model_and_is_promoted(history: History) -> None:
    first = history.before["second"].active
    assert first is not None
    result = history.results["second"]
    assert result.previous_active == first.model_id
    assert result.promoted, result.decision.reasons
    assert result.deltas["macro_f1"] > 0
    assert result.outcome == "promoted"
    assert result.message.startswith(f"promoted {result.candidate_id}: beats active by +"), result.message
    assert_run_says(str(result.flow_run_id), "promoted", result.message, result.candidate_id)
    pointer = history.after["second"].active
    assert pointer is not None and pointer.model_id == result.candidate_id
    assert pointer.history[0].model_id == first.model_id
    lines = history.after["second"].audit
    assert [(x["decision"], x.get("intent_seq")) for x in lines] == [
        ("promote-intent", None),
        ("promote", 1),
        ("promote-intent", None),
        ("promote", 3),
    ]
    assert lines[2]["previous_model_id"] == first.model_id == lines[3]["previous_model_id"]


def test_artifacts_are_published_with_stable_keys(history: History) -> None:
    line = history.after["second"].audit[-1]  # the second promotion's line
    found = artifacts_of(line["flow_run_id"])
    for key in (
        f"{PROJECT}-validation",
        f"{PROJECT}-retrain-report",
        f"{PROJECT}-per-intent-metrics",
        f"{PROJECT}-errors",
        f"{PROJECT}-confusion-matrix",
        f"{PROJECT}-pr-curve",
        f"{PROJECT}-intent-f1",
        f"{PROJECT}-confidence-hist",
        f"{PROJECT}-training-progress",
    ):
        assert key in found, sorted(found)
    report = found[f"{PROJECT}-retrain-report"]
    assert report.type == "markdown"
    assert "data:image/png;base64," in str(report.data)
    assert "Gates" in str(report.data)
    # The report is the flow run's own artifact, not one of a task run's; it opens with the outcome.
    assert report.task_run_id is None and str(report.flow_run_id) == line["flow_run_id"]
    message = flow_run_of(line["flow_run_id"]).state.message
    assert report.description == f"{PROJECT}: {message}"
    markdown = str(report.data)
    assert markdown.splitlines()[0] == f"# Retrain of `{PROJECT}`: candidate `{line['model_id']}` promoted"
    assert f"**{message}**" in markdown
    # Pass/fail marks are plain words: no emoji font needed to read them.
    assert "| PASS |" in markdown and not {"\u2705", "\u274c"} & set(markdown)
    others = [a for a in found.values() if a.key != report.key]
    assert all(a.task_run_id is not None for a in others), [(a.key, a.task_run_id) for a in others]
    assert found[f"{PROJECT}-per-intent-metrics"].type == "table"
    assert found[f"{PROJECT}-confusion-matrix"].type == "image"
    assert found[f"{PROJECT}-training-progress"].type == "progress"
    progress = [
        a
        for a in asyncio.run(_read_artifacts(line["flow_run_id"]))
        if a.key == f"{PROJECT}-training-progress"
    ]
    assert len(progress) == 1, [(a.description, a.task_run_id, a.data) for a in progress]  # one per run
    assert progress[0].data == 100.0


def test_unchanged_rerun_is_served_from_cache_and_adds_no_model(history: History) -> None:
    before = history.before["rerun"].models
    active_before = history.before["rerun"].active
    result = history.results["rerun"]
    states = task_states(str(result.flow_run_id))
    assert states["submit-training"] == ["Cached"], sorted(states.items())
    assert states["wait-for-training"] == ["Cached"], states
    assert set(states["evaluate-model"]) == {"Cached"}, states
    assert not result.promoted  # the same model is already active
    assert history.after["rerun"].models == before
    assert history.after["rerun"].active == active_before
    # The run says so: not "promoted, beats active by +0.000", not "rejected, does not beat the active model".
    assert active_before is not None and result.candidate_id == active_before.model_id
    assert result.outcome == "unchanged"
    assert (
        result.message
        == f"unchanged: nothing new to train: candidate {result.candidate_id} is the active model"
    )
    assert_run_says(str(result.flow_run_id), "unchanged", result.message, result.candidate_id)
    line = history.after["rerun"].audit[-1]
    assert line["flow_run_id"] == result.flow_run_id
    assert line["decision"] == "unchanged" and line["promoted"] is False
    assert line["reasons"] == [f"nothing new to train: candidate {result.candidate_id} is the active model"]
    report = artifacts_of(str(result.flow_run_id))[f"{PROJECT}-retrain-report"]
    markdown = str(report.data)
    assert markdown.splitlines()[0].endswith("unchanged"), markdown.splitlines()[0]
    assert "does not beat" not in markdown and "+0.000" not in markdown.split("## Metrics")[0]


def test_mislabelled_batch_is_rejected_and_active_model_stays(history: History) -> None:
    home = history.home
    active_before = history.before["mislabelled"].active
    assert active_before is not None
    result = history.results["mislabelled"]
    assert not result.promoted
    assert result.decision.reasons
    assert history.after["mislabelled"].active == active_before
    # Kept in the store, not active, so a person can still force it (`nluflow models promote`).
    assert store(home).has_model(PROJECT, result.candidate_id)
    assert history.after["mislabelled"].rejected == [result.candidate_id]
    line = history.after["mislabelled"].audit[-1]
    assert line["decision"] == "reject" and line["promoted"] is False
    assert line["manifest_sha256"] == store(home).manifest(PROJECT, result.candidate_id).sha256()
    assert line["reasons"] == result.decision.reasons
    assert result.outcome == "rejected"
    assert result.message == f"rejected {result.candidate_id}: {result.decision.reason()}"
    assert_run_says(str(result.flow_run_id), "rejected", result.message, result.candidate_id)
    assert line["previous_model_id"] == active_before.model_id


def test_failure_during_promotion_rolls_back(
    home: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = "flowtest-rollback"
    first = retrain(params(home, demo_data, ["batch-1.jsonl"], project=project))
    assert first.promoted

    def broken_activate(self: ModelStore, *args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full while writing active.json")

    monkeypatch.setattr(ModelStore, "activate", broken_activate)
    with pytest.raises(OSError, match="disk full"):
        retrain(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"], project=project))
    monkeypatch.undo()
    pointer = store(home).active(project)
    assert pointer is not None and pointer.model_id == first.candidate_id
    assert [m.model_id for m in store(home).list_models(project)] == [first.candidate_id]
    log = AuditLog(home / "store" / project / "audit.jsonl")
    assert log.verify().ok
    # The intent line before the failed switch is closed as abandoned (by the rollback), then the run's line.
    intent_1, promoted, intent, abandoned, failed = log.records()
    assert (intent_1["decision"], promoted["decision"]) == ("promote-intent", "promote")
    assert intent["decision"] == "promote-intent" and intent["previous_model_id"] == first.candidate_id
    assert abandoned["decision"] == "promotion-abandoned" and abandoned["intent_seq"] == intent["seq"]
    assert abandoned["active_model_id"] == first.candidate_id and abandoned["promoted"] is False
    assert failed["decision"] == "failed" and failed["promoted"] is False
    assert failed["error"] == "OSError: disk full while writing active.json"
    run = flow_run_of(failed["flow_run_id"])  # the runs list says it failed, and why
    assert run.state.type.value == "FAILED" and "disk full" in (run.state.message or ""), run.state
    assert [t for t in run.tags if t.startswith("outcome:")] == ["outcome:failed"], run.tags
    assert run.name == f"retrain-{project}-failed", run.name


def test_blocking_validation_stops_before_training(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "one-intent.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"hello number {i}", "intent": "greet"}) + "\n" for i in range(12))
    )
    project = "flowtest-blocked"
    with pytest.raises(DataError, match="intent"):
        retrain(
            RetrainParams(
                project=project, data=[str(data)], store=str(home / "store"), workspace=str(home / "work")
            )
        )
    [line] = audit_lines(home, project)
    assert line["decision"] == "blocked" and line["promoted"] is False
    assert store(home).active(project) is None
    # The split it made is not kept: a bad first batch must not freeze the project's test set.
    assert TestSetStore(store(home).fs, project).record() is None
    # The run fails (the caller gets the DataError) with "blocked" and why as its state message.
    run = flow_run_of(line["flow_run_id"])
    assert run.state.is_failed()
    assert run.state.message.startswith(
        "blocked: data failed validation (1 blocking finding); first: [min_intents]"
    )
    assert_run_says(line["flow_run_id"], "blocked", run.state.message, None)


def test_a_kept_rejected_candidate_that_a_later_run_promotes_leaves_the_rejected_list(
    tmp_path: Path, demo_data: Path
) -> None:
    project = "flowtest-rejected-later"
    first = retrain(params(tmp_path, demo_data, ["batch-1.jsonl"], project=project))
    assert first.promoted, first.decision.reasons
    files = ["batch-1.jsonl", "batch-2.jsonl"]
    unbeatable = GatePolicy(min_delta=1.0)  # must beat the active model by more than 1.0: never
    rejected = retrain(params(tmp_path, demo_data, files, project=project, gates=unbeatable))
    assert not rejected.promoted
    assert [e.model_id for e in store(tmp_path).rejected(project)] == [rejected.candidate_id]
    # The same data and config again, with the default gates: the same model, now promoted by the flow.
    again = retrain(params(tmp_path, demo_data, files, project=project))
    assert again.candidate_id == rejected.candidate_id and again.promoted, again.decision.reasons
    pointer = store(tmp_path).active(project)
    assert pointer is not None and pointer.model_id == again.candidate_id
    assert store(tmp_path).rejected(project) == []  # not listed as rejected, so never pruned as one


def test_audit_chain_of_the_whole_history_verifies(history: History) -> None:
    outcomes = [history.results[step].outcome for step in HISTORY]
    assert outcomes == ["promoted", "promoted", "unchanged", "rejected"]
    log = AuditLog(history.home / "store" / PROJECT / "audit.jsonl")
    result = log.verify()
    assert result.ok and result.lines == 6  # two promotions (intent + completion each), unchanged, reject
    assert [x["decision"] for x in log.records()] == [
        "promote-intent",
        "promote",
        "promote-intent",
        "promote",
        "unchanged",
        "reject",
    ]


def test_a_failed_audit_line_after_the_switch_is_recovered_by_the_failure_hook(
    home: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer switched, then the run's own audit line could not be written (disk full): the run fails,
    and its failure hook closes the intent from the pointer with a recovered ``promote`` line, the run's
    line. It does not claim the run did not promote."""
    project = "flowtest-audit-fails"
    real_append = AuditLog.append

    def append(self: AuditLog, record: dict[str, Any]) -> dict[str, Any]:
        if record.get("decision") == "promote" and not record.get("recovered"):
            raise AuditError(
                f"{self.path}: cannot append to the audit log: [Errno 28] No space left on device"
            )
        return real_append(self, record)

    monkeypatch.setattr(AuditLog, "append", append)
    with pytest.raises(AuditError, match="No space left"):
        retrain(params(home, demo_data, ["batch-1.jsonl"], project=project))
    monkeypatch.undo()
    pointer = store(home).active(project)
    assert pointer is not None
    log = AuditLog(home / "store" / project / "audit.jsonl")
    intent, line = log.records()
    assert intent["decision"] == "promote-intent" and intent["model_id"] == pointer.model_id
    assert line["decision"] == "promote" and line["recovered"] is True and line["promoted"] is True
    assert line["intent_seq"] == intent["seq"] and line["flow_run_id"] == intent["run_id"] == pointer.run_id
    assert "(failed)" in line["reasons"][0] and log.verify().ok
    run = flow_run_of(line["flow_run_id"])
    assert run.state.is_failed()
    assert [t for t in run.tags if t.startswith("outcome:")] == ["outcome:promoted"], run.tags


def test_a_failed_sync_after_the_audit_line_keeps_the_promotion(
    home: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's promote line is written, then copying its report to the store fails: the run fails with
    the error, writes no ``failed`` line over its ``promote`` line, and is labelled promoted."""
    import flows.retrain
    import tasks.publish

    project = "flowtest-sync-fails"

    def broken_sync(*args: Any, **kwargs: Any) -> list[str]:
        raise StoreError("store key 'flowtest-sync-fails/runs' resolves outside the local folder store")

    monkeypatch.setattr(tasks.publish, "sync_folder", broken_sync)
    monkeypatch.setattr(
        flows.retrain, "sync_run_to_store", tasks.publish.sync_run_to_store.with_options(retries=0)
    )
    with pytest.raises(StoreError, match="resolves outside"):
        retrain(params(home, demo_data, ["batch-1.jsonl"], project=project))
    monkeypatch.undo()
    pointer = store(home).active(project)
    assert pointer is not None
    log = AuditLog(home / "store" / project / "audit.jsonl")
    intent, line = log.records()  # no `failed` line: the run did promote
    assert (intent["decision"], line["decision"]) == ("promote-intent", "promote")
    assert line["intent_seq"] == intent["seq"] and "recovered" not in line
    assert line["model_id"] == pointer.model_id and line["flow_run_id"] == pointer.run_id
    run = flow_run_of(line["flow_run_id"])
    assert run.state.is_failed() and "resolves outside" in (run.state.message or "")
    assert [t for t in run.tags if t.startswith("outcome:")] == ["outcome:promoted"], run.tags
    assert run.name == f"retrain-{project}-promoted-{pointer.model_id}", run.name


def test_a_torn_audit_tail_is_moved_aside_and_a_broken_chain_stops_the_run_until_sealed(
    home: Path, demo_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk full cut the last line off: the next run moves it aside (a `repaired` line, a warning in the run's
    log) and promotes. A chain edited by hand stops the next run before it trains, with the command that
    seals it; after `nluflow audit seal` the run promotes again."""
    from typer.testing import CliRunner

    from flows.cli import app

    project = "flowtest-torn"
    first = retrain(params(home, demo_data, ["batch-1.jsonl"], project=project))
    log = AuditLog(home / "store" / project / "audit.jsonl")
    with log.path.open("ab") as fh:
        fh.write(b'{"decision":"promote","model_id":"m-')  # a write cut off by a full disk
    caplog.set_level("WARNING")

    second = retrain(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"], project=project))

    assert second.promoted
    [torn] = list(log.path.parent.glob("audit.jsonl.torn-*"))
    assert torn.read_bytes() == b'{"decision":"promote","model_id":"m-'
    lines = log.records()
    assert [x["decision"] for x in lines] == [
        "promote-intent",
        "promote",
        "repaired",
        "promote-intent",
        "promote",
    ]
    assert lines[2]["torn_file"] == torn.name and log.verify().ok
    assert any("audit log repaired" in r.getMessage() and torn.name in r.getMessage() for r in caplog.records)

    text = log.path.read_text("utf-8")
    log.path.write_text(text.replace(first.candidate_id, "m-000000000000", 1), "utf-8")
    with pytest.raises(AuditError, match=f"nluflow audit seal --project {project} --reason TEXT"):
        retrain(params(home, demo_data, ["batch-1.jsonl"], project=project, keep_rejected=0))
    assert log.path.read_text("utf-8") == text.replace(first.candidate_id, "m-000000000000", 1)
    pointer = store(home).active(project)
    assert pointer is not None and pointer.model_id == second.candidate_id

    cli = ["--project", project, "--store", str(home / "store")]
    out = CliRunner().invoke(app, ["audit", "seal", *cli, "--reason", "line 1 edited in a test"])
    assert out.exit_code == 0, out.output
    third = retrain(params(home, demo_data, ["batch-1.jsonl"], project=project, keep_rejected=0))
    assert not third.promoted  # batch 1 alone does not beat batch 1 + 2: a reject line, after the seal
    decisions = [x["decision"] for x in log.records()]
    assert decisions[-2:] == ["sealed", "reject"], decisions
    result = log.verify()
    assert result.ok and result.sealed and result.sealed[0].startswith("sealed at line 6: lines 1-5")
