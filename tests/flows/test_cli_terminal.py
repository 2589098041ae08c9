"""What a user sees on the terminal when a retrain ends in a known error: the one-paragraph message, no
Prefect task/flow tracebacks (those stay in the run's logs, through Prefect's API log handler).

The console script runs as a subprocess, as a user runs it, against the session's test server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort
from prefect.settings import PREFECT_API_URL

from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog

pytestmark = pytest.mark.slow


def _nluflow(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "NLUFLOW_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", "from flows.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _assert_one_paragraph(done: subprocess.CompletedProcess[str], expected: str) -> None:
    both = done.stdout + done.stderr
    assert "Traceback" not in both, both
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    # Once: Prefect's "Finished in state Failed(...)" lines that repeat it stay in the run's logs too.
    assert " ".join(done.stderr.split()).count(expected) == 1, done.stderr


def test_validation_failure_inside_a_retrain_shows_only_the_paragraph(tmp_path: Path) -> None:
    data = tmp_path / "one-intent.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"hello number {i}", "intent": "greet"}) + "\n" for i in range(12))
    )
    done = _nluflow("retrain", "--data", str(data), "--project", "tb-blocked", home=tmp_path / "home")
    assert done.returncode == 2, done.stderr
    _assert_one_paragraph(done, "data validation found 1 blocking problem")
    # Nothing is lost: a blocked run is a decision, not a crash, so the run (what the UI shows) ends Failed
    # with the outcome and the blocking finding as its state message, and its logs carry the finding.
    [line] = AuditLog(tmp_path / "home" / "store" / "tb-blocked" / "audit.jsonl").records()
    assert line["decision"] == "blocked"
    run = asyncio.run(_read_run(line["flow_run_id"]))
    assert run.state is not None and run.state.type.value == "FAILED", run.state
    assert run.state.message and run.state.message.startswith("blocked: data failed validation"), run.state
    assert "min_intents" in run.state.message, run.state.message
    assert "outcome:blocked" in run.tags, run.tags
    logs = asyncio.run(_run_logs(line["flow_run_id"]))
    assert any("min_intents" in message for message in logs), logs


async def _read_run(flow_run_id: str) -> Any:
    async with get_client() as client:
        return await client.read_flow_run(UUID(flow_run_id))


async def _run_logs(flow_run_id: str) -> list[str]:
    async with get_client() as client:
        found = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])),
            limit=200,
            offset=0,
            sort=LogSort.TIMESTAMP_ASC,
        )
    return [log.message for log in found]


def test_tampered_active_model_shows_only_the_paragraph(tmp_path: Path, demo_data: Path) -> None:
    home = tmp_path / "home"
    store = ModelStore.local(home / "store", create=True)
    src = tmp_path / "model"
    src.mkdir()
    (src / "intent.pkl").write_bytes(b"a model")
    store.add_model(
        "tb-tampered",
        "m-active",
        src,
        backend="local",
        dataset_sha256="d" * 64,
        test_sha256=None,
        config={},
        metrics={},
    )
    store.activate("tb-tampered", "m-active")
    (home / "store" / "tb-tampered" / "models" / "m-active" / "intent.pkl").write_bytes(b"tampered")
    done = _nluflow(
        "retrain",
        "--data",
        str(demo_data / "batch-1.jsonl"),
        "--test",
        str(demo_data / "test.jsonl"),
        "--project",
        "tb-tampered",
        home=home,
    )
    assert done.returncode == 1, done.stderr
    _assert_one_paragraph(done, "does not match its manifest and is refused")
