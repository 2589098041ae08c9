"""Must-show 4 of issue 15: after promote, reject, forced promote, rollback, activate, a blocked and a failed
run, the audit log is intact and lists each change, in order, and the store keeps what a rollback needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import RetrainParams, retrain
from nluflow.errors import DataError
from nluflow.evaluation.gates import GatePolicy
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog

PROJECT = "history"
runner = CliRunner()


def _params(home: Path, data: list[Path], **kw: object) -> RetrainParams:
    return RetrainParams.model_validate(
        {
            "project": PROJECT,
            "data": [str(p) for p in data],
            "store": str(home / "store"),
            "workspace": str(home / "work"),
            **kw,
        }
    )


def test_audit_verify_lists_every_decision_and_pointer_change(tmp_path: Path, demo_data: Path) -> None:
    home = tmp_path
    test = [str(demo_data / "test.jsonl")]
    cli = ["--project", PROJECT, "--store", str(home / "store")]

    first = retrain(_params(home, [demo_data / "batch-1.jsonl"], test=test))
    assert first.promoted
    store = ModelStore.local(home / "store")

    # A different candidate that the gates reject (it must beat the active model by more than 0.5).
    extra = tmp_path / "more.jsonl"
    extra.write_text("".join((demo_data / "batch-2.jsonl").read_text().splitlines(keepends=True)[:40]))
    second = retrain(
        _params(home, [demo_data / "batch-1.jsonl", extra], test=test, gates=GatePolicy(min_delta=0.5))
    )
    assert not second.promoted and second.candidate_id != first.candidate_id
    assert store.has_model(PROJECT, second.candidate_id)  # kept, not active, for a forced promotion

    out = runner.invoke(
        app, ["models", "promote", second.candidate_id, "--reason", "reviewed by hand: noise in test", *cli]
    )
    assert out.exit_code == 0, out.output
    assert store.rejected(PROJECT) == []  # promoted by hand: no longer a rejected candidate
    out = runner.invoke(app, ["models", "rollback", *cli])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["models", "activate", second.candidate_id, *cli])
    assert out.exit_code == 0, out.output

    one_intent = tmp_path / "one-intent.jsonl"
    one_intent.write_text(
        "".join(json.dumps({"text": f"hello number {i}", "intent": "greet"}) + "\n" for i in range(12))
    )
    with pytest.raises(DataError):
        retrain(_params(home, [one_intent], test=test))  # blocked by validation
    with pytest.raises(DataError):
        retrain(_params(home, [demo_data / "batch-1.jsonl"], test=[str(tmp_path / "missing.jsonl")]))

    lines = AuditLog(home / "store" / PROJECT / "audit.jsonl").records()
    a, c = first.candidate_id, second.candidate_id
    # A retrain's promotion is two lines: its intent before the pointer switch, its completion after it.
    assert [(x["seq"], x["decision"], x["model_id"]) for x in lines] == [
        (1, "promote-intent", a),
        (2, "promote", a),
        (3, "reject", c),
        (4, "forced-promote", c),
        (5, "rollback", a),
        (6, "activate", c),
        (7, "blocked", None),
        (8, "failed", None),
    ]
    assert lines[1]["intent_seq"] == 1 and lines[0]["run_id"] == lines[1]["run_id"] == first.flow_run_id
    assert all("intent_seq" not in x for x in lines[2:])
    assert lines[3]["reasons"] == ["reviewed by hand: noise in test"]
    assert "missing.jsonl" in lines[7]["error"]
    pointer = store.active(PROJECT)
    assert pointer is not None and pointer.model_id == c

    out = runner.invoke(app, ["audit", "verify", "--store", str(home / "store")])
    assert out.exit_code == 0, out.output
    assert f"{PROJECT}: intact, 8 lines" in out.output
    rows = [[c.strip() for c in line.split("│")[1:5]] for line in out.output.splitlines() if "│" in line]
    decisions = [row[2] for row in rows if row and row[0].isdigit()]
    assert decisions == [
        "promote-intent",
        "promote",
        "reject",
        "forced-promote",
        "rollback",
        "activate",
        "blocked",
        "failed",
    ]
