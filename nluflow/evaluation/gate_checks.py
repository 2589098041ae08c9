"""The promotion gates, one small function each, of evaluation results and the policy (``decide`` runs them).

A gate yields a ``GateResult``: pass/fail, the value it looked at, the threshold it compared with, and a
reason a person can act on; a gate with nothing to check is ``skipped`` (see ``nluflow.evaluation.gates``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from nluflow.evaluation.compare import BootstrapResult, per_intent_deltas
from nluflow.evaluation.metrics import EvaluationResult

if TYPE_CHECKING:
    from nluflow.evaluation.gates import GatePolicy, MustPassResult

__all__ = ["GateResult", "absolute_gates", "comparison_gates", "must_pass_gate", "skipped_must_pass"]

_TIE = 1e-9
_MAX_NAMED = 10  # failing utterances / regressed intents named in a reason

_METRIC_NAMES: dict[str, str] = {
    "intent_accuracy": "accuracy",
    "macro_f1": "macro F1",
    "macro_precision": "macro precision",
    "weighted_f1": "weighted F1",
    "pr_auc": "PR-AUC",
    "coverage_at_target": "coverage at target precision",
    "entity_f1": "entity F1",
    "entity_precision": "entity precision",
    "entity_recall": "entity recall",
}
_PRIMARY_KEY: dict[str, str] = {"macro_f1": "macro_f1", "accuracy": "intent_accuracy"}
_REGRESSION_KEYS = ("intent_accuracy", "macro_f1", "entity_f1")


class GateResult(BaseModel):
    """One gate's verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    passed: bool = Field(description="False blocks the promotion; a skipped gate does not block.")
    value: float | None = Field(description="What the gate measured (e.g. a metric or a delta).")
    threshold: float | None = Field(description="What the value was compared with.")
    reason: str
    skipped: bool = Field(default=False, description="The gate had nothing to check; the reason says why.")

    @property
    def status(self) -> Literal["pass", "fail", "skipped"]:
        """``skipped``, ``pass`` or ``fail``: what the report and the CLI show."""
        if self.skipped:
            return "skipped"
        return "pass" if self.passed else "fail"


def absolute_gates(candidate: EvaluationResult, policy: GatePolicy) -> list[GateResult]:
    gates = [
        _floor_gate("min_macro_f1", "macro F1", candidate.macro_f1, policy.min_macro_f1),
        _floor_gate("min_precision", "macro precision", candidate.macro_precision, policy.min_precision),
    ]
    if policy.min_entity_f1 is not None:
        if candidate.entity is None and candidate.entity_absent_reason:
            # The test set has entities but the platform predicts none: nothing to check, not a failure.
            gates.append(_skipped("min_entity_f1", policy.min_entity_f1, candidate.entity_absent_reason))
        elif candidate.entity is None:
            # Fail closed: the policy asks for an entity guarantee nobody can check on this test set.
            gates.append(
                GateResult(
                    name="min_entity_f1",
                    passed=False,
                    value=None,
                    threshold=policy.min_entity_f1,
                    reason="entity F1 cannot be checked: the test set has no entity annotations; "
                    "add entities to the test set or unset min_entity_f1 in the gate policy",
                )
            )
        else:
            gates.append(_floor_gate("min_entity_f1", "entity F1", candidate.entity.f1, policy.min_entity_f1))
    return gates


def _floor_gate(name: str, label: str, value: float, floor: float) -> GateResult:
    passed = value >= floor - _TIE
    reason = (
        f"{label} {value:.3f} ≥ {floor:.3f}"
        if passed
        else f"{label} {value:.3f} < {floor:.3f}: below the absolute minimum"
    )
    return GateResult(name=name, passed=passed, value=value, threshold=floor, reason=reason)


def comparison_gates(
    candidate: EvaluationResult,
    active: EvaluationResult,
    policy: GatePolicy,
    bootstrap: BootstrapResult,
    cand_h: dict[str, float],
    act_h: dict[str, float],
) -> list[GateResult]:
    primary = _PRIMARY_KEY[policy.primary_metric]
    gates = [_beats_active_gate(policy, primary, cand_h, act_h)]
    for key in _REGRESSION_KEYS:
        skipped = _entity_comparison_skipped(candidate, active) if key == "entity_f1" else None
        if skipped is not None:
            gates.append(_skipped(f"no_regression_{key}", -policy.tolerance, skipped))
        elif key != primary and key in cand_h and key in act_h:
            gates.append(_regression_gate(key, policy, cand_h, act_h))
    if policy.require_significance:
        gates.append(_significance_gate(bootstrap, _METRIC_NAMES[primary]))
    gates.append(_intent_regression_gate(candidate, active, policy))
    return gates


def _skipped(name: str, threshold: float | None, why: str) -> GateResult:
    """A gate that had nothing to check: listed, never blocking, and the reason says why."""
    return GateResult(
        name=name, passed=True, skipped=True, value=None, threshold=threshold, reason=f"skipped: {why}"
    )


def _entity_comparison_skipped(candidate: EvaluationResult, active: EvaluationResult) -> str | None:
    """Why entity F1 cannot be compared (no entity predictions, or no entity annotations); None if it can."""
    absent = candidate.entity_absent_reason or active.entity_absent_reason
    if absent and (candidate.entity is None or active.entity is None):
        return f"{absent}, so entity F1 was not compared"
    if candidate.entity is None:
        return "the test set has no entity annotations, so entity F1 was not compared"
    return None


