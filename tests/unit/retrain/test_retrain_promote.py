"""The promotion as four steps with their undo (nluflow.retrain.promote), on a real local store and a fake
platform: all or nothing, without Prefect. Milliseconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nluflow.backends.base import IntentScore, ModelRef, Parse
from nluflow.data.schema import Dataset, Example
from nluflow.errors import StoreError
from nluflow.evaluation import GatePolicy, decide, evaluate
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.recovery import pending_intents, promotion_lock_path, release_promotion_lock
from nluflow.retrain import Candidate, Promotion, final_outcome, needs_recheck, promote_candidate
from nluflow.retrain.promote import activate, keep_rejected, serve_previous, unstore_candidate
from nluflow.store import ActivePointer, ModelStore
from nluflow.store.audit_log import AuditLog

PROJECT = "bot"
TEST = Dataset.of(Example(text=f"{intent} {i}", intent=intent) for intent in ("a", "b") for i in range(20))


def _scored(misses: int) -> EvaluationResult:
    parses = [
        Parse(text=e.text, intent=IntentScore(name="x" if n < misses else e.intent, confidence=0.9))
        for n, e in enumerate(TEST.examples)
    ]
    return evaluate(TEST, parses)


class Platform:
    """A fake platform: which model it serves, every activation, and an activation that fails on demand."""

    def __init__(self, fail_for: Sequence[str] = (), fail_after_switch: bool = False) -> None:
        self.serving: str | None = None
        self.calls: list[str] = []
        self.fail_for = set(fail_for)
        self.fail_after_switch = fail_after_switch

    def activate(self, model: ModelRef) -> None:
        self.calls.append(model.model_id)
        if model.model_id in self.fail_for:
            if self.fail_after_switch:
                self.serving = model.model_id
            raise RuntimeError(f"platform refused {model.model_id}")
        self.serving = model.model_id

    def __getattr__(self, name: str) -> Any:  # the rest of the protocol is not used here
        raise AttributeError(name)


def _model(tmp_path: Path, model_id: str) -> ModelRef:
    folder = tmp_path / "candidates" / model_id
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(model_id.encode())
    return ModelRef(backend="local", model_id=model_id, path=str(folder), metrics={"val_loss": 0.5})


def _candidate(tmp_path: Path, model_id: str, run_id: str = "run-1") -> Candidate:
    return Candidate(
        project=PROJECT,
        model=_model(tmp_path, model_id),
        dataset_sha256="d" * 64,
        test_sha256="t" * 64,
        config={"seed": 42},
        metrics={"macro_f1": 0.9},
        run_id=run_id,
    )


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore.local(tmp_path / "store", create=True)


def _log(store: ModelStore, tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "store" / PROJECT / "audit.jsonl")


def test_a_promotion_stores_activates_writes_its_intent_and_switches_the_pointer(
    store: ModelStore, tmp_path: Path
) -> None:
    platform = Platform()
    log = _log(store, tmp_path)
    pointer = promote_candidate(store, platform, log, _candidate(tmp_path, "m-1"), None, "first model")  # type: ignore[arg-type]
    assert pointer.model_id == "m-1" and pointer.run_id == "run-1"
    assert store.has_model(PROJECT, "m-1") and store.manifest(PROJECT, "m-1").run_id == "run-1"
    assert platform.serving == "m-1"
    intents = pending_intents(log.records())
    assert [(i["model_id"], i["previous_model_id"], i["run_id"]) for i in intents] == [("m-1", None, "run-1")]
    assert promotion_lock_path(log.path).exists()  # held until the run's promote line
    assert release_promotion_lock(log.path, "run run-1")


def test_a_failed_pointer_switch_undoes_every_step_newest_first(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, log = Platform(), _log(store, tmp_path)
    promote_candidate(store, platform, log, _candidate(tmp_path, "m-1", "run-1"), None, "first")  # type: ignore[arg-type]
    log.append({"decision": "promote", "project": PROJECT, "run_id": "run-1", "intent_seq": 1})
    release_promotion_lock(log.path, "run run-1")
    previous = ModelRef(backend="local", model_id="m-1", path=None)

    def broken(self: ModelStore, *args: Any, **kwargs: Any) -> ActivePointer:
        raise StoreError("disk full")

    monkeypatch.setattr(ModelStore, "activate", broken)
    with pytest.raises(StoreError, match="disk full"):
        promote_candidate(store, platform, log, _candidate(tmp_path, "m-2", "run-2"), previous, "better")  # type: ignore[arg-type]
    monkeypatch.undo()
    assert not store.has_model(PROJECT, "m-2")  # store-candidate undone
    assert platform.calls == ["m-1", "m-2", "m-1"] and platform.serving == "m-1"  # activation undone
    last = log.records()[-1]
    assert (last["decision"], last["model_id"], last["intent_seq"]) == ("promotion-abandoned", "m-2", 3)
    assert not pending_intents(log.records()) and log.verify().ok
    pointer = store.active(PROJECT)
    assert pointer is not None and pointer.model_id == "m-1"


def test_a_failed_activation_serves_the_previous_model_before_it_raises(tmp_path: Path) -> None:
    platform = Platform(fail_for=["m-2"], fail_after_switch=True)
    platform.serving = "m-1"
    previous = ModelRef(backend="rasa", model_id="m-1")
    with pytest.raises(RuntimeError, match="refused m-2"):
        activate(platform, ModelRef(backend="rasa", model_id="m-2"), previous)  # type: ignore[arg-type]
    assert platform.calls == ["m-2", "m-1"] and platform.serving == "m-1"
    serve_previous(platform, None)  # type: ignore[arg-type]  # no previous model: nothing to serve again
    assert platform.calls == ["m-2", "m-1"]


def test_unstore_never_removes_a_model_stored_before_or_the_active_one(
    store: ModelStore, tmp_path: Path
) -> None:
    promote_candidate(store, Platform(), _log(store, tmp_path), _candidate(tmp_path, "m-1"), None, "r")  # type: ignore[arg-type]
    assert not unstore_candidate(store, PROJECT, "m-1", existed=True)
    assert not unstore_candidate(store, PROJECT, "m-1", existed=False)  # it is the active model
    assert store.has_model(PROJECT, "m-1")


def test_the_promotion_runner_undoes_done_steps_in_reverse_and_keeps_going_past_a_broken_undo() -> None:
    done: list[str] = []
    steps = Promotion()
    steps.step("a", lambda: done.append("a"), lambda: done.append("undo a"))
    steps.step("b", lambda: done.append("b"), lambda: 1 / 0)
    steps.step("c", lambda: done.append("c"))  # no undo: nothing to take back

    def boom() -> None:
        raise ValueError("d failed")

    with pytest.raises(ValueError, match="d failed"):
        steps.step("d", boom, lambda: done.append("undo d"))
    assert done == ["a", "b", "c", "undo a"]


def test_a_rejected_candidate_is_kept_once_and_old_ones_are_pruned(store: ModelStore, tmp_path: Path) -> None:
    for n in range(3):
        keep_rejected(store, _candidate(tmp_path, f"m-{n}", f"run-{n}"), keep=2, reason=f"rejected {n}")
    kept = [e.model_id for e in store.rejected(PROJECT)]
    assert sorted(kept) == ["m-1", "m-2"] and not store.has_model(PROJECT, "m-0")
    assert keep_rejected(store, _candidate(tmp_path, "m-9"), keep=0, reason="x") == ["m-1", "m-2"]
    assert not store.has_model(PROJECT, "m-9")


@pytest.mark.parametrize(
    ("pointer", "compared_with", "expected"),
    [
        (None, None, False),  # still no active model
        (("m-1", "run-0"), "m-1", False),  # still the model the decision was made against
        (("m-2", "run-1"), "m-1", False),  # this very run moved it (a retried flow run)
        (("m-2", "other"), "m-1", True),  # another run got there first
        (("m-2", "other"), None, True),
        (None, "m-1", True),  # the active model went away
    ],
)
def test_needs_recheck(pointer: tuple[str, str] | None, compared_with: str | None, expected: bool) -> None:
    now = (
        ActivePointer(
            project=PROJECT,
            model_id=pointer[0],
            run_id=pointer[1],
            manifest_sha256="a" * 64,
            activated_at="t",
        )
        if pointer
        else None
    )
    assert needs_recheck(now, compared_with, "run-1") is expected


def test_the_final_outcome_is_superseded_only_when_another_model_won_the_slot() -> None:
    passed = decide(_scored(0), _scored(4), GatePolicy())
    failed = decide(_scored(3), _scored(0), GatePolicy())
    assert final_outcome("bot", passed, "m-new", "m-old", "m-old", True).outcome == "promoted"
    assert final_outcome("bot", failed, "m-new", "m-old", "m-old", False).outcome == "rejected"
    won = final_outcome("bot", failed, "m-new", "m-old", "m-won", False)
    assert won.outcome == "superseded" and won.reason.startswith("m-won became active first")
    assert final_outcome("bot", failed, "m-same", "m-same", "m-same", False).outcome == "unchanged"
