"""A person's change of the active model (nluflow.retrain.manage.change_active): activate, roll back, force a
promotion; a remote platform that refuses puts the pointer back; one audit line per change. Milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from nluflow.audit import AuditLog
from nluflow.backends.base import ModelRef
from nluflow.errors import ConfigError
from nluflow.registry import Manifest, ModelStore
from nluflow.retrain.manage import RESTORED_REASON, PointerChange, change_active

PROJECT = "bot"


def _add(store: ModelStore, tmp_path: Path, model_id: str, backend: str = "local") -> None:
    folder = tmp_path / "files" / model_id
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(model_id.encode())
    store.add_model(
        PROJECT,
        model_id,
        folder,
        backend=backend,
        dataset_sha256="d" * 64,
        test_sha256="t" * 64,
        config={},
        metrics={},
        training_metrics={},
    )


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore.local(tmp_path / "store", create=True)
    for model_id in ("m-1", "m-2"):
        _add(store, tmp_path, model_id)
        store.activate(PROJECT, model_id, reason="a retrain")
    return store


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "store" / PROJECT / "audit.jsonl")


def test_a_rollback_returns_to_the_previous_model_and_says_so_on_the_log(
    store: ModelStore, log: AuditLog
) -> None:
    pointer = change_active(store, log, PointerChange(project=PROJECT, kind="rollback"))
    assert pointer.model_id == "m-1"
    (line,) = log.records()
    assert (line["decision"], line["model_id"], line["previous_model_id"]) == ("rollback", "m-1", "m-2")
    assert line["promoted"] is True and line["actor"] == "cli" and log.verify().ok


def test_activating_the_active_model_writes_no_line(store: ModelStore, log: AuditLog) -> None:
    change_active(store, log, PointerChange(project=PROJECT, kind="activate", model_id="m-2"))
    assert log.records() == []


def test_a_rejected_candidate_goes_active_only_as_a_forced_promotion_with_a_reason(
    store: ModelStore, log: AuditLog, tmp_path: Path
) -> None:
    _add(store, tmp_path, "m-3")
    store.record_rejected(PROJECT, "m-3", run_id="run-3", reason="rejected: worse")
    with pytest.raises(ConfigError, match="needs a reason"):
        change_active(store, log, PointerChange(project=PROJECT, kind="activate", model_id="m-3"))
    with pytest.raises(ConfigError, match="needs a reason"):
        change_active(store, log, PointerChange(project=PROJECT, kind="rollback", model_id="m-3"))
    pointer = change_active(
        store,
        log,
        PointerChange(project=PROJECT, kind="activate", model_id="m-3", reason="the gate is wrong"),
    )
    assert pointer.model_id == "m-3" and pointer.reason == "forced promote: the gate is wrong"
    assert store.rejected(PROJECT) == []
    (line,) = log.records()
    assert (line["decision"], line["reasons"]) == ("forced-promote", ["the gate is wrong"])
    with pytest.raises(ConfigError, match="already the active model"):
        change_active(
            store, log, PointerChange(project=PROJECT, kind="forced-promote", model_id="m-3", reason="x")
        )


def test_a_platform_that_refuses_puts_the_pointer_back(
    store: ModelStore, log: AuditLog, tmp_path: Path
) -> None:
    _add(store, tmp_path, "m-remote", backend="rasa")
    served: list[str] = []

    def refuse(manifest: Manifest, model: ModelRef) -> None:
        served.append(model.model_id)
        raise RuntimeError("HTTP 400 from the platform")

    change = PointerChange(project=PROJECT, kind="activate", model_id="m-remote", reason="try it")
    with pytest.raises(RuntimeError, match="400"):
        change_active(store, log, change, serve=refuse)
    pointer = store.active(PROJECT)
    assert served == ["m-remote"] and pointer is not None
    assert (pointer.model_id, pointer.reason) == ("m-2", RESTORED_REASON)
    assert log.records() == []  # nothing changed that the log should say
    change_active(store, log, change, serve=lambda manifest, model: served.append(model.model_id))
    assert served == ["m-remote", "m-remote"] and log.records()[-1]["decision"] == "activate"
