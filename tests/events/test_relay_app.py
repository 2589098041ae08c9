"""The webhook relay with real Label Studio 1.23.2 payloads, generic signed payloads, and the HTTP emitter."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from nluflow.apps import relay
from nluflow.apps.relay import (
    EVENT_NAME,
    LabelStudioRoute,
    PrefectApiEmitter,
    RelayConfig,
    annotated_event,
    create_app,
    sign,
    signed_headers,
)
from nluflow.errors import ConfigError

from .conftest import Receiver, free_port, serve

SECRET = "relay-secret-4f1c9a7e2b6d8035"  # a test value, not a credential
LS_PROJECT = "1"  # the project id in the captured payloads
DATA = "/srv/exports/bookings.json"
SOURCE = "nluflow-label-studio-source/bookings"  # the LabelStudioSource block the retrain pulls


def ls_body(label_studio: Path, action: str, wire: bool = False) -> bytes:
    suffix = ".wire.json" if wire else ".json"
    return (label_studio / f"webhook-{action}{suffix}").read_bytes()


class Emitted(list[dict[str, Any]]):
    """An emitter that keeps what it was handed."""

    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)


class AppClient:
    """Calls the ASGI app in-process through httpx (starlette's TestClient warns about httpx)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
                return await client.request(method, url, **kwargs)

        return anyio.run(call)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)


def make_client(emitter: Any, **config: Any) -> AppClient:
    settings: dict[str, Any] = {
        "secret": SECRET,
        "label_studio": {LS_PROJECT: LabelStudioRoute(project="bookings", source="bookings")},
        **config,
    }
    return AppClient(create_app(RelayConfig(**settings), emitter))


@pytest.fixture
def emitted() -> Emitted:
    return Emitted()


@pytest.fixture
def client(emitted: Emitted) -> Iterator[AppClient]:
    with make_client(emitted) as c:
        yield c


def post_ls(
    client: AppClient, body: bytes, secret: str | None = SECRET, url: str = "/hooks/label-studio"
) -> httpx.Response:
    headers = {"Content-Type": "application/json", "User-Agent": "python-requests/2.34.2"}
    if secret is not None:
        headers["X-Relay-Secret"] = secret
    return client.post(url, content=body, headers=headers)


