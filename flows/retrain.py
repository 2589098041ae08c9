"""The retrain flow: validate → train → evaluate → gate → promote → publish → audit.

The stages are :mod:`nluflow.retrain`'s, run as tasks (retries, caching, artifacts, logging); what the run
knows ends up in one :class:`~nluflow.retrain.RunRecord`, whose projections are the audit line, the notice
and the :class:`RetrainResult`.

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

from nluflow.audit import error_summary
from nluflow.backends.base import JobRef, ModelRef, TrainingConfig
from nluflow.data.validation import ValidationPolicy
from nluflow.errors import DataError
from nluflow.evaluation.gates import GatePolicy, decide
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.outcome import RunOutcome
from nluflow.pipeline import DatasetSnapshot, model_files_sha256, model_id_for, training_key
from nluflow.recovery import is_run_line, recover_promotions, release_promotion_lock
from nluflow.report import ReportInputs
from nluflow.retrain import (
    Candidate,
    CandidateFacts,
    Judged,
    Published,
    RetrainResult,
    RunIdentity,
    blocked_record,
    decided_record,
    failed_record,
    final_outcome,
)
from nluflow.store import ID_PATTERN
from nluflow.store.audit_log import AuditLog
from nluflow.testset import DEFAULT_MIN_TEST_PER_INTENT
from tasks.audit import notify, recover_promotions_task, upload_audit, write_audit, write_promotion_intent
from tasks.common import BackendSpec, StoreSpec
from tasks.data import PreparedData, keep_training_data, prepare_data, restore_test_set
from tasks.evaluation import check_must_pass_utterances, evaluate_model, fetch_active_model
from tasks.promotion import (
    Judging,
    Recheck,
    activate_on_backend,
    keep_rejected_candidate,
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
from tasks.slot import promotion_slot
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


class _Run(BaseModel):
    """Where a run works: who it is, its store, backend, gates and working folder (resolved once)."""

    model_config = ConfigDict(frozen=True)

    identity: RunIdentity
    store: StoreSpec
    backend: BackendSpec
    gates: GatePolicy
    work: str

    @property
    def project(self) -> str:
        return self.identity.project

    @property
    def run_id(self) -> str:
        return self.identity.run_id


def _resolve(params: RetrainParams, run_id: str, run_url: str | None = None) -> _Run:
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
    config = params.config.model_dump(mode="json")
    identity = RunIdentity(
        project=params.project, run_id=run_id, backend=params.backend, config=config, run_url=run_url
    )
    return _Run(
        identity=identity,
        store=store,
        backend=BackendSpec(name=params.backend, workspace=str(work)),
        gates=gates,
        work=str(work),
    )


def _hook_run(flow_run: Any) -> tuple[RetrainParams, _Run]:
    params = RetrainParams.model_validate(flow_run.parameters["params"])
    return params, _resolve(params, str(flow_run.id))


def _audit_failed_run(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` hook: a run that ended in an error writes a ``failed`` audit line (its error as one
    line, credentials redacted), unless it already wrote its line (a blocked run raises after writing it).

    First it closes its own promotion if it stopped half-way (after its intent line): a ``promote`` line with
    ``recovered: true`` when the pointer had switched (then that is the run's line), else
    ``promotion-abandoned``. A run that failed after its ``promote`` line (the sync of its report, say) keeps
    it: the promotion stands, and the run is labelled promoted with the error."""
    logger = get_run_logger()
    try:
        params, run = _hook_run(flow_run)
        log = AuditLog(run.store.audit_path(params.project))
        error = state.result(raise_on_failure=False)
        message = error_summary(error) if isinstance(error, BaseException) else str(state.message or "failed")
        _close_own_promotion(flow, flow_run, state)
        own = [line for line in log.records() if is_run_line(line, run.run_id)]
        if own:
            _keep_own_line(own[-1], run, message)
        else:
            start = flow_run.start_time
            elapsed = (state.timestamp - start).total_seconds() if start and state.timestamp else 0.0
            record = failed_record(run.identity, message, round(elapsed, 3))
            log.append(record.audit_line())
            upload_audit(run.store, run.project)
            # The runs list shows it too (the state message is the error, set by Prefect).
            label_flow_run(record.outcome, run.run_id)
    except Exception as exc:  # a hook must not hide the run's own error
        logger.warning("could not write the audit line of the failed run: %s", error_summary(exc))


def _keep_own_line(line: dict[str, Any], run: _Run, message: str) -> None:
    """The failed run wrote its own line already: a promotion stands (labelled promoted, with the error)."""
    if line.get("decision") == "promote":
        get_run_logger().error(
            "the run promoted %s (audit line %s) and then failed: %s. The promotion stands",
            line.get("model_id"),
            line.get("seq"),
            message,
        )
        reason = f"audit line {line.get('seq')}; the run then failed: {message}"
        outcome = RunOutcome(
            outcome="promoted", project=run.project, candidate_id=line.get("model_id"), reason=reason
        )
        label_flow_run(outcome, run.run_id)
    upload_audit(run.store, run.project)


