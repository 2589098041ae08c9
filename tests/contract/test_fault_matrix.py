"""The fault matrix: every injected fault × every backend ends in a successful retry or a clean typed failure.

In each run the fault is queued on the endpoint that starts training *and* on every other endpoint the
cycle uses (upload, status, fetch, predict, activate), so a run meets it once per endpoint. Whatever
happens, the emulator never starts a second training job, and after a failure nothing new is served.

Two rows are not faults of one answer but of time (``Scenario``): a training slower than the client's
timeout (Rasa trains inside the request: its ``POST /model/train`` times out while the server goes on
training), and a retry of the whole step after such a timeout, with a fresh client on the same work folder, as
a Prefect task retry runs it. Both count the trainings the server started and require exactly one: Rasa 3.x
trains again on every request (no "Nothing changed" reply), so a resent train request is a second training.
``test_print_fault_matrix`` prints the table (run with ``-s``), which also documents the outcomes.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from contract_kit import BACKENDS, MAX_WAIT, TEST_TEXTS, make_backend, rig, tiny_dataset

from nluflow.backends.errors import AuthenticationError
from nluflow.errors import NluflowError, TrainingFailedError, TransientBackendError
from nluflow.testing.emulators import EmulatorSettings, Fault, JobOutcome

ENDPOINTS = {
    "service": ("upload", "train", "status", "artifact", "predict", "activate"),
    "rasa": ("train", "status", "predict", "activate"),
    "cognigy": ("upload", "train", "tasks", "status", "export", "predict", "snapshot", "activate"),
    "cognigy-oauth2": ("upload", "train", "tasks", "status", "export", "predict", "snapshot", "activate"),
    "neuralspace": ("upload", "train", "models", "status", "predict", "activate"),
}
# Backends whose credentials can be renewed (OAuth2); the others hold a static key or token.
REFRESHABLE = {"service", "cognigy-oauth2"}
FAULTS: list[Fault | JobOutcome] = [
    *Fault,
    JobOutcome.FAIL,
    JobOutcome.CANCEL,
    JobOutcome.ERROR,
    JobOutcome.NEVER_FINISH,
]


class Scenario(StrEnum):
    """Faults of time rather than of one answer."""

    SLOW_TRAINING = "training slower than the timeout"
    TASK_RETRY = "task retry after a timeout"


# A training takes this long on the emulators in the scenario rows (the Rasa client's train timeout: less).
SLOW_JOB_SECONDS = 1.5
RASA_SHORT_TRAIN_TIMEOUT = 0.5
# The first attempt of the task-retry row gives up waiting this soon (the training still runs).
GIVE_UP_SECONDS = 0.3
# Attempts after the first, as the Prefect tasks of tasks/training.py allow (len(BACKEND_RETRY_DELAYS)).
TASK_RETRIES = 3
TASK_RETRY_DELAY = 1.0

MATRIX: dict[tuple[str, str], str] = {}


def expected(kind: str, fault: Fault | JobOutcome) -> type[NluflowError] | None:
    """None: the cycle must succeed after retries. Otherwise the typed error it must end with."""
    if kind == "rasa" and fault in (Fault.SERVER_ERROR, Fault.UNAVAILABLE, JobOutcome.NEVER_FINISH):
        # A 500/503 to POST /model/train may come after the server trained (Rasa has no idempotency key):
        # it is never resent in the call; the step's retry finds the archive or trains once. A training
        # that never ends is still running when the client gives up: retryable, never resent.
        return TransientBackendError
    if isinstance(fault, JobOutcome):
        return TrainingFailedError
    if fault is Fault.TOKEN_EXPIRED and kind not in REFRESHABLE:
        return AuthenticationError
    return None


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("kind", BACKENDS)
def test_fault(kind: str, fault: Fault | JobOutcome, tmp_path: Path, model_kw: dict[str, Any]) -> None:
    data = tiny_dataset()
    client_kw: dict[str, Any] = {}
    if fault is JobOutcome.NEVER_FINISH:  # give up sooner on the job that never ends
        client_kw = {
            "rasa": {"train_timeout": 1.0, "idle_wait": 1.0},
            "cognigy": {"train_wait": 1.0},
            "cognigy-oauth2": {"train_wait": 1.0},
        }.get(kind, {})
    with rig(kind, tmp_path, model_kw, preload=data.subset(range(1, len(data))), **client_kw) as r:
        if fault is JobOutcome.NEVER_FINISH:
            r.max_wait = 1.0
        before = r.served_model()
        if isinstance(fault, Fault):
            for endpoint in ENDPOINTS[kind]:
                r.emulator.faults.inject(endpoint, fault)
        else:
            r.emulator.outcome = fault
        want = expected(kind, fault)
        try:
            _, parses = r.cycle(data, f"key-{kind}-{fault.name}", tmp_path / "model", TEST_TEXTS)
        except NluflowError as exc:
            outcome = type(exc).__name__
            assert want is not None and isinstance(exc, want), f"{kind} × {fault}: unexpected {exc!r}"
            assert r.served_model() == before, "nothing new is served after a failure"
            assert r.jobs_started <= 1
            if isinstance(exc, TransientBackendError) and isinstance(fault, Fault):
                # What Prefect does next (tasks.common.is_transient): the task again, a fresh client from the
                # same block on the same work folder. It finds the archive or, as here, trains once.
                r.backend = make_backend(kind, r.emulator, r.served.url, r.sleep, tmp_path / f"{kind}-client")
                _, parses = r.cycle(data, f"key-{kind}-{fault.name}", tmp_path / "model-retry", TEST_TEXTS)
                assert [p.text for p in parses] == TEST_TEXTS
                assert r.served_model() not in (None, before), "the candidate is served"
                assert r.jobs_started == 1
                outcome = f"{outcome}, then task retry ok"
        else:
            assert want is None, f"{kind} × {fault}: expected {want.__name__ if want else None}, it succeeded"
            assert [p.text for p in parses] == TEST_TEXTS
            assert r.served_model() not in (None, before), "the candidate is served"
            assert r.jobs_started == 1
            fired = len(r.emulator.faults.fired)
            outcome = "ok, token refreshed" if fault is Fault.TOKEN_EXPIRED else f"ok after {fired} faults"
        assert r.jobs_started <= 1, "no fault ever starts a second training job"
        MATRIX[(kind, fault.value)] = f"{outcome} ({r.jobs_started} job)"


def _client_kw(kind: str, scenario: Scenario) -> dict[str, Any]:
    give_up = GIVE_UP_SECONDS if scenario is Scenario.TASK_RETRY else MAX_WAIT
    return {
        "rasa": {"train_timeout": RASA_SHORT_TRAIN_TIMEOUT, "idle_wait": give_up},
        "cognigy": {"train_wait": give_up},
        "cognigy-oauth2": {"train_wait": give_up},
    }.get(kind, {})


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(Scenario), ids=[s.name for s in Scenario])
@pytest.mark.parametrize("kind", BACKENDS)
def test_scenario(kind: str, scenario: Scenario, tmp_path: Path, model_kw: dict[str, Any]) -> None:
    """Exactly one training on the server, whatever the client's timeouts and however often the step runs."""
    data = tiny_dataset()
    settings = EmulatorSettings(retry_after_seconds=1, slow_seconds=1.0, job_min_seconds=SLOW_JOB_SECONDS)
    key = f"key-{kind}-{scenario.name}"
    client_kw = _client_kw(kind, scenario)
    with rig(kind, tmp_path, model_kw, settings, preload=data.subset(range(1, len(data))), **client_kw) as r:
        before = r.served_model()
        attempts = 0
        if scenario is Scenario.TASK_RETRY:
            # The first attempt gives up while the training still runs on the server.
            attempts += 1
            r.max_wait = GIVE_UP_SECONDS
            with pytest.raises(NluflowError) as first:
                r.cycle(data, key, tmp_path / "attempt-1", TEST_TEXTS)
            if kind == "rasa":
                assert isinstance(first.value, TransientBackendError), f"Prefect retries it: {first.value!r}"
                assert "not resent" in str(first.value)
            r.max_wait = MAX_WAIT
        while True:
            attempts += 1
            if attempts > 1:
                # A task retry builds a fresh client from the same block, on the same work folder (Rasa keeps
                # its short timeouts; the others wait as usual: their first attempt only gave up waiting).
                retry_kw = client_kw if kind == "rasa" else {}
                r.backend = make_backend(
                    kind, r.emulator, r.served.url, r.sleep, tmp_path / f"{kind}-client", **retry_kw
                )
            try:
                _, parses = r.cycle(data, key, tmp_path / f"attempt-{attempts}", TEST_TEXTS)
                break
            except TransientBackendError:  # what tasks.common.is_transient retries
                if attempts > TASK_RETRIES:
                    raise
                time.sleep(TASK_RETRY_DELAY)
        assert [p.text for p in parses] == TEST_TEXTS
        assert r.served_model() not in (None, before), "the candidate is served"
        assert r.jobs_started == 1, f"{r.jobs_started} trainings for one run's training set"
        retried = attempts - 1
        outcome = f"ok after {retried} task retr{'y' if retried == 1 else 'ies'}" if retried else "ok"
        MATRIX[(kind, scenario.value)] = f"{outcome} ({r.jobs_started} job)"


def test_print_fault_matrix() -> None:
    """Prints fault × backend → outcome (the cells the parametrised runs above filled in)."""
    if not MATRIX:
        pytest.skip("the fault runs did not run in this session (e.g. -m 'not slow')")
    rows = [f.value for f in FAULTS] + [s.value for s in Scenario]
    width = max(len(r) for r in rows) + 2
    col = 48
    lines = ["fault".ljust(width) + "".join(k.ljust(col) for k in BACKENDS)]
    for row in rows:
        lines.append(row.ljust(width) + "".join(MATRIX.get((k, row), "-").ljust(col) for k in BACKENDS))
    print("\n" + "\n".join(line.rstrip() for line in lines))
    missing = [(k, r) for k in BACKENDS for r in rows if (k, r) not in MATRIX]
    assert not missing or len(missing) == len(BACKENDS) * len(rows) - len(MATRIX)
