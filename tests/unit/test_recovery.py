"""Promotions that stopped half-way: an intent line without its completion line is closed from the pointer,
never while the promotion is live (its lock is held), and never twice."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from nluflow.audit import AuditLog
from nluflow.errors import AuditError
from nluflow.recovery import (
    hold_promotion_lock,
    intent_record,
    pending_intents,
    promotion_lock_path,
    recover_and_describe,
    recover_promotions,
    release_promotion_lock,
)
from nluflow.registry import ModelStore

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