def _close_own_promotion(flow: Any, flow_run: Any, state: Any = None) -> None:
    """Hook (and first step of the failure hook): the run is over, so its promotion is no longer live. Let
    go of the promotion lock and close the run's intent line from the pointer if it stopped half-way."""
    logger = get_run_logger()
    try:
        params, run = _hook_run(flow_run)
        path = run.store.audit_path(params.project)
        release_promotion_lock(path, f"run {flow_run.id}")
        if not path.exists():
            return
        actor = f"run {flow_run.id} ({state.type.value.lower() if state is not None else 'ended'})"
        for line in recover_promotions(AuditLog(path), run.store.build(), params.project, actor=actor):
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
    run = _resolve(params, str(flow_run.get_id() or "local"), flow_run.get_flow_run_ui_url())
    store, backend, project = run.store, run.backend, run.project
    # Earlier runs killed mid-promotion, or killed before their own audit line (a `crashed` line each).
    recover_promotions_task(store, project, actor=f"run {run.run_id}", run_id=run.run_id)

    # 1. Data: load, fix the frozen test set, validate.
    data = prepare_data(params, store, run.work, params.config.seed)
    publish_validation(project, data.report)
    if not data.report.ok:
        return _blocked(params, run, data, time.monotonic() - started)
    keep_training_data(store, project, data.train, data.loaded)  # what the next run compares with ("+N new")

    # 2. Score the active model first: platforms that can only score what they hold (Cognigy) then keep
    #    the candidate loaded from training through scoring and activation, with no extra training.
    active = fetch_active_model(store, project, backend)
    active_ref: ModelRef | None = active[0] if active else None
    active_eval = (
        evaluate_model(backend, active_ref, data.test, params.target_precision) if active_ref else None
    )

    # 3. Train the candidate (cached on data + config + code: an unchanged rerun does not retrain).
    job, model = _train(params, run, data.train)

    # 4. Score it on the same frozen test set and the must-pass utterances; 5. decide (every gate).
    judging = _judging(params, run, data, model)
    decision = decide(judging.candidate_eval, active_eval, run.gates, judging.must_pass)
    for warning in decision.warnings:
        get_run_logger().warning(warning)

    # 6. Publish the report file, tables and figures (the report artifact follows the outcome, below).
    report_of, artifacts = _publish(run, data, model, judging, Recheck(active_ref, active_eval, decision))

    # 7. Promote (one promotion per project at a time; all-or-nothing), or keep the rejected candidate.
    candidate = _candidate(run, data, model, judging.candidate_eval)
    now, active_now = Recheck(active_ref, active_eval, decision), report_of.active_id
    if decision.promote and report_of.active_id != model.model_id:
        now, active_now = _promote(run, candidate, judging, now)
    promoted = now.decision.promote and active_now == model.model_id
    outcome = final_outcome(
        project, now.decision, model.model_id, report_of.active_id, now.active_id, promoted
    )
    if not promoted and active_now != model.model_id:
        # Kept (not active) so a person can still force it: `nluflow models promote`.
        keep_rejected_candidate(store, candidate, params.keep_rejected, outcome.message())
    judged = _judged(run, candidate, job, now, active_now)

    # 8. The outcome: audit, sync, notify, the report artifact, the run's name and state.
    record = decided_record(
        run.identity, data.run_data, judged, outcome, round(time.monotonic() - started, 3)
    )
    line = write_audit(str(store.audit_path(project)), record.audit_line())
    sync_run_to_store(store, project, run.run_id, artifacts["outdir"], str(store.audit_path(project)))
    notify(record.notice(), params.notify)
    artifacts["report"] = publish_run_report(judged.report(report_of, outcome))
    label_flow_run(outcome)
    published = _published(store, project, artifacts, int(line["seq"]), time.monotonic() - started)
    return _final_state(Completed(message=outcome.message(), data=record.result(published)))


def _judging(params: RetrainParams, run: _Run, data: PreparedData, model: ModelRef) -> Judging:
    """Score the candidate on the frozen test set, and on the must-pass utterances."""
    backend = run.backend
    candidate_eval = evaluate_model(backend, model, data.test, params.target_precision)
    must_pass = (
        check_must_pass_utterances(backend, model, params.must_pass, sorted(data.report.intent_counts))
        if params.must_pass
        else None
    )
    return Judging(
        candidate_eval=candidate_eval,
        test=data.test,
        target_precision=params.target_precision,
        gates=run.gates,
        must_pass=must_pass,
    )


def _publish(
    run: _Run, data: PreparedData, model: ModelRef, judging: Judging, scored: Recheck
) -> tuple[ReportInputs, dict[str, str]]:
    """The report's inputs, and the report file, tables and figures published (with the run folder)."""
    report_of = ReportInputs(
        project=run.project,
        candidate_id=model.model_id,
        active_id=scored.active.model_id if scored.active else None,
        decision=scored.decision,
        candidate=judging.candidate_eval,
        active=scored.active_eval,
        validation=data.report,
        data_info=data.run_data.info,
        figures=render_run_figures(judging.candidate_eval, run.work),
    )
    get_run_logger().info(report_of.run_outcome().message())
    outdir = str(Path(run.work) / "runs" / run.project / run.run_id)
    return report_of, {**publish_report(report_of, outdir), "outdir": outdir}


