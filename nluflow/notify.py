"""Webhook notifications after each promotion decision: a generic JSON body, or a Slack message.

Two uses: a "sync to registry" webhook (JSON: everything a receiver needs to mirror the decision), and a
Slack incoming webhook announcing a new active model (``{"text": ..., "blocks": [...]}``).

:meth:`WebhookNotifier.send` never raises: it runs after a promotion that has already committed, and a
notification that fails must not undo or fail it. Failures are logged (``nluflow.notify``, WARNING) with the
receiver's scheme and host only: a webhook URL is a secret (a Slack URL *is* the credential), so the URL
path and query never appear in a log line, an exception or a ``repr``. httpx's own request log lines are
filtered for the URL as well.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from nluflow.backends.http import Redactor, install_log_redaction

if TYPE_CHECKING:
    from nluflow.evaluation.gates import Decision

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT_SECONDS = 5.0
NOTIFY_CONNECT_TIMEOUT_SECONDS = 3.0
PAYLOAD_SCHEMA = "nluflow.decision/v1"
BODY_EXCERPT_CHARS = 200
# Slack limits: header text 150 chars, section text 3000, at most 10 fields per section.
_SLACK_HEADER_CHARS = 150
_SLACK_TEXT_CHARS = 2900
_SLACK_MAX_FIELDS = 10
_SLACK_MAX_REASONS = 10

NotificationKind = Literal["json", "slack"]
DecisionKind = Literal["promote", "reject", "superseded", "blocked", "unchanged"]

_METRIC_LABELS = {"macro_f1": "macro F1", "accuracy": "accuracy", "entity_f1": "entity F1"}


class DecisionNotice(BaseModel):
    """What one run decided, for the receivers of a notification."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str = Field(description="Project (bot) name.")
    decision: DecisionKind = Field(
        description="promote, reject, superseded (another run's model became active first and the "
        "candidate does not beat it), blocked (validation stopped the run) or unchanged (the candidate is "
        "the active model: nothing new to train)."
    )
    promoted: bool = Field(description="The candidate is now the active model.")
    summary: str = Field(description="One line, e.g. 'promote: beats active by +0.031 macro F1'.")
    reasons: list[str] = Field(default_factory=list, description="Every reason the gates gave.")
    candidate_id: str | None = Field(default=None, description="The candidate model id.")
    previous_active: str | None = Field(default=None, description="Active model before the run.")
    active: str | None = Field(default=None, description="Active model after the run.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Candidate headline metrics.")
    deltas: dict[str, float] = Field(default_factory=dict, description="Candidate minus active, per metric.")
    run_url: str | None = Field(default=None, description="Link to the run in the Prefect UI.")
    flow_run_id: str | None = Field(default=None, description="The Prefect flow run id.")

    @classmethod
    def from_decision(
        cls, project: str, decision: Decision, *, promoted: bool, **models: Any
    ) -> DecisionNotice:
        """The notice of a gate decision (reasons, deltas and summary come from the decision); ``models``
        sets the other fields (``candidate_id``, ``previous_active``, ``active``, ``metrics``, ``run_url``,
        ``flow_run_id``)."""
        return cls(
            project=project,
            decision="promote" if decision.promote else "reject",
            promoted=promoted,
            summary=decision.summary(),
            reasons=list(decision.reasons),
            deltas=dict(decision.deltas),
            **{**models, "metrics": dict(models.get("metrics") or {})},
        )

    def headline(self) -> str:
        """One plain line for logs and Slack's notification text."""
        if self.promoted:
            what = f"new active model {self.candidate_id}" if self.candidate_id else "new active model"
        elif self.decision == "blocked":
            what = "retrain blocked by data validation"
        elif self.decision == "unchanged":
            what = f"nothing new to train, {self.candidate_id} stays active"
        elif self.decision == "superseded":
            what = f"candidate {self.candidate_id} superseded: {self.active} became active first"
        elif self.decision == "promote":
            what = f"candidate {self.candidate_id} passed the gates but was not activated"
        else:
            what = f"candidate {self.candidate_id} rejected" if self.candidate_id else "candidate rejected"
        delta = _primary_delta(self.deltas)
        return f"nluflow · {self.project}: {what}" + (f" ({delta})" if delta else "")


def _label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric.replace("_", " "))


def _primary_delta(deltas: Mapping[str, float]) -> str:
    for metric in ("macro_f1", "accuracy", *sorted(deltas)):
        if metric in deltas:
            return f"{_label(metric)} {deltas[metric]:+.4f}"
    return ""


def json_payload(notice: DecisionNotice) -> dict[str, Any]:
    """The generic body: a versioned schema tag, the headline, and every field of the notice."""
    return {"schema": PAYLOAD_SCHEMA, "headline": notice.headline(), **notice.model_dump(mode="json")}


