"""The frozen test set grows with new annotations, and runs say what is new (under prefect_test_harness).

Each test owns its home (``tmp_path``) and builds the project history it needs, so it runs alone and in any
order (``pytest path::name``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from flows.retrain import RetrainParams, retrain
from nluflow.data.loaders import load_paths
from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import Severity, ValidationPolicy, normalize_text
from nluflow.errors import DataError
from nluflow.evaluation.gates import GatePolicy
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.store.testsets import TestSetStore, stored_training_data
from nluflow.testset import example_key

PROJECT = "growtest"
# The first model is judged on a 28-utterance split; these floors only make sure it becomes the active one.
LENIENT = GatePolicy(min_macro_f1=0.5, min_precision=0.5)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """This test's own home: its store and workspace hold only the runs the test makes."""
    return tmp_path / "home"


def params(home: Path, demo_data: Path, files: list[str], project: str = PROJECT) -> RetrainParams:
    return RetrainParams(
        project=project,
        data=[str(demo_data / f) for f in files],
        store=str(home / "store"),
        workspace=str(home / "work"),
        gates=LENIENT,
    )


def first_run(home: Path, demo_data: Path, project: str = PROJECT) -> Any:
    """The project's first run (batch 1): freezes test set version 1 and promotes the first model."""
    result = retrain(params(home, demo_data, ["batch-1.jsonl"], project=project))
    assert result.promoted, result.decision.reasons
    return result


