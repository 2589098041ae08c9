"""Publishing stages: figures, the markdown report and tables as Prefect artifacts with stable keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from nluflow.data.validation import ValidationReport
from nluflow.evaluation.gates import Decision
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.evaluation.plots import png_data_uri, render_figures
from nluflow.evaluation.report import error_rows, per_intent_rows
from nluflow.hashing import sha256_json
from nluflow.report import FIGURE_TITLES, render_run_report
from nluflow.s3 import sync_folder
from tasks.common import StoreSpec, artifact_key, cache_key, cache_policy


@task(name="publish-validation", cache_policy=NO_CACHE)
def publish_validation(project: str, report: ValidationReport) -> str:
    key = artifact_key(project, "validation")
    create_markdown_artifact(
        markdown=report.to_markdown(), key=key, description=f"Data validation for {project}"
    )
    return key


def _figures_id(result: EvaluationResult) -> str:
    """Figures depend only on the per-utterance predictions on one test set."""
    return sha256_json(
        [result.test_sha256, result.target_precision, result.y_true, result.y_pred, result.confidences]
    )[:24]


def _figures_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    return cache_key("render-figures", _figures_id(inputs["result"]), inputs["workspace_path"])


@task(name="render-figures", cache_policy=cache_policy(_figures_key), persist_result=True)
def render_run_figures(result: EvaluationResult, workspace_path: str) -> dict[str, str]:
    """Render the candidate's figures once per (predictions, test set); an unchanged rerun reuses them."""
    folder = Path(workspace_path) / "figures" / _figures_id(result)
    return {k: str(v) for k, v in render_figures(result, folder).items()}


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
    report_dir = Path(outdir)
    report_dir.mkdir(parents=True, exist_ok=True)
    fig_paths = {}
    for name, src in figures.items():  # the run folder is self-contained: the report links its own copies
        fig_paths[name] = Path(shutil.copy2(src, report_dir / Path(src).name))
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
    metrics = {
        "candidate": {"model_id": candidate_id, **candidate.headline()},
        "active": {"model_id": active_id, **active.headline()} if active else None,
        "decision": decision.model_dump(mode="json"),
        "test_sha256": candidate.test_sha256,
    }
    (report_path.parent / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
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


@task(name="sync-run-to-store", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def sync_run_to_store(store: StoreSpec, project: str, run_id: str, outdir: str, audit_path: str) -> list[str]:
    """Copy the run's report, figures and metrics under ``<project>/runs/<run id>/`` in the store, and for a
    remote store also the audit log (kept as a local file, uploaded after each line)."""
    model_store = store.build(create=True)
    keys = sync_folder(model_store.fs, Path(outdir), f"{project}/runs/{run_id}")
    if not store.is_local():
        model_store.fs.put_file(Path(audit_path), f"{project}/audit.jsonl")
        keys.append(f"{project}/audit.jsonl")
    return keys
