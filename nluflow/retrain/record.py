"""One run, one record: :class:`RunRecord` holds what a retrain knows when it ends, and every place that
reports the run reads it through a projection, never re-assembles it by hand:

- :meth:`RunRecord.audit_line`: the run's hash-chained audit line (the same keys and values as ever);
- :meth:`RunRecord.notice`: the :class:`~nluflow.notify.DecisionNotice` webhooks receive;
- :meth:`RunRecord.result`: the :class:`RetrainResult` the flow returns and the CLI summarises.

The blocked path (:func:`blocked_record`), the failed-run hook (:func:`failed_record`) and the normal path
(:func:`decided_record`) each build one record.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nluflow.audit import audit_record
from nluflow.data.validation import ValidationReport
from nluflow.evaluation.gates import Decision
from nluflow.evaluation.metrics import EvaluationResult
from nluflow.notify import DecisionNotice
from nluflow.outcome import Outcome, RunOutcome, blocked_by_validation
from nluflow.pipeline import headline_delta
from nluflow.report import ReportInputs
from nluflow.testset import audit_fields

BLOCKED_SUMMARY = "blocked: the data failed validation; nothing was trained"


class RunData(BaseModel):
    """The data a run was given: hashes of its training and test sets, and what the report says of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset_sha256: str = Field(description="sha256 of the training data (after validation).")
    test_sha256: str = Field(description="sha256 of the frozen test set both models were scored on.")
    train_examples: int = Field(default=0, ge=0, description="Training examples.")
    test_examples: int = Field(default=0, ge=0, description="Test examples.")
    info: dict[str, Any] = Field(
        default_factory=dict, description="What the report's Data section says (test set, '+N new', ...)."
    )
    sources: dict[str, Any] = Field(
        default_factory=dict, description="Where the data came from (``data_sources``), for the audit line."
    )


class CandidateFacts(BaseModel):
    """What a run knows of the candidate it trained and scored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    job_id: str | None = None
    # Any, not float: the audit line keeps every value exactly as the run measured it.
    metrics: dict[str, Any] = Field(default_factory=dict, description="Headline metrics on the test set.")
    training_metrics: dict[str, Any] = Field(default_factory=dict, description="The backend's own.")
    files_sha256: str | None = Field(default=None, description="One hash over the candidate's files.")
    manifest_sha256: str | None = Field(default=None, description="Its manifest's, once stored.")

    @property
    def validation_loss(self) -> float | None:
        return self.training_metrics.get("val_loss")


class Published(BaseModel):
    """Where a run's report and audit line went (for the result)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    artifacts: dict[str, str] = Field(default_factory=dict, description="Artifact keys, by name.")
    report_path: str = Field(description="The report file.")
    store: str = Field(description="The model store, described.")
    audit_path: str = Field(description="The audit log.")
    audit_seq: int = Field(description="The run's audit line.")
    duration_seconds: float = Field(description="The run's duration when it returned.")


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


