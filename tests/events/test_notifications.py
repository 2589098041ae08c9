"""Decision notifications: payload shapes, a real local receiver, failing receivers, and the URL secret."""

from __future__ import annotations

import json
import logging
import re

import pytest

from blocks.notify import WebhookNotification
from nluflow.evaluation.gates import Decision
from nluflow.notify import DecisionNotice, WebhookNotifier, json_payload, slack_payload

from .conftest import Receiver, free_port, serve

# The secret part of a Slack incoming-webhook URL (a test value, not a credential).
TOKEN = "Xk9fQ2vL7pR4tY8wZ1mN3bC6"
SLACK_PATH = f"/services/T00000000/B00000000/{TOKEN}"


def notice(**changes: object) -> DecisionNotice:
    base: dict[str, object] = {
        "project": "bookings",
        "decision": "promote",
        "promoted": True,
        "summary": "promote: beats active by +0.0310 macro F1 (95% CI +0.0120..+0.0500)",
        "reasons": ["beats active by +0.0310 macro F1 (95% CI +0.0120..+0.0500)"],
        "candidate_id": "m-20261123-a1b2c3",
        "previous_active": "m-20261101-d4e5f6",
        "active": "m-20261123-a1b2c3",
        "metrics": {"macro_f1": 0.9123, "accuracy": 0.9301},
        "deltas": {"macro_f1": 0.031, "accuracy": -0.002},
        "run_url": "http://127.0.0.1:4200/runs/flow-run/0f0e0d0c-0000-4000-8000-000000000001",
        "flow_run_id": "0f0e0d0c-0000-4000-8000-000000000001",
    }
    return DecisionNotice.model_validate({**base, **changes})


# ------------------------------------------------------------------------------------------ payloads


def test_json_payload_carries_every_field_of_the_decision() -> None:
    payload = json_payload(notice())

    assert payload["schema"] == "nluflow.decision/v1"
    assert payload["headline"] == "nluflow · bookings: new active model m-20261123-a1b2c3 (macro F1 +0.0310)"
    assert {
        k: payload[k] for k in ("project", "decision", "promoted", "candidate_id", "previous_active")
    } == {
        "project": "bookings",
        "decision": "promote",
        "promoted": True,
        "candidate_id": "m-20261123-a1b2c3",
        "previous_active": "m-20261101-d4e5f6",
    }
    assert payload["deltas"] == {"macro_f1": 0.031, "accuracy": -0.002}
    assert payload["metrics"]["macro_f1"] == 0.9123
    assert payload["run_url"].endswith("/runs/flow-run/0f0e0d0c-0000-4000-8000-000000000001")
    assert json.loads(json.dumps(payload)) == payload  # plain JSON


def test_notice_from_a_gate_decision() -> None:
    decision = Decision(
        promote=False,
        first_model=False,
        gates=[],
        reasons=["macro F1 0.81 < 0.85 (min_macro_f1)", "delta -0.02 < +0.005 (min_delta)", "third"],
        deltas={"macro_f1": -0.02},
        bootstrap=None,
    )

    made = DecisionNotice.from_decision(
        "bookings", decision, promoted=False, candidate_id="m-2", previous_active="m-1", active="m-1"
    )

    assert made.decision == "reject"
    assert made.reasons == decision.reasons
    assert made.deltas == {"macro_f1": -0.02}
    assert made.summary == decision.summary()
    assert made.headline() == "nluflow · bookings: candidate m-2 rejected (macro F1 -0.0200)"


