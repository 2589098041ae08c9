"""The retrain flow: validate → train → evaluate → gate → promote → publish → audit.

Deployment entrypoint: ``flows/retrain.py:retrain``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.transactions import transaction
from pydantic import BaseModel, ConfigDict, Field

from nluflow.audit import audit_record, error_summary
from nluflow.backends.base import ModelRef, TrainingConfig
from nluflow.data.validation import ValidationPolicy, ValidationReport
from nluflow.errors import DataError
from nluflow.evaluation.gates import Decision, GatePolicy, decide
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.notify import DecisionNotice
from nluflow.outcome import Outcome, RunOutcome, blocked_by_validation, decided, superseded
from nluflow.pipeline import DatasetSnapshot, headline_delta, model_files_sha256, model_id_for, training_key
from nluflow.recovery import is_run_line, recover_promotions, release_promotion_lock
from nluflow.store import ID_PATTERN
from nluflow.store.audit_log import AuditLog
from nluflow.testset import DEFAULT_MIN_TEST_PER_INTENT, audit_fields
from tasks.audit import (
    notify,
    recover_promotions_task,
    upload_audit,
    write_audit,
    write_promotion_intent,
)
from tasks.common import BackendSpec, StoreSpec
from tasks.data import (
    freeze_test_set,
    keep_training_data,
    load_dataset,
    restore_test_set,
    validate_dataset,
)
from tasks.evaluation import check_must_pass_utterances, evaluate_model, fetch_active_model
from tasks.promotion import (
    activate_on_backend,
    keep_rejected_candidate,
    promotion_slot,
    recheck_active,
    store_candidate,
    switch_active_pointer,
)
from tasks.publish import (
    label_flow_run,
    publish_report,
    publish_run_report,
    publish_validation,
    render_run_figures,
    sync_run_to_store,
)
from tasks.sources import data_label, provenance_info, resolve_data
from tasks.training import candidate_ready, submit_training, wait_for_training


def nluflow_home() -> Path:
    """Where runs keep their store and working files unless told otherwise (``$NLUFLOW_HOME``)."""
    return Path(os.environ.get("NLUFLOW_HOME", ".nluflow")).resolve()


class RunSettings(BaseModel):
    """The data, store, gates and notifications of a run: what a retrain and a sweep share."""

    model_config = ConfigDict(extra="forbid")

    project: str = Field(default="default", pattern=ID_PATTERN, description="Project (bot) name.")
    data: list[str] = Field(
        min_length=1,
        description=(
            "Training data: files or folders (JSONL, CSV, Rasa YAML, JSON), and/or data source blocks "
            "pulled at run time: 'nluflow-label-studio-source/<name>', 'nluflow-folder-source/<name>'."
        ),
    )
    test: list[str] | None = Field(
        default=None,
        description="Frozen test set. Without it the project's frozen test set is used, or split off once.",
    )
    test_fraction: float = Field(default=0.2, ge=0.05, le=0.5, description="Share split off as test set.")
    min_test_per_intent: int = Field(
        default=DEFAULT_MIN_TEST_PER_INTENT,
        ge=1,
        description="Fewest test utterances per intent for a first split to be frozen (else the run stops).",
    )
    must_pass: str | None = Field(
        default=None, description="File of utterances the candidate must get right."
    )
    store: str | None = Field(default=None, description="Model store folder (default $NLUFLOW_HOME/store).")
    store_block: str | None = Field(
        default=None,
        description="Store block as '<block-type-slug>/<name>' (local folder or S3); wins over store.",
    )
    workspace: str | None = Field(default=None, description="Local working folder ($NLUFLOW_HOME/work).")
    gates: GatePolicy = Field(default_factory=GatePolicy, description="Promotion gates.")
    gates_block: str | None = Field(default=None, description="Name of a GatePolicyBlock (wins over gates).")
    validation: ValidationPolicy = Field(
        default_factory=ValidationPolicy, description="Data validation rules."
    )
    target_precision: float = Field(default=0.95, gt=0.0, le=1.0, description="Precision for the threshold.")
    max_wait_seconds: float = Field(default=6 * 3600, gt=0, description="Longest wait for a training job.")
    notify: list[str] = Field(
        default_factory=list, description="Names of WebhookNotification blocks told about the decision."
    )


class RetrainParams(RunSettings):
    """What to retrain, where to keep it, and when to promote it."""

    backend: str = Field(
        default="local",
        description="'local', or a backend block as '<block-type-slug>/<name>'.",
    )
    config: TrainingConfig = Field(default_factory=TrainingConfig, description="Training configuration.")
    keep_rejected: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Rejected candidates kept in the store per project (for `nluflow models promote`); "
        "older ones are pruned, never the active model or a rollback target. 0 keeps none.",
    )


class RetrainResult(BaseModel):
    """What a run did, for the CLI summary and for callers."""

    project: str
    flow_run_id: str | None
    outcome: Outcome
    message: str
    candidate_id: str
    previous_active: str | None
    active: str | None
    promoted: bool
    decision: Decision
    candidate_metrics: dict[str, float]
    active_metrics: dict[str, float] | None
    deltas: dict[str, float]
    data_info: dict[str, Any]
    artifacts: dict[str, str]
    report_path: str
    store: str
    audit_path: str
    audit_seq: int
    duration_seconds: float


def _resolve(params: RetrainParams) -> tuple[StoreSpec, BackendSpec, GatePolicy, Path]:
    home = nluflow_home()
    work = Path(params.workspace or home / "work").resolve()
    store = StoreSpec(
        path=str(Path(params.store or home / "store").resolve()),
        block=params.store_block,
        workspace=str(work),
    )
    gates = params.gates
    if params.gates_block:
        from blocks.gates import GatePolicyBlock

        gates = cast(GatePolicyBlock, GatePolicyBlock.load(params.gates_block)).get_policy()
    return store, BackendSpec(name=params.backend, workspace=str(work)), gates, work


def _audit_failed_run(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` hook: a run that ended in an error writes a ``failed`` audit line (its error as one
    line, credentials redacted), unless it already wrote its line (a blocked run raises after writing it).

    First it closes its own promotion if it stopped half-way (after its intent line): a ``promote`` line with
    ``recovered: true`` when the pointer had switched (then that is the run's line), else
    ``promotion-abandoned``. A run that failed after its ``promote`` line (the sync of its report, say) keeps
    it: the promotion stands, and the run is labelled promoted with the error."""
    logger = get_run_logger()
    try:
        params = RetrainParams.model_validate(flow_run.parameters["params"])
        store, backend, _, _ = _resolve(params)
        path = store.audit_path(params.project)
        run_id = str(flow_run.id)
        log = AuditLog(path)
        error = state.result(raise_on_failure=False)
        message = error_summary(error) if isinstance(error, BaseException) else str(state.message or "failed")
        _close_own_promotion(flow, flow_run, state)
        own = [line for line in log.records() if is_run_line(line, run_id)]
        if own:
            if own[-1].get("decision") == "promote":
                logger.error(
                    "the run promoted %s (audit line %s) and then failed: %s. The promotion stands",
                    own[-1].get("model_id"),
                    own[-1].get("seq"),
                    message,
                )
                label_flow_run(
                    RunOutcome(
                        outcome="promoted",
                        project=params.project,
                        candidate_id=own[-1].get("model_id"),
                        reason=f"audit line {own[-1].get('seq')}; the run then failed: {message}",
                    ),
                    run_id,
                )
            upload_audit(store, params.project)
            return
        start = flow_run.start_time
        elapsed = (state.timestamp - start).total_seconds() if start and state.timestamp else 0.0
        log.append(
            audit_record(
                run_id=run_id,
                flow_run_id=run_id,
                project=params.project,
                dataset_sha256=None,
                test_sha256=None,
                backend=backend.name,
                job_id=None,
                model_id=None,
                config=params.config.model_dump(mode="json"),
                duration_seconds=round(elapsed, 3),
                metrics={},
                decision="failed",
                promoted=False,
                reasons=[message],
                previous_model_id=None,
                manifest_sha256=None,
                error=message,
            )
        )
        upload_audit(store, params.project)
        # The runs list shows it too (the state message is the error, set by Prefect).
        label_flow_run(
            RunOutcome(outcome="failed", project=params.project, candidate_id=None, reason=message), run_id
        )
    except Exception as exc:  # a hook must not hide the run's own error
        logger.warning("could not write the audit line of the failed run: %s", error_summary(exc))


