"""The relay on fuzzed deliveries: JSON answers, no 5xx, nothing emitted on a refusal; replays emit once.

Bodies are captured Label Studio 1.23.2 webhooks mutated byte-wise or field-wise (lone surrogates, huge
integers, deep nesting, wrong types), arbitrary JSON, and signed generic deliveries. The emitter only
records, so a 5xx here could only be the relay's own failure (before: a lone surrogate in ``action`` was a
plain-text 500).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nluflow.apps.relay import LabelStudioRoute, RelayConfig, create_app, signed_headers

SECRET = "relay-secret-for-fuzzing-0b7e"  # a test value, not a credential
LABEL_STUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "label-studio"
WEBHOOKS = {p.name: p.read_bytes() for p in sorted(LABEL_STUDIO.glob("webhook-*.json"))}
REFUSALS = {400, 401, 403, 404, 408, 409, 413, 422}


class Relay:
    """The relay app in-process (httpx over ASGI), with what it emitted."""

    def __init__(self) -> None:
        self.emitted: list[dict[str, Any]] = []
        config = RelayConfig(secret=SECRET, label_studio={"1": LabelStudioRoute(project="bot", source="bot")})
        self.app = create_app(config, self.emitted.append)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
                return await client.post(path, content=body, headers=headers)

        return anyio.run(call)

    def label_studio(self, body: bytes) -> httpx.Response:
        return self.post("/hooks/label-studio", body, {"X-Relay-Secret": SECRET})

    def generic(self, body: bytes, timestamp: int | None = None) -> httpx.Response:
        headers = {"X-Relay-Secret": SECRET, **signed_headers(body, SECRET, timestamp=timestamp)}
        return self.post("/hooks/generic", body, headers)


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    yield Relay()


def assert_json_answer(response: httpx.Response, relay: Relay, emitted_before: int) -> None:
    """A JSON answer, never a 5xx, and a refusal emitted nothing."""
    assert response.status_code < 500, response.text[:300]
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    body = response.json()
    assert body["status"] in ("emitted", "ignored", "rejected"), body
    if response.status_code in REFUSALS:
        assert body["status"] == "rejected" and "nothing was emitted" in body["detail"], body
        assert len(relay.emitted) == emitted_before
    assert SECRET not in response.text
    assert len(response.content) < 4000  # a bomb is never echoed whole
    for internal in ("Traceback", "Error:", "sys.set_int_max_str_digits"):
        assert internal not in response.text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec=None), max_size=20),  # lone surrogates included
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
BOMBS = (
    b"9" * 5000,
    b"[" * 50_000,
    b'"\\ud800"',
    b'"\\udfff x"',
    b"\xed\xa0\x80",
    b"\xff",
    b"-" + b"1" * 4400,
)


def replace_field(document: Any, path: list[int], value: Any) -> Any:
    """``document`` with the value at the ``path``-th walk positions replaced (a random nested field)."""
    if not path or not isinstance(document, dict | list) or not document:
        return value
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[path[0] % len(keys)]
    document[key] = replace_field(document[key], path[1:], value)
    return document


@st.composite
def label_studio_bodies(draw: st.DrawFn) -> bytes:
    seed = WEBHOOKS[draw(st.sampled_from(sorted(WEBHOOKS)))]
    kind = draw(st.sampled_from(("field", "bytes", "bomb", "any")))
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    if kind == "field":
        document = json.loads(seed)
        path = draw(st.lists(st.integers(0, 20), max_size=5))
        return json.dumps(replace_field(document, path, draw(json_values))).encode()
    data = bytearray(seed)
    at = draw(st.integers(0, len(data)))
    chunk = draw(st.sampled_from(BOMBS)) if kind == "bomb" else draw(st.binary(min_size=1, max_size=6))
    if draw(st.booleans()):
        data[at : at + len(chunk)] = chunk
    else:
        data[at:at] = chunk
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=label_studio_bodies())
def test_fuzzed_label_studio_deliveries_get_json_answers_and_refusals_emit_nothing(
    relay: Relay, body: bytes
) -> None:
    before = len(relay.emitted)
    assert_json_answer(relay.label_studio(body), relay, before)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_values, bomb=st.sampled_from((b"", *BOMBS)))
def test_fuzzed_signed_generic_deliveries_get_json_answers(relay: Relay, payload: Any, bomb: bytes) -> None:
    body = json.dumps(payload).encode()
    if bomb:
        body = b'{"project": "bot", "data": "d", "x": ' + bomb + b"}"
    before = len(relay.emitted)
    response = relay.generic(body)
    assert_json_answer(response, relay, before)
    if bomb:
        assert response.status_code == 400, response.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(annotation_id=st.integers(1, 10**9), updated=st.integers(0, 10**6))
def test_a_replayed_label_studio_delivery_emits_once(relay: Relay, annotation_id: int, updated: int) -> None:
    document = json.loads(WEBHOOKS["webhook-ANNOTATION_CREATED.json"])
    document["annotation"]["id"] = annotation_id
    document["annotation"]["updated_at"] = f"2026-12-07T10:00:00.{updated:06d}Z"
    body = json.dumps(document).encode()
    before = len(relay.emitted)
    first = relay.label_studio(body)
    again = relay.label_studio(body)
    if first.status_code == 202:  # a new (id, updated_at): emitted once, the copy is acknowledged only
        assert again.status_code == 200 and "replay" in again.json()["detail"], again.text
        assert len(relay.emitted) == before + 1
    else:  # hypothesis drew a pair it had drawn before: both copies are replays
        assert (first.status_code, again.status_code) == (200, 200) and len(relay.emitted) == before


def test_a_replayed_signed_generic_delivery_is_refused() -> None:
    relay = Relay()
    body = json.dumps({"project": "bot", "data": "d", "new_examples": 3}).encode()
    now = int(time.time())
    first, replay = relay.generic(body, timestamp=now), relay.generic(body, timestamp=now)
    stale = relay.generic(body, timestamp=now - 3600)
    assert (first.status_code, replay.status_code, stale.status_code) == (202, 409, 403)
    assert "replay" in replay.json()["detail"] and "stale or replayed" in stale.json()["detail"]
    assert len(relay.emitted) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"action": "\\ud800"}',  # was a plain-text 500
        b'{"action": "ANNOTATION_CREATED", "annotation": {"id": "\\udfff"}}',
        b'{"action": "ANNOTATION_CREATED", "project": {"id": ' + b"9" * 5000 + b"}}",
        b'{"action": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_crafted_label_studio_bombs_are_json_400s(relay: Relay, body: bytes) -> None:
    before = len(relay.emitted)
    response = relay.label_studio(body)
    assert response.status_code == 400, response.text
    assert_json_answer(response, relay, before)
