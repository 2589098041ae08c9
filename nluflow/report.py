"""The run report: one markdown document a reviewer can read top to bottom (decision first)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def render_run_report(
    *,
    project: str,
    candidate_id: str,
    active_id: str | None,
    decision: Decision,
    candidate: EvaluationResult,
    active: EvaluationResult | None,
    validation: ValidationReport,
    data_info: Mapping[str, Any],
    figures: Mapping[str, Path],
    embed_figures: bool = True,
    outcome: RunOutcome | None = None,
) -> str:
    """The report, outcome first. ``outcome`` defaults to what the decision implies (promoted when the gates
    passed); the flow passes the run's actual outcome."""
    if outcome is None:
        outcome = decided(project, decision, candidate_id, active_id, promoted=decision.promote)
    lines = [
        f"# Retrain of `{project}`: candidate `{candidate_id}` {outcome.outcome}",
        "",
        f"**{outcome.message()}**",
        "",
        f"Active model before this run: `{active_id}`" if active_id else "No active model before this run.",
        "",
    ]
    if "new_since_active" in data_info:
        lines += [f"Data since the active model: **{data_info['new_since_active']}**", ""]
    if data_info.get("warning"):
        lines += [f"> **Warning:** {data_info['warning']}", ""]
    version = data_info.get("test_set_version")
    lines += [
        "## Gates",
        "",
    ]
    if outcome.outcome == "unchanged":
        # A model compared with itself scores a delta of 0: a gate table would say "does not beat the active
        # model", which is not what happened.
        lines += [
            "Not applied: the candidate is the active model (the same data, config and code give the same "
            "training key and model id), so there is nothing to compare; the active model stays.",
            "",
        ]
    else:
        lines += [decision.to_markdown(), ""]
    lines += [
        "## Metrics on the frozen test set",
        "",
        f"Test set {f'version {version}, ' if version else ''}sha256 `{candidate.test_sha256[:16]}…`, "
        f"{candidate.n} utterances; both models were scored on these same utterances.",
        "",
        metrics_table_markdown(candidate, active),
        "",
    ]
    if candidate.threshold is not None:
        lines += [
            f"At a confidence threshold of **{candidate.threshold:.3f}** the candidate's top intent is right "
            f"{(candidate.precision_at_threshold or 0):.1%} of the time "
            f"(target {candidate.target_precision:.0%}) "
            f"and {candidate.coverage:.1%} of utterances are accepted; the rest would go to a fallback.",
            "",
        ]
    else:
        lines += [
            f"No confidence threshold reaches {candidate.target_precision:.0%} precision on this test set.",
            "",
        ]
    lines += ["## Data", ""]
    # The figures of "+N new" and the warning are shown at the top already.
    shown_above = {*AUDIT_FIELDS, "warning"}
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in data_info.items() if k not in shown_above]
    lines += ["", validation.to_markdown(), ""]
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            title = FIGURE_TITLES.get(name, name)
            src = png_data_uri(path) if embed_figures else Path(path).name
            lines += [f"### {title}", "", f"![{title}]({src})", ""]
    return "\n".join(lines)
