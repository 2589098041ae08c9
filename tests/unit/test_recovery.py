"""Promotions that stopped half-way: an intent line without its completion line is closed from the pointer,
never while the promotion is live (its lock is held), and never twice."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nluflow.errors import AuditError
from nluflow.recovery import (
    FAILED_HOOK_GRACE_SECONDS,
    ZOMBIE_AFTER_SECONDS,
    EarlierRun,
    StoredModel,
    crashed_run_lines,
    hold_promotion_lock,
    intent_record,
    pending_intents,
    promotion_lock_path,
    recover_and_describe,
    recover_promotions,
    release_promotion_lock,
    why_gone,
)
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog

PROJECT = "bot"


def _store(tmp_path: Path, *model_ids: str) -> ModelStore:
    store = ModelStore.local(tmp_path / "store", create=True)
    for model_id in model_ids:
        src = tmp_path / "src" / model_id
        src.mkdir(parents=True)
        (src / "model.bin").write_bytes(model_id.encode())
        store.add_model(
            PROJECT,
            model_id,
            src,
            backend="local",
            dataset_sha256="d",
            test_sha256=None,
            config={},
            metrics={},
        )
    return store


def _log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "store" / PROJECT / "audit.jsonl")


def _intent(log: AuditLog, model_id: str, previous: str | None, run_id: str) -> dict[str, Any]:
    return log.append(
        intent_record(project=PROJECT, model_id=model_id, previous_model_id=previous, run_id=run_id)
    )


def test_an_intent_whose_run_switched_the_pointer_is_completed_as_recovered(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-old", "m-new")
    store.activate(PROJECT, "m-old", run_id="run-1")
    log = _log(tmp_path)
    intent = _intent(log, "m-new", "m-old", "run-2")
    store.activate(PROJECT, "m-new", run_id="run-2")  # ... and then the run was killed

    [line] = recover_promotions(log, store, PROJECT, actor="run run-3")

    assert line["decision"] == "promote" and line["recovered"] is True and line["promoted"] is True
    assert line["intent_seq"] == intent["seq"] and line["model_id"] == "m-new"
    assert line["previous_model_id"] == "m-old" and line["flow_run_id"] == "run-2"
    assert line["manifest_sha256"] == store.manifest(PROJECT, "m-new").sha256()
    assert "run run-3" in line["reasons"][0] and "recovered" in line["reasons"][0]
    assert recover_promotions(log, store, PROJECT, actor="again") == []  # closed once, not twice
    assert pending_intents(log.records()) == [] and log.verify().ok


@pytest.mark.parametrize("first", [True, False], ids=["no-active-model", "active-model"])
def test_an_intent_whose_run_stopped_before_the_switch_is_abandoned(tmp_path: Path, first: bool) -> None:
    store = _store(tmp_path, "m-old", "m-new")
    if not first:
        store.activate(PROJECT, "m-old", run_id="run-1")
    log = _log(tmp_path)
    intent = _intent(log, "m-new", None if first else "m-old", "run-2")

    [line] = recover_promotions(log, store, PROJECT, actor="cli")

    assert line["decision"] == "promotion-abandoned" and line["promoted"] is False
    assert line["intent_seq"] == intent["seq"] and line["flow_run_id"] is None
    assert line["active_model_id"] == (None if first else "m-old")
    assert "before it switched the active pointer" in line["reasons"][0]
    pointer = store.active(PROJECT)
    assert (pointer.model_id if pointer else None) == (None if first else "m-old")  # recovery moves nothing


def test_the_same_model_activated_by_another_run_is_not_this_intents_promotion(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-new")
    log = _log(tmp_path)
    _intent(log, "m-new", None, "run-2")
    store.activate(PROJECT, "m-new", run_id="run-9")
    [line] = recover_promotions(log, store, PROJECT, actor="cli")
    assert line["decision"] == "promotion-abandoned"


def _hold_then_wait(audit_path: str, held: Any, done: Any) -> None:
    hold_promotion_lock(audit_path, holder="run run-live")
    held.set()
    done.wait(30)
    release_promotion_lock(audit_path, "run run-live")


@pytest.mark.slow
def test_a_live_promotion_is_not_recovered_while_its_lock_is_held(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-new")
    log = _log(tmp_path)
    _intent(log, "m-new", None, "run-live")
    ctx = multiprocessing.get_context("spawn")
    held, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_then_wait, args=(str(log.path), held, done))
    holder.start()
    try:
        assert held.wait(60)
        assert recover_promotions(log, store, PROJECT, actor="cli") == []  # skipped: the run is live
        assert len(pending_intents(log.records())) == 1
        # A second promotion does not wait for ever on a holder: it names it.
        with pytest.raises(AuditError, match=rf"held by another promotion \(pid {holder.pid} run run-live\)"):
            hold_promotion_lock(log.path, holder="run other", wait_seconds=0.3)
    finally:
        done.set()
        holder.join(30)
    [line] = recover_promotions(log, store, PROJECT, actor="cli")  # the holder let go (or died)
    # Two promotions in one process (flow runs in threads) are told apart by their holder.
    hold_promotion_lock(log.path, holder="run a")
    hold_promotion_lock(log.path, holder="run a")  # the same run again: a no-op
    with pytest.raises(AuditError, match=r"held by another promotion \(pid \d+ run a\)"):
        hold_promotion_lock(log.path, holder="run b", wait_seconds=0.2)
    assert not release_promotion_lock(log.path, "run b") and release_promotion_lock(log.path, "run a")
    hold_promotion_lock(log.path, holder="run b", wait_seconds=0.2)
    assert release_promotion_lock(log.path, "run b")
    assert line["decision"] == "promotion-abandoned"
    assert promotion_lock_path(log.path).name == "audit.jsonl.promoting"


def test_recovery_moves_a_torn_tail_aside_first_and_describes_what_it_did(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-new")
    log = _log(tmp_path)
    _intent(log, "m-new", None, "run-2")
    with log.path.open("ab") as fh:
        fh.write(b'{"decision": "promote", "model_id": "m-n')  # the completion line, cut off by a kill
    store.activate(PROJECT, "m-new", run_id="run-2")

    notes = recover_and_describe(log, store, PROJECT, actor="cli")

    assert notes[0].startswith("audit log repaired:") and "audit.jsonl.torn-" in notes[0]
    assert notes[1].startswith("audit line 3 (promote): recovered by cli")
    assert [r["decision"] for r in log.records()] == ["promote-intent", "repaired", "promote"]
    assert log.verify().ok


def test_recovery_refuses_a_broken_chain_and_names_the_seal_command(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-new")
    log = _log(tmp_path)
    _intent(log, "m-new", None, "run-2")
    _intent(log, "m-new", None, "run-3")
    text = log.path.read_text("utf-8").replace("run-2", "run-X", 1)
    log.path.write_text(text, "utf-8")
    with pytest.raises(AuditError, match="nluflow audit seal --project bot"):
        recover_promotions(log, store, PROJECT, actor="cli")
    assert log.path.read_text("utf-8") == text


# --- runs killed before their own line: `crashed` lines from the orchestrator's records --------------------

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _run(
    run_id: str, state: str, heartbeat_age: float | None = None, every: float | None = 30.0
) -> EarlierRun:
    return EarlierRun(
        flow_run_id=run_id,
        state=state,
        state_message="no heartbeat for 90 s" if state == "CRASHED" else None,
        state_at=NOW - timedelta(minutes=5),
        started_at=NOW - timedelta(minutes=10),
        last_heartbeat=NOW - timedelta(seconds=heartbeat_age) if heartbeat_age is not None else None,
        heartbeat_seconds=every,
    )


@pytest.mark.parametrize(
    ("run", "gone"),
    [
        (_run("r", "CRASHED"), True),
        (_run("r", "RUNNING", heartbeat_age=ZOMBIE_AFTER_SECONDS + 1), True),
        (_run("r", "PENDING", heartbeat_age=ZOMBIE_AFTER_SECONDS + 1), True),
        (_run("r", "RUNNING", heartbeat_age=5), False),  # alive: a fresh heartbeat
        (_run("r", "RUNNING", heartbeat_age=None), False),  # never sent one: cannot tell it from a live run
        # Beats every 180 s (Prefect's default, outside nluflow's CLI): 3 intervals, not 90 s.
        (_run("r", "RUNNING", heartbeat_age=500, every=180), False),
        (_run("r", "RUNNING", heartbeat_age=541, every=180), True),
        (_run("r", "RUNNING", heartbeat_age=500, every=None), False),  # one beat: Prefect's default interval
        (_run("r", "COMPLETED"), False),
        (_run("r", "FAILED"), False),  # failed 5 min ago: its failure hook may be writing its line
        (replace(_run("r", "FAILED"), state_at=NOW - timedelta(seconds=FAILED_HOOK_GRACE_SECONDS + 1)), True),
    ],
    ids=[
        "crashed",
        "running-silent",
        "pending-silent",
        "running-fresh",
        "running-no-heartbeat",
        "every-180-alive",
        "every-180-gone",
        "one-beat-alive",
        "done",
        "failed-young",
        "failed-old",
    ],
)
def test_which_earlier_runs_are_gone(run: EarlierRun, gone: bool) -> None:
    assert (why_gone(run, NOW) is not None) is gone


def test_a_crashed_run_gets_one_line_naming_what_it_left_behind(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-active")
    store.activate(PROJECT, "m-active", run_id="run-0")
    src = tmp_path / "src" / "m-left"
    src.mkdir(parents=True)
    (src / "model.bin").write_bytes(b"x")
    store.add_model(
        PROJECT,
        "m-left",
        src,
        backend="local",
        dataset_sha256="d",
        test_sha256=None,
        config={},
        metrics={},
        run_id="run-killed",
    )
    log = _log(tmp_path)
    runs = [_run("run-killed", "CRASHED"), _run("run-alive", "RUNNING", heartbeat_age=5)]

    [line] = recover_promotions(log, store, PROJECT, actor="run run-next", earlier_runs=runs, now=NOW)

    assert line["decision"] == "crashed" and line["promoted"] is False
    assert line["flow_run_id"] == line["run_id"] == "run-killed"
    assert line["left_behind"] == ["m-left"] and line["model_id"] == "m-left"
    assert line["active_model_id"] == "m-active" and line["state"] == "CRASHED"
    reason = line["reasons"][0]
    assert "killed before it could write its own line" in reason and "ended Crashed" in reason
    assert "m-left stored, not active" in reason and "run run-next" in reason
    # Never twice: the line is the run's own (flow_run_id), so the next recovery writes nothing.
    assert recover_promotions(log, store, PROJECT, actor="again", earlier_runs=runs, now=NOW) == []
    assert [r["decision"] for r in log.records()] == ["crashed"] and log.verify().ok


def test_a_run_killed_mid_promotion_gets_its_abandoned_intent_and_then_its_crashed_line(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    log = _log(tmp_path)
    _intent(log, "m-new", None, "run-killed")

    lines = recover_promotions(
        log, store, PROJECT, actor="run run-next", earlier_runs=[_run("run-killed", "CRASHED")], now=NOW
    )

    assert [x["decision"] for x in lines] == ["promotion-abandoned", "crashed"]
    assert f"closed as abandoned by line {lines[0]['seq']}" in lines[1]["reasons"][0]


def test_a_run_with_its_own_line_or_a_recovered_promotion_gets_no_crashed_line(tmp_path: Path) -> None:
    store = _store(tmp_path, "m-new")
    log = _log(tmp_path)
    _intent(log, "m-new", None, "run-switched")
    store.activate(PROJECT, "m-new", run_id="run-switched")  # killed after the switch: recovered promote
    log.append({"decision": "reject", "flow_run_id": "run-done", "run_id": "run-done", "reasons": []})
    runs = [_run("run-switched", "CRASHED"), _run("run-done", "CRASHED")]

    lines = recover_promotions(log, store, PROJECT, actor="next", earlier_runs=runs, now=NOW)

    assert [(x["decision"], x.get("recovered")) for x in lines] == [("promote", True)]


def test_crashed_lines_are_pure_records_over_plain_data() -> None:
    records = [{"decision": "crashed", "flow_run_id": "a"}]
    runs = [_run("a", "CRASHED"), _run("b", "CRASHED"), _run("b", "CRASHED")]  # b listed twice

    lines = crashed_run_lines(
        project=PROJECT,
        records=records,
        runs=runs,
        models=[StoredModel("m-b", "b"), StoredModel("m-x", "x")],
        active_model_id="m-b",
        now=NOW,
        actor="t",
    )

    assert [x["flow_run_id"] for x in lines] == ["b"]
    assert "its candidate m-b is stored and is the active model" in lines[0]["reasons"][0]


def test_a_missing_log_with_a_crashed_run_is_created_by_the_next_run(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log = _log(tmp_path)

    [line] = recover_promotions(
        log, store, PROJECT, actor="next", earlier_runs=[_run("k", "CRASHED")], now=NOW
    )

    assert line["seq"] == 1 and "it left nothing in the store" in line["reasons"][0]


def test_a_failed_run_whose_hook_wrote_nothing_gets_a_recovered_failed_line_after_the_grace(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    log = _log(tmp_path)
    old = EarlierRun(
        flow_run_id="run-failed",
        state="FAILED",
        state_message="Flow run encountered an exception: HTTPError: GET https://bob:hunter2@rasa.example/x",
        state_at=NOW - timedelta(seconds=FAILED_HOOK_GRACE_SECONDS + 1),
    )
    young = EarlierRun(flow_run_id="run-young", state="FAILED", state_at=NOW - timedelta(seconds=60))

    [line] = recover_promotions(log, store, PROJECT, actor="next", earlier_runs=[old, young], now=NOW)

    assert line["decision"] == "failed" and line["recovered"] is True and line["flow_run_id"] == "run-failed"
    assert "failed and never wrote its own line" in line["reasons"][0]
    assert "hunter2" not in log.path.read_text() and "[REDACTED]" in line["error"]
    assert recover_promotions(log, store, PROJECT, actor="again", earlier_runs=[old], now=NOW) == []
