"""Must-show 1 of issue 11: concurrent retrains of one project promote the best candidate, never a worse one.

Four processes retrain one project at the same time against a real local store and the session's Prefect
server, each with its own model options and seed, so their candidates differ. Whatever order they finish in:

- exactly one test set is frozen, and every run was judged on it;
- every ``promote`` audit line's ``previous_model_id`` is the model that promotion actually replaced (read
  from the active pointer's own history);
- the final active model is the best of the candidates that passed the gates, by the policy's own
  comparison: no other such candidate would be promoted over it (``decide`` on the frozen test set).

Run with ``-s`` to see the table of runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.retrain import RetrainParams, retrain
from nluflow.audit import RUN_DECISIONS
from nluflow.backends.base import LabelledPredictor, ModelRef, TrainingConfig
from nluflow.backends.local import LocalBackend
from nluflow.evaluation.gates import GatePolicy, decide
from nluflow.evaluation.metrics import EvaluationResult, evaluate
from nluflow.models.options import LocalModelOptions
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.store.testsets import TestSetStore

pytestmark = pytest.mark.slow

RUNS = 4
# Model options that give candidates of clearly different quality on the demo data.
OPTIONS: list[dict[str, Any]] = [
    {"C": 0.02, "word_ngram_max": 1, "calibration_folds": 0},
    {"C": 0.1, "word_ngram_max": 1, "calibration_folds": 0},
    {"C": 0.5, "word_ngram_max": 2, "calibration_folds": 0},
    {"C": 2.0, "word_ngram_max": 2, "calibration_folds": 0},
]
FILES = ["batch-1.jsonl", "batch-2.jsonl"]
WORKER = "\n".join(
    [
        "import json, sys",
        "from flows.retrain import RetrainParams, retrain",
        "result = retrain(RetrainParams.model_validate_json(sys.argv[1]))",
        "print('RESULT ' + json.dumps({'outcome': result.outcome, 'candidate_id': result.candidate_id}))",
    ]
)
RUN_TIMEOUT_SECONDS = 900


GATES = GatePolicy(min_macro_f1=0.5, min_precision=0.5)
# The active model of the second case: weaker than most candidates, so some beat it and some do not.
BASELINE: dict[str, Any] = {"C": 0.05, "word_ngram_max": 1, "calibration_folds": 0}


def _params(
    home: Path, demo_data: Path, project: str, i: int, options: dict[str, Any] | None = None
) -> RetrainParams:
    return RetrainParams(
        project=project,
        data=[str(demo_data / f) for f in FILES],
        store=str(home / "store"),
        workspace=str(home / f"work-{i}"),
        config=TrainingConfig(
            seed=100 + i, local=LocalModelOptions(**(options or OPTIONS[i % len(OPTIONS)]))
        ),
        gates=GATES,
    )


def _run_concurrently(home: Path, demo_data: Path, project: str, api_url: str) -> list[dict[str, Any]]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "NLUFLOW_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, _params(home, demo_data, project, i).model_dump_json()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(RUNS)
    ]
    results = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=RUN_TIMEOUT_SECONDS)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, f"run {i} failed ({proc.returncode}):\n{err[-3000:]}"
        results.append({"run": i, **json.loads(lines[-1].removeprefix("RESULT "))})
    return results


def _evaluate_stored(
    store: ModelStore, project: str, model_id: str, home: Path, test: Any
) -> EvaluationResult:
    path = store.materialize(project, model_id, home / "check" / model_id)
    ref = ModelRef.stored(store.manifest(project, model_id), path)
    backend = LocalBackend(home / "check-work")
    if isinstance(backend, LabelledPredictor):
        parses = backend.predict_labelled(ref, test.examples)
    else:
        parses = backend.predict(ref, test.texts)
    return evaluate(test, parses, target_precision=0.95)


def _activations(store: ModelStore, project: str) -> list[str]:
    """Model ids in the order they became active, oldest first (the pointer's own history)."""
    pointer = store.active(project)
    assert pointer is not None
    return [entry.model_id for entry in reversed(pointer.history)] + [pointer.model_id]


def _check(home: Path, project: str, results: list[dict[str, Any]], baseline: str | None) -> None:
    store = ModelStore.local(home / "store")
    record = TestSetStore(store.fs, project).current()
    assert record is not None
    frozen, test = record
    # The run lines (a promotion's intent line comes before its run's ``promote`` line).
    lines = [
        line
        for line in AuditLog(home / "store" / project / "audit.jsonl").records()
        if line["decision"] in RUN_DECISIONS
    ]
    by_model = {line["model_id"]: line for line in lines}

    # Exactly one test set was frozen, and every run was judged on it.
    assert frozen.version == 1 and len(frozen.versions()) == 1, frozen
    assert {line["test_sha256"] for line in lines} == {frozen.sha256}

    # Every promote line names the model it actually replaced.
    activations = _activations(store, project)
    promotes = [line for line in lines if line["decision"] == "promote"]
    assert [line["model_id"] for line in promotes] == activations
    replaced: dict[str, str | None] = {}
    for k, model_id in enumerate(activations):
        replaced[model_id] = activations[k - 1] if k else None
    for line in promotes:
        assert line["previous_model_id"] == replaced[line["model_id"]], line

    # The final active model is the best of those that passed the gates, by the policy's own comparison.
    final = activations[-1]
    final_eval = _evaluate_stored(store, project, final, home, test)
    passed = [r for r in results if by_model[r["candidate_id"]]["decision"] in ("promote", "superseded")]
    if baseline is not None:
        passed.append({"candidate_id": baseline})
    for r in passed:
        if r["candidate_id"] == final:
            continue
        other = _evaluate_stored(store, project, r["candidate_id"], home, test)
        verdict = decide(other, final_eval, GATES)
        assert not verdict.promote, f"{r['candidate_id']} beats the final active model {final}: {verdict}"
    # A superseded candidate is kept (not active), so a person can still promote it.
    for r in results:
        if r["outcome"] == "superseded":
            assert store.has_model(project, r["candidate_id"])
            assert r["candidate_id"] in {e.model_id for e in store.rejected(project)}

    header = (
        f"{'run':>3}  {'candidate':<16} {'macro F1':>8}  {'outcome':<10}  {'previous_model_id':<16}  replaced"
    )
    print(f"\n{project}: final active {final}, test set v{frozen.version} {frozen.sha256[:12]}")
    print(header)
    for r in sorted(results, key=lambda r: by_model[r["candidate_id"]]["seq"]):
        line = by_model[r["candidate_id"]]
        actually = replaced.get(r["candidate_id"], "-") if line["decision"] == "promote" else "-"
        f1 = line["metrics"]["macro_f1"]
        print(
            f"{r['run']:>3}  {r['candidate_id']:<16} {f1:>8.4f}  {r['outcome']:<10}  "
            f"{line['previous_model_id'] or '(none)':<16}  {actually or '(none)'}"
        )


def test_concurrent_first_runs_promote_the_best_and_freeze_one_test_set(
    tmp_path: Path, demo_data: Path, prefect_api: str
) -> None:
    results = _run_concurrently(tmp_path, demo_data, "conc-first", prefect_api)
    assert len({r["candidate_id"] for r in results}) == RUNS  # the candidates differ
    _check(tmp_path, "conc-first", results, baseline=None)


def test_concurrent_runs_against_an_active_model_promote_the_best(
    tmp_path: Path, demo_data: Path, prefect_api: str
) -> None:
    first = retrain(_params(tmp_path, demo_data, "conc-active", RUNS, BASELINE))
    assert first.promoted
    results = _run_concurrently(tmp_path, demo_data, "conc-active", prefect_api)
    assert len({r["candidate_id"] for r in results} | {first.candidate_id}) == RUNS + 1
    _check(tmp_path, "conc-active", results, baseline=first.candidate_id)


# ------------------------------------------------------------------ the re-check, one race at a time


WEAK: dict[str, Any] = {"C": 0.02, "word_ngram_max": 1, "calibration_folds": 0}
MEDIUM: dict[str, Any] = {"C": 0.1, "word_ngram_max": 1, "calibration_folds": 0}
STRONG: dict[str, Any] = {"C": 2.0, "word_ngram_max": 2, "calibration_folds": 0}


def _another_run_promotes_first(
    monkeypatch: pytest.MonkeyPatch, home: Path, project: str, model_id: str
) -> None:
    """Make the next promotion find ``model_id`` active when it takes the slot, as if another run had
    promoted it between this run's decision and its promotion."""
    import flows.retrain as retrain_module
    from tasks.slot import promotion_slot

    real = promotion_slot

    @contextmanager
    def slot_after_another_run(project_: str, run_id: str) -> Iterator[None]:
        with real(project_, run_id):
            ModelStore.local(home / "store").activate(project_, model_id, run_id="another-run", reason="race")
            yield

    monkeypatch.setattr(retrain_module, "promotion_slot", slot_after_another_run)


def test_a_promotion_is_judged_again_against_the_model_that_got_there_first(
    tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = "recheck"
    store = ModelStore.local(tmp_path / "store", create=True)
    weak = retrain(_params(tmp_path, demo_data, project, 0, WEAK))
    strong = retrain(_params(tmp_path, demo_data, project, 1, STRONG))
    assert weak.promoted and strong.promoted
    store.activate(project, weak.candidate_id, reason="test: back to the weak model")

    # A medium candidate beats the weak model it compared with, but the strong one got there first.
    _another_run_promotes_first(monkeypatch, tmp_path, project, strong.candidate_id)
    medium = retrain(_params(tmp_path, demo_data, project, 2, MEDIUM))
    monkeypatch.undo()
    assert medium.outcome == "superseded" and not medium.promoted, medium.message
    assert medium.message.startswith(
        f"superseded {medium.candidate_id}: {strong.candidate_id} became active first (this run had compared "
        f"with {weak.candidate_id}); against {strong.candidate_id}: "
    )
    assert medium.previous_active == medium.active == strong.candidate_id
    line = AuditLog(tmp_path / "store" / project / "audit.jsonl").records()[-1]
    assert (line["decision"], line["promoted"], line["previous_model_id"]) == (
        "superseded",
        False,
        strong.candidate_id,
    )
    assert line["reasons"][0] == medium.message.removeprefix(f"superseded {medium.candidate_id}: ")
    assert medium.candidate_id in {e.model_id for e in store.rejected(project)}  # kept, can be promoted

    # A strong candidate compared with the weak model; the medium one got there first; it beats that too.
    store.activate(project, weak.candidate_id, reason="test: back to the weak model")
    _another_run_promotes_first(monkeypatch, tmp_path, project, medium.candidate_id)
    again = retrain(_params(tmp_path, demo_data, project, 3, {**STRONG, "C": 0.5}))
    monkeypatch.undo()
    assert again.outcome == "promoted" and again.promoted, again.message
    assert again.previous_active == medium.candidate_id and again.active == again.candidate_id
    line = AuditLog(tmp_path / "store" / project / "audit.jsonl").records()[-1]
    assert (line["decision"], line["previous_model_id"]) == ("promote", medium.candidate_id)
    pointer = store.active(project)
    assert pointer is not None and pointer.history[0].model_id == medium.candidate_id  # what it replaced
