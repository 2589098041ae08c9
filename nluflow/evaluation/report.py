"""Tables of an evaluation for Prefect artifacts: headline metrics, per-intent rows, error rows.

Plain lists of dicts and markdown strings; the flow hands them to ``create_table_artifact`` /
``create_markdown_artifact`` unchanged. Numbers are rounded to 4 decimals for display.
"""

from __future__ import annotations

from typing import Any

from nluflow.evaluation.metrics import EvaluationResult

__all__ = ["error_rows", "metrics_table_markdown", "per_intent_rows"]

_DIGITS = 4
_LABELS: dict[str, str] = {
    "intent_accuracy": "intent accuracy",
    "macro_f1": "macro F1",
    "macro_precision": "macro precision",
    "weighted_f1": "weighted F1",
    "pr_auc": "PR-AUC (average precision)",
    "coverage_at_target": "coverage at target precision",
    "threshold": "confidence threshold",
    "entity_f1": "entity F1 (exact span)",
    "entity_precision": "entity precision",
    "entity_recall": "entity recall",
}


def metrics_table_markdown(candidate: EvaluationResult, active: EvaluationResult | None) -> str:
    """Headline metrics as a markdown table: metric | candidate | active | delta."""
    cand = candidate.headline()
    act = active.headline() if active is not None else {}
    keys = list(cand) + [key for key in act if key not in cand]
    lines = ["| metric | candidate | active | delta |", "|---|---:|---:|---:|"]
    for key in keys:
        c, a = cand.get(key), act.get(key)
        delta = f"{c - a:+.3f}" if c is not None and a is not None and key != "threshold" else "—"
        lines.append(f"| {_LABELS.get(key, key)} | {_fmt(c)} | {_fmt(a)} | {delta} |")
    lines.append("")
    lines.append(
        f"{candidate.n} test utterances (sha256 {candidate.test_sha256[:12]}); coverage and threshold at "
        f"target precision {candidate.target_precision:.2f}."
    )
    return "\n".join(lines) + "\n"


def per_intent_rows(candidate: EvaluationResult, active: EvaluationResult | None) -> list[dict[str, Any]]:
    """One row per gold intent: intent, support, precision, recall, f1, active_f1, delta.

    Sorted so the rows that need attention come first: by F1 change when there is an active model (largest
    regression first), otherwise by F1 (worst first); ties by intent name. ``active_f1`` and ``delta`` are
    ``None`` without an active model.
    """
    active_f1 = active.intent_f1() if active is not None else {}
    rows: list[dict[str, Any]] = []
    for label in candidate.gold_labels:
        entry = candidate.intent_report[label]
        f1 = float(entry["f1-score"])
        other = active_f1.get(label)
        rows.append(
            {
                "intent": label,
                "support": int(entry["support"]),
                "precision": round(float(entry["precision"]), _DIGITS),
                "recall": round(float(entry["recall"]), _DIGITS),
                "f1": round(f1, _DIGITS),
                "active_f1": round(other, _DIGITS) if other is not None else None,
                "delta": round(f1 - other, _DIGITS) if other is not None else None,
            }
        )
    if active is not None:
        rows.sort(key=lambda r: (r["delta"] if r["delta"] is not None else 0.0, r["f1"], r["intent"]))
    else:
        rows.sort(key=lambda r: (r["f1"], r["intent"]))
    return rows


def error_rows(result: EvaluationResult, limit: int = 200) -> list[dict[str, Any]]:
    """The most confident mistakes first: text, intent (gold), predicted, confidence; at most ``limit``."""
    return [
        {
            "text": err["text"],
            "intent": err["intent"],
            "predicted": err["intent_prediction"]["name"],
            "confidence": round(float(err["intent_prediction"]["confidence"]), _DIGITS),
        }
        for err in result.errors[: max(0, limit)]
    ]


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"
