"""The fault matrix: every injected fault × every backend ends in a successful retry or a clean typed failure.

In each run the fault is queued on the endpoint that starts training *and* on every other endpoint the
cycle uses (upload, status, fetch, predict, activate), so a run meets it once per endpoint. Whatever
happens, the emulator never starts a second training job, and after a failure nothing new is served.
``test_print_fault_matrix`` prints the table (run with ``-s``), which also documents the outcomes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from contract_kit import BACKENDS, TEST_TEXTS, rig, tiny_dataset

from nluflow.backends.errors import AuthenticationError
from nluflow.errors import NluflowError, TrainingFailedError
from nluflow.testing.emulators import Fault, JobOutcome

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

MATRIX: dict[tuple[str, str], str] = {}


def expected(kind: str, fault: Fault | JobOutcome) -> type[NluflowError] | None:
    """None: the cycle must succeed after retries. Otherwise the typed error it must end with."""
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
        else:
            assert want is None, f"{kind} × {fault}: expected {want.__name__ if want else None}, it succeeded"
            assert [p.text for p in parses] == TEST_TEXTS
            assert r.served_model() not in (None, before), "the candidate is served"
            assert r.jobs_started == 1
            fired = len(r.emulator.faults.fired)
            outcome = "ok, token refreshed" if fault is Fault.TOKEN_EXPIRED else f"ok after {fired} faults"
        assert r.jobs_started <= 1, "no fault ever starts a second training job"
        MATRIX[(kind, fault.value)] = f"{outcome} ({r.jobs_started} job)"


def test_print_fault_matrix() -> None:
    """Prints fault × backend → outcome (the cells the parametrised runs above filled in)."""
    if not MATRIX:
        pytest.skip("the fault runs did not run in this session (e.g. -m 'not slow')")
    rows = [f.value for f in FAULTS]
    width = max(len(r) for r in rows) + 2
    col = 28
    lines = ["fault".ljust(width) + "".join(k.ljust(col) for k in BACKENDS)]
    for row in rows:
        lines.append(row.ljust(width) + "".join(MATRIX.get((k, row), "-").ljust(col) for k in BACKENDS))
    print("\n" + "\n".join(line.rstrip() for line in lines))
    missing = [(k, r) for k in BACKENDS for r in rows if (k, r) not in MATRIX]
    assert not missing or len(missing) == len(BACKENDS) * len(rows) - len(MATRIX)