def post_generic(
    client: AppClient,
    payload: Any,
    *,
    secret: str | None = SECRET,
    signature: str | None = "auto",
    timestamp: int | None = None,
    url: str = "/hooks/generic",
) -> httpx.Response:
    """A generic delivery signed at ``timestamp`` (default: now), or with the ``signature`` given."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Relay-Secret"] = secret
    signed = signed_headers(body, SECRET, timestamp=timestamp)
    headers["X-Nluflow-Timestamp"] = signed["X-Nluflow-Timestamp"]
    if signature == "auto":
        headers["X-Nluflow-Signature"] = signed["X-Nluflow-Signature"]
    elif signature is not None:
        headers["X-Nluflow-Signature"] = signature
    return client.post(url, content=body, headers=headers)


def as_delivery(body: bytes, n: int) -> bytes:
    """A captured Label Studio body as the ``n``-th distinct delivery: its annotation/deleted ids made unique.

    One capture per action stands for several real deliveries, each about its own annotation; the relay
    would take identical copies for replays (as it should)."""
    document = json.loads(body)
    for key in ("annotation", "annotations", "tasks"):
        items = document.get(key)
        for item in items if isinstance(items, list) else [items] if isinstance(items, dict) else []:
            item["id"] = 1000 + n
    return json.dumps(document).encode()


# ------------------------------------------------------------------------------------------ Label Studio


@pytest.mark.parametrize(
    ("action", "new_examples"),
    [("ANNOTATION_CREATED", 1), ("ANNOTATIONS_CREATED", 1), ("ANNOTATION_UPDATED", 0)],
)
def test_label_studio_annotation_becomes_one_event(
    label_studio: Path, client: AppClient, emitted: Emitted, action: str, new_examples: int
) -> None:
    response = post_ls(client, ls_body(label_studio, action))

    assert response.status_code == 202, response.text
    assert len(emitted) == 1
    event = emitted[0]
    assert event["event"] == EVENT_NAME == "nlu.dataset.annotated"
    assert event["resource"] == {"prefect.resource.id": "nluflow.dataset.bookings"}
    assert event["payload"] == {
        "project": "bookings",
        "data": SOURCE,
        "new_examples": new_examples,
        "action": action,
        "removed_examples": 0,
    }
    assert response.json() == {
        "status": "emitted",
        "event": EVENT_NAME,
        "id": event["id"],
        "project": "bookings",
        "new_examples": new_examples,
    }


def test_emitted_event_has_prefects_event_shape(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    from prefect.events import Event

    post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"))

    event = Event.model_validate(emitted[0])
    assert event.resource.id == "nluflow.dataset.bookings"
    assert str(event.id) == emitted[0]["id"]


def test_bulk_annotations_count_created_ones_and_skip_cancelled(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    body = json.loads(ls_body(label_studio, "ANNOTATIONS_CREATED"))
    first = body["annotation"][0]
    body["annotation"] = [first, {**first, "id": 6}, {**first, "id": 7, "was_cancelled": True}]

    response = post_ls(client, json.dumps(body).encode())

    assert response.status_code == 202
    assert emitted[0]["payload"]["new_examples"] == 2


def test_a_skipped_task_adds_no_example_and_emits_nothing(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    body = json.loads(ls_body(label_studio, "ANNOTATION_CREATED"))
    body["annotation"]["was_cancelled"] = True

    response = post_ls(client, json.dumps(body).encode())

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert emitted == []


@pytest.mark.parametrize(
    ("action", "wire"),
    [
        ("TASKS_CREATED", True),  # the byte-exact body, \\u escapes and a surrogate pair included
        ("TASKS_CREATED", False),
        ("PROJECT_UPDATED", False),
    ],
)
def test_other_actions_are_acknowledged_counted_and_ignored(
    label_studio: Path, client: AppClient, emitted: Emitted, action: str, wire: bool
) -> None:
    response = post_ls(client, ls_body(label_studio, action, wire))

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert emitted == []
    assert client.get("/healthz").json()["counts"] == {f"ignored:{action}": 1}


@pytest.mark.parametrize(
    ("action", "key"), [("ANNOTATIONS_DELETED", "annotations"), ("TASKS_DELETED", "tasks")]
)
def test_deletions_emit_an_event_with_the_removed_count(
    label_studio: Path, client: AppClient, emitted: Emitted, action: str, key: str
) -> None:
    body = json.loads(ls_body(label_studio, action))
    assert body[key] == [{"id": 6}]  # as captured: ids only

    response = post_ls(client, ls_body(label_studio, action))

    assert response.status_code == 202, response.text
    assert emitted[0]["payload"] == {
        "project": "bookings",
        "data": SOURCE,
        "new_examples": 0,
        "action": action,
        "removed_examples": 1,
    }


def test_a_deletion_without_its_id_list_is_refused(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    body = json.loads(ls_body(label_studio, "TASKS_DELETED"))
    del body["tasks"]

    response = post_ls(client, json.dumps(body).encode())

    assert response.status_code == 422
    assert "TASKS_DELETED: found no list of deleted items under 'tasks'" in response.json()["detail"]
    assert emitted == []


def test_a_route_maps_to_a_source_block_or_a_path_never_both() -> None:
    assert LabelStudioRoute(project="p", source="ls").target == "nluflow-label-studio-source/ls"
    assert LabelStudioRoute(project="p", source="nluflow-folder-source/inbox").target == (
        "nluflow-folder-source/inbox"
    )
    assert LabelStudioRoute(project="p", data="/srv/x.json").target == "/srv/x.json"
    for bad in ({}, {"source": "ls", "data": "/x"}, {"source": "nluflow-rasa-backend/prod"}):
        with pytest.raises(ValueError):
            LabelStudioRoute(project="p", **bad)


def test_each_emission_is_logged_at_info_and_never_sent_to_the_prefect_api(
    label_studio: Path, client: AppClient, emitted: Emitted, caplog: pytest.LogCaptureFixture
) -> None:
    import warnings

    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    relay_logger = logging.getLogger("nluflow.apps.relay")
    handler = APILogHandler()
    relay_logger.addHandler(handler)  # what PREFECT_LOGGING_EXTRA_LOGGERS=nluflow attaches
    try:
        with (
            temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "warn"}),
            warnings.catch_warnings(record=True) as caught,
            caplog.at_level(logging.INFO, logger="nluflow.apps.relay"),
        ):
            warnings.simplefilter("always")
            post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"))
            post_ls(client, ls_body(label_studio, "TASKS_DELETED"))
    finally:
        relay_logger.removeHandler(handler)

    assert [str(w.message) for w in caught if "flow run id" in str(w.message)] == []
    infos = [r for r in caplog.records if r.levelno == logging.INFO and r.name == "nluflow.apps.relay"]
    assert len(infos) == 2 and all(getattr(r, "send_to_api", True) is False for r in infos)
    assert f"label-studio ANNOTATION_CREATED (project 1) → nlu.dataset.annotated {emitted[0]['id']}" in (
        infos[0].getMessage()
    )
    assert "(0 new examples, 1 removed, data nluflow-label-studio-source/bookings)" in infos[1].getMessage()


def test_the_captured_sequence_emits_for_annotation_actions_only(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    # The order Label Studio sent them in (webhook-headers.txt), one capture per action.
    sequence = [
        "TASKS_CREATED",
        "ANNOTATION_CREATED", "ANNOTATION_CREATED", "ANNOTATION_CREATED", "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_CREATED", "ANNOTATIONS_DELETED",
        "PROJECT_UPDATED", "TASKS_CREATED", "ANNOTATION_CREATED", "TASKS_DELETED",
    ]  # fmt: skip
    codes = [
        post_ls(client, as_delivery(ls_body(label_studio, action), n)).status_code
        for n, action in enumerate(sequence)
    ]

    assert codes == [200, 202, 202, 202, 202, 202, 202, 202, 202, 200, 200, 202, 202]
    assert [e["payload"]["new_examples"] for e in emitted] == [1, 1, 1, 1, 1, 0, 1, 0, 1, 0]
    assert [e["payload"]["removed_examples"] for e in emitted] == [0, 0, 0, 0, 0, 0, 0, 1, 0, 1]
    assert client.get("/healthz").json()["counts"] == {
        "emitted": 10,
        "ignored:PROJECT_UPDATED": 1,
        "ignored:TASKS_CREATED": 2,
    }


def test_unmapped_label_studio_project_is_refused(label_studio: Path, emitted: Emitted) -> None:
    with make_client(emitted, label_studio={"7": LabelStudioRoute(project="other", data=DATA)}) as client:
        response = post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"))

    assert response.status_code == 404
    assert "Label Studio project 1 is not mapped" in response.json()["detail"]
    assert emitted == []


@pytest.mark.parametrize(
    ("secret", "status"),
    [
        (None, 401),
        ("", 403),
        ("wrong-secret-of-the-same-size!", 403),
        (SECRET[:-1], 403),
        (SECRET + "x", 403),
    ],
)
def test_missing_or_wrong_secret_is_refused_and_never_echoed(
    label_studio: Path,
    client: AppClient,
    emitted: Emitted,
    caplog: pytest.LogCaptureFixture,
    secret: str | None,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG)

    response = post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"), secret=secret)

    assert response.status_code == status
    assert "X-Relay-Secret" in response.json()["detail"]
    assert "nothing was emitted" in response.json()["detail"]
    assert emitted == []
    assert SECRET not in response.text
    assert SECRET[:-1] not in caplog.text
    assert client.get("/healthz").json()["counts"] == {f"rejected:{status}": 1}


def test_secret_header_name_is_configurable(label_studio: Path, emitted: Emitted) -> None:
    with make_client(emitted, header="X-Webhook-Token") as client:
        wrong_header = post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"))
        right_header = client.post(
            "/hooks/label-studio",
            content=ls_body(label_studio, "ANNOTATION_CREATED"),
            headers={"X-Webhook-Token": SECRET},
        )

    assert (wrong_header.status_code, right_header.status_code) == (401, 202)
    assert len(emitted) == 1


@pytest.mark.parametrize(
    "body",
    [b'{"action": "ANNOTATION_CREATED", ', b"not json", b"", b"\xff\xfe{}", b"[" * 100_000],
)
def test_malformed_json_is_a_400(client: AppClient, emitted: Emitted, body: bytes) -> None:
    response = post_ls(client, body)

    assert response.status_code == 400
    assert response.json()["detail"].startswith("malformed JSON")
    assert emitted == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # a lone surrogate in the action was echoed into the "ignored" answer: plain-text 500
        (b'{"action": "\\ud800"}', "the string at $.action holds an unpaired UTF-16 surrogate"),
        (b'{"action": "ANNOTATION_CREATED\\udc00", "project": {"id": 1}}', "$.action"),
        (
            b'{"action": "ANNOTATION_CREATED", "annotation": {"id": 1}, "project": {"id": "\\ud83d"}}',
            "$.project.id",
        ),
        (b'{"action": "\xed\xa0\x80"}', "unpaired UTF-16 surrogate"),  # a raw CESU-8 surrogate
        (b'{"action": "X", "\\ud800": 1}', "(a key)"),
        (
            b'{"action": "ANNOTATION_CREATED", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
            "nested too deeply",
        ),
        (b'{"action": "ANNOTATION_CREATED", "id": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
    ],
)
def test_hostile_label_studio_bodies_are_a_json_400_and_emit_nothing(
    client: AppClient, emitted: Emitted, body: bytes, fragment: str
) -> None:
    response = post_ls(client, body)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail.startswith("malformed JSON") and fragment in detail
    assert detail.endswith("nothing was emitted")
    assert "sys.set_int_max_str_digits" not in detail
    assert emitted == []
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["counts"] == {"rejected:400": 1}


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


def test_a_client_that_disconnects_mid_body_is_one_warning_line(
    emitted: Emitted, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_client(emitted).app
    with caplog.at_level(logging.INFO, logger="nluflow"):
        sent = disconnect_mid_body(app, "/hooks/label-studio", [(b"x-relay-secret", SECRET.encode())])

    assert sent[0]["status"] == 400
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "the client disconnected after 12 bytes of its body" in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)
    assert emitted == []


@pytest.mark.timeout(60)  # a hang fails the test; no wall-clock assert
def test_a_sender_that_stalls_mid_body_gets_a_408_and_nothing_is_emitted(
    emitted: Emitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "BODY_TIMEOUT_SECONDS", 0.3)
    app = make_client(emitted).app
    sent = disconnect_mid_body(app, "/hooks/label-studio", [(b"x-relay-secret", SECRET.encode())], stall=True)

    assert sent[0]["status"] == 408
    assert "did not arrive within 0.3 s" in json.loads(sent[1]["body"])["detail"]
    assert emitted == []


def test_a_signed_generic_body_with_a_lone_surrogate_is_a_400(client: AppClient, emitted: Emitted) -> None:
    response = post_generic(client, b'{"project": "faq-bot", "data": "d\\udfff.jsonl"}')

    assert response.status_code == 400
    assert "$.data" in response.json()["detail"]
    assert emitted == []


def test_a_surrogate_pair_is_valid_text(client: AppClient, emitted: Emitted) -> None:
    response = post_ls(client, b'{"action": "PROJECT_\\ud83d\\ude00"}')

    assert response.status_code == 200  # an action that starts no retrain, acknowledged as before
    assert response.json()["status"] == "ignored"
    assert emitted == []


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "ANNOTATION_CREATED",
        {"annotation": {}},
        {"action": "ANNOTATION_CREATED", "project": {"id": 1}},
        {"action": "ANNOTATION_CREATED", "annotation": [1, 2], "project": {"id": 1}},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}, "project": {"title": "no id"}},
    ],
)
def test_json_of_the_wrong_shape_is_a_422(client: AppClient, emitted: Emitted, payload: Any) -> None:
    response = post_ls(client, json.dumps(payload).encode())

    assert response.status_code == 422
    assert emitted == []


def test_oversized_body_is_refused_before_parsing(label_studio: Path, emitted: Emitted) -> None:
    body = ls_body(label_studio, "ANNOTATION_CREATED")
    with make_client(emitted, max_body_bytes=len(body) - 1) as client:
        declared = post_ls(client, body)

        # No Content-Length (chunked): the relay counts while it reads.
        async def chunks() -> AsyncIterator[bytes]:
            yield body[:1000]
            yield body[1000:]

        chunked = client.post("/hooks/label-studio", content=chunks(), headers={"X-Relay-Secret": SECRET})
        fits = post_ls(client, b"{}")

    assert declared.status_code == 413
    assert chunked.status_code == 413
    assert fits.status_code == 422  # under the limit, read and parsed
    assert emitted == []


def test_an_unauthenticated_body_is_never_read(emitted: Emitted) -> None:
    with make_client(emitted, max_body_bytes=10) as client:
        response = client.post("/hooks/label-studio", content=b"x" * 100)

    assert response.status_code == 401  # not 413: the secret is checked first, without the body


def test_emitter_failure_is_a_503_and_nothing_counts_as_emitted(
    label_studio: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise httpx.ConnectError(f"connection refused (secret was {SECRET})")

    caplog.set_level(logging.DEBUG)
    with make_client(broken) as client:
        response = post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"))
        counts = client.get("/healthz").json()["counts"]

    assert response.status_code == 503
    assert "retry later" in response.json()["detail"]
    assert counts == {"rejected:503": 1}
    assert SECRET not in response.text
    assert SECRET not in caplog.text
    assert "could not emit nlu.dataset.annotated" in caplog.text


def test_only_post_is_accepted(client: AppClient) -> None:
    assert client.get("/hooks/label-studio").status_code == 405


# ------------------------------------------------------------------------------------------ generic


def test_signed_generic_payload_becomes_one_event(client: AppClient, emitted: Emitted) -> None:
    response = post_generic(client, {"project": "faq-bot", "data": "data/faq.jsonl", "new_examples": 12})

    assert response.status_code == 202, response.text
    assert emitted[0]["resource"] == {"prefect.resource.id": "nluflow.dataset.faq-bot"}
    assert emitted[0]["payload"] == {"project": "faq-bot", "data": "data/faq.jsonl", "new_examples": 12}


def test_signature_is_hmac_sha256_of_the_timestamp_dot_raw_body() -> None:
    # Reference value from the standard library, computed independently of nluflow.apps.relay.sign.
    import hashlib
    import hmac

    body = b'{"project": "x", "data": "d"}'
    reference = hmac.new(SECRET.encode(), b"1764990000." + body, hashlib.sha256).hexdigest()
    assert sign(body, SECRET, 1764990000) == sign(body, SECRET, "1764990000") == "sha256=" + reference
    assert sign(body, SECRET, 1764990001) != "sha256=" + reference  # the time is signed too
    headers = signed_headers(body, SECRET, timestamp=1764990000)
    assert headers == {"X-Nluflow-Timestamp": "1764990000", "X-Nluflow-Signature": "sha256=" + reference}


@pytest.mark.parametrize(
    ("secret", "signature", "status"),
    [
        (SECRET, None, 401),  # header secret alone is not enough for generic senders
        (None, "auto", 401),  # a valid signature alone is not enough either
        (SECRET, "sha256=" + "0" * 64, 403),
        (SECRET, "sha1=abc", 403),
        ("wrong-secret-of-the-same-size!", "auto", 403),
    ],
)
def test_generic_payload_needs_secret_and_signature(
    client: AppClient, emitted: Emitted, secret: str | None, signature: str | None, status: int
) -> None:
    response = post_generic(
        client, {"project": "faq-bot", "data": "d.jsonl"}, secret=secret, signature=signature
    )

    assert response.status_code == status
    assert emitted == []
    assert SECRET not in response.text


def test_a_tampered_body_fails_the_signature(client: AppClient, emitted: Emitted) -> None:
    signed = json.dumps({"project": "faq-bot", "data": "d.jsonl"}).encode()
    tampered = signed.replace(b"faq-bot", b"evil-bot")
    now = int(time.time())

    response = post_generic(client, tampered, signature=sign(signed, SECRET, now), timestamp=now)

    assert response.status_code == 403
    assert emitted == []


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"{not json", 400),
        ([{"project": "x", "data": "d"}], 422),
        ({"project": "../etc", "data": "d"}, 422),
        ({"project": "faq-bot"}, 422),
        ({"project": "faq-bot", "data": "d", "new_examples": -1}, 422),
        ({"project": "faq-bot", "data": "d", "extra": 1}, 422),
    ],
)
def test_bad_generic_payloads_are_refused(
    client: AppClient, emitted: Emitted, payload: Any, status: int
) -> None:
    response = post_generic(client, payload)

    assert response.status_code == status
    assert emitted == []


def test_generic_default_new_examples_is_zero(client: AppClient, emitted: Emitted) -> None:
    assert post_generic(client, {"project": "faq-bot", "data": "d.jsonl"}).status_code == 202
    assert emitted[0]["payload"]["new_examples"] == 0


# ------------------------------------------------------------------------------------------ replays


@pytest.mark.parametrize(
    "action",
    [
        "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "TASKS_DELETED",
    ],
)
def test_a_replayed_label_studio_delivery_is_acknowledged_and_emits_nothing(
    label_studio: Path, client: AppClient, emitted: Emitted, action: str
) -> None:
    body = ls_body(label_studio, action)

    first, replay = post_ls(client, body), post_ls(client, body)

    assert (first.status_code, replay.status_code) == (202, 200), replay.text
    assert "replay" in replay.json()["detail"]
    assert len(emitted) == 1
    assert client.get("/healthz").json()["counts"] == {"emitted": 1, "ignored:replay": 1}


def test_a_real_update_with_a_new_updated_at_still_emits(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    created = ls_body(label_studio, "ANNOTATION_CREATED")
    updated = json.loads(ls_body(label_studio, "ANNOTATION_UPDATED"))
    assert updated["annotation"]["id"] == json.loads(created)["annotation"]["id"]  # the same annotation
    again = json.loads(json.dumps(updated))
    again["annotation"]["updated_at"] = "2026-11-22T23:30:00.000001Z"  # edited once more

    codes = [
        post_ls(client, body).status_code
        for body in (
            created,
            json.dumps(updated).encode(),
            json.dumps(updated).encode(),
            json.dumps(again).encode(),
        )
    ]

    assert codes == [202, 202, 200, 202]
    assert [e["payload"]["action"] for e in emitted] == ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"] * 1 + [
        "ANNOTATION_UPDATED"
    ]


def test_a_bulk_delivery_is_a_replay_only_if_every_annotation_was_seen(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    bulk = json.loads(ls_body(label_studio, "ANNOTATIONS_CREATED"))
    one_more = json.loads(json.dumps(bulk))
    extra = json.loads(json.dumps(bulk["annotation"][0]))
    extra["id"] = 99
    one_more["annotation"].append(extra)

    codes = [post_ls(client, json.dumps(b).encode()).status_code for b in (bulk, one_more, one_more, bulk)]

    assert codes == [202, 202, 200, 200]
    assert [e["payload"]["new_examples"] for e in emitted] == [1, 2]


def test_a_failed_emission_is_not_remembered_so_the_retry_emits(label_studio: Path) -> None:
    emitted = Emitted()
    calls = []

    def flaky(event: dict[str, Any]) -> None:
        calls.append(event)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused")
        emitted(event)

    with make_client(flaky) as client:
        codes = [post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED")).status_code for _ in range(3)]
    with make_client(flaky) as client:
        generic = [
            post_generic(client, {"project": "p", "data": "d"}, timestamp=int(time.time())).status_code
        ]

    assert codes == [503, 202, 200]
    assert generic == [202]
    assert len(emitted) == 2


def test_two_concurrent_copies_emit_once(label_studio: Path) -> None:
    emitted = Emitted()

    def slow(event: dict[str, Any]) -> None:
        time.sleep(0.3)  # the first copy is still emitting when the second arrives
        emitted(event)

    app = create_app(
        RelayConfig(secret=SECRET, label_studio={LS_PROJECT: LabelStudioRoute(project="b", source="b")}), slow
    )
    body = ls_body(label_studio, "ANNOTATION_CREATED")

    async def both() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            post = client.post("/hooks/label-studio", content=body, headers={"X-Relay-Secret": SECRET})
            again = client.post("/hooks/label-studio", content=body, headers={"X-Relay-Secret": SECRET})
            return sorted(r.status_code for r in await asyncio.gather(post, again))

    assert anyio.run(both) == [200, 202]
    assert len(emitted) == 1


def test_the_replay_memory_is_a_bounded_lru(label_studio: Path, emitted: Emitted) -> None:
    memory = relay.ReplayMemory(2)
    assert memory.claim([("a",)]) == [("a",)] and memory.claim([("b",)]) == [("b",)]
    assert memory.claim([("a",)]) is None  # seen; now the most recent
    assert memory.claim([("c",)]) == [("c",)]  # evicts b, the least recently used
    assert len(memory) == 2
    assert memory.claim([("a",)]) is None and memory.claim([("b",)]) == [("b",)]

    # Through the app: with room for one key, a copy sent after another delivery is no longer known.
    with make_client(emitted, replay_memory=1) as client:
        created, deleted = ls_body(label_studio, "ANNOTATION_CREATED"), ls_body(label_studio, "TASKS_DELETED")
        codes = [post_ls(client, body).status_code for body in (created, created, deleted, created)]
    assert codes == [202, 200, 202, 202]


def test_a_replayed_signed_generic_delivery_is_a_409_and_emits_nothing(
    client: AppClient, emitted: Emitted
) -> None:
    payload = {"project": "faq-bot", "data": "d.jsonl", "new_examples": 3}
    now = int(time.time())

    first = post_generic(client, payload, timestamp=now)
    replay = post_generic(client, payload, timestamp=now)
    resent = post_generic(client, payload, timestamp=now + 1)  # the same body, signed anew: a new delivery

    assert (first.status_code, replay.status_code, resent.status_code) == (202, 409, 202)
    assert "replay" in replay.json()["detail"] and SECRET not in replay.text
    assert len(emitted) == 2


@pytest.mark.parametrize(
    ("offset", "status"), [(-301, 403), (301, 403), (-3600, 403), (-290, 202), (200, 202)]
)
def test_a_stale_or_future_timestamp_is_refused(
    client: AppClient, emitted: Emitted, offset: int, status: int
) -> None:
    response = post_generic(client, {"project": "faq-bot", "data": "d"}, timestamp=int(time.time()) + offset)

    assert response.status_code == status, response.text
    assert len(emitted) == (1 if status == 202 else 0)
    if status == 403:
        assert "X-Nluflow-Timestamp" in response.json()["detail"]


def test_the_timestamp_tolerance_is_configurable(emitted: Emitted) -> None:
    with make_client(emitted, signature_tolerance_seconds=10) as client:
        stale = post_generic(client, {"project": "faq-bot", "data": "d"}, timestamp=int(time.time()) - 60)

    assert stale.status_code == 403
    assert "within 10 s" in stale.json()["detail"]
    assert emitted == []


@pytest.mark.parametrize(("stamp", "status"), [(None, 401), ("yesterday", 400), ("-5", 400), ("1" * 40, 400)])
def test_a_missing_or_malformed_timestamp_is_refused(
    client: AppClient, emitted: Emitted, stamp: str | None, status: int
) -> None:
    body = json.dumps({"project": "faq-bot", "data": "d"}).encode()
    headers = {"X-Relay-Secret": SECRET, "X-Nluflow-Signature": sign(body, SECRET, stamp or "0")}
    if stamp is not None:
        headers["X-Nluflow-Timestamp"] = stamp

    response = client.post("/hooks/generic", content=body, headers=headers)

    assert response.status_code == status
    assert emitted == []


@pytest.mark.parametrize("route", ["/hooks/label-studio", "/hooks/generic"])
@pytest.mark.parametrize(
    "query", [f"?secret={SECRET}", f"?x=1&s={SECRET}", "?token=anything", "?Secret=x", f"?{SECRET}"]
)
def test_a_secret_in_the_query_string_is_refused_and_never_logged(
    label_studio: Path,
    client: AppClient,
    emitted: Emitted,
    caplog: pytest.LogCaptureFixture,
    route: str,
    query: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = route + query
    if route == "/hooks/generic":
        response = post_generic(client, {"project": "faq-bot", "data": "d"}, url=url)
    else:
        response = post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED"), url=url)

    assert response.status_code == 400, response.text
    assert "X-Relay-Secret" in response.json()["detail"]
    assert emitted == []
    assert SECRET not in response.text
    # Every record but the test client's own httpx line (the sender's URL, not the relay's log).
    relay_lines = [r.getMessage() for r in caplog.records if r.name != "httpx"]
    assert not [line for line in relay_lines if SECRET in line]
    assert any("HTTP 400" in line for line in relay_lines)  # the refusal is logged, without the URL's query


def test_an_unrelated_query_parameter_is_not_a_secret(
    label_studio: Path, client: AppClient, emitted: Emitted
) -> None:
    assert (
        post_ls(
            client, ls_body(label_studio, "ANNOTATION_CREATED"), url="/hooks/label-studio?v=2"
        ).status_code
        == 202
    )


def test_the_query_redactor_keeps_query_strings_out_of_the_access_log() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/hooks/generic?secret={SECRET}", "1.1", 400),
        None,
    )

    assert relay.QueryRedactor().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "POST /hooks/generic?[query redacted] HTTP/1.1" 400'


# ------------------------------------------------------------------------------------------ config


def test_config_file_takes_the_secret_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "relay.yml"
    path.write_text("label_studio:\n  1: {project: bookings, data: /srv/b.json}\nheader: X-Relay-Secret\n")

    config = RelayConfig.from_file(path, environ={"NLUFLOW_RELAY_SECRET": SECRET})

    assert config.secret.get_secret_value() == SECRET
    assert config.label_studio == {"1": LabelStudioRoute(project="bookings", data="/srv/b.json")}
    assert SECRET not in repr(config)


def test_config_file_names_its_own_secret_variable(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({"secret_env": "MY_SECRET", "label_studio": {}}))

    assert RelayConfig.from_file(path, environ={"MY_SECRET": SECRET}).secret.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("secret: abcdefabcdefabcdef\n", {"NLUFLOW_RELAY_SECRET": SECRET}, "must not be written in a file"),
        ("label_studio: {}\n", {}, "NLUFLOW_RELAY_SECRET is not set"),
        ("label_studio: {}\n", {"NLUFLOW_RELAY_SECRET": "short"}, "at least 16 characters"),
        (
            "label_studio:\n  1: {project: ../x, data: d}\n",
            {"NLUFLOW_RELAY_SECRET": SECRET},
            "label_studio.1.project",
        ),
        ("header: 'X Bad Header'\n", {"NLUFLOW_RELAY_SECRET": SECRET}, "header"),
        ("- a list\n", {"NLUFLOW_RELAY_SECRET": SECRET}, "expected a mapping"),
        ("key: [unclosed\n", {"NLUFLOW_RELAY_SECRET": SECRET}, "not valid YAML"),
    ],
)
def test_bad_config_files_are_clear_errors(
    tmp_path: Path, text: str, environ: dict[str, str], expected: str
) -> None:
    path = tmp_path / "relay.yml"
    path.write_text(text)

    with pytest.raises(ConfigError) as err:
        RelayConfig.from_file(path, environ=environ)

    assert expected in str(err.value)
    assert str(path) in str(err.value)
    assert "relay not started" in str(err.value)
    assert SECRET not in str(err.value)


# ------------------------------------------------------------------------------------------ emitter


def test_emitter_posts_a_json_list_of_prefect_events(receiver: tuple[Receiver, str]) -> None:
    from prefect.events import Event

    recv, url = receiver
    recv.status = 204  # what Prefect's POST /api/events answers
    event = annotated_event("bookings", DATA, 3)

    PrefectApiEmitter(f"{url}/api/", api_key="pnu_key_1234567890")(event)

    [request] = recv.requests
    assert (request.method, request.path) == ("POST", "/api/events")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer pnu_key_1234567890"
    body = json.loads(request.body)
    assert isinstance(body, list) and len(body) == 1
    parsed = Event.model_validate(body[0])
    assert parsed.event == "nlu.dataset.annotated"
    assert parsed.resource.id == "nluflow.dataset.bookings"
    assert parsed.payload == {"project": "bookings", "data": DATA, "new_examples": 3}
    assert str(parsed.id) == event["id"]


def test_emitter_uses_basic_auth_for_a_self_hosted_auth_string(receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver

    PrefectApiEmitter(f"{url}/api", api_key="ignored", auth_string="admin:pa:ss").emit(
        [annotated_event("a", "d", 0), annotated_event("b", "d", 1)]
    )

    [request] = recv.requests
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"admin:pa:ss").decode()
    assert [e["resource"]["prefect.resource.id"] for e in json.loads(request.body)] == [
        "nluflow.dataset.a",
        "nluflow.dataset.b",
    ]


def test_emitter_raises_on_refusal_with_the_evidence_and_without_the_key(
    receiver: tuple[Receiver, str],
) -> None:
    recv, url = receiver
    recv.status = 422
    emitter = PrefectApiEmitter(f"{url}/api", api_key="pnu_secret_key_0987654321")

    with pytest.raises(httpx.HTTPStatusError) as err:
        emitter(annotated_event("bookings", DATA, 1))

    assert "HTTP 422" in str(err.value)
    assert "pnu_secret_key_0987654321" not in str(err.value)
    assert "pnu_secret_key_0987654321" not in repr(emitter)


def test_emitter_raises_when_nobody_listens() -> None:
    with pytest.raises(httpx.ConnectError):
        PrefectApiEmitter(f"http://127.0.0.1:{free_port()}/api")(annotated_event("bookings", DATA, 1))


def test_relay_over_real_http_to_the_emitter(label_studio: Path, receiver: tuple[Receiver, str]) -> None:
    """Label Studio's request as sent (headers and body) → relay → Prefect-shaped POST."""
    recv, prefect_url = receiver
    recv.status = 204
    config = RelayConfig(secret=SECRET, label_studio={"1": LabelStudioRoute(project="bookings", data=DATA)})
    app = create_app(config, PrefectApiEmitter(f"{prefect_url}/api"))
    with serve(app) as relay_url:
        response = httpx.post(
            f"{relay_url}/hooks/label-studio",
            content=ls_body(label_studio, "ANNOTATION_CREATED"),
            headers={
                "Content-Type": "application/json",
                "User-Agent": "python-requests/2.34.2",
                "sentry-trace": "2c34adc58b444474b458722492491b05-8fe0b3ebc6f7478b-0",
                "X-Relay-Secret": SECRET,
            },
        )

    assert response.status_code == 202
    [request] = recv.requests
    assert request.path == "/api/events"
    assert json.loads(request.body)[0]["payload"] == {
        "project": "bookings",
        "data": DATA,
        "new_examples": 1,
        "action": "ANNOTATION_CREATED",
        "removed_examples": 0,
    }


