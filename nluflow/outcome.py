"""What a retrain decided, in one word and one line: the run's outcome.

Every run ends in one outcome, and the same record gives every place a user looks its wording:

==============  ====================================================================  ================
outcome         when                                                                  audit decision
==============  ====================================================================  ================
``promoted``    the candidate passed the gates and is now the active model            ``promote``
``rejected``    the candidate failed a gate; the active model stays                   ``reject``
``superseded``  the candidate passed the gates, but another run's model became active  ``superseded``
                first and the candidate does not beat that one (judged again under
                the promotion slot, on the same frozen test set); kept, not active
``unchanged``   the candidate *is* the active model (same training key: same data,    ``unchanged``
                config and code give the same model id), so there is nothing to judge
``blocked``     the data failed validation; nothing was trained                       ``blocked``
``failed``      an error ended the run                                                ``failed``
==============  ====================================================================  ================

:class:`RunOutcome` renders the flow run's state message (``promoted m-1a2b3c: beats active by +0.028
macro F1 ...``), its tags (``nluflow``, ``project:<p>``, ``outcome:<o>``) and its name
(``retrain-<project>-<outcome>-<candidate id>``), so the runs list of the Prefect UI shows what each run
decided without opening it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nluflow.data.validation import ValidationReport
from nluflow.evaluation.gates import Decision

Outcome = Literal["promoted", "rejected", "superseded", "blocked", "unchanged", "failed"]

AUDIT_DECISION: dict[str, str] = {
    "promoted": "promote",
    "rejected": "reject",
    "superseded": "superseded",
    "blocked": "blocked",
    "unchanged": "unchanged",
    "failed": "failed",
}

RUN_TAG = "nluflow"
UNCHANGED_REASON = "nothing new to train: candidate {model_id} is the active model"


class RunOutcome(BaseModel):
    """A run's outcome with its one-line reason, and the views of it (message, tags, run name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Outcome = Field(description="What the run decided.")
    project: str = Field(description="The project the run retrained.")
    candidate_id: str | None = Field(description="The model id the run trained (None when nothing was).")
    reason: str = Field(description="Why, in one line.")

    @property
    def audit_decision(self) -> str:
        """The audit log's ``decision`` value for this outcome."""
        return AUDIT_DECISION[self.outcome]

    def message(self) -> str:
        """The one-line outcome + reason, e.g. ``rejected m-1a2b3c: macro F1 -0.004 vs active ...``."""
        if self.outcome == "unchanged" or self.candidate_id is None:
            return f"{self.outcome}: {self.reason}"  # the reason names the model already
        return f"{self.outcome} {self.candidate_id}: {self.reason}"

    def tags(self) -> list[str]:
        """Flow-run tags the runs list shows and filters on."""
        return [RUN_TAG, f"project:{self.project}", f"outcome:{self.outcome}"]

    def run_name(self) -> str:
        """``retrain-<project>-<outcome>-<candidate id>`` (no id when nothing was trained)."""
        parts = ["retrain", self.project, self.outcome]
        if self.candidate_id is not None:
            parts.append(self.candidate_id)
        return "-".join(parts)


def decided(
    project: str, decision: Decision, candidate_id: str, previous_active: str | None, promoted: bool
) -> RunOutcome:
    """The outcome of a run that trained and scored a candidate.

    A candidate with the active model's id is ``unchanged`` whatever the gates said: comparing a model with
    itself measures nothing (its delta is 0, so "promoted, beats active by +0.000" and "rejected, does not
    beat the active model" would both be wrong).
    """
    if previous_active is not None and candidate_id == previous_active:
        return RunOutcome(
            outcome="unchanged",
            project=project,
            candidate_id=candidate_id,
            reason=UNCHANGED_REASON.format(model_id=candidate_id),
        )
    return RunOutcome(
        outcome="promoted" if promoted else "rejected",
        project=project,
        candidate_id=candidate_id,
        reason=decision.reason(),
    )


def superseded(
    project: str, candidate_id: str, compared_with: str | None, winner_id: str, again: Decision
) -> RunOutcome:
    """The outcome of a run whose candidate passed the gates against ``compared_with`` (None: no active model
    then), but found ``winner_id`` active when it held the promotion slot, and did not beat it (``again``:
    the gates run again against ``winner_id`` on the same frozen test set)."""
    before = compared_with if compared_with is not None else "no active model"
    return RunOutcome(
        outcome="superseded",
        project=project,
        candidate_id=candidate_id,
        reason=(
            f"{winner_id} became active first (this run had compared with {before}); "
            f"against {winner_id}: {again.reason()}"
        ),
    )


def blocked_by_validation(project: str, report: ValidationReport) -> RunOutcome:
    """The outcome of a run whose data failed validation (nothing was trained)."""
    findings = report.blocking
    first = findings[0] if findings else None
    counted = f"{len(findings)} blocking finding{'s' if len(findings) != 1 else ''}"
    reason = f"data failed validation ({counted})"
    if first is not None:
        reason += f"; first: [{first.rule}] {first.message}"
    return RunOutcome(outcome="blocked", project=project, candidate_id=None, reason=reason)
