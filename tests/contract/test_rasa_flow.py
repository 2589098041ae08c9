"""The retrain flow against the Rasa emulator where Rasa 3.x differs from old assumptions (issue 12):

- a training slower than the block's train timeout: one training on the server, however often Prefect
  retries the submit task (Rasa 3.x trains again on every request, so nothing may be resent);
- a server-side training failure: the run fails naming the server, and the flow's on_failure hook writes
  the ``failed`` audit line;
- two projects on one Rasa server: the second project's run is refused before it trains, the first
  project's served model stays, and the refused run has its ``failed`` audit line.

Each test has its own emulator and block document; the Prefect API is the session's harness.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from contract_kit import SECRETS

import tasks.training
from blocks.rasa import RasaBackendBlock
from flows.retrain import RetrainParams, retrain
from nluflow.backends.errors import ServedModelMismatchError
from nluflow.backends.rasa import archive_tag
from nluflow.data.loaders import load_jsonl
from nluflow.errors import TrainingFailedError
from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog
from nluflow.testing.emulators import EmulatorSettings, JobOutcome, ServedApp
from nluflow.testing.emulators.rasa import SERVER_FAILURE, RasaEmulator

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "examples" / "snips-demo"


@dataclass
class Server:
    emulator: RasaEmulator
    served: ServedApp
    home: Path

    def block(self, name: str, **fields: Any) -> str:
        """Save a Rasa block document for this server; its reference for ``RetrainParams.backend``."""
        block = RasaBackendBlock(
            url=self.served.url,
            token=SECRETS["rasa"],
            server_models_folder=str(self.emulator.models_folder),
            **fields,
        )
        RasaBackendBlock.register_type_and_schema()
        block.save(name, overwrite=True)
        return f"{block.get_block_type_slug()}/{name}"

    def params(self, project: str, backend: str) -> RetrainParams:
        return RetrainParams(
            project=project,
            data=[str(DEMO / "batch-1.jsonl")],
            test=[str(DEMO / "test.jsonl")],
            store=str(self.home / "store"),
            workspace=str(self.home / "work"),
            backend=backend,
            max_wait_seconds=120,
        )

    def audit(self, project: str) -> list[dict[str, Any]]:
        return AuditLog(self.home / "store" / project / "audit.jsonl").records()

    def served_model(self) -> str | None:
        return self.emulator.loaded[0] if self.emulator.loaded else None


def _server(home: Path, job_seconds: float = 0.05) -> Iterator[Server]:
    settings = EmulatorSettings(retry_after_seconds=1, slow_seconds=1.0, job_min_seconds=job_seconds)
    em = RasaEmulator(token=SECRETS["rasa"], settings=settings, workdir=home / "server")
    served = em.serve().start()
    try:
        yield Server(em, served, home)
    finally:
        served.stop()


@pytest.fixture
def server(prefect_api: str, tmp_path: Path) -> Iterator[Server]:
    yield from _server(tmp_path)


@pytest.fixture
def slow_server(prefect_api: str, tmp_path: Path) -> Iterator[Server]:
    yield from _server(tmp_path, job_seconds=2.0)


@pytest.fixture
def quick_task_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The submit task's retries as configured, with short delays (the waits are not what is tested)."""
    task = tasks.training.submit_training
    monkeypatch.setattr(task, "retry_delay_seconds", [1.0] * len(task.retry_delay_seconds or [1.0]))


def test_training_slower_than_the_train_timeout_trains_once_across_task_retries(
    slow_server: Server, quick_task_retries: None
) -> None:
    """The train request times out and the client stops waiting while the server still trains: the submit
    task fails (transient) and Prefect retries it; the retry waits for that training and takes its archive."""
    s = slow_server
    ref = s.block("rasa-slow", train_timeout_seconds=0.5, idle_wait_seconds=0.5)
    result = retrain(s.params("slow", ref))
    assert result.promoted, result.decision.reasons
    assert s.emulator.jobs_started == 1, f"{s.emulator.jobs_started} trainings for one run"
    [tag] = s.emulator.trainings
    assert tag is not None and tag.startswith("nluflow.slow.")
    assert len(s.emulator.recorded("train")) == 1, "POST /model/train was sent once"
    manifest = ModelStore.local(s.home / "store").manifest("slow", result.candidate_id)
    assert manifest.backend_model_id is not None
    assert s.served_model() == Path(manifest.backend_model_id).name, "pointer and served model agree"
    assert s.emulator.assistant_id_of(s.served_model() or "") == tag


def test_server_side_training_failure_fails_the_run_with_a_failed_audit_line(server: Server) -> None:
    s = server
    ref = s.block("rasa-failing")
    s.emulator.outcome = JobOutcome.ERROR
    with pytest.raises(TrainingFailedError) as caught:
        retrain(s.params("failing", ref))
    message = str(caught.value)
    assert "failure of the server" in message and "not of the data or the pipeline" in message
    [line] = s.audit("failing")
    assert line["decision"] == "failed" and line["promoted"] is False
    assert line["error"].startswith("TrainingFailedError: ") and SERVER_FAILURE in line["error"]
    assert "failure of the server" in line["error"] and SECRETS["rasa"] not in line["error"]
    assert AuditLog(s.home / "store" / "failing" / "audit.jsonl").verify().ok
    assert s.emulator.jobs_started == 1, "a failed training is not retried"
    assert s.served_model() is None, "nothing is served after the failure"


def test_second_project_on_the_same_server_is_refused_before_it_trains(server: Server) -> None:
    s = server
    ref = s.block("rasa-shared")
    first = retrain(s.params("shop", ref))
    assert first.promoted
    served = s.served_model()
    assert served is not None and s.emulator.assistant_id_of(served) == s.emulator.trainings[0]
    with pytest.raises(ServedModelMismatchError) as caught:
        retrain(s.params("bank", ref))
    message = str(caught.value)
    assert served in message and "'shop'" in message and "'bank'" in message
    assert "its own Rasa server" in message
    assert s.emulator.jobs_started == 1, "the refused project trained nothing"
    assert s.served_model() == served, "project shop's model is still served"
    [line] = s.audit("bank")
    assert line["decision"] == "failed" and line["error"].startswith("ServedModelMismatchError: ")
    assert [rec["decision"] for rec in s.audit("shop")] == ["promote-intent", "promote"]
    assert archive_tag("shop", "x").split(".")[1] == "shop"


def test_a_served_model_that_is_not_the_active_one_stops_the_run_before_it_trains(server: Server) -> None:
    """Project shop's active pointer names a model the server no longer serves (another model was loaded by
    hand): the run refuses at once, names both, trains nothing and changes nothing."""
    s = server
    ref = s.block("rasa-replaced")
    first = retrain(s.params("shop", ref))
    assert first.promoted
    by_hand = s.emulator.preload(load_jsonl(DEMO / "batch-2.jsonl"))  # a model loaded by hand
    with pytest.raises(ServedModelMismatchError) as caught:
        retrain(s.params("shop", ref))
    message = str(caught.value)
    assert "active model" in message and Path(by_hand).name in message and "changed by hand" in message
    assert f"nluflow models activate {first.candidate_id} --project shop" in message
    assert s.emulator.jobs_started == 1 and s.served_model() == Path(by_hand).name
    assert [rec["decision"] for rec in s.audit("shop")] == ["promote-intent", "promote", "failed"]