def test_build_relay_from_a_config_file(
    label_studio: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emitted: Emitted
) -> None:
    from flows.events import build_relay

    path = tmp_path / "relay.yml"
    path.write_text(
        "label_studio:\n"
        "  1: {project: bookings, source: bookings-ls}\n"
        "  2: {project: other, data: /srv/b.json}\n"
    )
    monkeypatch.setenv("NLUFLOW_RELAY_SECRET", SECRET)

    client = AppClient(build_relay(path, emitter=emitted))

    assert post_ls(client, ls_body(label_studio, "ANNOTATION_CREATED")).status_code == 202
    assert emitted[0]["payload"]["data"] == "nluflow-label-studio-source/bookings-ls"


def test_build_relay_without_a_prefect_api_is_a_config_error() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.events import build_relay

    # The harness of this folder may be up (it sets the API URL): take it away for this test.
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(ConfigError, match="PREFECT_API_URL"),
    ):
        build_relay(RelayConfig(secret=SECRET))


def test_relay_logging_shows_info_lines_on_the_nluflow_logger() -> None:
    from flows.events import relay_logging

    log = logging.getLogger("nluflow")
    level = log.level
    log.setLevel(logging.NOTSET)  # inherits the root's WARNING: the emissions would not print
    try:
        relay_logging()
        assert logging.getLogger("nluflow.apps.relay").isEnabledFor(logging.INFO)
    finally:
        log.setLevel(level)


