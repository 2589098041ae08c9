"""`nluflow serve`: Rasa's /model/parse shape, auth, limits, error bodies, and the hot swap under load.

Most tests drive the ASGI app in-process (httpx over ASGI, the watcher refreshed by hand). The swap
test runs the real server (uvicorn in a thread on 127.0.0.1, a free port) with client threads sending
requests while the test trains a second model and activates it in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
import sklearn
import uvicorn
from starlette.applications import Starlette

from nluflow import __version__
from nluflow.apps import serve
from nluflow.apps.serve import (
    MODEL_HEADER,
    ServeOptions,
    _TokenRedactor,
    create_app,
    run,
)
from nluflow.apps.serve_watcher import ActiveModelWatcher
from nluflow.backends.base import IntentScore, LocalModelOptions, Parse
from nluflow.data.loaders import load_file
from nluflow.errors import ConfigError, ModelNotFoundError, StoreError, UnsafePathError
from nluflow.models.nlu import INTENT_FILE, NLUModel
from nluflow.store import ModelStore

PROJECT = "bot"
TEXT = "play the new album by queen on spotify"
ADD: dict[str, Any] = {
    "backend": "local",
    "dataset_sha256": "d",
    "test_sha256": None,
    "config": {},
    "metrics": {},
}
ERROR_KEYS = {"version", "status", "message", "reason", "details", "help", "code"}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_a(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Path:
    """A small real model (the default local pipeline) on the first demo batch."""
    folder = tmp_path_factory.mktemp("model-a")
    NLUModel(LocalModelOptions(), random_state=0).fit(load_file(demo_data / "batch-1.jsonl")).save(folder)
    return folder


class AppClient:
    """Calls the ASGI app in-process through httpx, with its lifespan running on one event loop."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> AppClient:
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        lifespan = self.app.router.lifespan_context(self.app)
        self._stack.enter_context(self.portal.wrap_async_context_manager(lifespan))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as client:
                return await client.request(method, url, **kwargs)

        return self.portal.call(call)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)


def make_store(root: Path, models: dict[str, Path], active: str | None) -> ModelStore:
    store = ModelStore.local(root, create=True)
    for model_id, folder in models.items():
        store.add_model(PROJECT, model_id, folder, **ADD)
    if active is not None:
        store.activate(PROJECT, active)
    return store


@pytest.fixture
def store(tmp_path: Path, model_a: Path) -> ModelStore:
    return make_store(tmp_path / "store", {"m-a": model_a}, active="m-a")


@pytest.fixture
def client(store: ModelStore) -> Iterator[AppClient]:
    with AppClient(create_app(store, PROJECT, watch=False)) as c:
        yield c


def assert_rasa_error(response: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS
    assert body["status"] == "failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert body["version"] == __version__
    assert isinstance(body["message"], str) and body["message"]
    return body


# ------------------------------------------------------------------------------------------------ shape


def test_parse_answers_in_rasa_shape_with_the_models_prediction(client: AppClient, model_a: Path) -> None:
    response = client.post("/model/parse", json={"text": TEXT, "message_id": "m1"})

    assert response.status_code == 200
    assert response.headers[MODEL_HEADER] == "m-a"
    body = response.json()
    assert set(body) == {"text", "intent", "entities", "text_tokens", "intent_ranking"}
    assert body["text"] == TEXT
    assert set(body["intent"]) == {"name", "confidence"}
    ranking = body["intent_ranking"]
    assert 1 <= len(ranking) <= 10
    assert all(set(item) == {"name", "confidence"} for item in ranking)
    assert ranking[0] == body["intent"]
    confidences = [item["confidence"] for item in ranking]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 <= c <= 1.0 for c in confidences)
    for entity in body["entities"]:
        assert set(entity) == {"start", "end", "value", "entity", "extractor"}
        assert TEXT[entity["start"] : entity["end"]] == entity["value"]
    assert body["text_tokens"][0] == [0, 4] and body["text_tokens"][-1] == [31, 38]

    expected = NLUModel.load(model_a).parse([TEXT])[0]  # the served answer is the model's own parse
    assert body["intent"] == {
        "name": expected.intent.name,
        "confidence": pytest.approx(expected.intent.confidence),
    }
    assert [(e["start"], e["end"], e["entity"]) for e in body["entities"]] == [
        (e.start, e.end, e.entity) for e in expected.entities
    ]
    assert expected.entities, "the demo model should find entities in this utterance"
    # the server's scikit-learn speed settings stay on its inference thread
    assert sklearn.get_config()["assume_finite"] is False


