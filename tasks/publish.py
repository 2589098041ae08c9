"""Publishing stages: figures, the markdown report and tables as Prefect artifacts with stable keys.

The retrain report itself is published by :func:`publish_run_report`, a plain function the flow calls: an
artifact created outside a task belongs to the flow run, so the run page lists it as the run's own artifact
(first, under "Flow run", in the classic UI) rather than as the n-th artifact of some task run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from nluflow.data.validation import ValidationReport
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.evaluation.plots import png_data_uri, render_figures
from nluflow.evaluation.report import error_rows, per_intent_rows
from nluflow.hashing import sha256_json
from nluflow.outcome import RUN_TAG, RunOutcome
from nluflow.report import FIGURE_TITLES, ReportInputs, render_run_report, run_metrics
from nluflow.store import layout
from nluflow.store.s3 import sync_folder
from tasks.common import StoreSpec, artifact_key, cache_key, cache_policy, crash_point

logger = logging.getLogger("nluflow.publish")


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
def publish_report(report: ReportInputs, outdir: str) -> dict[str, str]:
    """Write report.md and metrics.json next to copies of the figures and publish the tables and images as
    artifacts (the report's artifact is the flow's: :func:`publish_run_report`)."""
    report_dir = Path(outdir)
    report_dir.mkdir(parents=True, exist_ok=True)
    # The run folder is self-contained: the report links its own copies of the figures.
    figures = {
        name: Path(shutil.copy2(src, report_dir / Path(src).name)) for name, src in report.figures.items()
    }
    report_path = report_dir / "report.md"
    # The file links its PNGs; the artifact embeds them, so the Prefect UI shows them without file access.
    report_path.write_text(render_run_report(report, figures=figures, embed_figures=False), encoding="utf-8")
    (report_dir / "metrics.json").write_text(json.dumps(run_metrics(report), indent=2), encoding="utf-8")
    project, candidate = report.project, report.candidate
    keys = {
        "report": artifact_key(project, "retrain-report"),
        "per_intent": artifact_key(project, "per-intent-metrics"),
        "errors": artifact_key(project, "errors"),
    }
    create_table_artifact(
        table=per_intent_rows(candidate, report.active),
        key=keys["per_intent"],
        description="Per-intent metrics",
    )
    create_table_artifact(
        table=error_rows(candidate), key=keys["errors"], description="Candidate's errors, confident first"
    )
    for name, path in figures.items():
        keys[name] = artifact_key(project, name.replace("_", "-"))
        create_image_artifact(
            image_url=png_data_uri(path), key=keys[name], description=FIGURE_TITLES.get(name, name)
        )
    return {**keys, "report_path": str(report_path)}


def publish_run_report(report: ReportInputs) -> str:
    """Publish the retrain report, figures embedded, as an artifact of the flow run; returns its key.

    Call it from the flow body, not from a task (inside a task the artifact would belong to that task run).
    The description is the run's outcome line, which the Artifacts tab shows on the report's card.
    """
    key = artifact_key(report.project, "retrain-report")
    create_markdown_artifact(
        markdown=render_run_report(report, embed_figures=True),
        key=key,
        description=f"{report.project}: {report.run_outcome().message()}",
    )
    return key


def label_flow_run(outcome: RunOutcome, run_id: str | None = None) -> None:
    """Name and tag the current flow run after its outcome, so the runs list shows what it decided.

    The run's other tags (a deployment's, ``auto-scheduled``) are kept; earlier outcome tags are replaced.
    The run's state message is the flow's return state (see ``flows/retrain.py``). A failure to reach the
    API here is logged, not raised: the run has already done its work, and its state still says the outcome.
    """
    run_id = run_id or flow_run.get_id()
    if run_id is None:  # not inside a flow run
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(UUID(run_id))
            kept = [t for t in current.tags if t != RUN_TAG and not t.startswith(("project:", "outcome:"))]
            client.update_flow_run(UUID(run_id), name=outcome.run_name(), tags=[*kept, *outcome.tags()])
    except httpx.HTTPError as exc:
        logger.warning(
            "could not name and tag flow run %s after its outcome (%s): %s", run_id, outcome.message(), exc
        )


@task(name="sync-run-to-store", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def sync_run_to_store(store: StoreSpec, project: str, run_id: str, outdir: str, audit_path: str) -> list[str]:
    """Copy the run's report, figures and metrics under ``<project>/runs/<run id>/`` in the store, and for a
    remote store also the audit log (kept as a local file, uploaded after each line)."""
    model_store = store.build(create=True)
    keys = sync_folder(model_store.fs, Path(outdir), layout(project).run(run_id))
    if not store.is_local():
        model_store.fs.put_file(Path(audit_path), layout(project).audit)
        keys.append(layout(project).audit)
    crash_point("sync")
    return keys
