"""Each task module's tasks called as plain functions (``task.fn(...)``): no Prefect server, no flow run.
The tasks are thin wrappers around :mod:`nluflow.retrain`; these tests pin the wrapping (specs in, plain data
out, clients closed, crash points and rollback data in place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nluflow.backends.base import ModelRef, TrainingConfig
from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import ValidationPolicy
from nluflow.errors import DataError
from nluflow.pipeline import Workspace, model_id_for, snapshot, training_key
from nluflow.recovery import pending_intents, promotion_lock_path, release_promotion_lock
from nluflow.retrain import Candidate, TestSetPlan
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.store.testsets import TestSetStore, stored_training_data
from tasks.audit import recover_promotions_task, write_audit, write_promotion_intent
from tasks.common import BackendSpec, StoreSpec
from tasks.data import freeze_test_set, keep_training_data, restore_test_set, validate_dataset
from tasks.evaluation import check_must_pass_utterances, evaluate_model, fetch_active_model
from tasks.promotion import (
    activate_on_backend,
    keep_rejected_candidate,
    store_candidate,
    switch_active_pointer,
)
from tasks.publish import sync_run_to_store
from tasks.training import candidate_ready, submit_training, wait_for_training

PROJECT = "bot"


def _data(n: int) -> Dataset:
    return Dataset(
        examples=tuple(
            Example(text=f"{intent} please {word} {k}", intent=intent)
            for intent, word in (("greet", "hello"), ("book", "ticket"), ("bye", "goodbye"))
            for k in range(n)
        ),
        source="data/nlu.jsonl",
    )


@pytest.fixture
def store(tmp_path: Path) -> StoreSpec:
    return StoreSpec(path=str(tmp_path / "store"), workspace=str(tmp_path / "work"))


@pytest.fixture
def work(tmp_path: Path) -> str:
    return str(tmp_path / "work")


def _candidate(tmp_path: Path, model_id: str, run_id: str = "run-1") -> Candidate:
    folder = tmp_path / "candidates" / model_id
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(model_id.encode())
    model = ModelRef(backend="local", model_id=model_id, path=str(folder))
    return Candidate(
        project=PROJECT,
        model=model,
        dataset_sha256="d" * 64,
        test_sha256="t" * 64,
        config={},
        metrics={"macro_f1": 0.9},
        run_id=run_id,
    )


# -- tasks/data.py -----------------------------------------------------------------------------------------


def test_data_tasks_freeze_validate_keep_and_restore(store: StoreSpec, work: str) -> None:
    data = snapshot(_data(10), Workspace(Path(work)))
    plan = TestSetPlan(project=PROJECT, test_fraction=0.2, seed=1)
    train, test, info = freeze_test_set.fn(store, plan, data, None, work)
    assert (train.n_examples, test.n_examples, info["test_set_version"]) == (24, 6, 1)
    report, validated = validate_dataset.fn(train, test, ValidationPolicy(min_examples_per_intent=5), work)
    assert report.ok and validated.sha256 == train.sha256
    key = keep_training_data.fn(store, PROJECT, train, data)
    assert key and stored_training_data(store.build().fs, PROJECT, train.sha256) is not None
    assert restore_test_set.fn(store, PROJECT, info)  # a blocked run takes its own freeze back
    assert TestSetStore(store.build().fs, PROJECT).current() is None


# -- tasks/evaluation.py and tasks/training.py -------------------------------------------------------------


def test_training_and_evaluation_tasks_on_the_local_backend(
    store: StoreSpec, work: str, tmp_path: Path
) -> None:
    backend = BackendSpec(name="local", workspace=work)
    assert fetch_active_model.fn(store, PROJECT, backend) is None  # a first model
    train = snapshot(_data(8), Workspace(Path(work)))
    config = TrainingConfig(seed=1)
    key = training_key(train.sha256, config, "local")
    model_id = model_id_for(key)
    assert not candidate_ready(backend, PROJECT, model_id)
    job = submit_training.fn(backend, PROJECT, model_id, train, config, key)
    model = wait_for_training.fn(backend, PROJECT, model_id, job, key, 60.0)
    assert model.model_id == model_id and candidate_ready(backend, PROJECT, model_id)
    result = evaluate_model.fn(backend, model, train, 0.5)
    assert result.n == 24 and result.test_sha256 == train.sha256
    must = tmp_path / "must.jsonl"
    must.write_text('{"text": "fly me", "intent": "travel"}\n')
    with pytest.raises(DataError, match="'travel'"):
        check_must_pass_utterances.fn(backend, model, str(must), ["greet", "book", "bye"])


# -- tasks/promotion.py and tasks/audit.py -----------------------------------------------------------------


def test_promotion_tasks_store_activate_intend_switch_and_audit(store: StoreSpec, tmp_path: Path) -> None:
    backend = BackendSpec(name="local", workspace=str(tmp_path / "work"))
    candidate = _candidate(tmp_path, "m-1")
    manifest = store_candidate.fn(store, candidate)
    assert manifest.model_id == "m-1" and manifest.run_id == "run-1"
    activate_on_backend.fn(backend, candidate.model, None)  # the local backend serves from the store
    intent = write_promotion_intent.fn(store, PROJECT, "m-1", "run-1")
    assert intent["decision"] == "promote-intent" and promotion_lock_path(store.audit_path(PROJECT)).exists()
    pointer = switch_active_pointer.fn(store, PROJECT, "m-1", "run-1", "first model")
    assert pointer.model_id == "m-1"
    line = write_audit.fn(
        str(store.audit_path(PROJECT)), {"decision": "promote", "run_id": "run-1", "project": PROJECT}
    )
    assert line["intent_seq"] == intent["seq"]  # the promote line completes the intent
    assert not release_promotion_lock(store.audit_path(PROJECT), "run run-1")  # and let go of the lock
    assert not pending_intents(AuditLog(store.audit_path(PROJECT)).records())
    assert recover_promotions_task.fn(store, PROJECT, actor="test") == []


def test_an_intent_left_open_is_closed_by_recovery(store: StoreSpec, tmp_path: Path) -> None:
    store_candidate.fn(store, _candidate(tmp_path, "m-1"))
    write_promotion_intent.fn(store, PROJECT, "m-1", "run-1")
    release_promotion_lock(store.audit_path(PROJECT), "run run-1")  # the run is gone
    written = recover_promotions_task.fn(store, PROJECT, actor="test")
    assert [line["decision"] for line in written] == ["promotion-abandoned"]


def test_keep_rejected_candidate_keeps_it_stored_not_active(store: StoreSpec, tmp_path: Path) -> None:
    assert keep_rejected_candidate.fn(store, _candidate(tmp_path, "m-1"), 5, "rejected: worse") == []
    model_store = store.build()
    assert model_store.has_model(PROJECT, "m-1") and model_store.active(PROJECT) is None
    assert [e.model_id for e in model_store.rejected(PROJECT)] == ["m-1"]


# -- tasks/publish.py --------------------------------------------------------------------------------------


def test_sync_run_to_store_copies_the_run_folder(store: StoreSpec, tmp_path: Path) -> None:
    outdir = tmp_path / "work" / "runs" / PROJECT / "run-1"
    outdir.mkdir(parents=True)
    (outdir / "report.md").write_text("# report\n")
    ModelStore.local(tmp_path / "store", create=True)
    keys = sync_run_to_store.fn(store, PROJECT, "run-1", str(outdir), str(store.audit_path(PROJECT)))
    assert keys == [f"{PROJECT}/runs/run-1/report.md"]
    assert (tmp_path / "store" / PROJECT / "runs" / "run-1" / "report.md").read_text() == "# report\n"


# -- tasks/common.py ---------------------------------------------------------------------------------------


class Closable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_backend_spec_client_closes_the_client_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Closable] = []

    def build(self: BackendSpec, on_progress: Any = None) -> Closable:
        built.append(Closable())
        return built[-1]

    monkeypatch.setattr(BackendSpec, "build", build)
    spec = BackendSpec(name="nluflow-rasa-backend/x", workspace="/w")
    with spec.client() as client:
        assert client is built[0] and built[0].closed == 0
    with pytest.raises(RuntimeError), spec.client():
        raise RuntimeError("the stage failed")
    assert [c.closed for c in built] == [1, 1]


def test_backend_spec_client_leaves_a_client_without_close_alone(tmp_path: Path) -> None:
    with BackendSpec(name="local", workspace=str(tmp_path)).client() as client:
        assert client.name == "local"
