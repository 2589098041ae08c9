"""Promotion gates and the decision: promote the candidate only if it passes every gate.

``decide(candidate, active, policy, must_pass)`` is a pure function of evaluation results. Each gate yields
pass/fail, the value it looked at, the threshold it compared with, and a reason a person can act on.

Gates, in the order they are listed:

* ``min_macro_f1``, ``min_precision`` (macro precision), ``min_entity_f1`` (only when the policy sets it):
  absolute quality floors; they apply to every candidate.
* With an active model only -- the first model of a project (``active is None``) has nothing to be compared
  with, so these gates are **omitted** (not listed as passed) and ``Decision.first_model`` is true:

  - ``beats_active``: the primary metric must exceed the active model's by more than ``min_delta``;
  - ``no_regression_<metric>``: the other headline metrics (accuracy, macro F1, entity F1) may not drop by
    more than ``tolerance``;
  - ``significance`` (only when ``require_significance``): the lower end of the paired bootstrap interval of
    the primary delta must be above 0. The interval is computed and shown whenever an active model exists;
  - ``intent_regression``: no intent with at least ``min_intent_support`` test utterances may lose more than
    ``max_intent_f1_drop`` F1; the intents that did are named.
* ``must_pass``: when must-pass cases are given, every one must get its expected intent; failures are named.

A gate that had nothing to check is listed as **skipped** with the reason (``GateResult.skipped``), never as
passed: the per-intent guard when no intent has ``min_intent_support`` test utterances, the entity regression
guard when the test set has no entities, both entity gates when the platform returns no entity predictions
(entity metrics are then absent, ``EvaluationResult.entity_absent_reason``, never a 0), ``must_pass`` without
a must-pass file. Skipped gates do not block.

``Decision.warnings`` flags results that pass but should not be trusted, e.g. degenerate confidences (a model
that answers almost everything with confidence ≈ 1.0, so no threshold can separate right from wrong).

Differences smaller than 1e-9 are ties: summing the same counts in another order cannot make a model "better".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nluflow.backends.base import Parse
from nluflow.data.schema import Example
from nluflow.errors import ConfigError
from nluflow.evaluation.compare import BootstrapResult, paired_bootstrap
from nluflow.evaluation.gate_checks import (
    GateResult,
    absolute_gates,
    ci_text,
    comparison_gates,
    md_cell,
    must_pass_gate,
    num_text,
    signed,
    skipped_must_pass,
)
from nluflow.evaluation.metrics import EvaluationResult

__all__ = ["Decision", "GatePolicy", "GateResult", "MustPassResult", "check_must_pass", "decide"]


class GatePolicy(BaseModel):
    """What a candidate must achieve to replace the active model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_macro_f1: float = Field(
        default=0.85, ge=0.0, le=1.0, description="Lowest macro F1 on the test set any model may have."
    )
    min_precision: float = Field(
        default=0.80, ge=0.0, le=1.0, description="Lowest macro precision on the test set any model may have."
    )
    primary_metric: Literal["macro_f1", "accuracy"] = Field(
        default="macro_f1", description="The metric the candidate must beat the active model on."
    )
    min_delta: float = Field(
        default=0.0,
        ge=-1.0,
        le=1.0,
        description="The candidate must beat the active model on the primary metric by more than this.",
    )
    tolerance: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="How much the other headline metrics (accuracy, macro F1, entity F1) may drop.",
    )
    require_significance: bool = Field(
        default=False,
        description="Require the lower end of the bootstrap interval of the primary delta to be above 0.",
    )
    bootstrap_resamples: int = Field(
        default=1000, ge=100, le=100_000, description="Resamples of the paired bootstrap."
    )
    bootstrap_confidence: float = Field(
        default=0.95, ge=0.5, le=0.999, description="Coverage of the bootstrap confidence interval."
    )
    max_intent_f1_drop: float = Field(
        default=0.10, ge=0.0, le=1.0, description="Largest F1 drop any single well-supported intent may have."
    )
    min_intent_support: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="Test utterances an intent needs for the per-intent regression guard.",
    )
    min_entity_f1: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Lowest exact-span entity F1; None disables the gate."
    )

    @classmethod
    def parse(cls, data: dict[str, Any]) -> GatePolicy:
        """Validate a user-supplied policy, raising ConfigError with every problem listed."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'policy'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"gate policy refused before any decision was made: {problems}") from None


class MustPassResult(BaseModel):
    """Utterances that must always get their expected intent, and the ones that did not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total: int
    failures: list[dict[str, Any]] = Field(description="{text, expected, predicted, confidence} per failure.")

    @property
    def passed(self) -> bool:
        return not self.failures


