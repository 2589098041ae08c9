"""The retrain as a use case, without Prefect: one function per stage, one record per run.

=====================  =================================================================================
stage                  functions
=====================  =================================================================================
test set               :func:`~nluflow.retrain.testset.choose_test_set` (freeze, grow, or the given one),
                       :func:`~nluflow.retrain.testset.undo_test_set`
train                  :func:`~nluflow.retrain.train.submit`, :func:`~nluflow.retrain.train.wait_for_job`,
                       :func:`~nluflow.retrain.train.fetch_candidate` (through the backend protocol)
evaluate               :func:`~nluflow.retrain.scoring.active_model`, :func:`~nluflow.retrain.scoring.score`,
                       :func:`~nluflow.retrain.scoring.must_pass`
decide                 :func:`nluflow.evaluation.gates.decide`; under the promotion slot
                       :func:`~nluflow.retrain.promote.needs_recheck`, then
                       :func:`~nluflow.retrain.promote.final_outcome`
promote / roll back    :mod:`nluflow.retrain.promote`: four steps, each with its undo, run in order by
                       :class:`~nluflow.retrain.promote.Promotion`, which undoes the done ones on failure
                       (:func:`~nluflow.retrain.promote.promote_candidate`)
record                 :class:`RunRecord`: the audit line, the notice and the :class:`RetrainResult`
by hand                :mod:`nluflow.retrain.manage`: the CLI's roll back, activate, forced promote and
                       test-set reset, each with its audit line, on any store
=====================  =================================================================================

The Prefect flow (``flows/retrain.py``) runs these stages as tasks (``tasks/``), which add retries,
caching, artifacts and the run's logger.
"""

from nluflow.retrain.promote import Candidate, Promotion, final_outcome, needs_recheck, promote_candidate
from nluflow.retrain.record import (
    CandidateFacts,
    Judged,
    Published,
    RetrainResult,
    RunData,
    RunIdentity,
    RunRecord,
    audit_reasons,
    blocked_record,
    decided_record,
    failed_record,
)
from nluflow.retrain.testset import TestSetChoice, TestSetPlan, choose_test_set, undo_test_set

__all__ = [
    "Candidate",
    "CandidateFacts",
    "Judged",
    "Promotion",
    "Published",
    "RetrainResult",
    "RunData",
    "RunIdentity",
    "RunRecord",
    "TestSetChoice",
    "TestSetPlan",
    "audit_reasons",
    "blocked_record",
    "choose_test_set",
    "decided_record",
    "failed_record",
    "final_outcome",
    "needs_recheck",
    "promote_candidate",
    "undo_test_set",
]