def test_slack_payload_announces_a_new_active_model() -> None:
    payload = slack_payload(notice())

    assert set(payload) == {"text", "blocks"}
    assert payload["text"].startswith("nluflow · bookings: new active model m-20261123-a1b2c3")
    header, summary, fields, reasons, context = payload["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "✅ bookings: new active model"},
    }
    assert summary["text"]["type"] == "mrkdwn" and "+0.0310 macro F1" in summary["text"]["text"]
    texts = [f["text"] for f in fields["fields"]]
    assert "*Candidate*\n`m-20261123-a1b2c3`" in texts
    assert "*Previously active*\n`m-20261101-d4e5f6`" in texts
    assert "*macro F1*\n0.9123 (+0.0310)" in texts
    assert "*accuracy*\n0.9301 (-0.0020)" in texts
    assert reasons["text"]["text"].startswith("*Reasons*\n• beats active")
    link = context["elements"][0]["text"]
    assert (
        "<http://127.0.0.1:4200/runs/flow-run/0f0e0d0c-0000-4000-8000-000000000001|Open the run in Prefect>"
        in link
    )


def test_slack_payload_of_a_rejection_escapes_and_bounds_its_text() -> None:
    reasons = [f"gate {i}: <b>value</b> & more" for i in range(25)]
    payload = slack_payload(
        notice(
            decision="reject", promoted=False, summary="reject: " + "x" * 5000, reasons=reasons, run_url=None
        )
    )

    header, summary, _fields, reason_block, context = payload["blocks"]
    assert header["text"]["text"] == "❌ bookings: candidate not promoted"
    assert len(summary["text"]["text"]) <= 3000
    shown = reason_block["text"]["text"]
    assert "&lt;b&gt;value&lt;/b&gt; &amp; more" in shown and "<b>" not in shown
    assert shown.count("•") == 10 and shown.endswith("… and 15 more")
    assert "Open the run" not in context["elements"][0]["text"]
    assert payload["text"] == "nluflow · bookings: candidate m-20261123-a1b2c3 rejected (macro F1 +0.0310)"


def test_an_unchanged_run_is_not_announced_as_a_rejection() -> None:
    made = notice(
        decision="unchanged",
        promoted=False,
        summary="unchanged: nothing new to train: candidate m-20261123-a1b2c3 is the active model",
        reasons=["nothing new to train: candidate m-20261123-a1b2c3 is the active model"],
        deltas={},
    )
    assert made.headline() == "nluflow · bookings: nothing new to train, m-20261123-a1b2c3 stays active"
    header = slack_payload(made)["blocks"][0]
    assert header["text"]["text"] == "bookings: unchanged, nothing new to train"
    assert "reject" not in json.dumps(slack_payload(made))


def test_slack_fields_stay_within_slacks_limit_of_ten() -> None:
    metrics = {f"metric_{i}": 0.5 for i in range(15)}
    payload = slack_payload(notice(metrics=metrics, deltas={}))

    assert len(payload["blocks"][2]["fields"]) == 10


def test_blocked_run_has_its_own_wording() -> None:
    blocked = notice(decision="blocked", promoted=False, candidate_id=None, deltas={}, metrics={})

    assert (
        slack_payload(blocked)["blocks"][0]["text"]["text"]
        == "⛔ bookings: retrain blocked by data validation"
    )
    assert json_payload(blocked)["headline"] == "nluflow · bookings: retrain blocked by data validation"


# ------------------------------------------------------------------------------------------ sending


@pytest.mark.parametrize("kind", ["json", "slack"])
def test_local_receiver_gets_the_body(receiver: tuple[Receiver, str], kind: str) -> None:
    recv, url = receiver
    notifier = WebhookNotifier(url + SLACK_PATH, kind)  # type: ignore[arg-type]

    assert notifier.send(notice()) is True

    [request] = recv.requests
    assert (request.method, request.path) == ("POST", SLACK_PATH)
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert body == (slack_payload(notice()) if kind == "slack" else json_payload(notice()))


