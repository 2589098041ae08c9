"""nluflow.retrain.manage without Prefect: rollback, activate, forced promote and test-set reset on a local
store, each with its audit line; a platform that refuses puts the pointer back; a broken log refuses the
change."""

from __future__ import annotations

from pathlib import Path

import pytest

from nluflow.data.schema import Dataset, Example
from nluflow.errors import AuditError, ConfigError, StoreError
from nluflow.retrain import manage
from nluflow.store import Manifest, ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.store.testsets import TestSetStore

PROJECT = "bot"


def _store(tmp_path: Path) -> ModelStore:
    store = ModelStore.local(tmp_path / "store", create=True)
    for model_id, backend in (("m1", "local"), ("m2", "local"), ("m3", "local"), ("r1", "remote")):
        src = tmp_path / "src" / model_id
        src.mkdir(parents=True)
        (src / "model.bin").write_bytes(model_id.encode())
        store.add_model(PROJECT, model_id, src, backend=backend, dataset_sha256="d" * 64, test_sha256=None,
                        config={}, metrics={"macro_f1": 0.9})  # fmt: skip
    store.activate(PROJECT, "m1")
    store.activate(PROJECT, "m2")
    store.record_rejected(PROJECT, "m3", reason="gates")
    return store


def _decisions(store: ModelStore) -> list[tuple[str, str, str | None]]:
    log = AuditLog(store.fs.local_path(f"{PROJECT}/audit.jsonl"))  # type: ignore[attr-defined]
    return [(r["decision"], r["model_id"], r["previous_model_id"]) for r in log.records()]


def test_rollback_activate_and_forced_promote_are_audited(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log, notes = manage.prepare_change(store, PROJECT)
    assert notes == []

    change = manage.rollback(store, log, PROJECT)
    assert change.pointer.model_id == "m1" and change.before is not None and change.before.model_id == "m2"
    assert change.line is not None and change.line["seq"] == 1

    again = manage.activate(store, log, PROJECT, "m1")  # already active: nothing changes, no line
    assert again.line is None

    with pytest.raises(ConfigError, match="gates rejected"):
        manage.activate(store, log, PROJECT, "m3")  # a rejected candidate needs a reason
    forced = manage.activate(store, log, PROJECT, "m3", reason="the test set misses the new intent")
    assert forced.decision == "forced-promote" and store.rejected(PROJECT) == []

    with pytest.raises(ConfigError, match="already the active model"):
        manage.force_promote(store, log, PROJECT, "m3", reason="again")
    with pytest.raises(ConfigError, match="--reason is empty"):
        manage.force_promote(store, log, PROJECT, "m2", reason="  ")
    manage.force_promote(store, log, PROJECT, "m2", reason="hotfix")
    assert _decisions(store) == [
        ("rollback", "m1", "m2"),
        ("forced-promote", "m3", "m1"),
        ("forced-promote", "m2", "m3"),
    ]


def test_a_platform_that_refuses_puts_the_pointer_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log, _ = manage.prepare_change(store, PROJECT)
    served: list[str] = []

    def refuse(manifest: Manifest) -> None:
        served.append(manifest.model_id)
        raise StoreError("the platform said no")

    with pytest.raises(StoreError, match="said no"):
        manage.activate(store, log, PROJECT, "r1", serve_remote=refuse)
    pointer = store.active(PROJECT)
    assert served == ["r1"] and pointer is not None and pointer.model_id == "m2"
    assert "restored" in pointer.reason and _decisions(store) == []

    with pytest.raises(ConfigError, match="nothing here can make that platform serve it"):
        manage.activate(store, log, PROJECT, "r1")  # no way to serve a remote model: refused, put back
    assert (store.active(PROJECT) or pointer).model_id == "m2"

    ok = manage.activate(store, log, PROJECT, "r1", serve_remote=lambda manifest: served.append("ok"))
    assert ok.pointer.model_id == "r1" and served[-1] == "ok"


def test_a_broken_log_refuses_the_change_before_anything_moves(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log, _ = manage.prepare_change(store, PROJECT)
    manage.rollback(store, log, PROJECT)
    path = store.fs.local_path(f"{PROJECT}/audit.jsonl")  # type: ignore[attr-defined]
    path.write_text(path.read_text().replace('"m1"', '"m9"', 1))
    with pytest.raises(AuditError, match=r"audit log is broken.*nothing was changed"):
        manage.prepare_change(store, PROJECT)
    pointer = store.active(PROJECT)
    assert pointer is not None and pointer.model_id == "m1"


def test_reset_testset_removes_the_set_and_says_so_on_the_log(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log, _ = manage.prepare_change(store, PROJECT)
    assert manage.reset_testset(store, log, PROJECT, "new intents") is None  # nothing frozen: no line
    data = Dataset(examples=(Example(text="hi", intent="greet"), Example(text="bye", intent="goodbye")))
    TestSetStore(store.fs, PROJECT).freeze(data, "test.jsonl", "frozen")
    done = manage.reset_testset(store, log, PROJECT, "new intents")
    assert done is not None
    removed, line = done
    assert removed.n_examples == 2 and line["decision"] == "testset-reset" and line["model_id"] == "m2"
    assert line["reasons"][0].startswith("new intents: test set version 1")
    assert TestSetStore(store.fs, PROJECT).record() is None


def test_audit_logs_finds_one_or_every_project(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(StoreError, match="no audit logs"):
        manage.audit_logs(store, None)
    with pytest.raises(StoreError, match="no audit log at"):
        manage.audit_logs(store, PROJECT)
    log, _ = manage.prepare_change(store, PROJECT)
    manage.rollback(store, log, PROJECT)
    (found,) = manage.audit_logs(store, None)
    assert found.project == PROJECT and found.verify().ok and found.verify().lines == 1


def test_a_rollback_to_a_rejected_candidate_needs_a_reason_and_lines_name_the_cli(tmp_path: Path) -> None:
    """Ported from the use-case branch's own copy of this module (dropped: one implementation is kept)."""
    store = _store(tmp_path)
    log, _ = manage.prepare_change(store, PROJECT)
    with pytest.raises(ConfigError, match="gates rejected"):
        manage.rollback(store, log, PROJECT, to="m3")
    assert store.active(PROJECT) is not None and store.active(PROJECT).model_id == "m2"  # type: ignore[union-attr]
    change = manage.rollback(store, log, PROJECT)
    assert change.line is not None
    assert (change.line["decision"], change.line["model_id"], change.line["previous_model_id"]) == (
        "rollback",
        "m1",
        "m2",
    )
    assert change.line["promoted"] is True and change.line["actor"] == "cli" and log.verify().ok
