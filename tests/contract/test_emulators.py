"""The emulator machinery: serving on 127.0.0.1, and what each injected fault looks like on the wire."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from nluflow.testing.emulators import EmulatorSettings, Fault, TrainingServiceEmulator, serve
from nluflow.testing.emulators._middleware import FaultPlan


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_serve_starts_on_a_free_local_port_and_stops_cleanly(
    tmp_path: Path, model_kw: dict[str, Any]
) -> None:
    em = TrainingServiceEmulator(workdir=tmp_path, **model_kw)
    threads = threading.active_count()
    with serve(em.app) as url:
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        response = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"})
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert _port_is_free(port)
    assert threading.active_count() <= threads


@pytest.fixture
def served(tmp_path: Path, model_kw: dict[str, Any]) -> Any:
    em = TrainingServiceEmulator(
        workdir=tmp_path, settings=EmulatorSettings(retry_after_seconds=7, slow_seconds=1.0), **model_kw
    )
    with em.serve() as app:
        yield em, app.url


def _token(url: str) -> dict[str, str]:
    body = httpx.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "nluflow", "client_secret": "service-secret"},
    ).json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def test_each_fault_on_the_wire(served: Any) -> None:
    em, url = served
    auth = _token(url)
    with httpx.Client(base_url=url, headers=auth, timeout=httpx.Timeout(5.0, read=0.5)) as client:
        em.faults.inject("status", Fault.RATE_LIMIT)
        answer = client.get("/jobs/nope")
        assert answer.status_code == 429 and answer.headers["retry-after"] == "7"
        for fault, code in [(Fault.SERVER_ERROR, 500), (Fault.BAD_GATEWAY, 502), (Fault.UNAVAILABLE, 503)]:
            em.faults.inject("status", fault)
            assert client.get("/jobs/nope").status_code == code
        em.faults.inject("status", Fault.MALFORMED_JSON)
        garbled = client.get("/jobs/nope")
        assert garbled.status_code == 404
        with pytest.raises(ValueError):
            garbled.json()
        em.faults.inject("status", Fault.SLOW)
        with pytest.raises(httpx.ReadTimeout):
            client.get("/jobs/nope")
        em.faults.inject("status", Fault.DROP)
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/jobs/nope")
        em.faults.inject("status", Fault.TOKEN_EXPIRED)
        assert client.get("/jobs/nope").status_code == 401
        assert client.get("/jobs/nope").status_code == 401, "the 401 fault revoked the token"
    assert em.faults.pending() == 0
    assert [f for _, f in em.faults.fired] == [
        Fault.RATE_LIMIT,
        Fault.SERVER_ERROR,
        Fault.BAD_GATEWAY,
        Fault.UNAVAILABLE,
        Fault.MALFORMED_JSON,
        Fault.SLOW,
        Fault.DROP,
        Fault.TOKEN_EXPIRED,
    ]


def test_faults_after_processing_let_the_work_happen(served: Any) -> None:
    """A 502 after processing: the upload was stored although the client saw an error."""
    em, url = served
    auth = _token(url) | {"Idempotency-Key": "k1", "Content-Type": "application/x-ndjson"}
    em.faults.inject("upload", Fault.BAD_GATEWAY)
    body = b'{"text": "hi", "intent": "greet", "entities": []}\n'
    assert httpx.post(f"{url}/datasets", content=body, headers=auth).status_code == 502
    assert len(em.datasets) == 1
    again = httpx.post(f"{url}/datasets", content=body, headers=auth)
    assert again.status_code == 200 and len(em.datasets) == 1  # the same key: the same dataset


def test_fault_plan_is_per_endpoint_and_consumed_once() -> None:
    plan = FaultPlan()
    plan.inject("train", Fault.DROP, times=2)
    assert plan.take("status") is None
    assert [plan.take("train"), plan.take("train"), plan.take("train")] == [Fault.DROP, Fault.DROP, None]
    assert Fault.DROP.after_processing and not Fault.RATE_LIMIT.after_processing
