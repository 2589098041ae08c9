"""``nluflow serve`` on fuzzed bodies, with a real model: no 5xx, every error a Rasa error body without
internal strings; and the same over a real uvicorn server, where a mid-body hang-up is one log line.

Before: a lone surrogate in ``text`` reached the CRF tagger and came back as a 500 carrying
``SystemError: <cyfunction Tagger.tag …>``; deeply nested JSON was a 500 too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nluflow.apps.serve import create_app
from nluflow.backends.base import LocalModelOptions
from nluflow.data.loaders import load_file
from nluflow.models.nlu import NLUModel
from nluflow.store import ModelStore

from .conftest import real_server

PROJECT = "bot"
ERROR_KEYS = {"version", "status", "message", "reason", "details", "help", "code"}
INTERNAL = ("Traceback", "Error:", "Tagger", "cyfunction", "Recursion", "sys.set_int_max_str_digits")
BOMBS = (b"9" * 5000, b"[" * 50_000, b'"\\ud800"', b'"a\\udfff"', b"\xed\xa0\x80", b"\xff", b"{" * 3000)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> ModelStore:
    folder = tmp_path_factory.mktemp("model")
    NLUModel(LocalModelOptions(), random_state=0).fit(load_file(demo_data / "batch-1.jsonl")).save(folder)
    store = ModelStore.local(tmp_path_factory.mktemp("store"), create=True)
    store.add_model(
        PROJECT, "m-1", folder, backend="local", dataset_sha256="d", test_sha256=None, config={}, metrics={}
    )
    store.activate(PROJECT, "m-1")
    return store


class Served:
    """The app in-process with its lifespan running (the model loaded), called through httpx."""

    def __init__(self, store: ModelStore) -> None:
        self.app = create_app(store, PROJECT, watch=False)
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        self._stack.enter_context(
            self.portal.wrap_async_context_manager(self.app.router.lifespan_context(self.app))
        )

    def close(self) -> None:
        self._stack.close()

    def parse(self, body: bytes) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as client:
                return await client.post("/model/parse", content=body)

        return self.portal.call(call)


@pytest.fixture(scope="module")
def served(store: ModelStore) -> Iterator[Served]:
    app = Served(store)
    yield app
    app.close()


def assert_no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:300]
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body["intent"]["name"], str) and isinstance(body["entities"], list), body
        return
    assert set(body) == ERROR_KEYS and body["code"] == response.status_code, body
    assert "expected" in body["message"] or body["reason"] in ("NotFound", "MethodNotAllowed"), body
    for internal in INTERNAL:
        assert internal not in body["message"], body
    assert len(response.content) < 2000  # the body is never echoed


texts = st.text(alphabet=st.characters(codec=None), max_size=80)  # lone surrogates, controls, NUL, emoji
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("text", "value", "bytes", "bomb")))
    if kind == "text":
        return json.dumps({"text": draw(texts)}).encode()  # surrogates become "\udXXX" escapes
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return b'{"text": "play queen", "x": ' + draw(st.sampled_from(BOMBS)) + b"}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies())
def test_fuzzed_parse_bodies_never_get_a_5xx(served: Served, body: bytes) -> None:
    assert_no_5xx(served.parse(body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30),
    surrogate=st.integers(0xD800, 0xDFFF).map(chr),
    after=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30),
)
def test_a_text_with_a_lone_surrogate_is_a_400(
    served: Served, before: str, surrogate: str, after: str
) -> None:
    response = served.parse(json.dumps({"text": before + surrogate + after}).encode())
    assert response.status_code == 400, response.text
    assert "unpaired UTF-16 surrogate" in response.json()["message"]


@pytest.mark.parametrize("length", [1, 1000, 60_000])
def test_long_and_odd_texts_parse(served: Served, length: int) -> None:
    text = ("play queen \x00\u202e 🎵 " * length)[:length]
    assert_no_5xx(served.parse(json.dumps({"text": text}).encode()))


# ------------------------------------------------------------------------------------ a real uvicorn server


def post_raw(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /model/parse HTTP/1.1\r\nHost: serve\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_hostile_bodies_over_real_http_are_400s_and_a_hang_up_is_one_line(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO),
        real_server(create_app(store, PROJECT, watch=False), lifespan="on") as port,
    ):
        for body in (
            b'{"text": "\\ud800"}',
            b'{"text": ' + b"[" * 50_000 + b"}",
            b'{"text": ' + b"9" * 5000 + b"}",
        ):
            status, answer = post_raw(port, body)
            assert status == 400 and answer["reason"] == "BadRequest", answer
        assert post_raw(port, b'{"text": "play queen"}')[0] == 200
        caplog.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /model/parse HTTP/1.1\r\nHost: serve\r\nContent-Length: 400\r\n\r\n" + b'{"text": "pl'
            )
        deadline = time.monotonic() + 30
        while (
            not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(("nluflow", "uvicorn.error"))]
    disconnects = [line for line in lines if "disconnected" in line]
    assert disconnects == ["/model/parse: the client disconnected after 12 bytes of its body; not processed"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