def _candidate(run: _Run, data: PreparedData, model: ModelRef, scores: EvaluationResult) -> Candidate:
    return Candidate(
        project=run.project,
        model=model,
        dataset_sha256=data.train.sha256,
        test_sha256=data.test.sha256,
        config=run.identity.config,
        metrics=scores.headline(),
        run_id=run.run_id,
        backend_block=None if run.backend.name == "local" else run.backend.name,
    )


def _published(
    store: StoreSpec, project: str, artifacts: dict[str, str], audit_seq: int, elapsed: float
) -> Published:
    return Published(
        artifacts={k: v for k, v in artifacts.items() if k != "outdir"},
        report_path=artifacts["report_path"],
        store=store.build().describe(),
        audit_path=str(store.audit_path(project)),
        audit_seq=audit_seq,
        duration_seconds=round(elapsed, 3),
    )


def _blocked(params: RetrainParams, run: _Run, data: PreparedData, elapsed: float) -> RetrainResult:
    """Validation stopped the run: undo its own test set change, audit and notify, then fail with the
    outcome as the state message (the caller, e.g. the CLI, still gets the validation error)."""
    report, run_data = data.report, data.run_data
    record = blocked_record(run.identity, run_data, report, round(elapsed, 3))
    if params.test is None:
        restore_test_set(run.store, run.project, run_data.info)  # undoes only its own freeze or growth
    write_audit(str(run.store.audit_path(run.project)), record.audit_line())
    upload_audit(run.store, run.project)
    notify(record.notice(), params.notify)
    label_flow_run(record.outcome)
    try:
        report.raise_for_blocking()
    except DataError as exc:
        return _final_state(Failed(message=record.outcome.message(), data=exc))
    raise AssertionError("a report that is not ok raises")  # pragma: no cover


def _train(params: RetrainParams, run: _Run, train: DatasetSnapshot) -> tuple[JobRef, ModelRef]:
    """Submit and wait; the cached result is refreshed when the candidate's files are gone from disk."""
    backend, project = run.backend, run.project
    key = training_key(train.sha256, params.config, backend.name)
    model_id = model_id_for(key)
    refresh = not candidate_ready(backend, project, model_id)
    job = submit_training.with_options(refresh_cache=refresh)(
        backend, project, model_id, train, params.config, key
    )
    model = wait_for_training.with_options(refresh_cache=refresh)(
        backend, project, model_id, job, key, params.max_wait_seconds
    )
    return job, model


def _promote(run: _Run, candidate: Candidate, judging: Judging, now: Recheck) -> tuple[Recheck, str | None]:
    """Under the project's promotion slot, judge again against the model active now (another run's model
    that got there first must be beaten too), then promote in one transaction; returns the decision that
    stands and the model active afterwards."""
    project, run_id, model_id = run.project, run.run_id, candidate.model_id
    compared_with = now.active.model_id if now.active else None
    # Keyed by run: a retried flow run that already committed its promotion does not promote again.
    # No try/except in here: a failure must propagate so the transaction rolls back every step.
    with (
        promotion_slot(project, run_id),
        transaction(key=f"promote-{project}-{model_id}-{run_id}") as txn,
    ):
        now = recheck_active(run.store, project, run.backend, judging, compared_with, run_id) or now
        if not now.decision.promote or (now.active is not None and now.active.model_id == model_id):
            txn.rollback()  # nothing to promote now: no record of a promotion
        elif not txn.is_committed():
            store_candidate(run.store, candidate)
            activate_on_backend(run.backend, candidate.model, now.active)
            write_promotion_intent(run.store, project, model_id, run_id)  # the pointer never moves unaudited
            switch_active_pointer(run.store, project, model_id, run_id, now.decision.summary())
    pointer = run.store.build().active(project)
    return now, pointer.model_id if pointer else None


def _judged(run: _Run, candidate: Candidate, job: JobRef, now: Recheck, active_now: str | None) -> Judged:
    """The candidate as the run ends: its scores and files, its manifest once stored, what it was judged
    against and what is active now."""
    model, model_store = candidate.model, run.store.build()
    stored = model_store.has_model(run.project, model.model_id)
    facts = CandidateFacts(
        model_id=model.model_id,
        job_id=job.job_id,
        metrics=candidate.metrics,
        training_metrics=dict(model.metrics),
        files_sha256=model_files_sha256(model.path) if model.path else None,
        manifest_sha256=model_store.manifest(run.project, model.model_id).sha256() if stored else None,
    )
    return Judged(
        candidate=facts,
        decision=now.decision,
        promoted=now.decision.promote and active_now == model.model_id,
        previous_active=now.active_id,
        active_eval=now.active_eval,
        active=active_now,
    )


def _final_state(state: Any) -> RetrainResult:
    """Let the flow return ``state``: Prefect makes a returned state the run's final state (its message is
    the outcome line the runs list shows) and hands the caller its data (the :class:`RetrainResult`), or
    raises it when it is an exception. The cast only tells the type checker what callers receive."""
    return cast(RetrainResult, state)
