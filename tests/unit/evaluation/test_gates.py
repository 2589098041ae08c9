"""Promotion gates: policy bounds, absolute and comparison gates, must-pass, and the decision's messages."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from nluflow.backends.base import IntentScore, Parse
from nluflow.data.schema import Dataset, Entity, Example
from nluflow.errors import ConfigError
from nluflow.evaluation import (
    Decision,
    EntityMetrics,
    EvaluationResult,
    GatePolicy,
    MustPassResult,
    check_must_pass,
    decide,
    evaluate,
)

# 5 intents x 20 utterances, plus a rare intent with 5: the per-intent guard ignores it by default.
INTENTS = {"a": 20, "b": 20, "c": 20, "d": 20, "e": 20, "rare": 5}
GOLD = [(f"{intent} {i}", intent) for intent, count in INTENTS.items() for i in range(count)]
TEST = Dataset.of(Example(text=t, intent=i) for t, i in GOLD)


def _result(wrong: dict[str, int], test: Dataset = TEST) -> EvaluationResult:
    """Evaluate a model that gets the first ``wrong[intent]`` utterances of each intent wrong (as 'x')."""
    seen: dict[str, int] = {}
    parses = []
    for e in test.examples:
        seen[e.intent] = seen.get(e.intent, 0) + 1
        miss = seen[e.intent] <= wrong.get(e.intent, 0)
        name = "x" if miss else e.intent
        parses.append(Parse(text=e.text, intent=IntentScore(name=name, confidence=0.6 if miss else 0.9)))
    return evaluate(test, parses)


ACTIVE_ERRORS = {"a": 3, "b": 3, "c": 3, "d": 3, "e": 1}
ACTIVE = _result(ACTIVE_ERRORS)


def _gate(decision: Decision, name: str) -> tuple[bool, str]:
    [gate] = [g for g in decision.gates if g.name == name]
    return gate.passed, gate.reason


def test_policy_defaults_bounds_and_descriptions() -> None:
    policy = GatePolicy()
    assert (policy.min_macro_f1, policy.min_precision, policy.primary_metric) == (0.85, 0.80, "macro_f1")
    assert (policy.min_delta, policy.tolerance, policy.require_significance) == (0.0, 0.01, False)
    for name, field in GatePolicy.model_fields.items():
        assert field.description, f"{name} has no description"
        if field.annotation in (int, float):
            assert field.metadata, f"{name} has no bounds"
    with pytest.raises(ValidationError):
        GatePolicy(min_macro_f1=1.5)
    with pytest.raises(ValidationError):
        GatePolicy(bootstrap_resamples=10)
    with pytest.raises(ValidationError):
        GatePolicy(min_f1=0.9)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        policy.min_delta = 0.5  # type: ignore[misc]


def test_policy_parse_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        GatePolicy.parse({"min_macro_f1": 2, "tolerance": -1, "typo": 1})
    message = str(err.value)
    assert message.startswith("gate policy refused before any decision was made")
    assert "min_macro_f1" in message and "tolerance" in message and "typo" in message
    assert GatePolicy.parse({"primary_metric": "accuracy"}).primary_metric == "accuracy"


def test_first_model_needs_only_the_absolute_gates() -> None:
    decision = decide(ACTIVE, None, GatePolicy())
    assert decision.promote and decision.first_model
    assert [(g.name, g.status) for g in decision.gates] == [
        ("min_macro_f1", "pass"),
        ("min_precision", "pass"),
        ("must_pass", "skipped"),  # no must-pass file: listed as skipped, never as passed
    ]
    assert decision.bootstrap is None and decision.deltas == {}
    assert decision.summary().startswith(
        f"promote: first model of the project; macro F1 {ACTIVE.macro_f1:.3f} and macro precision"
    )
    assert decision.reasons[1] == f"macro F1 {ACTIVE.macro_f1:.3f} ≥ 0.850"


def test_first_model_below_the_floor_is_rejected_with_the_reason() -> None:
    weak = _result({"a": 12, "b": 12, "c": 12})
    decision = decide(weak, None, GatePolicy())
    assert not decision.promote
    assert decision.reasons[0] == f"macro F1 {weak.macro_f1:.3f} < 0.850: below the absolute minimum"
    assert decision.summary().startswith("reject: macro F1 ")


def test_better_candidate_is_promoted_with_its_interval() -> None:
    candidate = _result({"e": 1})
    decision = decide(candidate, ACTIVE, GatePolicy())
    assert decision.promote and not decision.first_model
    assert decision.bootstrap is not None and decision.bootstrap.metric == "macro_f1"
    assert decision.bootstrap.delta == pytest.approx(candidate.macro_f1 - ACTIVE.macro_f1)
    assert decision.deltas["macro_f1"] == pytest.approx(decision.bootstrap.delta)
    assert "threshold" not in decision.deltas
    assert re.fullmatch(
        r"promote: beats active by \+0\.\d{3} macro F1 \(95% CI [+-]0\.\d{3}\.\.\+0\.\d{3}\)",
        decision.summary(),
    ), decision.summary()
    names = [(g.name, g.status) for g in decision.gates]
    assert names == [
        ("min_macro_f1", "pass"),
        ("min_precision", "pass"),
        ("beats_active", "pass"),
        ("no_regression_intent_accuracy", "pass"),
        ("no_regression_entity_f1", "skipped"),  # the test set has no entities
        ("intent_regression", "pass"),
        ("must_pass", "skipped"),
    ]
    # promoting: the headline first, then every gate's (passing) reason
    assert len(decision.reasons) == 1 + len(decision.gates)


def test_a_tie_does_not_beat_the_active_model() -> None:
    decision = decide(_result(ACTIVE_ERRORS), ACTIVE, GatePolicy())
    assert not decision.promote
    passed, reason = _gate(decision, "beats_active")
    assert not passed
    assert reason == (
        f"macro F1 +0.000 vs active {ACTIVE.macro_f1:.3f}: not above min delta 0.000 — "
        "the candidate does not beat the active model"
    )
    assert decision.reasons == [reason]
    assert decision.summary() == f"reject: {reason}"


def test_min_delta_must_be_exceeded() -> None:
    candidate = _result({**ACTIVE_ERRORS, "a": 2})  # one more utterance right: a small improvement
    assert decide(candidate, ACTIVE, GatePolicy()).promote
    strict = decide(candidate, ACTIVE, GatePolicy(min_delta=0.05))
    assert not strict.promote
    assert "not above min delta 0.050" in _gate(strict, "beats_active")[1]


def test_other_headline_metrics_may_not_drop_beyond_tolerance() -> None:
    candidate = _result({"e": 1})
    worse_accuracy = candidate.model_copy(update={"accuracy": ACTIVE.accuracy - 0.05})
    decision = decide(worse_accuracy, ACTIVE, GatePolicy())
    assert not decision.promote
    passed, reason = _gate(decision, "no_regression_intent_accuracy")
    assert not passed
    assert reason == (
        f"accuracy {ACTIVE.accuracy - 0.05:.3f} vs active {ACTIVE.accuracy:.3f} (-0.050): "
        "drops more than the tolerance 0.010"
    )
    assert decide(worse_accuracy, ACTIVE, GatePolicy(tolerance=0.06)).promote
    # with accuracy primary, macro F1 is the one guarded
    by_accuracy = decide(candidate, ACTIVE, GatePolicy(primary_metric="accuracy"))
    assert "no_regression_macro_f1" in [g.name for g in by_accuracy.gates]
    assert by_accuracy.bootstrap is not None and by_accuracy.bootstrap.metric == "accuracy"
    assert by_accuracy.summary().startswith("promote: beats active by +")
    assert " accuracy (95% CI " in by_accuracy.summary()


def test_entity_f1_regression_and_floor() -> None:
    ents = EntityMetrics(precision=0.9, recall=0.9, f1=0.9, support=50, per_type={})
    active = ACTIVE.model_copy(update={"entity": ents})
    candidate = _result({"e": 1}).model_copy(update={"entity": ents.model_copy(update={"f1": 0.85})})
    decision = decide(candidate, active, GatePolicy())
    passed, reason = _gate(decision, "no_regression_entity_f1")
    assert not passed and reason.startswith("entity F1 0.850 vs active 0.900 (-0.050)")
    floor = decide(candidate, None, GatePolicy(min_entity_f1=0.88))
    assert _gate(floor, "min_entity_f1") == (False, "entity F1 0.850 < 0.880: below the absolute minimum")


def test_entity_floor_without_entities_in_the_test_set_fails_closed() -> None:
    decision = decide(ACTIVE, None, GatePolicy(min_entity_f1=0.5))
    assert not decision.promote
    passed, reason = _gate(decision, "min_entity_f1")
    assert not passed and "test set has no entity annotations" in reason


def test_significance_gate_uses_the_lower_end_of_the_interval() -> None:
    tiny = _result({**ACTIVE_ERRORS, "a": 2})  # one fixed utterance: many resamples do not contain it
    decision = decide(tiny, ACTIVE, GatePolicy(require_significance=True))
    passed, reason = _gate(decision, "significance")
    assert not passed and "the improvement is not significant on this test set" in reason
    assert decision.bootstrap is not None and decision.bootstrap.low <= 0.0
    clear = decide(_result({}), ACTIVE, GatePolicy(require_significance=True))
    assert _gate(clear, "significance")[0] and clear.promote
    # not required: no gate, but the interval is still computed and shown
    shown = decide(tiny, ACTIVE, GatePolicy())
    assert "significance" not in [g.name for g in shown.gates]
    assert shown.bootstrap is not None and "Paired bootstrap (1000 resamples)" in shown.to_markdown()


def test_per_intent_guard_names_regressed_intents_and_ignores_rare_ones() -> None:
    # Better overall, but intent 'e' loses 5 of 20 and the rare intent 1 of 5 (both drop more than 0.1 F1).
    candidate = _result({"e": 5, "rare": 1})
    decision = decide(candidate, ACTIVE, GatePolicy(min_macro_f1=0.5, min_precision=0.5))
    assert _gate(decision, "beats_active")[0]
    passed, reason = _gate(decision, "intent_regression")
    assert not passed
    e_before, e_after = ACTIVE.intent_f1()["e"], candidate.intent_f1()["e"]
    assert reason == (
        "1 intent lost more than 0.100 F1 (intents with support ≥ 10): "
        f"e {e_before:.3f}→{e_after:.3f} ({e_after - e_before:+.3f})"
    )
    assert "rare" not in reason
    lenient = decide(candidate, ACTIVE, GatePolicy(min_macro_f1=0.5, min_precision=0.5, min_intent_support=5))
    assert "rare" in _gate(lenient, "intent_regression")[1]


def test_check_must_pass_and_its_gate() -> None:
    cases = [
        Example(text="what is my balance", intent="balance"),
        Example(text="hi | there", intent="greet"),
        Example(text="bye", intent="goodbye"),
    ]
    parses = [
        Parse(text="what is my balance", intent=IntentScore(name="greet", confidence=0.81)),
        Parse(text="hi | there", intent=IntentScore(name="greet", confidence=0.99)),
        Parse(text="bye", intent=IntentScore(name="goodbye", confidence=0.7)),
    ]
    must = check_must_pass(cases, parses)
    assert must.total == 3
    assert must.failures == [
        {"text": "what is my balance", "expected": "balance", "predicted": "greet", "confidence": 0.81}
    ]
    decision = decide(ACTIVE, None, GatePolicy(), must_pass=must)
    assert not decision.promote
    assert decision.reasons == [
        "1 of 3 must-pass utterances fail: 'what is my balance' expected balance, got greet (0.81)"
    ]
    ok = check_must_pass(cases[1:], parses[1:])
    assert ok.passed and decide(ACTIVE, None, GatePolicy(), must_pass=ok).promote


def test_must_pass_names_at_most_ten_failures() -> None:
    failures = [{"text": f"t{i}", "expected": "a", "predicted": "b", "confidence": 0.5} for i in range(12)]
    decision = decide(ACTIVE, None, GatePolicy(), must_pass=MustPassResult(total=20, failures=failures))
    reason = _gate(decision, "must_pass")[1]
    assert reason.startswith("12 of 20 must-pass utterances fail: 't0' expected a, got b (0.50)")
    assert "'t9'" in reason and "'t10'" not in reason and reason.endswith("; and 2 more")


def test_must_pass_refuses_misaligned_predictions() -> None:
    case = Example(text="bye", intent="goodbye")
    with pytest.raises(ConfigError, match="1 must-pass cases but 0 predictions"):
        check_must_pass([case], [])
    with pytest.raises(ConfigError, match="must-pass case 0 is 'bye' but prediction 0 is for 'hello'"):
        check_must_pass([case], [Parse(text="hello", intent=IntentScore(name="goodbye", confidence=1.0))])


def test_results_from_different_test_sets_are_refused() -> None:
    other = Dataset.of([*TEST.examples[:-1], Example(text="changed", intent="rare")])
    with pytest.raises(ConfigError, match="same frozen test set; no decision was made"):
        decide(_result({}, other), ACTIVE, GatePolicy())


def test_markdown_table_lists_every_gate() -> None:
    cases = [Example(text="a | b", intent="a")]
    must = check_must_pass(cases, [Parse(text="a | b", intent=IntentScore(name="b", confidence=0.4))])
    decision = decide(_result({"e": 1}), ACTIVE, GatePolicy(), must_pass=must)
    markdown = decision.to_markdown()
    lines = markdown.splitlines()
    assert lines[0] == f"**{decision.summary().replace('|', chr(92) + '|')}**"
    header = lines.index("| gate | result | value | threshold | reason |")
    rows = [line for line in lines[header + 2 :] if line.startswith("| ")]
    assert len(rows) == len(decision.gates)
    assert rows[0].startswith("| min_macro_f1 | PASS | ")
    assert rows[-1].startswith("| must_pass | FAIL | 0.000 | 1.000 | ")
    assert "'a \\| b'" in rows[-1]  # pipes inside a reason do not break the table
    assert all(row.count(" | ") == 4 for row in rows)


def test_decide_is_pure_and_its_decision_serialises() -> None:
    candidate = _result({"e": 1})
    first = decide(candidate, ACTIVE, GatePolicy())
    assert decide(candidate, ACTIVE, GatePolicy()) == first
    assert Decision.model_validate_json(first.model_dump_json()) == first


def test_entity_results_from_evaluate_feed_the_entity_gates() -> None:
    test = Dataset.of(
        Example(
            text=f"fly to paris {i}",
            intent="book",
            entities=(Entity(start=7, end=12, entity="city", value="paris"),),
        )
        for i in range(3)
    )

    def parses(found: int) -> list[Parse]:
        return [
            Parse(
                text=e.text,
                intent=IntentScore(name="book", confidence=0.9),
                entities=e.entities if i < found else (),
            )
            for i, e in enumerate(test.examples)
        ]

    cand, act = evaluate(test, parses(2)), evaluate(test, parses(3))
    decision = decide(cand, act, GatePolicy(min_entity_f1=0.5))
    assert _gate(decision, "min_entity_f1")[0]
    assert not _gate(decision, "no_regression_entity_f1")[0]
    assert decision.deltas["entity_recall"] == pytest.approx(2 / 3 - 1)


def _result_with_confidence(confidence: float, wrong: int = 0) -> EvaluationResult:
    parses = [
        Parse(text=t, intent=IntentScore(name="x" if n < wrong else i, confidence=confidence))
        for n, (t, i) in enumerate(GOLD)
    ]
    return evaluate(TEST, parses)


def test_gates_that_checked_nothing_are_skipped_with_the_reason_and_do_not_block() -> None:
    decision = decide(_result({"e": 1}), ACTIVE, GatePolicy(min_intent_support=1000))
    gates = {g.name: g for g in decision.gates}
    guard = gates["intent_regression"]
    assert guard.status == "skipped" and guard.skipped and guard.value is None
    assert guard.reason.startswith("skipped: no intent has ≥ 1000 test utterances")
    assert gates["no_regression_entity_f1"].reason.startswith("skipped: the test set has no entity")
    assert gates["must_pass"].reason.startswith("skipped: no must-pass file")
    assert decision.promote  # a skipped gate does not block
    table = decision.to_markdown()
    assert "| intent_regression | SKIP |" in table
    assert "| must_pass | SKIP |" in table
    # With supported intents and a must-pass file, the same gates really check something.
    with_cases = decide(_result({"e": 1}), ACTIVE, GatePolicy(), MustPassResult(total=2, failures=[]))
    statuses = {g.name: g.status for g in with_cases.gates}
    assert statuses["intent_regression"] == "pass" and statuses["must_pass"] == "pass"


def test_entity_regression_is_compared_when_the_test_set_has_entities() -> None:
    city = Entity(start=0, end=5, entity="city", value="Paris")
    test = Dataset.of(Example(text=f"Paris {t}", intent=i, entities=[city]) for t, i in GOLD)

    def scored(found: int) -> EvaluationResult:
        parses = [
            Parse(
                text=e.text,
                intent=IntentScore(name=e.intent, confidence=0.9),
                entities=(city,) if n < found else (),
            )
            for n, e in enumerate(test.examples)
        ]
        return evaluate(test, parses)

    decision = decide(scored(50), scored(len(GOLD)), GatePolicy())
    [gate] = [g for g in decision.gates if g.name == "no_regression_entity_f1"]
    assert gate.status == "fail" and not gate.skipped
    assert "entity F1" in gate.reason and "drops more than the tolerance" in gate.reason


def test_degenerate_confidences_warn_but_do_not_block() -> None:
    sure = _result_with_confidence(0.99999998, wrong=3)
    decision = decide(sure, None, GatePolicy())
    assert decision.promote
    [warning] = decision.warnings
    assert warning.startswith(
        "degenerate confidences: 105 of 105 test answers (100%) have confidence > 0.999"
    )
    assert "**Warning:** degenerate confidences" in decision.to_markdown()
    # Ordinary confidences (0.6 wrong, 0.9 right) raise no warning.
    assert decide(_result({"e": 1}), ACTIVE, GatePolicy()).warnings == []


def test_entity_metrics_are_absent_not_zero_when_the_platform_predicts_no_entities() -> None:
    """A platform whose parses carry no entities at all (Cognigy's scores) is not scored 0 on entities: the
    metrics are absent, with the reason, and both entity gates are skipped with it."""
    city = Entity(start=0, end=5, entity="city", value="Paris")
    test = Dataset.of(Example(text=f"Paris {t}", intent=i, entities=[city]) for t, i in GOLD)

    def scored(entities_predicted: bool) -> EvaluationResult:
        parses = [
            Parse(
                text=e.text,
                intent=IntentScore(name=e.intent, confidence=0.9),
                entities_predicted=entities_predicted,
            )
            for e in test.examples
        ]
        return evaluate(test, parses)

    blind, seeing = scored(False), scored(True)
    assert blind.entity is None and "entity_f1" not in blind.headline()
    assert blind.entity_absent_reason and "no entity predictions" in blind.entity_absent_reason
    # The same empty predictions from a platform that does predict entities are a real 0.
    assert seeing.entity is not None and seeing.entity.f1 == 0.0 and seeing.entity_absent_reason is None
    for active in (blind, seeing):
        decision = decide(blind, active, GatePolicy(min_entity_f1=0.5))
        gates = {g.name: g for g in decision.gates}
        for name in ("min_entity_f1", "no_regression_entity_f1"):
            assert gates[name].status == "skipped" and gates[name].value is None
            assert gates[name].reason.startswith("skipped: the platform returned no entity predictions")
        assert "| min_entity_f1 | SKIP |" in decision.to_markdown()
    # A test set without entities still fails the entity floor closed, as before.
    assert _gate(decide(ACTIVE, None, GatePolicy(min_entity_f1=0.5)), "min_entity_f1")[0] is False
