"""Evaluation: metrics on a frozen test set, champion-vs-challenger comparison, promotion gates, figures.

``evaluate`` scores predictions; ``decide`` turns two evaluations and a ``GatePolicy`` into a ``Decision``;
``render_figures`` and the ``report`` helpers make what a run publishes.
"""

from nluflow.evaluation.compare import (
    BootstrapResult,
    macro_f1_from_labels,
    paired_bootstrap,
    per_intent_deltas,
)
from nluflow.evaluation.gates import Decision, GatePolicy, GateResult, MustPassResult, check_must_pass, decide
from nluflow.evaluation.metrics import (
    EntityMetrics,
    EntityTypeMetrics,
    EvaluationResult,
    entity_metrics,
    evaluate,
    threshold_for_precision,
)
from nluflow.evaluation.plots import png_data_uri, render_figures
from nluflow.evaluation.report import error_rows, metrics_table_markdown, per_intent_rows

__all__ = [
    "BootstrapResult",
    "Decision",
    "EntityMetrics",
    "EntityTypeMetrics",
    "EvaluationResult",
    "GatePolicy",
    "GateResult",
    "MustPassResult",
    "check_must_pass",
    "decide",
    "entity_metrics",
    "error_rows",
    "evaluate",
    "macro_f1_from_labels",
    "metrics_table_markdown",
    "paired_bootstrap",
    "per_intent_deltas",
    "per_intent_rows",
    "png_data_uri",
    "render_figures",
    "threshold_for_precision",
]
