"""Issue 11, item 2: every run writes an audit line, killed ones included.

A retrain killed before its own line (here: SIGKILL as it starts training, the test-only hook
``NLUFLOW_TEST_KILL_AT=train`` in ``tasks/common.py``) cannot write one. The next retrain of the project finds
it on the Prefect API (Crashed, or RUNNING with a stale heartbeat) and writes one ``crashed`` line for it,
once; a run that is still alive (fresh heartbeat) gets none.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.states import Cancelled, Crashed, Failed, Running
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import RetrainParams, retrain
from nluflow.audit import RUN_DECISIONS
from nluflow.recovery import ZOMBIE_AFTER_SECONDS
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from tasks.crashed_runs import HEARTBEAT_EVENT

EVENTS_VISIBLE_WITHIN_SECONDS = 60.0


# The fixtures of tests/flows/conftest.py: run a retrain that SIGKILLs itself after a step; free its slot.
KillRun = Callable[[str, RetrainParams], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crashed-home")


def _params(home: Path, demo_data: Path, project: str, files: list[str]) -> RetrainParams:
    return RetrainParams(
        project=project,
        data=[str(demo_data / f) for f in files],
        test=[str(demo_data / "test.jsonl")],
        store=str(home / "store"),
        workspace=str(home / "work"),
    )


def _runs_named(name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def _crashed_lines(log: AuditLog) -> list[dict[str, object]]:
    return [line for line in log.records() if line["decision"] == "crashed"]


@pytest.mark.slow
@pytest.mark.parametrize("step", ["train", "store"])
def test_a_run_killed_before_its_line_gets_one_crashed_line_from_the_next_run(
    step: str,
    home: Path,
    demo_data: Path,
    run_killed_at: KillRun,
    free_promotion_slot: Callable[[str], None],
) -> None:
    project = f"killed-at-{step}"
    store = ModelStore.local(home / "store", create=True)
    log = AuditLog(home / "store" / project / "audit.jsonl")
    run_killed_at(step, _params(home, demo_data, project, ["batch-1.jsonl"]))

    assert log.records() == []  # no hook ran: the killed run left no line
    [run] = _runs_named(f"retrain-{project}")
    left = [m.model_id for m in store.list_models(project) if m.run_id == str(run.id)]
    assert len(left) == (1 if step == "store" else 0) and store.active(project) is None
    if step == "store":
        free_promotion_slot(project)  # the killed run held it (test_crash_points.py says why)
    assert run.state is not None and run.state.is_running()  # Prefect cannot know the process is gone
    # In production the zombie automation (automations/detect-zombie-flows.yaml, `nluflow automations apply`)
    # sets Crashed once the run's heartbeats stop for 90 s; the test sets it the same way instead of waiting.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            run.id, Crashed(message="Flow run marked as crashed: it sent no heartbeat for 90 s"), force=True
        )

    second = retrain(_params(home, demo_data, project, ["batch-1.jsonl", "batch-2.jsonl"]))

    lines = log.records()
    [line] = _crashed_lines(log)
    assert line["flow_run_id"] == line["run_id"] == str(run.id)
    assert line["seq"] == 1  # written by the next run before its own lines
    assert line["state"] == "CRASHED" and line["left_behind"] == left and line["promoted"] is False
    reason = str(line["reasons"][0])  # type: ignore[index]
    assert "killed before it could write its own line" in reason and "ended Crashed" in reason
    assert f"found by run {second.flow_run_id}" in reason
    if left:  # stored, never activated: named so a person can still promote it
        assert f"it left candidate {left[0]} stored, not active" in reason
        active = store.active(project)
        assert active is not None and active.model_id == second.candidate_id != left[0]
    else:
        assert "it left nothing in the store" in reason
    assert [x["decision"] for x in lines if x["flow_run_id"] == second.flow_run_id] == ["promote"]

    third = retrain(_params(home, demo_data, project, ["batch-1.jsonl", "batch-2.jsonl"]))

    assert third.flow_run_id != second.flow_run_id
    assert _crashed_lines(log) == [line]  # never twice
    out = CliRunner().invoke(app, ["audit", "verify", "--project", project, "--store", str(home / "store")])
    assert out.exit_code == 0, out.output
    assert "crashed" in out.output


def _running_run_with_heartbeat(params: RetrainParams, beat_at: datetime) -> str:
    """A flow run of the retrain flow for ``params`` that says RUNNING and sent heartbeats 30 s apart, the
    last at ``beat_at`` (what a live run looks like, or one killed where no zombie automation runs)."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            retrain,
            parameters={"params": params.model_dump(mode="json")},
            name=f"retrain-{params.project}",
            state=Running(),
        )
        beats = [
            Event(
                occurred=beat_at - timedelta(seconds=ago),
                event=HEARTBEAT_EVENT,
                resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                id=uuid4(),
            ).model_dump(mode="json")
            for ago in (30, 0)
        ]
        client.request("POST", "/events", json=beats)  # type: ignore[arg-type]
    return str(run.id)