def test_label_studio_emulator_webhooks_drive_the_relay(emitted: Emitted, label_studio: Path) -> None:
    """The emulator's webhooks (captured shapes, custom header, no retry) → relay → one event per change."""
    from nluflow.testing.emulators import LabelStudioEmulator

    config = RelayConfig(
        secret=SECRET, label_studio={LS_PROJECT: LabelStudioRoute(project="bookings", source="bookings")}
    )
    emulator = LabelStudioEmulator()
    with serve(create_app(config, emitted)) as relay:
        emulator.add_webhook(f"{relay}/hooks/label-studio", {"X-Relay-Secret": SECRET})
        first = emulator.add_task("book a flight to Oslo")
        emulator.annotate(first, "book_flight", [(17, 21, "city")])
        second = emulator.add_task("hi there")
        gone = emulator.annotate(second, "greet")
        emulator.annotate(emulator.add_task("asdf"), None, cancelled=True)
        emulator.delete_annotation(gone)
        emulator.delete_task(first)
        emulator.webhooks[0] = (emulator.webhooks[0][0], {"X-Relay-Secret": "wrong-secret-0123456789"})
        emulator.annotate(second, "greet")

    assert emulator.deliveries == [
        ("ANNOTATION_CREATED", 202),
        ("ANNOTATION_CREATED", 202),
        ("ANNOTATION_CREATED", 200),  # a skip: acknowledged, nothing to retrain on
        ("ANNOTATIONS_DELETED", 202),
        ("TASKS_DELETED", 202),
        ("ANNOTATION_CREATED", 403),  # Label Studio would not retry: the next scheduled run catches it
    ]
    assert [
        (e["payload"]["action"], e["payload"]["new_examples"], e["payload"]["removed_examples"])
        for e in emitted
    ] == [
        ("ANNOTATION_CREATED", 1, 0),
        ("ANNOTATION_CREATED", 1, 0),
        ("ANNOTATIONS_DELETED", 0, 1),
        ("TASKS_DELETED", 0, 1),
    ]
    assert {e["payload"]["data"] for e in emitted} == {SOURCE}
    captured = json.loads(ls_body(label_studio, "ANNOTATION_CREATED"))
    sent = Emitted()
    emulator.webhooks[:] = []
    with serve(_recording_app(sent)) as url:
        emulator.add_webhook(url)
        emulator.annotate(second, "greet")
    [body] = sent
    assert set(body) == set(captured) and set(body["annotation"]) == set(captured["annotation"])
    assert set(body["task"]) == set(captured["task"])


