"""Publishing stages: figures, the markdown report and tables as Prefect artifacts with stable keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nluflow.data.validation import ValidationReport
from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from nluflow.evaluation.gates import Decision
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.evaluation.plots import png_data_uri, render_figures
from nluflow.evaluation.report import error_rows, per_intent_rows
from nluflow.report import FIGURE_TITLES, render_run_report
from tasks.common import artifact_key


@task(name="publish-validation", cache_policy=NO_CACHE)
def publish_validation(project: str, report: ValidationReport) -> str:
    key = artifact_key(project, "validation")
    create_markdown_artifact(
        markdown=report.to_markdown(), key=key, description=f"Data validation for {project}"
    )
    return key


@task(name="render-figures", cache_policy=NO_CACHE)
def render_run_figures(result: EvaluationResult, outdir: str) -> dict[str, str]:
    return {k: str(v) for k, v in render_figures(result, Path(outdir)).items()}


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(
    project: str,
    candidate_id: str,
    active_id: str | None,
    decision: Decision,
    candidate: EvaluationResult,
    active: EvaluationResult | None,
    validation: ValidationReport,
    data_info: dict[str, Any],
    figures: dict[str, str],
    outdir: str,
) -> dict[str, str]:
    """Write report.md next to the figures and publish report, tables and images as artifacts."""
    fig_paths = {k: Path(v) for k, v in figures.items()}
    common: dict[str, Any] = dict(
        project=project,
        candidate_id=candidate_id,
        active_id=active_id,
        decision=decision,
        candidate=candidate,
        active=active,
        validation=validation,
        data_info=data_info,
        figures=fig_paths,
    )
    report_path = Path(outdir) / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    # The file links its PNGs; the artifact embeds them, so the Prefect UI shows them without file access.
    report_path.write_text(render_run_report(**common, embed_figures=False), encoding="utf-8")
    keys = {"report": artifact_key(project, "retrain-report")}
    create_markdown_artifact(
        markdown=render_run_report(**common, embed_figures=True),
        key=keys["report"],
        description=f"{project}: {decision.summary()}",
    )
    keys["per_intent"] = artifact_key(project, "per-intent-metrics")
    create_table_artifact(
        table=per_intent_rows(candidate, active), key=keys["per_intent"], description="Per-intent metrics"
    )
    keys["errors"] = artifact_key(project, "errors")
    create_table_artifact(
        table=error_rows(candidate), key=keys["errors"], description="Candidate's errors, confident first"
    )
    for name, path in fig_paths.items():
        key = artifact_key(project, name.replace("_", "-"))
        create_image_artifact(
            image_url=png_data_uri(path), key=key, description=FIGURE_TITLES.get(name, name)
        )
        keys[name] = key
    return {**keys, "report_path": str(report_path)}