def check_must_pass(cases: Sequence[Example], parses: Sequence[Parse]) -> MustPassResult:
    """Compare the predicted intent of each must-pass utterance with its expected intent (entities are not
    checked). ``parses`` must be the predictions for ``cases``, in the same order."""
    if len(cases) != len(parses):
        raise ConfigError(
            f"{len(cases)} must-pass cases but {len(parses)} predictions; expected one prediction per case, "
            "in the same order; the must-pass check was not run"
        )
    failures: list[dict[str, Any]] = []
    for i, (case, parse) in enumerate(zip(cases, parses, strict=True)):
        if " ".join(case.text.split()) != " ".join(parse.text.split()):
            raise ConfigError(
                f"{case.where()}: must-pass case {i} is {case.text!r} but prediction {i} is for "
                f"{parse.text!r}; expected predictions in case order; the must-pass check was not run"
            )
        if parse.intent.name != case.intent:
            failures.append(
                {
                    "text": case.text,
                    "expected": case.intent,
                    "predicted": parse.intent.name,
                    "confidence": float(parse.intent.confidence),
                }
            )
    return MustPassResult(total=len(cases), failures=failures)


class Decision(BaseModel):
    """Whether to promote the candidate, and every gate with its reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    promote: bool
    first_model: bool = Field(description="No active model existed; only absolute gates and must-pass apply.")
    gates: list[GateResult]
    reasons: list[str] = Field(description="Every failing gate's reason; when promoting, why.")
    deltas: dict[str, float] = Field(description="Candidate minus active, per headline metric.")
    bootstrap: BootstrapResult | None = Field(description="Paired bootstrap of the primary delta.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Results to distrust that do not block (e.g. degenerate confidences).",
    )

    def summary(self) -> str:
        """One line, e.g. ``promote: beats active by +0.031 macro F1 (95% CI +0.012..+0.050)``."""
        verdict = "promote" if self.promote else "reject"
        reason = self.reason()
        return f"{verdict}: {reason}" if reason else verdict

    def reason(self) -> str:
        """Why, in one line: the headline reason of a promotion, or the first two failing gates' reasons."""
        if not self.reasons:
            return ""
        if self.promote:
            return self.reasons[0]
        more = f" (+{len(self.reasons) - 2} more)" if len(self.reasons) > 2 else ""
        return f"{'; '.join(self.reasons[:2])}{more}"

    def to_markdown(self) -> str:
        """The gate table (gate | result | value | threshold | reason), under the one-line summary."""
        lines = [
            f"**{md_cell(self.summary())}**",
            "",
            "| gate | result | value | threshold | reason |",
            "|---|:---:|---:|---:|---|",
        ]
        for gate in self.gates:
            mark = _MARKS[gate.status]  # plain text: renders without emoji fonts
            value, threshold = num_text(gate.value), num_text(gate.threshold)
            lines.append(f"| {gate.name} | {mark} | {value} | {threshold} | {md_cell(gate.reason)} |")
        if self.first_model:
            lines += ["", "First model of the project: there is no active model to compare with."]
        for warning in self.warnings:
            lines += ["", f"**Warning:** {md_cell(warning)}"]
        if self.bootstrap is not None:
            b = self.bootstrap
            lines += [
                "",
                f"Paired bootstrap ({b.n_resamples} resamples): {_METRIC_LABEL[b.metric]} delta "
                f"{signed(b.delta)}, {ci_text(b)}.",
            ]
        return "\n".join(lines) + "\n"