@pytest.mark.parametrize("status", [500, 404, 302])
def test_a_failing_receiver_is_logged_not_raised(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture, status: int
) -> None:
    recv, url = receiver
    recv.status = status
    caplog.set_level(logging.DEBUG)

    assert WebhookNotifier(url + SLACK_PATH, "slack").send(notice()) is False

    warnings = [r for r in caplog.records if r.name == "nluflow.notify" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"answered HTTP {status}" in warnings[0].getMessage()
    assert "the decision stands" in warnings[0].getMessage()
    assert TOKEN not in caplog.text


def test_connection_refused_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}{SLACK_PATH}"

    assert WebhookNotifier(url, "json").send(notice()) is False

    message = next(r.getMessage() for r in caplog.records if r.name == "nluflow.notify")
    assert "ConnectError" in message
    assert f"http://127.0.0.1:{url.split(':')[2].split('/')[0]}/…" in message
    assert TOKEN not in caplog.text


def test_a_slow_receiver_times_out_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    release = threading.Event()

    async def slow(request: object) -> Response:
        import anyio

        await anyio.to_thread.run_sync(release.wait, 5)
        return Response(b"late")

    caplog.set_level(logging.DEBUG)
    with serve(Starlette(routes=[Route("/{p:path}", slow, methods=["POST"])])) as url:
        try:
            sent = WebhookNotifier(url + SLACK_PATH, "slack", timeout=0.3).send(notice())
        finally:
            release.set()

    assert sent is False
    assert "ReadTimeout" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("url", [f"htp://hooks.example{SLACK_PATH}", f"not a url {TOKEN}", ""])
def test_an_unusable_url_is_logged_not_raised_and_not_shown(
    caplog: pytest.LogCaptureFixture, url: str
) -> None:
    caplog.set_level(logging.DEBUG)

    assert WebhookNotifier(url, "json").send(notice()) is False

    assert "notification (json)" in caplog.text
    assert TOKEN not in caplog.text


def test_the_url_never_shows_in_repr_or_httpx_logs(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    _recv, url = receiver
    caplog.set_level(logging.DEBUG)
    notifier = WebhookNotifier(url + SLACK_PATH, "slack")

    assert notifier.send(notice())

    assert TOKEN not in repr(notifier)
    assert any(r.name == "httpx" for r in caplog.records), "httpx logged nothing: the check would be vacuous"
    assert TOKEN not in caplog.text
    assert f"sent to {url}/…" in caplog.text


def test_only_promotions_skips_other_decisions(receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver
    notifier = WebhookNotifier(url + SLACK_PATH, "slack", only_promotions=True)

    assert notifier.send(notice(decision="reject", promoted=False)) is False
    assert recv.requests == []
    assert notifier.send(notice()) is True
    assert len(recv.requests) == 1


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 'json' or 'slack'"):
        WebhookNotifier("http://127.0.0.1/x", "teams")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the block


# Prefect's standard block suite runs once, over every exported block (this one included), in
# tests/flows/test_blocks.py.


def test_block_keeps_the_url_secret_and_builds_the_notifier(receiver: tuple[Receiver, str]) -> None:
    recv, url = receiver
    block = WebhookNotification(url=url + SLACK_PATH, kind="slack", timeout_seconds=2, only_promotions=True)

    assert TOKEN not in repr(block)
    assert TOKEN not in str(block.model_dump())
    assert "url" in WebhookNotification.model_json_schema()["properties"]
    assert WebhookNotification.model_json_schema()["properties"]["url"].get("format") == "password"

    notifier = block.get_notifier()
    assert (notifier.kind, notifier.only_promotions) == ("slack", True)
    assert notifier.send(notice())
    assert json.loads(recv.requests[0].body)["text"].startswith("nluflow · bookings")


def test_block_docstring_example_runs(prefect_api: str, capsys: pytest.CaptureFixture[str]) -> None:
    WebhookNotification(url="https://hooks.example.test" + SLACK_PATH, kind="slack").save(
        "block-name", overwrite=True
    )
    text = WebhookNotification.get_code_example()
    assert text is not None
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, text

    exec(match.group(1).replace('"BLOCK_NAME"', '"block-name"'), {})

    assert capsys.readouterr().out.strip() == "slack"
    loaded = WebhookNotification.load("block-name")
    assert loaded.url.get_secret_value() == "https://hooks.example.test" + SLACK_PATH