def grown_history(home: Path, demo_data: Path) -> Any:
    """Batch 1, then batches 1 and 2 (which grows the test set to version 2); returns the second result."""
    first_run(home, demo_data)
    return retrain(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"]))


def frozen(home: Path, project: str = PROJECT) -> TestSetStore:
    return TestSetStore(ModelStore.local(home / "store").fs, project)


def audit_lines(home: Path, project: str = PROJECT) -> list[dict[str, Any]]:
    return AuditLog(home / "store" / project / "audit.jsonl").records()


@pytest.fixture
def scored_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sha256 of every test set a model was scored on during the test."""
    from nluflow.evaluation.metrics import evaluate as real

    seen: list[str] = []

    def spy(test_set: Dataset, *args: Any, **kwargs: Any) -> Any:
        seen.append(test_set.sha256())
        return real(test_set, *args, **kwargs)

    monkeypatch.setattr("nluflow.retrain.scoring.evaluate", spy)
    return seen


def test_first_run_freezes_version_1_and_keeps_its_training_data(home: Path, demo_data: Path) -> None:
    result = first_run(home, demo_data)
    current = frozen(home).current()
    assert current is not None
    record, test = current
    assert record.version == 1 and len(test) == 28  # 20 % of 20 utterances for each of 7 intents
    assert record.intent_counts == dict.fromkeys(sorted(record.intent_counts), 4)
    line = audit_lines(home)[-1]
    assert line["test_sha256"] == record.sha256 and line["test_set_version"] == 1
    assert (line["new_examples"], line["routed_to_test"]) == (140, 28)
    assert (
        result.data_info["new_since_active"]
        == "+140 new (112 to training, 28 to the test set); no active model yet"
    )
    kept = stored_training_data(ModelStore.local(home / "store").fs, PROJECT, line["dataset_sha256"])
    assert kept is not None and len(kept) == 112
    assert not {normalize_text(t) for t in kept.texts} & {normalize_text(t) for t in test.texts}


def test_new_annotations_grow_the_test_set_and_both_models_are_scored_on_it(
    home: Path, demo_data: Path, scored_on: list[str]
) -> None:
    first_run(home, demo_data)
    scored_on.clear()  # only what the second run scores counts
    before, old_test = frozen(home).current() or (None, None)
    assert before is not None and old_test is not None
    active = ModelStore.local(home / "store").active(PROJECT)
    assert active is not None
    result = retrain(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"]))

    after, test = frozen(home).current() or (None, None)
    assert after is not None and test is not None
    assert after.version == 2 and after.sha256 != before.sha256
    assert [v.version for v in after.history] == [1, 2]
    # The new version is the old one plus examples of batch 2 only (never one the active model trained on).
    assert test.examples[: len(old_test)] == old_test.examples
    added = test.examples[len(old_test) :]
    batch2 = {example_key(e) for e in load_paths([demo_data / "batch-2.jsonl"])}
    assert added and {example_key(e) for e in added} <= batch2
    # Stratified: every intent keeps 20 % of its distinct texts in the test set (120 per intent → 24).
    assert after.intent_counts == dict.fromkeys(sorted(after.intent_counts), 24)

    # Both models were scored on the new version, and only on it.
    assert scored_on and set(scored_on) == {after.sha256}
    assert len(scored_on) == 2
    assert result.previous_active == active.model_id and result.active_metrics is not None

    new = len(batch2 - {example_key(e) for e in load_paths([demo_data / "batch-1.jsonl"])})
    routed = len(added)
    line = audit_lines(home)[-1]
    assert line["test_sha256"] == after.sha256 and line["test_set_version"] == 2
    assert (line["new_examples"], line["removed_examples"], line["routed_to_test"]) == (new, 0, routed)
    summary = f"+{new} new ({new - routed} to training, {routed} to the test set), 0 removed"
    assert result.data_info["new_since_active"] == summary
    report = Path(result.report_path).read_text(encoding="utf-8")
    assert summary in report and f"Test set version 2, sha256 `{after.sha256[:16]}" in report
    trained = stored_training_data(ModelStore.local(home / "store").fs, PROJECT, line["dataset_sha256"])
    assert trained is not None
    assert not {normalize_text(t) for t in trained.texts} & {normalize_text(t) for t in test.texts}
    # The growth is on the audit chain, which verifies.
    assert AuditLog(home / "store" / PROJECT / "audit.jsonl").verify().ok


def test_an_unchanged_rerun_does_not_grow_the_test_set(home: Path, demo_data: Path) -> None:
    grown_history(home, demo_data)
    before = frozen(home).record()
    previous = audit_lines(home)[-1]
    result = retrain(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"]))
    assert frozen(home).record() == before
    line = audit_lines(home)[-1]
    assert (
        line["dataset_sha256"] == previous["dataset_sha256"]
        and line["test_sha256"] == previous["test_sha256"]
    )
    assert result.data_info["routed_to_test"] == 0
    # Compared with the model now active: the last run's candidate if it was promoted, else the one before
    # (counted from the test set that model was scored on, so the figures repeat the last run's).
    expected = "+0 new, 0 removed" if previous["promoted"] else previous["new_since_active"]
    assert result.data_info["new_since_active"] == expected


def test_an_explicit_test_set_wins_over_the_frozen_one(home: Path, demo_data: Path) -> None:
    first_run(home, demo_data)
    before = frozen(home).record()
    assert before is not None
    p = params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"]).model_copy(
        update={"test": [str(demo_data / "test.jsonl")]}
    )
    result = retrain(p)
    given = load_paths([demo_data / "test.jsonl"])
    assert audit_lines(home)[-1]["test_sha256"] == given.sha256()
    assert result.data_info["test_set_version"] is None and result.data_info["routed_to_test"] == 0
    assert frozen(home).record() == before


def test_an_active_model_without_kept_training_data_is_unknown_and_routes_nothing(
    home: Path, demo_data: Path
) -> None:
    project = "growtest-legacy"
    first = first_run(home, demo_data, project=project)
    # As a model stored before training data was kept in the store.
    shutil.rmtree(home / "store" / project / "datasets")
    before = frozen(home, project).record()
    result = retrain(params(home, demo_data, ["batch-1.jsonl", "batch-2.jsonl"], project=project))
    assert result.data_info["new_since_active"].startswith(
        f"unknown: the training data of the active model {first.candidate_id} is not in the store"
    )
    assert frozen(home, project).record() == before  # no guess, so nothing was routed
    line = audit_lines(home, project)[-1]
    assert line["new_examples"] is None and line["removed_examples"] is None and line["test_set_version"] == 1


def test_a_tiny_first_run_is_refused_and_freezes_nothing(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "first-annotations.jsonl"
    rows = [("hello there", "greet"), ("hi bot", "greet"), ("good morning", "greet")]
    rows += [("bye now", "goodbye"), ("see you", "goodbye"), ("later", "goodbye")]
    data.write_text("".join(json.dumps({"text": t, "intent": i}) + "\n" for t, i in rows), encoding="utf-8")
    project = "growtest-tiny"
    p = RetrainParams(
        project=project, data=[str(data)], store=str(home / "store"), workspace=str(home / "work")
    )
    with pytest.raises(DataError) as err:
        retrain(p)
    message = str(err.value)
    assert message.startswith(f"{data}: cannot freeze a test set from these 6 examples")
    assert "--test" in message and "Nothing was frozen" in message
    assert str(home / "work") not in message
    assert frozen(home, project).record() is None
    assert not (home / "store" / project / "testset").exists()
    assert ModelStore.local(home / "store").active(project) is None


def test_a_test_set_frozen_after_a_reset_holds_nothing_the_active_model_trained_on(
    tmp_path: Path, demo_data: Path
) -> None:
    project = "resettest"
    first = retrain(params(tmp_path, demo_data, ["batch-1.jsonl"], project=project))
    assert first.promoted, first.decision.reasons
    store = ModelStore.local(tmp_path / "store")
    trained = stored_training_data(
        store.fs, project, store.manifest(project, first.candidate_id).dataset_sha256
    )
    assert trained is not None and len(trained) == 112
    assert frozen(tmp_path, project).reset() is not None  # what `nluflow testset reset` does

    retrain(params(tmp_path, demo_data, ["batch-1.jsonl", "batch-2.jsonl"], project=project))
    current = frozen(tmp_path, project).current()
    assert current is not None
    record, test = current
    assert record.version == 1 and len(test) > 0
    trained_texts = {normalize_text(e.text) for e in trained}
    assert not [e.text for e in test if normalize_text(e.text) in trained_texts]


def test_a_run_that_lost_the_first_freeze_and_is_blocked_leaves_the_winners_test_set(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run froze the project's first test set a moment before this one; this run, blocked by
    validation, undoes only what it wrote itself, which is nothing: the winner's test set stays."""
    project = "growtest-race"
    data = tmp_path / "one-intent.jsonl"  # one intent: validation blocks it (min_intents)
    data.write_text(
        "".join(json.dumps({"text": f"hello number {i}", "intent": "greet"}) + "\n" for i in range(12)),
        encoding="utf-8",
    )
    winner_set = Dataset.of(
        [Example(text=f"good morning {i}", intent="greet") for i in range(3)]
        + [Example(text=f"bye for now {i}", intent="goodbye") for i in range(3)]
    )
    real = TestSetStore.freeze_first
    winners: list[Any] = []

    def other_run_first(self: TestSetStore, *args: Any, **kwargs: Any) -> Any:
        if not winners:  # the other run's freeze lands between this run's look and its own freeze
            winners.append(real(self, winner_set, "the other run's data", "split"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TestSetStore, "freeze_first", other_run_first)
    p = RetrainParams(
        project=project, data=[str(data)], store=str(home / "store"), workspace=str(home / "work")
    )
    with pytest.raises(DataError, match="intent"):
        retrain(p)
    [line] = audit_lines(home, project)
    assert line["decision"] == "blocked"
    assert winners and winners[0] is not None
    assert frozen(home, project).record() == winners[0]  # not reset by the loser's clean-up
    current = frozen(home, project).current()
    assert current is not None and current[1].sha256() == winner_set.sha256()


def test_examples_validation_drops_are_not_new_again_on_the_next_run(
    home: Path, tmp_path: Path, demo_data: Path
) -> None:
    """ "+N new" compares with what the active model's run was offered, not with what survived validation:
    an example with a broken entity span is dropped from training on every run, and is new only once."""
    broken = tmp_path / "broken-spans.jsonl"
    rows = [
        {
            "text": f"play some {genre} music now",
            "intent": "PlayMusic",
            "entities": [{"start": 0, "end": 4, "entity": "genre", "value": genre}],  # span is "play"
        }
        for genre in ("jazz", "polka", "grunge", "techno", "ska")
    ]
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    files = [str(demo_data / "batch-1.jsonl"), str(broken)]
    warn = ValidationPolicy(severity={"span": Severity.WARN})  # broken spans: dropped, not blocking
    p = params(home, demo_data, ["batch-1.jsonl"]).model_copy(update={"data": files, "validation": warn})
    first = retrain(p)
    assert first.promoted, first.decision.reasons
    test = frozen(home).current()
    assert test is not None
    in_test = {normalize_text(t) for t in test[1].texts}
    dropped = [r["text"] for r in rows if normalize_text(str(r["text"])) not in in_test]
    assert dropped  # some went to training, where validation dropped them
    before = frozen(home).record()

    again = retrain(p)
    assert again.data_info["new_examples"] == 0, again.data_info["new_since_active"]
    assert again.data_info["routed_to_test"] == 0
    assert again.data_info["new_since_active"] == "+0 new, 0 removed"
    assert frozen(home).record() == before  # nothing routed into the test set


def test_texts_a_kept_rejected_candidate_trained_on_never_enter_the_test_set(
    home: Path, tmp_path: Path, demo_data: Path
) -> None:
    first_run(home, demo_data)
    lines = (demo_data / "batch-2.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    half = tmp_path / "batch-2-even-lines.jsonl"  # every intent in both halves
    half.write_text("".join(lines[0::2]), encoding="utf-8")
    rest = tmp_path / "batch-2-odd-lines.jsonl"
    rest.write_text("".join(lines[1::2]), encoding="utf-8")
    files = [str(demo_data / "batch-1.jsonl"), str(half)]
    unbeatable = GatePolicy(min_delta=1.0)
    p = params(home, demo_data, ["batch-1.jsonl"]).model_copy(update={"data": files, "gates": unbeatable})
    rejected = retrain(p)
    assert not rejected.promoted
    store = ModelStore.local(home / "store")
    assert [e.model_id for e in store.rejected(PROJECT)] == [rejected.candidate_id]
    trained = stored_training_data(
        store.fs, PROJECT, store.manifest(PROJECT, rejected.candidate_id).dataset_sha256
    )
    assert trained is not None

    # More annotations: the rejected candidate's texts are not new to every stored model, so none of them
    # is routed into the test set (a person may still promote that candidate).
    more = params(home, demo_data, ["batch-1.jsonl"]).model_copy(update={"data": [*files, str(rest)]})
    grown = retrain(more)
    assert grown.data_info["routed_to_test"] > 0  # the test set did grow, from the odd lines
    current = frozen(home).current()
    assert current is not None
    trained_texts = {normalize_text(t) for t in trained.texts}
    assert not [t for t in current[1].texts if normalize_text(t) in trained_texts]
