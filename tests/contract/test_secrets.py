"""Secrets never appear in exception messages, reprs, logs, job/model references or fetched files,
including on the error paths."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract_kit import BACKENDS, SECRETS, TEST_TEXTS, make_backend, rig, tiny_dataset

from nluflow.backends.base import ModelRef, TrainingConfig
from nluflow.errors import NluflowError
from nluflow.testing.emulators import Fault


def _texts_of(exc: BaseException) -> list[str]:
    out = [str(exc), repr(exc), repr(exc.args)]
    out += [str(v) for v in vars(exc).values()]
    out.append(repr(pickle.loads(pickle.dumps(exc)).__dict__))
    return out


def _files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", errors="replace") for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", BACKENDS)
def test_no_secret_in_logs_reprs_refs_or_files(
    kind: str, tmp_path: Path, model_kw: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = SECRETS[kind]
    data = tiny_dataset()
    with rig(kind, tmp_path, model_kw, preload=data.subset(range(1, len(data)))) as r:
        for endpoint in ("train", "status", "predict"):
            r.emulator.faults.inject(endpoint, Fault.UNAVAILABLE)  # retries log their URLs
        seen: list[str] = []
        if kind == "rasa":  # a 503 to POST /model/train is never resent in the call: the task retry trains
            with pytest.raises(NluflowError) as lost:
                r.backend.submit(data, TrainingConfig(epochs=10), "k")
            seen += _texts_of(lost.value)
        job = r.backend.submit(data, TrainingConfig(epochs=10), "k")
        model, _ = r.cycle(data, "k", tmp_path / "model", TEST_TEXTS)
        seen += [
            repr(r.backend),
            job.model_dump_json(),
            model.model_dump_json(),
            _files_text(tmp_path / "model"),
        ]
        # an error path: the credential stops working
        r.emulator.faults.inject("predict", Fault.TOKEN_EXPIRED, times=3)
        r.emulator.faults.inject("status", Fault.TOKEN_EXPIRED, times=3)
        r.emulator.faults.inject("tasks", Fault.TOKEN_EXPIRED, times=3)
        r.emulator.faults.inject("models", Fault.TOKEN_EXPIRED, times=3)
        r.emulator.faults.inject("export", Fault.TOKEN_EXPIRED, times=3)
        r.emulator.expire_tokens()
        try:
            r.backend.predict(model, TEST_TEXTS)
        except NluflowError as exc:
            seen += _texts_of(exc)
    assert "retry" in caplog.text and "HTTP Request" in caplog.text  # the logs were really captured
    for text in [*seen, caplog.text]:
        assert secret not in text


def _echo(request: httpx.Request) -> httpx.Response:
    """A hostile server: answers 400 and echoes everything it received, credentials included."""
    echoed = {
        "credential": request.headers.get("authorization") or request.headers.get("x-api-key"),
        "url": str(request.url),
        "body": request.content.decode("utf-8", errors="replace")[:200],
    }
    if request.url.path.endswith("/oauth/token") or request.url.path.endswith("/oauth2/token"):
        return httpx.Response(401, json={"error": "invalid_client", "echo": echoed})
    return httpx.Response(400, json={"status": "failure", "message": json.dumps(echoed)})


@pytest.mark.parametrize("kind", BACKENDS)
def test_error_bodies_that_echo_credentials_are_redacted(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nluflow.testing.emulators.cognigy import CognigyEmulator

    caplog.set_level(logging.DEBUG)
    em = CognigyEmulator(api_key=None, client_id="nluflow", client_secret="x" * 8, workdir=tmp_path / "em")
    backend = make_backend(
        kind,
        em,
        "http://platform.test",
        lambda s: None,
        tmp_path / "client",
        transport=httpx.MockTransport(_echo),
    )
    model = ModelRef(backend=kind, model_id="m-1", backend_model_id="m-1", path=str(tmp_path))
    seen: list[str] = []
    for call in (
        lambda: backend.submit(tiny_dataset(), TrainingConfig(), "k"),
        lambda: backend.predict(model, ["hello"]),
        lambda: backend.activate(model),
    ):
        with pytest.raises(NluflowError) as info:
            call()
        seen += _texts_of(info.value)
    assert any("REDACTED" in t for t in seen), seen[:2]  # the echo really carried a credential
    for text in [*seen, caplog.text]:
        assert SECRETS[kind] not in text
