"""Must-show 2 of issue 11: a promotion killed (SIGKILL) at each of its steps leaves store and audit log in
agreement, and the next promotion of the project completes within seconds.

Each case runs a first retrain of its own project in a subprocess (against the session's Prefect test
harness) with ``NLUFLOW_TEST_KILL_AT=<step>`` (the test-only hook in ``tasks/common.py``), so the process
kills itself right after that step. Then:

* ``audit verify`` is ok as the kill left it (an intent line without its completion line is not a break);
* the next retrain of the project (in this process) closes a half-way promotion with a visible line
  (``promote`` with ``recovered: true`` when the pointer had switched, else ``promotion-abandoned``) and
  promotes its own, better candidate;
* every activation on the pointer has its ``promote`` line on the log, and no ``promote`` line names an
  activation the pointer does not have; the log verifies.

``pytest tests/flows/test_crash_points.py -s`` prints the table of the run.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import RetrainParams, retrain
from nluflow.recovery import pending_intents
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog

STEPS = ("store", "activate", "intent", "pointer", "audit", "sync")
# What the next run must find of the killed run's promotion: (pointer moved, line that closes the intent).
EXPECTED: dict[str, tuple[bool, str | None]] = {
    "store": (False, None),  # killed before its intent line: nothing to close, the pointer never moved
    "activate": (False, None),
    "intent": (False, "promotion-abandoned"),
    "pointer": (True, "promote (recovered)"),
    "audit": (True, None),  # its own promote line was written: nothing to recover
    "sync": (True, None),
}
_ROWS: list[tuple[str, str, str, str, str]] = []


# The fixtures of tests/flows/conftest.py: run a retrain that SIGKILLs itself after a step; free its slot.
KillRun = Callable[[str, RetrainParams], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash-home")


def _params(home: Path, demo_data: Path, project: str, files: list[str]) -> RetrainParams:
    return RetrainParams(
        project=project,
        data=[str(demo_data / f) for f in files],
        test=[str(demo_data / "test.jsonl")],
        store=str(home / "store"),
        workspace=str(home / "work"),
    )


def _closing_line(lines: list[dict[str, Any]], intent_seq: int) -> str | None:
    for line in lines:
        if line.get("intent_seq") == intent_seq and line["decision"] != "promote-intent":
            return "promote (recovered)" if line.get("recovered") else line["decision"]
    return None


def _assert_store_and_audit_agree(store: ModelStore, log: AuditLog, project: str) -> None:
    pointer = store.active(project)
    assert pointer is not None
    activations = {(e.model_id, e.run_id) for e in [pointer.entry(), *pointer.history]}
    promotions = {(x["model_id"], x["flow_run_id"]) for x in log.records() if x["decision"] == "promote"}
    assert activations == promotions, (activations, promotions)
    assert pending_intents(log.records()) == []


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_a_promotion_killed_at_each_step_is_recovered_and_the_next_one_completes(
    step: str,
    home: Path,
    demo_data: Path,
    run_killed_at: KillRun,
    free_promotion_slot: Callable[[str], None],
) -> None:
    project = f"crash-{step}"
    store = ModelStore.local(home / "store", create=True)
    log = AuditLog(home / "store" / project / "audit.jsonl")
    run_killed_at(step, _params(home, demo_data, project, ["batch-1.jsonl"]))

    pointer = store.active(project)
    moved, closing = EXPECTED[step]
    assert (pointer is not None) is moved, pointer
    after_kill = log.records()
    assert log.verify().ok  # a kill between two lines is not a break
    intents = [x for x in after_kill if x["decision"] == "promote-intent"]
    assert len(intents) == (0 if step in ("store", "activate") else 1), after_kill
    if step in ("audit", "sync"):
        assert after_kill[-1]["decision"] == "promote" and after_kill[-1]["intent_seq"] == intents[0]["seq"]
        assert "recovered" not in after_kill[-1]

    free_promotion_slot(project)
    started = time.monotonic()
    nxt = retrain(_params(home, demo_data, project, ["batch-1.jsonl", "batch-2.jsonl"]))
    seconds = time.monotonic() - started

    assert nxt.promoted, nxt.decision.reasons
    now = store.active(project)
    assert now is not None and now.model_id == nxt.candidate_id
    lines = log.records()
    found = _closing_line(lines, intents[0]["seq"]) if intents else None
    if step in ("intent", "pointer"):
        assert found == closing
        recovery = next(x for x in lines if x.get("intent_seq") == intents[0]["seq"])
        assert recovery["seq"] == len(after_kill) + 1  # written first by the next run, before its own lines
        assert f"run {nxt.flow_run_id}" in recovery["reasons"][0]
    own = [x for x in lines if x.get("run_id") == nxt.flow_run_id]
    assert [x["decision"] for x in own] == ["promote-intent", "promote"]
    assert own[1]["intent_seq"] == own[0]["seq"]
    _assert_store_and_audit_agree(store, log, project)
    out = CliRunner().invoke(app, ["audit", "verify", "--project", project, "--store", str(home / "store")])
    assert out.exit_code == 0, out.output

    recovered = next((x for x in lines if x.get("intent_seq") and x["seq"] == len(after_kill) + 1), None)
    _ROWS.append(
        (
            step,
            pointer.model_id if pointer else "none",
            f"{found} (line {recovered['seq']})" if found and recovered else "none needed",
            "ok" if out.exit_code == 0 else "BROKEN",
            f"{seconds:.1f}",
        )
    )
    if len(_ROWS) == len(STEPS):
        _print_table()


def _print_table() -> None:
    head = ("step killed", "pointer after kill", "recovery line", "verify", "next promotion s")
    widths = [max(len(str(r[i])) for r in [head, *_ROWS]) for i in range(len(head))]
    print()
    for row in [head, tuple("-" * w for w in widths), *_ROWS]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
