"""The run report: one markdown document a reviewer can read top to bottom (decision first)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nluflow.data.validation import ValidationReport
from nluflow.evaluation.gates import Decision
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.evaluation.plots import png_data_uri
from nluflow.evaluation.report import metrics_table_markdown
from nluflow.outcome import RunOutcome, decided
from nluflow.testset import AUDIT_FIELDS

FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix (candidate, row-normalised)",
    "pr_curve": "Precision–recall of the top intent against its confidence",
    "intent_f1": "Per-intent F1 (candidate), worst first",
    "confidence_hist": "Confidence of correct and wrong predictions",
}


class ReportInputs(BaseModel):
    """What a run report is made of: the models, their scores on the frozen test set, the decision, the
    data, the figures and the run's outcome (one object for the report file and the report artifact)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    candidate_id: str
    active_id: str | None = None
    decision: Decision
    candidate: EvaluationResult
    active: EvaluationResult | None = None
    validation: ValidationReport
    data_info: dict[str, Any] = Field(default_factory=dict)
    figures: dict[str, str] = Field(default_factory=dict, description="Figure files, by name.")
    outcome: RunOutcome | None = Field(
        default=None,
        description="The run's outcome; None: what the decision implies (promoted if it passed).",
    )

    def run_outcome(self) -> RunOutcome:
        if self.outcome is not None:
            return self.outcome
        return decided(
            self.project, self.decision, self.candidate_id, self.active_id, promoted=self.decision.promote
        )


def _heading(report: ReportInputs, outcome: RunOutcome) -> list[str]:
    info = report.data_info
    lines = [
        f"# Retrain of `{report.project}`: candidate `{report.candidate_id}` {outcome.outcome}",
        "",
        f"**{outcome.message()}**",
        "",
        f"Active model before this run: `{report.active_id}`"
        if report.active_id
        else "No active model before this run.",
        "",
    ]
    if "new_since_active" in info:
        lines += [f"Data since the active model: **{info['new_since_active']}**", ""]
    if info.get("warning"):
        lines += [f"> **Warning:** {info['warning']}", ""]
    return lines


def _gates(report: ReportInputs, outcome: RunOutcome) -> list[str]:
    lines = ["## Gates", ""]
    if outcome.outcome == "unchanged":
        # A model compared with itself scores a delta of 0: a gate table would say "does not beat the active
        # model", which is not what happened.
        return [
            *lines,
            "Not applied: the candidate is the active model (the same data, config and code give the same "
            "training key and model id), so there is nothing to compare; the active model stays.",
            "",
        ]
    return [*lines, report.decision.to_markdown(), ""]


def _metrics(report: ReportInputs) -> list[str]:
    candidate, version = report.candidate, report.data_info.get("test_set_version")
    lines = [
        "## Metrics on the frozen test set",
        "",
        f"Test set {f'version {version}, ' if version else ''}sha256 `{candidate.test_sha256[:16]}…`, "
        f"{candidate.n} utterances; both models were scored on these same utterances.",
        "",
        metrics_table_markdown(candidate, report.active),
        "",
    ]
    if candidate.threshold is not None:
        return [
            *lines,
            f"At a confidence threshold of **{candidate.threshold:.3f}** the candidate's top intent is right "
            f"{candidate.precision_at_threshold or 0:.1%} of the time "
            f"(target {candidate.target_precision:.0%}) "
            f"and {candidate.coverage:.1%} of utterances are accepted; the rest would go to a fallback.",
            "",
        ]
    return [
        *lines,
        f"No confidence threshold reaches {candidate.target_precision:.0%} precision on this test set.",
        "",
    ]


def _data(report: ReportInputs) -> list[str]:
    # The figures of "+N new" and the warning are shown at the top already.
    shown_above = {*AUDIT_FIELDS, "warning"}
    lines = ["## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in report.data_info.items() if k not in shown_above]
    return [*lines, "", report.validation.to_markdown(), ""]


def _figures(figures: Mapping[str, Path], embed: bool) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for name, path in figures.items():
        title = FIGURE_TITLES.get(name, name)
        src = png_data_uri(path) if embed else Path(path).name
        lines += [f"### {title}", "", f"![{title}]({src})", ""]
    return lines


def render_run_report(
    report: ReportInputs, *, figures: Mapping[str, Path] | None = None, embed_figures: bool = True
) -> str:
    """The report, outcome first. ``figures`` overrides the report's figure files (e.g. copies beside the
    report file, which links them; with ``embed_figures`` the images are embedded instead)."""
    outcome = report.run_outcome()
    shown = figures if figures is not None else {k: Path(v) for k, v in report.figures.items()}
    lines = [
        *_heading(report, outcome),
        *_gates(report, outcome),
        *_metrics(report),
        *_data(report),
        *_figures(shown, embed_figures),
    ]
    return "\n".join(lines)


def run_metrics(report: ReportInputs) -> dict[str, Any]:
    """``metrics.json`` beside the report: both models' headline metrics, the decision, the test set."""
    candidate, active = report.candidate, report.active
    return {
        "candidate": {"model_id": report.candidate_id, **candidate.headline()},
        "active": {"model_id": report.active_id, **active.headline()} if active else None,
        "decision": report.decision.model_dump(mode="json"),
        "test_sha256": candidate.test_sha256,
    }