_METRIC_LABEL: dict[str, str] = {"macro_f1": "macro F1", "accuracy": "accuracy"}
_MARKS: dict[str, str] = {"pass": "PASS", "fail": "FAIL", "skipped": "SKIP"}
# Degenerate confidences: above this share of answers at confidence > _DEGENERATE_CONFIDENCE, the model's
# confidences carry no information (a tiny model answers "what's the capital of France" with 0.99999998).
_DEGENERATE_CONFIDENCE = 0.999
_DEGENERATE_SHARE = 0.95


def decide(
    candidate: EvaluationResult,
    active: EvaluationResult | None,
    policy: GatePolicy,
    must_pass: MustPassResult | None = None,
) -> Decision:
    """Run every gate of ``policy`` on the candidate (against ``active`` when there is one)."""
    if active is not None:
        _check_same_test_set(candidate, active)

    gates = absolute_gates(candidate, policy)
    bootstrap: BootstrapResult | None = None
    deltas: dict[str, float] = {}
    headline_reason: str | None = None
    if active is not None:
        cand_h, act_h = candidate.headline(), active.headline()
        deltas = {key: cand_h[key] - act_h[key] for key in cand_h if key in act_h and key != "threshold"}
        bootstrap = paired_bootstrap(
            candidate.y_true,
            candidate.y_pred,
            active.y_pred,
            metric=policy.primary_metric,
            n_resamples=policy.bootstrap_resamples,
            confidence=policy.bootstrap_confidence,
        )
        gates += comparison_gates(candidate, active, policy, bootstrap, cand_h, act_h)
        label = _METRIC_LABEL[bootstrap.metric]
        headline_reason = f"beats active by {signed(bootstrap.delta)} {label} ({ci_text(bootstrap)})"
    gates.append(must_pass_gate(must_pass) if must_pass is not None else skipped_must_pass())

    promote = all(g.passed for g in gates)
    if not promote:
        reasons = [g.reason for g in gates if not g.passed]
    else:
        if headline_reason is None:
            headline_reason = (
                f"first model of the project; macro F1 {candidate.macro_f1:.3f} and macro precision "
                f"{candidate.macro_precision:.3f} pass the absolute gates"
            )
        reasons = [headline_reason, *(g.reason for g in gates)]
    return Decision(
        promote=promote,
        first_model=active is None,
        gates=gates,
        reasons=reasons,
        deltas=deltas,
        bootstrap=bootstrap,
        warnings=confidence_warnings(candidate),
    )


def confidence_warnings(result: EvaluationResult) -> list[str]:
    """Warnings when a model's confidences are degenerate: they cannot tell right answers from wrong ones.

    Two signs, either is enough: almost every answer has confidence > 0.999, or reaching the target precision
    takes a threshold above 0.999 (so a confidence threshold would accept nothing useful).
    """
    if not result.confidences:
        return []
    warnings: list[str] = []
    high = sum(1 for c in result.confidences if c > _DEGENERATE_CONFIDENCE)
    share = high / len(result.confidences)
    if share >= _DEGENERATE_SHARE:
        warnings.append(
            f"degenerate confidences: {high} of {len(result.confidences)} test answers ({share:.0%}) have "
            f"confidence > {_DEGENERATE_CONFIDENCE}, so confidence cannot tell right answers from wrong ones "
            "(typical of a model trained on very little data); add training data before relying on a "
            "confidence threshold or fallback"
        )
    elif result.threshold is not None and result.threshold > _DEGENERATE_CONFIDENCE:
        warnings.append(
            f"degenerate confidences: target precision {result.target_precision:.3f} needs a confidence "
            f"threshold of {result.threshold:.6f}, which accepts only {result.coverage:.0%} of the test "
            "answers; the model's confidences are not informative"
        )
    return warnings


def _check_same_test_set(candidate: EvaluationResult, active: EvaluationResult) -> None:
    if candidate.test_sha256 != active.test_sha256 or candidate.y_true != active.y_true:
        raise ConfigError(
            f"the candidate was evaluated on test set sha256 {candidate.test_sha256[:12]} ({candidate.n} "
            f"utterances) but the active model on {active.test_sha256[:12]} ({active.n} utterances); "
            "expected both on the same frozen test set; no decision was made — evaluate the active model on "
            "the candidate's test set"
        )