def _slack_escape(text: str) -> str:
    # Slack mrkdwn control characters; everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(notice: DecisionNotice) -> dict[str, Any]:
    """A Slack incoming-webhook message: fallback ``text`` and Block Kit ``blocks``."""
    icon = "✅" if notice.promoted else ("⛔" if notice.decision == "blocked" else "❌")
    if notice.promoted:
        title = f"{icon} {notice.project}: new active model"
    elif notice.decision == "blocked":
        title = f"{icon} {notice.project}: retrain blocked by data validation"
    elif notice.decision == "unchanged":
        title = f"{notice.project}: unchanged, nothing new to train"
    else:
        title = f"{icon} {notice.project}: candidate not promoted"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(title, _SLACK_HEADER_CHARS)}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _clip(_slack_escape(notice.summary), _SLACK_TEXT_CHARS)},
        },
    ]
    fields = [
        f"*Candidate*\n`{_slack_escape(notice.candidate_id or '—')}`",
        f"*Previously active*\n`{_slack_escape(notice.previous_active or '—')}`",
    ]
    for metric, value in sorted(notice.metrics.items()):
        delta = notice.deltas.get(metric)
        shown = f"{value:.4f}" + (f" ({delta:+.4f})" if delta is not None else "")
        fields.append(f"*{_slack_escape(_label(metric))}*\n{shown}")
    blocks.append(
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields[:_SLACK_MAX_FIELDS]]}
    )
    if notice.reasons:
        shown_reasons = notice.reasons[:_SLACK_MAX_REASONS]
        lines = [f"• {_slack_escape(r)}" for r in shown_reasons]
        if len(notice.reasons) > len(shown_reasons):
            lines.append(f"… and {len(notice.reasons) - len(shown_reasons)} more")
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip("*Reasons*\n" + "\n".join(lines), _SLACK_TEXT_CHARS),
                },
            }
        )
    context = f"project `{_slack_escape(notice.project)}`"
    if notice.run_url:
        # A URL inside <...|...> must keep its characters; only the label is escaped.
        context += f" · <{notice.run_url.replace('|', '%7C').replace('>', '%3E')}|Open the run in Prefect>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": notice.headline(), "blocks": blocks}


def describe_url(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell receivers apart in a log, not enough to post to one."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or '?'}://{host}{port}/…"


def _normalized(url: str) -> str | None:
    """The URL as httpx prints it in its own log lines (it may differ in case or escaping)."""
    try:
        return str(httpx.URL(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return None


class WebhookNotifier:
    """Posts decision notices to one webhook URL (a secret) as generic JSON or a Slack message."""

    def __init__(
        self,
        url: str,
        kind: NotificationKind = "json",
        *,
        timeout: float = NOTIFY_TIMEOUT_SECONDS,
        only_promotions: bool = False,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if kind not in ("json", "slack"):
            raise ValueError(f"notification kind {kind!r}: expected 'json' or 'slack'")
        self._url = url
        self.kind: NotificationKind = kind
        self.only_promotions = only_promotions
        self.target = describe_url(url)
        self._headers = dict(headers or {})
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, NOTIFY_CONNECT_TIMEOUT_SECONDS))
        self._transport = transport
        self._redact = Redactor([url, _normalized(url), *self._headers.values()])
        install_log_redaction()  # httpx logs full request URLs at INFO

    def __repr__(self) -> str:
        flags = ", only_promotions=True" if self.only_promotions else ""
        return f"WebhookNotifier(kind={self.kind!r}, target={self.target!r}{flags})"

    def payload(self, notice: DecisionNotice) -> dict[str, Any]:
        return slack_payload(notice) if self.kind == "slack" else json_payload(notice)

    def send(self, notice: DecisionNotice) -> bool:
        """Post the notice; True when the receiver answered 2xx. Never raises: failures are logged.

        With ``only_promotions`` a notice of a run that did not promote is skipped (False, nothing sent).
        """
        if self.only_promotions and not notice.promoted:
            logger.debug("[%s] notification (%s) skipped: no promotion", notice.project, self.kind)
            return False
        try:
            with httpx.Client(transport=self._transport, timeout=self._timeout) as client:
                response = client.post(self._url, json=self.payload(notice), headers=self._headers)
        except Exception as exc:  # a notification must never fail a committed promotion
            logger.warning(
                "[%s] notification (%s) to %s failed: %s: %s; the decision stands, nothing is retried",
                notice.project,
                self.kind,
                self.target,
                type(exc).__name__,
                self._redact(str(exc)) or "no detail",
            )
            return False
        if response.is_success:
            logger.info("[%s] notification (%s) sent to %s", notice.project, self.kind, self.target)
            return True
        excerpt = self._redact(" ".join(response.text.split()))[:BODY_EXCERPT_CHARS]
        logger.warning(
            "[%s] notification (%s) to %s answered HTTP %d (%s); the decision stands, nothing is retried",
            notice.project,
            self.kind,
            self.target,
            response.status_code,
            excerpt or "empty body",
        )
        return False