class RunRecord(BaseModel):
    """Everything a run knows when it ends; its audit line, notice and result are projections of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    run_id: str
    backend: str = Field(description="'local' or the backend block reference.")
    config: dict[str, Any] = Field(description="The training configuration, as JSON.")
    outcome: RunOutcome
    reasons: list[str] = Field(description="The reasons its audit line and notice list.")
    duration_seconds: float = 0.0
    data: RunData | None = Field(default=None, description="None when the run failed before it had data.")
    candidate: CandidateFacts | None = Field(default=None, description="None when nothing was trained.")
    decision: Decision | None = Field(default=None, description="The gates' decision (None: none was made).")
    promoted: bool = False
    previous_active: str | None = Field(
        default=None, description="The model the candidate was judged against."
    )
    active: str | None = Field(default=None, description="The active model when the run ended.")
    active_metrics: dict[str, Any] | None = None
    error: str | None = Field(default=None, description="A failed run's error, one redacted line.")
    run_url: str | None = None

    def audit_line(self) -> dict[str, Any]:
        """The run's audit line (UTC ``timestamp`` added), ready for :meth:`AuditLog.append`."""
        extra: dict[str, Any] = {}
        if self.candidate is not None:
            extra["validation_loss"] = self.candidate.validation_loss
            extra["model_files_sha256"] = self.candidate.files_sha256
            extra["training_metrics"] = dict(self.candidate.training_metrics)
        if self.data is not None:
            extra.update(audit_fields(self.data.info))
            extra.update(self.data.sources)
        if self.error is not None:
            extra["error"] = self.error
        candidate = self.candidate
        return audit_record(
            run_id=self.run_id,
            project=self.project,
            backend=self.backend,
            decision=self.outcome.audit_decision,
            reasons=self.reasons,
            flow_run_id=self.run_id,
            dataset_sha256=self.data.dataset_sha256 if self.data else None,
            test_sha256=self.data.test_sha256 if self.data else None,
            job_id=candidate.job_id if candidate else None,
            model_id=candidate.model_id if candidate else None,
            config=self.config,
            duration_seconds=self.duration_seconds,
            metrics=dict(candidate.metrics) if candidate else {},
            promoted=self.promoted,
            previous_model_id=self.previous_active,
            manifest_sha256=candidate.manifest_sha256 if candidate else None,
            **extra,
        )

    def notice(self) -> DecisionNotice:
        """What the run's webhooks receive: a gate decision (promote / reject), or what happened instead
        (blocked, unchanged, superseded) with the outcome's own summary and reasons."""
        if self.decision is None or self.candidate is None:
            return DecisionNotice(
                project=self.project,
                decision="blocked",
                promoted=False,
                summary=BLOCKED_SUMMARY,
                reasons=self.reasons,
                run_url=self.run_url,
                flow_run_id=self.run_id,
            )
        notice = DecisionNotice.from_decision(
            self.project,
            self.decision,
            promoted=self.promoted,
            candidate_id=self.candidate.model_id,
            previous_active=self.previous_active,
            active=self.active,
            metrics=self.candidate.metrics,
            run_url=self.run_url,
            flow_run_id=self.run_id,
        )
        if self.outcome.outcome in ("unchanged", "superseded"):  # not a plain gate decision
            return notice.model_copy(
                update={
                    "decision": self.outcome.audit_decision,
                    "summary": self.outcome.message(),
                    "reasons": self.reasons,
                }
            )
        return notice

    def result(self, published: Published) -> RetrainResult:
        """What the flow returns: the outcome, the models, the figures, and where report and line went."""
        if self.decision is None or self.candidate is None or self.data is None:
            raise ValueError(f"run {self.run_id} decided nothing ({self.outcome.outcome}): it has no result")
        metrics = dict(self.candidate.metrics)
        return RetrainResult(
            project=self.project,
            flow_run_id=self.run_id,
            outcome=self.outcome.outcome,
            message=self.outcome.message(),
            candidate_id=self.candidate.model_id,
            previous_active=self.previous_active,
            active=self.active,
            promoted=self.promoted,
            decision=self.decision,
            candidate_metrics=metrics,
            active_metrics=self.active_metrics,
            deltas=headline_delta(metrics, self.active_metrics),
            data_info={
                **self.data.info,
                **self.data.sources,
                "train_examples": self.data.train_examples,
                "test_examples": self.data.test_examples,
            },
            artifacts={k: v for k, v in published.artifacts.items() if k != "report_path"},
            report_path=published.report_path,
            store=published.store,
            audit_path=published.audit_path,
            audit_seq=published.audit_seq,
            duration_seconds=published.duration_seconds,
        )


class RunIdentity(BaseModel):
    """Who the run is and what it was asked to train: the part of a record every path knows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    run_id: str
    backend: str
    config: dict[str, Any]
    run_url: str | None = None


def audit_reasons(outcome: RunOutcome, decision: Decision) -> list[str]:
    """The reasons an audit line and a notice list: the outcome's own for unchanged (nothing was judged) and
    superseded (who got there first, then the gates against it), else the gates'."""
    if outcome.outcome == "unchanged":
        return [outcome.reason]
    if outcome.outcome == "superseded":
        return [outcome.reason, *decision.reasons]
    return list(decision.reasons)


def blocked_record(
    run: RunIdentity, data: RunData, report: ValidationReport, duration_seconds: float
) -> RunRecord:
    """The record of a run that validation stopped before training (its reasons: the blocking findings)."""
    return RunRecord(
        **run.model_dump(),
        outcome=blocked_by_validation(run.project, report),
        reasons=[f"{f.rule}: {f.message}" for f in report.blocking],
        duration_seconds=duration_seconds,
        data=data,
    )


def failed_record(run: RunIdentity, message: str, duration_seconds: float) -> RunRecord:
    """The record of a run that an error ended (``message``: the error as one redacted line)."""
    return RunRecord(
        **run.model_dump(),
        outcome=RunOutcome(outcome="failed", project=run.project, candidate_id=None, reason=message),
        reasons=[message],
        duration_seconds=duration_seconds,
        error=message,
    )


class Judged(BaseModel):
    """A scored candidate and what it was judged against, as the run ends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: CandidateFacts
    decision: Decision
    promoted: bool = Field(description="The gates passed and the candidate is the active model now.")
    previous_active: str | None = Field(description="The model the candidate was last judged against.")
    active_eval: EvaluationResult | None = None
    active: str | None = Field(default=None, description="The active model when the run ended.")

    def report(self, first: ReportInputs, outcome: RunOutcome) -> ReportInputs:
        """The run report as the run ends: judged against the model active under the promotion slot (not
        necessarily the one ``first`` was written against), with the run's outcome."""
        update = {
            "active_id": self.previous_active,
            "active": self.active_eval,
            "decision": self.decision,
            "outcome": outcome,
        }
        return first.model_copy(update=update)


def decided_record(
    run: RunIdentity, data: RunData, judged: Judged, outcome: RunOutcome, duration_seconds: float
) -> RunRecord:
    """The record of a run that trained, scored and judged a candidate."""
    return RunRecord(
        **run.model_dump(),
        outcome=outcome,
        reasons=audit_reasons(outcome, judged.decision),
        duration_seconds=duration_seconds,
        data=data,
        candidate=judged.candidate,
        decision=judged.decision,
        promoted=judged.promoted,
        previous_active=judged.previous_active,
        active=judged.active,
        active_metrics=judged.active_eval.headline() if judged.active_eval else None,
    )
