"""One record per run (nluflow.retrain.record): the audit line, the notice and the result are projections of
it, on the blocked path, the failed path and the normal path alike. Milliseconds, no Prefect."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from nluflow.audit import audit_record
from nluflow.backends.base import IntentScore, Parse
from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import Finding, Severity, ValidationReport
from nluflow.errors import AuditError
from nluflow.evaluation import GatePolicy, decide, evaluate
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.outcome import decided, superseded
from nluflow.retrain import (
    CandidateFacts,
    Judged,
    Published,
    RunData,
    RunIdentity,
    blocked_record,
    decided_record,
    failed_record,
)

TEST = Dataset.of(Example(text=f"{intent} {i}", intent=intent) for intent in ("a", "b") for i in range(20))
RUN = RunIdentity(project="bot", run_id="r-1", backend="local", config={"seed": 42}, run_url="http://ui/r-1")
DATA = RunData(
    dataset_sha256="d" * 64,
    test_sha256="t" * 64,
    train_examples=160,
    test_examples=40,
    info={"data_source": "one source", "test_set_version": 2, "new_examples": 9, "test_source": "frozen"},
    sources={"data_sources": [{"kind": "folder", "reference": "nluflow-folder-source/x"}]},
)
# What every run line had when the flow built it inline (before RunRecord): the keys tests and logs read.
RUN_LINE_KEYS = {
    "timestamp",
    "run_id",
    "flow_run_id",
    "project",
    "dataset_sha256",
    "test_sha256",
    "backend",
    "job_id",
    "model_id",
    "config",
    "duration_seconds",
    "metrics",
    "validation_loss",
    "decision",
    "promoted",
    "reasons",
    "previous_model_id",
    "manifest_sha256",
}


def _scored(misses: int) -> EvaluationResult:
    parses = [
        Parse(text=e.text, intent=IntentScore(name="x" if n < misses else e.intent, confidence=0.9))
        for n, e in enumerate(TEST.examples)
    ]
    return evaluate(TEST, parses)


def _facts(**changes: Any) -> CandidateFacts:
    base: dict[str, Any] = {
        "model_id": "m-new",
        "job_id": "job-1",
        "metrics": _scored(0).headline(),
        "training_metrics": {"val_loss": 0.25, "epochs": 3},
        "files_sha256": "f" * 64,
        "manifest_sha256": "a" * 64,
    }
    return CandidateFacts(**{**base, **changes})


def _blocking_report() -> ValidationReport:
    finding = Finding(rule="min_intents", severity=Severity.BLOCK, message="found 1 intent", count=1)
    return ValidationReport(findings=[finding], n_examples=3, intent_counts={"a": 3})


def test_a_promoted_run_has_every_run_line_field_and_its_candidate_and_data_fields() -> None:
    decision = decide(_scored(0), _scored(4), GatePolicy())
    outcome = decided("bot", decision, "m-new", "m-old", promoted=True)
    judged = Judged(
        candidate=_facts(),
        decision=decision,
        promoted=True,
        previous_active="m-old",
        active_eval=_scored(4),
        active="m-new",
    )
    line = decided_record(RUN, DATA, judged, outcome, 12.5).audit_line()
    extra = {"model_files_sha256", "training_metrics", "test_set_version", "new_examples", "data_sources"}
    assert set(line) == RUN_LINE_KEYS | extra
    assert (line["decision"], line["promoted"], line["previous_model_id"]) == ("promote", True, "m-old")
    assert (line["model_id"], line["job_id"], line["manifest_sha256"]) == ("m-new", "job-1", "a" * 64)
    assert line["run_id"] == line["flow_run_id"] == "r-1"
    assert line["validation_loss"] == 0.25 and line["training_metrics"] == {"val_loss": 0.25, "epochs": 3}
    assert line["metrics"] == _scored(0).headline() and line["reasons"] == decision.reasons
    assert (line["dataset_sha256"], line["test_sha256"]) == ("d" * 64, "t" * 64)
    assert line["data_sources"] == DATA.sources["data_sources"] and line["duration_seconds"] == 12.5
    assert "data_source" not in line and "test_source" not in line  # report-only fields stay off the line
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None


def test_an_int_training_metric_stays_an_int_on_the_line() -> None:
    """The audit line keeps every value as measured: a byte-compatible line needs ``3``, not ``3.0``."""
    decision = decide(_scored(0), None, GatePolicy())
    judged = Judged(
        candidate=_facts(), decision=decision, promoted=True, previous_active=None, active="m-new"
    )
    line = decided_record(RUN, DATA, judged, decided("bot", decision, "m-new", None, True), 1.0).audit_line()
    assert type(line["training_metrics"]["epochs"]) is int


def test_the_promoted_run_projects_one_notice_and_one_result() -> None:
    decision = decide(_scored(0), _scored(4), GatePolicy())
    outcome = decided("bot", decision, "m-new", "m-old", promoted=True)
    judged = Judged(
        candidate=_facts(),
        decision=decision,
        promoted=True,
        previous_active="m-old",
        active_eval=_scored(4),
        active="m-new",
    )
    record = decided_record(RUN, DATA, judged, outcome, 12.5)
    notice = record.notice()
    assert (notice.decision, notice.promoted, notice.summary) == ("promote", True, decision.summary())
    assert (notice.candidate_id, notice.previous_active, notice.active) == ("m-new", "m-old", "m-new")
    assert notice.deltas == decision.deltas and notice.run_url == "http://ui/r-1"
    published = Published(
        artifacts={"report": "bot-retrain-report", "report_path": "/x/report.md"},
        report_path="/x/report.md",
        store="local folder /s",
        audit_path="/s/bot/audit.jsonl",
        audit_seq=7,
        duration_seconds=13.0,
    )
    result = record.result(published)
    assert (result.outcome, result.promoted, result.message) == ("promoted", True, outcome.message())
    assert result.artifacts == {"report": "bot-retrain-report"} and result.audit_seq == 7
    assert result.active_metrics == _scored(4).headline()
    assert result.deltas["macro_f1"] == pytest.approx(_scored(0).macro_f1 - _scored(4).macro_f1)
    assert result.data_info["train_examples"] == 160 and result.data_info["test_examples"] == 40
    assert result.data_info["data_source"] == "one source" and "data_sources" in result.data_info
    assert result.duration_seconds == 13.0


def test_a_superseded_run_says_who_got_there_first_in_its_line_and_notice() -> None:
    again = decide(_scored(3), _scored(0), GatePolicy())
    outcome = superseded("bot", "m-late", "m-old", "m-won", again)
    judged = Judged(
        candidate=_facts(model_id="m-late"),
        decision=again,
        promoted=False,
        previous_active="m-won",
        active="m-won",
    )
    record = decided_record(RUN, DATA, judged, outcome, 3.0)
    line = record.audit_line()
    assert line["decision"] == "superseded" and line["reasons"] == [outcome.reason, *again.reasons]
    notice = record.notice()
    assert (notice.decision, notice.summary) == ("superseded", outcome.message())
    assert notice.reasons == line["reasons"]


def test_a_blocked_run_has_one_record_for_line_and_notice() -> None:
    record = blocked_record(RUN, DATA, _blocking_report(), 0.5)
    line = record.audit_line()
    assert set(line) == RUN_LINE_KEYS | {"test_set_version", "new_examples", "data_sources"}
    assert (line["decision"], line["promoted"], line["model_id"], line["job_id"]) == (
        "blocked",
        False,
        None,
        None,
    )
    assert line["reasons"] == ["min_intents: found 1 intent"] and line["metrics"] == {}
    notice = record.notice()
    assert (notice.decision, notice.promoted) == ("blocked", False)
    assert notice.summary == "blocked: the data failed validation; nothing was trained"
    assert notice.reasons == line["reasons"] and notice.flow_run_id == "r-1"
    assert record.outcome.message().startswith("blocked: data failed validation (1 blocking finding)")
    with pytest.raises(ValueError, match="no result"):
        record.result(Published(report_path="", store="", audit_path="", audit_seq=0, duration_seconds=0.0))


def test_a_failed_run_line_carries_the_error_and_nothing_it_did_not_know() -> None:
    record = failed_record(RUN, "BackendError: HTTP 500", 4.25)
    line = record.audit_line()
    assert set(line) == RUN_LINE_KEYS | {"error"}
    assert (line["decision"], line["error"], line["reasons"]) == (
        "failed",
        "BackendError: HTTP 500",
        ["BackendError: HTTP 500"],
    )
    assert line["dataset_sha256"] is None and line["config"] == {"seed": 42}
    assert record.outcome.run_name() == "retrain-bot-failed"


def test_audit_record_refuses_a_line_without_every_run_field() -> None:
    with pytest.raises(AuditError, match="job_id"):
        audit_record(
            run_id="r", project="p", backend="local", decision="failed", reasons=[], flow_run_id=None
        )
    with pytest.raises(AuditError, match="seq"):
        audit_record(run_id="r", project="p", backend="local", decision="failed", reasons=[], seq=3)