def test_status_and_version(client: AppClient, store: ModelStore) -> None:
    status = client.get("/status")
    version = client.get("/version")

    assert status.status_code == 200
    body = status.json()
    pointer = store.active(PROJECT)
    assert pointer is not None
    assert body["model_id"] == "m-a"
    assert body["model_file"] == f"{PROJECT}/models/m-a"
    assert body["num_active_training_jobs"] == 0
    assert body["manifest_sha256"] == pointer.manifest_sha256
    assert body["refused"] is None
    assert status.headers[MODEL_HEADER] == "m-a"
    assert version.status_code == 200
    assert version.json()["version"] == __version__
    assert "minimum_compatible_version" in version.json()
    assert client.get("/").text == f"Hello from nluflow: {__version__}"


# ------------------------------------------------------------------------------------------------ auth


@pytest.fixture
def secured(store: ModelStore) -> Iterator[AppClient]:
    with AppClient(create_app(store, PROJECT, ServeOptions(token="s3cret-token"), watch=False)) as c:
        yield c


@pytest.mark.parametrize(
    ("params", "headers", "allowed"),
    [
        ({}, {}, False),
        ({"token": "wrong"}, {}, False),
        ({}, {"Authorization": "Bearer wrong"}, False),
        ({}, {"Authorization": "Basic s3cret-token"}, False),
        ({"token": ""}, {}, False),
        ({"token": "s3cret-token"}, {}, True),
        ({}, {"Authorization": "Bearer s3cret-token"}, True),
        ({"token": "wrong"}, {"Authorization": "Bearer s3cret-token"}, True),
    ],
)
def test_token_auth_like_rasa(
    secured: AppClient, params: dict[str, str], headers: dict[str, str], allowed: bool
) -> None:
    for response in (
        secured.post("/model/parse", params=params, headers=headers, json={"text": TEXT}),
        secured.get("/status", params=params, headers=headers),
    ):
        if allowed:
            assert response.status_code == 200
        else:
            body = assert_rasa_error(response, 401, "NotAuthenticated")
            assert "s3cret-token" not in response.text
            assert "?token=" in body["message"]


def test_version_and_root_need_no_token(secured: AppClient) -> None:
    assert secured.get("/version").status_code == 200
    assert secured.get("/").status_code == 200


def test_no_token_configured_means_open(client: AppClient) -> None:
    assert client.post("/model/parse", params={"token": "anything"}, json={"text": TEXT}).status_code == 200


def test_the_access_log_never_shows_the_token() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/model/parse?x=1&token=s3cret-token&y=2", "1.1", 200), None,
    )  # fmt: skip
    assert _TokenRedactor().filter(record)
    assert "s3cret-token" not in record.getMessage()
    assert "token=***&y=2" in record.getMessage()


# -------------------------------------------------------------------------------------------- limits, 4xx