def _beats_active_gate(
    policy: GatePolicy, primary: str, cand_h: dict[str, float], act_h: dict[str, float]
) -> GateResult:
    delta = cand_h[primary] - act_h[primary]
    beats = delta > policy.min_delta + _TIE
    head = f"{_METRIC_NAMES[primary]} {signed(delta)} vs active {act_h[primary]:.3f}"
    return GateResult(
        name="beats_active",
        passed=beats,
        value=delta,
        threshold=policy.min_delta,
        reason=f"{head}: above min delta {policy.min_delta:.3f}"
        if beats
        else f"{head}: not above min delta {policy.min_delta:.3f} — "
        "the candidate does not beat the active model",
    )


def _regression_gate(
    key: str, policy: GatePolicy, cand_h: dict[str, float], act_h: dict[str, float]
) -> GateResult:
    drop = act_h[key] - cand_h[key]
    ok = drop <= policy.tolerance + _TIE
    change = f"{_METRIC_NAMES[key]} {cand_h[key]:.3f} vs active {act_h[key]:.3f} ({signed(-drop)})"
    return GateResult(
        name=f"no_regression_{key}",
        passed=ok,
        value=-drop,
        threshold=-policy.tolerance,
        reason=f"{change}: within tolerance {policy.tolerance:.3f}"
        if ok
        else f"{change}: drops more than the tolerance {policy.tolerance:.3f}",
    )


def _significance_gate(bootstrap: BootstrapResult, label: str) -> GateResult:
    significant = bootstrap.low > _TIE
    return GateResult(
        name="significance",
        passed=significant,
        value=bootstrap.low,
        threshold=0.0,
        reason=f"{label} delta {signed(bootstrap.delta)}, {ci_text(bootstrap)} lies above 0"
        if significant
        else f"{label} delta {signed(bootstrap.delta)}, {ci_text(bootstrap)} does not lie above 0: "
        "the improvement is not significant on this test set",
    )


def _intent_regression_gate(
    candidate: EvaluationResult, active: EvaluationResult, policy: GatePolicy
) -> GateResult:
    deltas = per_intent_deltas(candidate, active)
    support = {label: int(candidate.intent_report[label]["support"]) for label in deltas}
    guarded = [label for label in deltas if support[label] >= policy.min_intent_support]
    regressed = sorted(
        (label for label in guarded if -deltas[label] > policy.max_intent_f1_drop + _TIE),
        key=lambda label: (deltas[label], label),
    )
    worst = min((deltas[label] for label in guarded), default=0.0)
    scope = f"intents with support ≥ {policy.min_intent_support}"
    if not guarded:
        return _skipped(
            "intent_regression",
            -policy.max_intent_f1_drop,
            f"no intent has ≥ {policy.min_intent_support} test utterances (min_intent_support), so no "
            "per-intent F1 was compared; grow the test set or lower min_intent_support",
        )
    if not regressed:
        reason = (
            f"no intent lost more than {policy.max_intent_f1_drop:.3f} F1 ({len(guarded)} {scope}; "
            f"largest change {signed(worst)})"
        )
        return GateResult(
            name="intent_regression",
            passed=True,
            value=worst,
            threshold=-policy.max_intent_f1_drop,
            reason=reason,
        )
    cand_f1, act_f1 = candidate.intent_f1(), active.intent_f1()
    named = ", ".join(
        f"{label} {act_f1[label]:.3f}→{cand_f1[label]:.3f} ({signed(deltas[label])})"
        for label in regressed[:_MAX_NAMED]
    )
    more = f" and {len(regressed) - _MAX_NAMED} more" if len(regressed) > _MAX_NAMED else ""
    noun = "intent" if len(regressed) == 1 else "intents"
    reason = (
        f"{len(regressed)} {noun} lost more than {policy.max_intent_f1_drop:.3f} F1 ({scope}): {named}{more}"
    )
    return GateResult(
        name="intent_regression",
        passed=False,
        value=worst,
        threshold=-policy.max_intent_f1_drop,
        reason=reason,
    )


def skipped_must_pass() -> GateResult:
    return _skipped(
        "must_pass", None, "no must-pass file was given (--must-pass), so no utterance was checked"
    )


def must_pass_gate(must_pass: MustPassResult) -> GateResult:
    failed = len(must_pass.failures)
    if not failed:
        return GateResult(
            name="must_pass",
            passed=True,
            value=float(must_pass.total),
            threshold=float(must_pass.total),
            reason=f"all {must_pass.total} must-pass utterances get their expected intent",
        )
    named = "; ".join(
        f"{f['text']!r} expected {f['expected']}, got {f['predicted']} ({float(f['confidence']):.2f})"
        for f in must_pass.failures[:_MAX_NAMED]
    )
    more = f"; and {failed - _MAX_NAMED} more" if failed > _MAX_NAMED else ""
    return GateResult(
        name="must_pass",
        passed=False,
        value=float(must_pass.total - failed),
        threshold=float(must_pass.total),
        reason=f"{failed} of {must_pass.total} must-pass utterances fail: {named}{more}",
    )


def signed(x: float, digits: int = 3) -> str:
    r = round(x, digits)
    return f"{r + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0, so ties read "+0.000"


def ci_text(b: BootstrapResult) -> str:
    return f"{_pct(b.confidence)} CI {signed(b.low)}..{signed(b.high)}"


def _pct(share: float) -> str:
    pct = share * 100.0
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 1e-9 else f"{pct:.1f}%"


def num_text(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