def _wait_for_heartbeats(run_ids: list[str]) -> None:
    """Events are stored by a server service, a moment after they are posted."""
    deadline = time.monotonic() + EVENTS_VISIBLE_WITHIN_SECONDS
    wanted = [f"prefect.flow-run.{run_id}" for run_id in run_ids]
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(
                    event=EventNameFilter(name=[HEARTBEAT_EVENT]), resource=EventResourceFilter(id=wanted)
                ),
                limit=2 * len(wanted),
            )
            if len(page.events) == 2 * len(wanted):
                return
            assert time.monotonic() < deadline, f"heartbeats not stored: {page.events}"
            time.sleep(0.5)


@pytest.mark.slow
def test_a_live_run_gets_no_line_and_a_silent_running_one_gets_one(
    home: Path, demo_data: Path, prefect_api: str
) -> None:
    project = "live-and-silent"
    log = AuditLog(home / "store" / project / "audit.jsonl")
    params = _params(home, demo_data, project, ["batch-1.jsonl"])
    now = datetime.now(UTC)
    alive = _running_run_with_heartbeat(params, now)
    silent = _running_run_with_heartbeat(params, now - timedelta(seconds=ZOMBIE_AFTER_SECONDS + 240))
    # Same project, another store: not this log's run.
    elsewhere = params.model_copy(update={"store": str(home / "other-store")})
    foreign = _running_run_with_heartbeat(elsewhere, now - timedelta(seconds=ZOMBIE_AFTER_SECONDS + 240))
    _wait_for_heartbeats([alive, silent, foreign])
    with get_client(sync_client=True) as client:  # failed just now: its failure hook may still write its line
        failing = client.create_flow_run(
            retrain,
            parameters={"params": params.model_dump(mode="json")},
            name=f"retrain-{project}",
            state=Failed(message="Flow run encountered an exception: ValueError: boom"),
        )

    nxt = retrain(params)

    [line] = _crashed_lines(log)
    assert line["flow_run_id"] == silent and line["state"] == "RUNNING"
    assert "sent no heartbeat since" in str(line["reasons"][0])  # type: ignore[index]
    run_lines = [(x["decision"], x["flow_run_id"]) for x in log.records() if x["decision"] in RUN_DECISIONS]
    assert run_lines == [("crashed", silent), ("promote", nxt.flow_run_id)]
    for other in (alive, foreign, str(failing.id)):
        assert other not in log.path.read_text()
    with get_client(sync_client=True) as client:  # the made-up runs end, so no later test lists them
        for run_id in (alive, silent, foreign):  # (the failed one is over already)
            client.set_flow_run_state(UUID(run_id), Cancelled(message="test over"), force=True)


def test_the_cli_recovery_points_write_the_crashed_line_of_a_run_prefect_knows(
    home: Path, demo_data: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = "cli-finds-crashed"
    root = home / "store"
    ModelStore.local(root, create=True)
    log = AuditLog(root / project / "audit.jsonl")
    log.append({"decision": "reject", "flow_run_id": "an-earlier-run", "reasons": ["before"]})
    params = _params(home, demo_data, project, ["batch-1.jsonl"])
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            retrain,
            parameters={"params": params.model_dump(mode="json")},
            name=f"retrain-{project}",
            state=Crashed(message="Flow run marked as crashed: it sent no heartbeat for 90 s"),
        )
    # The CLI asks a configured server only (the harness sets the setting, not the variable).
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)

    out = CliRunner().invoke(app, ["testset", "reset", "--project", project, "--store", str(root)])

    assert out.exit_code == 0, out.output
    [line] = _crashed_lines(log)
    assert line["flow_run_id"] == str(run.id) and line["actor"] == "cli" and line["seq"] == 2
    assert "audit line 2 (crashed)" in " ".join(out.output.split())
    again = CliRunner().invoke(app, ["testset", "reset", "--project", project, "--store", str(root)])
    assert again.exit_code == 0 and _crashed_lines(log) == [line]
    # A server that does not answer: said, and the command still does its work.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    gone = CliRunner().invoke(app, ["testset", "reset", "--project", project, "--store", str(root)])
    assert gone.exit_code == 0, gone.output
    assert "could not ask the Prefect API" in " ".join(gone.output.split())