def test_request_size_limit_413(store: ModelStore) -> None:
    limit = 2048
    with AppClient(create_app(store, PROJECT, ServeOptions(max_body_bytes=limit), watch=False)) as c:
        fits = json.dumps({"text": "play " + "a" * (limit - 40)}).encode()
        assert len(fits) <= limit
        assert c.post("/model/parse", content=fits).status_code == 200

        declared = c.post("/model/parse", content=b'{"text": "' + b"a" * limit + b'"}')
        body = assert_rasa_error(declared, 413, "PayloadTooLarge")
        assert str(limit) in body["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
            yield b'{"text": "'
            for _ in range(10):
                yield b"a" * 512
            yield b'"}'

        streamed = c.post("/model/parse", content=chunks())
        assert "content-length" not in {k.lower() for k in streamed.request.headers}
        assert_rasa_error(streamed, 413, "PayloadTooLarge")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "found no 'text' key"),
        (b'{"message": "hi"}', "found no 'text' key"),
        (b'{"text": 42}', "'text' is a int"),
        (b'{"text": null}', "'text' is a NoneType"),
    ],
)
def test_bad_parse_bodies_get_rasa_400s(client: AppClient, content: bytes, fragment: str) -> None:
    body = assert_rasa_error(client.post("/model/parse", content=content), 400, "BadRequest")
    assert fragment in body["message"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        # a lone surrogate reached the CRF tagger: 500 "SystemError: <cyfunction Tagger.tag ...>"
        (b'{"text": "\\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"text": "play \\udfff by queen"}', "unpaired UTF-16 surrogate"),
        (b'{"text": "play queen \\ud83d"}', "unpaired UTF-16 surrogate"),
        (b'{"text": "\xed\xa0\x80"}', "unpaired UTF-16 surrogate"),  # a raw CESU-8 surrogate
        # deep nesting: 500 "Internal server error." from a RecursionError
        (b'{"text": "hi", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "nested too deeply"),
        (b"[" * 50_000, "nested too deeply"),
        # ValueError "Exceeds the limit (4300 digits)", with Python's advice to raise it
        (b'{"text": "hi", "n": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
    ],
)
def test_hostile_parse_bodies_get_rasa_400s_without_internal_strings(
    client: AppClient, content: bytes, fragment: str
) -> None:
    response = client.post("/model/parse", content=content)
    body = assert_rasa_error(response, 400, "BadRequest")
    assert fragment in body["message"]
    assert "expected" in body["message"]
    for internal in ("Error:", "Tagger", "cyfunction", "Recursion", "sys.set_int_max_str_digits"):
        assert internal not in body["message"]
    assert len(response.content) < 1000  # the body is never echoed
    assert client.post("/model/parse", json={"text": TEXT}).status_code == 200  # and the server goes on


def disconnect_mid_body(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], *, stall: bool = False
) -> list[dict[str, Any]]:
    """Call ``app`` as an ASGI server would for a client that sends part of a body, then hangs up (or,
    with ``stall``, sends nothing more)."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"text": "pl', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if stall and len(messages) == 1:
            await asyncio.sleep(3600)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"400"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 5005),
    }
    asyncio.run(app(scope, receive, send))  # a ClientDisconnect escaped here: uvicorn logged a traceback
    return sent


def test_a_client_that_disconnects_mid_body_costs_one_log_line(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nluflow"):
        sent = disconnect_mid_body(create_app(store, PROJECT, watch=False), "/model/parse", [])

    assert sent[0]["status"] == 400
    assert [r.getMessage() for r in caplog.records] == [
        "/model/parse: the client disconnected after 12 bytes of its body; not processed"
    ]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.timeout(60)  # a hang fails the test; no wall-clock assert
def test_a_client_that_stalls_mid_body_gets_a_408_after_the_body_timeout(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve, "BODY_TIMEOUT_SECONDS", 0.3)
    sent = disconnect_mid_body(create_app(store, PROJECT, watch=False), "/model/parse", [], stall=True)

    assert sent[0]["status"] == 408  # before: the request waited for the rest of the body forever
    assert json.loads(sent[1]["body"])["reason"] == "RequestTimeout"


def test_a_surrogate_pair_is_valid_text_and_parses(client: AppClient) -> None:
    response = client.post("/model/parse", content=b'{"text": "play queen \\ud83d\\ude00"}')
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "play queen \U0001f600"


def test_unknown_routes_and_methods_get_rasa_error_bodies(client: AppClient) -> None:
    assert_rasa_error(client.get("/model/nope"), 404, "NotFound")
    response = client.get("/model/parse")
    assert_rasa_error(response, 405, "MethodNotAllowed")
    assert response.headers["allow"] == "POST"


def test_unsupported_emulation_mode_is_refused(client: AppClient) -> None:
    response = client.post("/model/parse", params={"emulation_mode": "luis"}, json={"text": TEXT})
    assert_rasa_error(response, 400, "BadRequest")


def test_no_active_model_answers_409_until_one_is_activated(tmp_path: Path, model_a: Path) -> None:
    store = make_store(tmp_path / "store", {"m-a": model_a}, active=None)
    app = create_app(store, PROJECT, watch=False)
    with AppClient(app) as c:
        body = assert_rasa_error(c.post("/model/parse", json={"text": TEXT}), 409, "Conflict")
        assert "no active model" in body["message"]
        assert_rasa_error(c.get("/status"), 409, "Conflict")

        store.activate(PROJECT, "m-a")
        assert app.state.watcher.refresh() is True
        response = c.post("/model/parse", json={"text": TEXT})
        assert response.status_code == 200
        assert response.headers[MODEL_HEADER] == "m-a"


def test_run_refuses_bad_settings_before_serving(tmp_path: Path, store: ModelStore) -> None:
    root = store.fs.local_path("")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="token is empty"):
        run("127.0.0.1", 0, PROJECT, root, ServeOptions(token=" "))
    with pytest.raises(ConfigError, match="poll interval"):
        run("127.0.0.1", 0, PROJECT, root, ServeOptions(poll_seconds=0.0))
    with pytest.raises(ConfigError, match="size limit"):
        run("127.0.0.1", 0, PROJECT, root, ServeOptions(max_body_bytes=10))
    with pytest.raises(ConfigError, match="max_batch 0 must be at least 1"):
        run("127.0.0.1", 0, PROJECT, root, ServeOptions(max_batch=0))
    with pytest.raises(UnsafePathError):
        run("127.0.0.1", 0, "../etc", root)
    with pytest.raises(StoreError, match="does not exist"):
        run("127.0.0.1", 0, PROJECT, tmp_path / "missing")


@pytest.mark.slow
def test_run_serves_logs_the_model_and_keeps_tokens_out_of_the_access_log(store: ModelStore) -> None:
    root = store.fs.local_path("")  # type: ignore[attr-defined]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    code = (
        "import sys\nfrom nluflow.apps.serve import ServeOptions, run\n"
        "run('127.0.0.1', int(sys.argv[1]), sys.argv[2], sys.argv[3],\n"
        "    ServeOptions(token='s3cret-token', access_log=True))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(port), PROJECT, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answer = None
        deadline = time.monotonic() + 60
        while answer is None:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/model/parse?token=s3cret-token",
                    json={"text": TEXT},
                    trust_env=False,  # no proxy for 127.0.0.1
                )
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer.status_code == 200
        assert answer.headers[MODEL_HEADER] == "m-a"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "now serving model 'm-a'" in output
    assert "/model/parse?token=*** HTTP/1.1" in output
    assert "s3cret-token" not in output


# ------------------------------------------------------------------------------------------------ refusals


def _activate_then_corrupt_file(store: ModelStore, model_b: str) -> None:
    store.activate(PROJECT, model_b)  # the store verifies first, so corrupt afterwards
    path = store.fs.local_path(f"{PROJECT}/models/{model_b}/{INTENT_FILE}")  # type: ignore[attr-defined]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")


def _point_at_with_wrong_manifest_sha(store: ModelStore, model_b: str) -> None:
    pointer = store.active(PROJECT)
    assert pointer is not None
    forged = pointer.model_copy(update={"model_id": model_b, "manifest_sha256": "0" * 64})
    store.fs.write_bytes(f"{PROJECT}/active.json", forged.model_dump_json().encode())


@pytest.mark.parametrize(
    ("tamper", "evidence"),
    [(_activate_then_corrupt_file, INTENT_FILE), (_point_at_with_wrong_manifest_sha, "manifest")],
)
def test_a_model_that_fails_verification_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, model_a: Path, tamper: Any, evidence: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path / "store", {"m-a": model_a, "m-b": model_a}, active="m-a")
    app = create_app(store, PROJECT, watch=False)
    watcher: ActiveModelWatcher = app.state.watcher
    with AppClient(app) as c:
        tamper(store, "m-b")
        with caplog.at_level(logging.ERROR, logger="nluflow.apps.serve_watcher"):
            assert watcher.refresh() is False

        assert watcher.current is not None and watcher.current.model_id == "m-a"
        assert watcher.refused is not None and watcher.refused.model_id == "m-b"
        assert evidence in watcher.refused.reason
        assert any(
            "refused" in r.getMessage() and "'m-a' keeps serving" in r.getMessage() for r in caplog.records
        )
        response = c.post("/model/parse", json={"text": TEXT})
        assert response.status_code == 200
        assert response.headers[MODEL_HEADER] == "m-a"
        status = c.get("/status").json()
        assert status["model_id"] == "m-a"
        assert status["refused"]["model_id"] == "m-b"
        # the refusal is not retried on every poll
        assert watcher.refresh() is False
        assert watcher.refused.attempts == 1


def test_a_refused_model_is_retried_after_a_delay_and_served_once_repaired(
    tmp_path: Path, model_a: Path
) -> None:
    store = make_store(tmp_path / "store", {"m-a": model_a, "m-b": model_a}, active="m-a")
    now = [1000.0]
    watcher = ActiveModelWatcher(store, PROJECT, poll_seconds=1.0, clock=lambda: now[0])
    assert watcher.refresh() is True
    stored = store.fs.local_path(f"{PROJECT}/models/m-b/{INTENT_FILE}")  # type: ignore[attr-defined]
    good = stored.read_bytes()
    _activate_then_corrupt_file(store, "m-b")
    assert watcher.refresh() is False
    stored.write_bytes(good)  # repaired
    assert watcher.refresh() is False  # still inside the retry delay
    now[0] += 60.0
    assert watcher.refresh() is True
    assert watcher.current is not None and watcher.current.model_id == "m-b"
    assert watcher.refused is None


def test_an_unreadable_or_removed_pointer_keeps_the_current_model(store: ModelStore) -> None:
    watcher = ActiveModelWatcher(store, PROJECT)
    assert watcher.refresh() is True
    store.fs.write_bytes(f"{PROJECT}/active.json", b"{ torn")
    assert watcher.refresh() is False
    assert watcher.current is not None and watcher.current.model_id == "m-a"
    assert watcher.pointer_problem is not None and "active.json" in watcher.pointer_problem
    store.fs.remove_tree(f"{PROJECT}/active.json")
    assert watcher.refresh() is False
    assert watcher.current is not None and watcher.current.model_id == "m-a"
    assert "no active.json" in (watcher.pointer_problem or "")


class MemoryFileSystem:
    """A store without local paths, like S3: ``materialize`` downloads into the server's private folder."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read_bytes(self, key: str) -> bytes:
        if key not in self.files:
            raise ModelNotFoundError(f"memory has no {key!r}")
        return self.files[key]

    def write_bytes(self, key: str, data: bytes) -> None:
        self.files[key] = bytes(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        if key in self.files:
            return False
        self.files[key] = bytes(data)
        return True

    def exists(self, key: str) -> bool:
        return key in self.files or any(k.startswith(key.rstrip("/") + "/") for k in self.files)

    def list_dir(self, key: str) -> list[str]:
        prefix = key.rstrip("/") + "/" if key else ""
        return sorted({k[len(prefix) :].split("/")[0] for k in self.files if k.startswith(prefix)})

    def remove_tree(self, key: str) -> None:
        for k in [k for k in self.files if k == key or k.startswith(key + "/")]:
            del self.files[k]

    def put_file(self, local: Path, key: str) -> None:
        self.files[key] = Path(local).read_bytes()

    def get_file(self, key: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Path(local).write_bytes(self.read_bytes(key))

    def describe(self) -> str:
        return "memory"


def test_a_remote_store_is_downloaded_verified_and_served(model_a: Path) -> None:
    store = ModelStore(MemoryFileSystem())
    store.add_model(PROJECT, "m-a", model_a, **ADD)
    store.activate(PROJECT, "m-a")
    with AppClient(create_app(store, PROJECT, watch=False)) as c:
        response = c.post("/model/parse", json={"text": TEXT})
    assert response.status_code == 200
    assert response.headers[MODEL_HEADER] == "m-a"


# ------------------------------------------------------------------------------------------------ batching


class SlowParser:
    """Parses slowly on its first call so that later requests queue up; fails on the text 'boom'."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def parse(self, texts: Sequence[str]) -> list[Parse]:
        self.batches.append(len(texts))
        if len(self.batches) == 2:  # the first real request (call 1 is the warm-up)
            time.sleep(0.3)
        if "boom" in texts:
            raise ValueError("cannot parse 'boom'")
        score = IntentScore(name="greet", confidence=1.0)
        return [Parse(text=t, intent=score, intent_ranking=(score,)) for t in texts]


def test_concurrent_requests_are_batched_and_one_bad_text_fails_alone(tmp_path: Path) -> None:
    folder = tmp_path / "fake-model"
    folder.mkdir()
    (folder / "weights.txt").write_text("fake")
    store = make_store(tmp_path / "store", {"m-fake": folder}, active="m-fake")
    parser = SlowParser()
    app: Starlette = create_app(
        store, PROJECT, ServeOptions(max_batch=4), loader=lambda _: parser, watch=False
    )
    texts = ["hi", *[f"hello {i}" for i in range(8)], "boom"]

    async def scenario() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as ac:
                return await asyncio.gather(*(ac.post("/model/parse", json={"text": t}) for t in texts))

    responses = asyncio.run(scenario())

    by_text = dict(zip(texts, responses, strict=True))
    failed = assert_rasa_error(by_text.pop("boom"), 500, "ParsingError")
    assert "cannot parse" not in failed["message"] and "ValueError" not in failed["message"]  # log only
    assert all(r.status_code == 200 for r in by_text.values())
    assert [r.json()["text"] for r in by_text.values()] == list(by_text)
    served = parser.batches[1:]  # without the warm-up
    assert max(served) > 1, f"requests that queued during a parse were not batched: {served}"
    assert max(served) <= 4


# ------------------------------------------------------------------------------------------------ hot swap


class ServerThread:
    """``uvicorn`` serving ``app`` on a free 127.0.0.1 port in a background thread."""

    def __init__(self, app: Starlette) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.mark.slow
def test_a_promoted_model_is_swapped_in_under_load_without_a_failed_request(
    tmp_path: Path, model_a: Path, demo_data: Path
) -> None:
    store = make_store(tmp_path / "store", {"m-a": model_a}, active="m-a")
    texts = load_file(demo_data / "test.jsonl").texts
    app = create_app(store, PROJECT, ServeOptions(poll_seconds=0.1))
    stop = threading.Event()
    max_requests_per_client = 4000
    results: list[list[tuple[float, str]]] = [[] for _ in range(3)]  # per client: (time done, model id)
    failures: list[str] = []

    def client_loop(k: int, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=10.0, trust_env=False) as http:
            for i in range(max_requests_per_client):
                if stop.is_set():
                    return
                text = texts[(k * 97 + i) % len(texts)]
                try:
                    response = http.post("/model/parse", json={"text": text})
                    body = response.json()
                    ok = response.status_code == 200 and body["text"] == text and body["intent"]["name"]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    failures.append(f"client {k} request {i}: {type(exc).__name__}: {exc}")
                    continue
                if not ok:
                    failures.append(f"client {k} request {i}: {response.status_code} {response.text[:200]}")
                    continue
                results[k].append((time.monotonic(), response.headers[MODEL_HEADER]))

    with ServerThread(app) as server:
        base_url = f"http://127.0.0.1:{server.port}"
        clients = [threading.Thread(target=client_loop, args=(k, base_url)) for k in range(len(results))]
        for t in clients:
            t.start()
        try:
            _wait_for(lambda: all(len(r) >= 5 for r in results), "every client got answers from m-a")
            training_started = time.monotonic()
            # Train and promote a second model while the requests are in flight.
            train_b = load_file(demo_data / "batch-2.jsonl")
            model_b = tmp_path / "model-b"
            NLUModel(LocalModelOptions(C=0.5), random_state=1).fit(train_b).save(model_b)
            store.add_model(PROJECT, "m-b", model_b, **ADD)
            activating = time.monotonic()  # m-b cannot serve before the pointer names it
            store.activate(PROJECT, "m-b", reason="promoted during the serve test")
            _wait_for(lambda: all(r and r[-1][1] == "m-b" for r in results), "every client saw m-b")
            settled = sum(len(r) for r in results)
            _wait_for(lambda: sum(len(r) for r in results) >= settled + 30, "more answers after the swap")
        finally:
            stop.set()
            for t in clients:
                t.join(30)
        status = httpx.get(f"{base_url}/status", trust_env=False).json()

    assert failures == []
    assert status["model_id"] == "m-b"
    assert status["manifest_sha256"] == store.manifest(PROJECT, "m-b").sha256()
    during = [m for r in results for (t, m) in r if training_started <= t <= activating]
    assert during and set(during) == {"m-a"}, "requests were answered by m-a while m-b was trained and stored"
    for answers in results:
        models = [m for _, m in answers]
        assert set(models) == {"m-a", "m-b"}
        first_b = models.index("m-b")
        assert set(models[first_b:]) == {"m-b"}, "once a client saw m-b it never went back to m-a"
        assert all(t >= activating for t, m in answers if m == "m-b")


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)