def _recording_app(into: list[dict[str, Any]]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def record(request: Request) -> Response:
        into.append(json.loads(await request.body()))
        return Response(status_code=200)

    return Starlette(routes=[Route("/", record, methods=["POST"])])


@pytest.mark.slow
def test_the_relay_command_logs_emissions_at_info_without_prefect_warnings(
    label_studio: Path, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """``nluflow relay`` as users start it, with nluflow's loggers handed to Prefect (as the docs suggest)."""
    import os
    import subprocess
    import sys
    import time

    recv, prefect_url = receiver
    recv.status = 204
    config = tmp_path / "relay.yml"
    config.write_text("label_studio:\n  1: {project: bookings, source: label-studio}\n", encoding="utf-8")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": f"{prefect_url}/api",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "nluflow",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "warn",  # Prefect's default
        "NLUFLOW_RELAY_SECRET": SECRET,
    }
    code = "from flows.cli import main; main()"
    args = [sys.executable, "-c", code, "relay", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/hooks/label-studio",
                    content=ls_body(label_studio, "ANNOTATION_CREATED"),
                    headers={"Content-Type": "application/json", "X-Relay-Secret": SECRET},
                )
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline, "the relay did not start"
                time.sleep(0.2)
        assert response.status_code == 202
        in_query = httpx.post(
            f"http://127.0.0.1:{port}/hooks/label-studio?secret={SECRET}",
            content=ls_body(label_studio, "TASKS_DELETED"),
            headers={"Content-Type": "application/json", "X-Relay-Secret": SECRET},
        )
        assert in_query.status_code == 400
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)

    assert (
        "INFO" in output and "label-studio ANNOTATION_CREATED (project 1) → nlu.dataset.annotated" in output
    )
    assert "flow run id" not in output and "Warning" not in output, output
    assert "/hooks/label-studio?[query redacted]" in output, (
        output
    )  # uvicorn's access line, without the query
    assert SECRET not in output
    assert len(recv.requests) == 1