def _close_own_promotion(flow: Any, flow_run: Any, state: Any = None) -> None:
    """Hook (and first step of the failure hook): the run is over, so its promotion is no longer live. Let
    go of the promotion lock and close the run's intent line from the pointer if it stopped half-way."""
    logger = get_run_logger()
    try:
        params = RetrainParams.model_validate(flow_run.parameters["params"])
        store, _, _, _ = _resolve(params)
        path = store.audit_path(params.project)
        release_promotion_lock(path, f"run {flow_run.id}")
        if not path.exists():
            return
        actor = f"run {flow_run.id} ({state.type.value.lower() if state is not None else 'ended'})"
        for line in recover_promotions(AuditLog(path), store.build(), params.project, actor=actor):
            logger.warning("audit line %s: %s", line["seq"], line["reasons"][0])
    except Exception as exc:  # a hook must not hide the run's own error; the next run recovers
        logger.warning("could not close the run's promotion on the audit log: %s", error_summary(exc))


@flow(
    name="nluflow-retrain",
    flow_run_name="retrain-{params.project}",
    log_prints=False,
    on_failure=[_audit_failed_run],
    on_cancellation=[_close_own_promotion],
    on_crashed=[_close_own_promotion],
)
def retrain(params: RetrainParams) -> RetrainResult:
    """Retrain a project's NLU model and promote it only if it passes the gates and beats the active one."""
    started = time.monotonic()
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")
    store, backend, gates, work = _resolve(params)
    project = params.project
    # Earlier runs killed mid-promotion, or killed before their own audit line (a `crashed` line each).
    recover_promotions_task(store, project, actor=f"run {run_id}", run_id=run_id)

    # 1. Data: load, fix the frozen test set, validate.
    data_paths, sources = resolve_data(params.data, str(work))  # pulls Label Studio / folder / S3 sources
    data = load_dataset(data_paths, str(work), data_label(params.data, sources))
    given_test = load_dataset(params.test, str(work)) if params.test else None
    train, test, data_info = freeze_test_set(
        project,
        data,
        given_test,
        store,
        str(work),
        params.test_fraction,
        params.config.seed,
        params.min_test_per_intent,
    )
    data_info = {**provenance_info(sources, brief=True), **data_info}
    report, train = validate_dataset(train, test, params.validation, str(work))
    publish_validation(project, report)
    if not report.ok:
        blocked = {
            **_blocked_record(params, run_id, train, test, report, started, data_info),
            **provenance_info(sources),
        }
        if params.test is None:
            restore_test_set(store, project, data_info)  # undoes only its own freeze or growth
        write_audit(str(store.audit_path(project)), blocked)
        upload_audit(store, project)
        notice = DecisionNotice(
            project=project,
            decision="blocked",
            promoted=False,
            summary="blocked: the data failed validation; nothing was trained",
            reasons=blocked["reasons"],
            run_url=flow_run.get_flow_run_ui_url(),
            flow_run_id=run_id,
        )
        notify(notice, params.notify)
        outcome = blocked_by_validation(project, report)
        label_flow_run(outcome)
        try:
            report.raise_for_blocking()
        except DataError as exc:
            # The run fails with the outcome as its state message; the caller (the CLI) still gets the error.
            return _final_state(Failed(message=outcome.message(), data=exc))
    keep_training_data(store, project, train, data)  # what the next run compares with ("+N new")

    # 2. Score the active model first: platforms that can only score what they hold (Cognigy) then keep
    #    the candidate loaded from training through scoring and activation, with no extra training.
    active = fetch_active_model(store, project, backend)
    active_ref: ModelRef | None = active[0] if active else None
    active_eval: EvaluationResult | None = (
        evaluate_model(backend, active_ref, test, params.target_precision) if active_ref else None
    )

    # 3. Train the candidate (cached on data + config + code: an unchanged rerun does not retrain).
    key = training_key(train.sha256, params.config, backend.name)
    model_id = model_id_for(key)
    refresh = not candidate_ready(backend, project, model_id)  # cached results need the files on disk
    job = submit_training.with_options(refresh_cache=refresh)(
        backend, project, model_id, train, params.config, key
    )
    candidate = wait_for_training.with_options(refresh_cache=refresh)(
        backend, project, model_id, job, key, params.max_wait_seconds
    )

    # 4. Score the candidate on the same frozen test set, and on the must-pass utterances.
    cand_eval = evaluate_model(backend, candidate, test, params.target_precision)
    must_pass = (
        check_must_pass_utterances(backend, candidate, params.must_pass, sorted(report.intent_counts))
        if params.must_pass
        else None
    )

    # 5. Decide (a pure function: every gate with its reason).
    decision = decide(cand_eval, active_eval, gates, must_pass)
    for warning in decision.warnings:
        logger.warning(warning)

    # 6. Publish the report file, tables and figures (the report artifact follows the outcome, below).
    outdir = work / "runs" / project / run_id
    figures = render_run_figures(cand_eval, str(work))
    active_id = active_ref.model_id if active_ref else None
    report_of: dict[str, Any] = {  # what the report file and the report artifact are made of
        "project": project,
        "candidate_id": model_id,
        "active_id": active_id,
        "decision": decision,
        "candidate": cand_eval,
        "active": active_eval,
        "validation": report,
        "data_info": data_info,
        "figures": figures,
    }
    intended = decided(project, decision, model_id, active_id, promoted=decision.promote)
    logger.info(intended.message())
    artifacts = publish_report(**report_of, outdir=str(outdir), outcome=intended)

    # 7. Promote: one promotion per project at a time; all-or-nothing. Under the slot the active model is
    #    read again: one that another run promoted meanwhile must be beaten too, on the same test set.
    active_now = active_id
    compared_with = active_id
    if decision.promote and active_now != model_id:
        # Keyed by run: a retried flow run that already committed its promotion does not promote again.
        # No try/except in here: a failure must propagate so the transaction rolls back every step.
        with (
            promotion_slot(project, run_id),
            transaction(key=f"promote-{project}-{model_id}-{run_id}") as txn,
        ):
            again = recheck_active(
                store,
                project,
                backend,
                test,
                params.target_precision,
                cand_eval,
                active_id,
                gates,
                must_pass,
                run_id,
            )
            if again is not None:
                active_ref, active_eval, decision = again.active, again.active_eval, again.decision
                active_id = active_ref.model_id if active_ref else None
                report_of.update(active_id=active_id, active=active_eval, decision=decision)
            if not decision.promote or active_id == model_id:
                txn.rollback()  # nothing to promote now: no record of a promotion
            elif not txn.is_committed():
                store_candidate(
                    store,
                    project,
                    candidate,
                    train.sha256,
                    test.sha256,
                    params.config.model_dump(mode="json"),
                    cand_eval.headline(),
                    run_id,
                    None if backend.name == "local" else backend.name,
                )
                activate_on_backend(backend, candidate, active_ref)
                write_promotion_intent(store, project, model_id, run_id)  # the pointer never moves unaudited
                switch_active_pointer(store, project, model_id, run_id, decision.summary())
        pointer = store.build().active(project)
        active_now = pointer.model_id if pointer else None
    promoted = decision.promote and active_now == model_id
    if active_id != compared_with and not promoted and active_id != model_id:
        outcome = superseded(project, model_id, compared_with, active_id or "none", decision)
    else:
        outcome = decided(project, decision, model_id, active_id, promoted=promoted)
    if not promoted and active_now != model_id:
        # Kept (not active) so a person can still force it: `nluflow models promote`.
        keep_rejected_candidate(
            store,
            project,
            candidate,
            train.sha256,
            test.sha256,
            params.config.model_dump(mode="json"),
            cand_eval.headline(),
            run_id,
            None if backend.name == "local" else backend.name,
            params.keep_rejected,
            outcome.message(),
        )

    # 8. The outcome; audit and notify.
    model_store = store.build()
    stored = model_store.has_model(project, model_id)
    manifest_sha = model_store.manifest(project, model_id).sha256() if stored else None
    line = write_audit(
        str(store.audit_path(project)),
        audit_record(
            run_id=run_id,
            flow_run_id=run_id,
            project=project,
            dataset_sha256=train.sha256,
            test_sha256=test.sha256,
            backend=backend.name,
            job_id=job.job_id,
            model_id=model_id,
            config=params.config.model_dump(mode="json"),
            duration_seconds=round(time.monotonic() - started, 3),
            metrics=cand_eval.headline(),
            decision=outcome.audit_decision,
            promoted=promoted,
            reasons=_audit_reasons(outcome, decision),
            previous_model_id=active_ref.model_id if active_ref else None,
            manifest_sha256=manifest_sha,
            validation_loss=candidate.metrics.get("val_loss"),
            model_files_sha256=model_files_sha256(candidate.path) if candidate.path else None,
            training_metrics=dict(candidate.metrics),
            **audit_fields(data_info),
            **provenance_info(sources),
        ),
    )
    sync_run_to_store(store, project, run_id, str(outdir), str(store.audit_path(project)))
    notice = DecisionNotice.from_decision(
        project,
        decision,
        promoted=promoted,
        candidate_id=model_id,
        previous_active=active_ref.model_id if active_ref else None,
        active=active_now,
        metrics=cand_eval.headline(),
        run_url=flow_run.get_flow_run_ui_url(),
        flow_run_id=run_id,
    )
    if outcome.outcome in ("unchanged", "superseded"):  # not a plain gate decision: say what happened
        notice = notice.model_copy(
            update={
                "decision": outcome.audit_decision,
                "summary": outcome.message(),
                "reasons": _audit_reasons(outcome, decision),
            }
        )
    notify(notice, params.notify)
    artifacts["report"] = publish_run_report(**report_of, outcome=outcome)
    label_flow_run(outcome)
    result = RetrainResult(
        project=project,
        flow_run_id=run_id,
        outcome=outcome.outcome,
        message=outcome.message(),
        candidate_id=model_id,
        previous_active=active_ref.model_id if active_ref else None,
        active=active_now,
        promoted=promoted,
        decision=decision,
        candidate_metrics=cand_eval.headline(),
        active_metrics=active_eval.headline() if active_eval else None,
        deltas=headline_delta(cand_eval.headline(), active_eval.headline() if active_eval else None),
        data_info={
            **data_info,
            **provenance_info(sources),
            "train_examples": train.n_examples,
            "test_examples": test.n_examples,
        },
        artifacts={k: v for k, v in artifacts.items() if k != "report_path"},
        report_path=artifacts["report_path"],
        store=model_store.describe(),
        audit_path=str(store.audit_path(project)),
        audit_seq=int(line["seq"]),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    return _final_state(Completed(message=outcome.message(), data=result))


def _audit_reasons(outcome: RunOutcome, decision: Decision) -> list[str]:
    """The reasons an audit line and a notice list: the outcome's own for unchanged (nothing was judged) and
    superseded (who got there first, then the gates against it), else the gates'."""
    if outcome.outcome == "unchanged":
        return [outcome.reason]
    if outcome.outcome == "superseded":
        return [outcome.reason, *decision.reasons]
    return list(decision.reasons)


def _final_state(state: Any) -> RetrainResult:
    """Let the flow return ``state``: Prefect makes a returned state the run's final state (its message is
    the outcome line the runs list shows) and hands the caller its data (the :class:`RetrainResult`), or
    raises it when it is an exception. The cast only tells the type checker what callers receive."""
    return cast(RetrainResult, state)


def _blocked_record(
    params: RetrainParams,
    run_id: str,
    train: DatasetSnapshot,
    test: DatasetSnapshot,
    report: ValidationReport,
    started: float,
    data_info: dict[str, Any],
) -> dict[str, Any]:
    """The audit line of a run that validation stopped before training."""
    return audit_record(
        run_id=run_id,
        flow_run_id=run_id,
        project=params.project,
        dataset_sha256=train.sha256,
        test_sha256=test.sha256,
        backend=params.backend,
        job_id=None,
        model_id=None,
        config=params.config.model_dump(mode="json"),
        duration_seconds=round(time.monotonic() - started, 3),
        metrics={},
        decision="blocked",
        promoted=False,
        reasons=[f"{f.rule}: {f.message}" for f in report.blocking],
        previous_model_id=None,
        manifest_sha256=None,
        **audit_fields(data_info),
    )
