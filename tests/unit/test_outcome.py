"""A run's outcome and its views: the state message, tags and run name the Prefect UI shows."""

from __future__ import annotations

from nluflow.backends.base import IntentScore, Parse
from nluflow.data.schema import Dataset, Example
from nluflow.data.validation import Finding, Severity, ValidationReport
from nluflow.evaluation import GatePolicy, decide, evaluate
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.notify import DecisionNotice, slack_payload
from nluflow.outcome import RunOutcome, blocked_by_validation, decided, superseded

TEST = Dataset.of(Example(text=f"{intent} {i}", intent=intent) for intent in ("a", "b") for i in range(20))


def _scored(misses: int) -> EvaluationResult:
    parses = [
        Parse(text=e.text, intent=IntentScore(name="x" if n < misses else e.intent, confidence=0.9))
        for n, e in enumerate(TEST.examples)
    ]
    return evaluate(TEST, parses)


def test_a_better_candidate_is_promoted_with_the_decisions_reason() -> None:
    decision = decide(_scored(0), _scored(4), GatePolicy())
    outcome = decided("bot", decision, "m-new", "m-old", promoted=True)
    assert outcome.outcome == "promoted" and outcome.audit_decision == "promote"
    assert outcome.message() == f"promoted m-new: {decision.reasons[0]}"
    assert outcome.message().startswith("promoted m-new: beats active by +")
    assert outcome.tags() == ["nluflow", "project:bot", "outcome:promoted"]
    assert outcome.run_name() == "retrain-bot-promoted-m-new"


def test_a_worse_candidate_is_rejected_saying_why() -> None:
    decision = decide(_scored(4), _scored(0), GatePolicy())
    outcome = decided("bot", decision, "m-new", "m-old", promoted=False)
    assert outcome.outcome == "rejected" and outcome.audit_decision == "reject"
    assert outcome.message() == f"rejected m-new: {decision.reason()}"
    assert "does not beat the active model" in outcome.message()
    assert decision.summary() == f"reject: {decision.reason()}"


def test_the_active_model_retrained_unchanged_is_neither_promoted_nor_rejected() -> None:
    same = _scored(2)
    decision = decide(same, same, GatePolicy())
    assert not decision.promote  # the gates alone would call it "does not beat the active model"
    outcome = decided("bot", decision, "m-same", "m-same", promoted=False)
    assert outcome.outcome == "unchanged" and outcome.audit_decision == "unchanged"
    assert outcome.message() == "unchanged: nothing new to train: candidate m-same is the active model"
    assert outcome.run_name() == "retrain-bot-unchanged-m-same"
    assert "outcome:unchanged" in outcome.tags()


def test_blocked_names_the_count_and_the_first_finding() -> None:
    finding = Finding(
        rule="min_intents",
        severity=Severity.BLOCK,
        message="data/nlu.jsonl: found 1 intent; expected at least 2",
        count=1,
    )
    report = ValidationReport(findings=[finding, finding.model_copy(update={"rule": "x"})], n_examples=3)
    outcome = blocked_by_validation("bot", report)
    assert outcome.message() == (
        "blocked: data failed validation (2 blocking findings); first: [min_intents] data/nlu.jsonl: found 1 "
        "intent; expected at least 2"
    )
    assert outcome.run_name() == "retrain-bot-blocked" and outcome.audit_decision == "blocked"


def test_message_of_a_run_without_candidate() -> None:
    failed = RunOutcome(outcome="failed", project="bot", candidate_id=None, reason="disk full")
    assert failed.message() == "failed: disk full"
    assert failed.tags()[-1] == "outcome:failed"


def test_a_candidate_beaten_to_the_slot_is_superseded_naming_the_winner_and_the_comparison() -> None:
    """It passed against the model it first compared with (none), but m-won became active first and the
    gates, run again against m-won, reject it."""
    again = decide(_scored(3), _scored(0), GatePolicy())
    outcome = superseded("bot", "m-late", None, "m-won", again)
    assert outcome.outcome == "superseded" and outcome.audit_decision == "superseded"
    assert outcome.message() == (
        "superseded m-late: m-won became active first (this run had compared with no active model); "
        f"against m-won: {again.reason()}"
    )
    assert "does not beat the active model" in outcome.message()
    assert outcome.tags()[-1] == "outcome:superseded"
    assert outcome.run_name() == "retrain-bot-superseded-m-late"
    named = superseded("bot", "m-late", "m-old", "m-won", again)
    assert "(this run had compared with m-old)" in named.reason


def test_a_superseded_notice_says_who_got_there_first() -> None:
    again = decide(_scored(3), _scored(0), GatePolicy())
    outcome = superseded("bot", "m-late", None, "m-won", again)
    notice = DecisionNotice.from_decision(
        "bot", again, promoted=False, candidate_id="m-late", previous_active="m-won", active="m-won"
    ).model_copy(update={"decision": outcome.audit_decision, "summary": outcome.message()})
    delta = again.deltas["macro_f1"]
    assert delta < 0
    assert notice.headline() == (
        f"nluflow · bot: candidate m-late superseded: m-won became active first (macro F1 {delta:+.4f})"
    )
    header = slack_payload(notice)["blocks"][0]["text"]["text"]
    assert header == "❌ bot: candidate not promoted"
