"""Notification blocks."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from nluflow.notify import NOTIFY_TIMEOUT_SECONDS, NotificationKind, WebhookNotifier


class WebhookNotification(Block):
    """A webhook that hears about every promotion decision: generic JSON, or a Slack message.

    Use the JSON kind for a "sync to registry" receiver and the Slack kind for a Slack incoming webhook that
    announces new active models. The URL is stored as a secret (a Slack webhook URL is the credential).
    A failed notification is logged and never fails a promotion that has already committed.

    Example:
        Load a stored block and build its notifier:
        ```python
        from blocks.notify import WebhookNotification

        notification_block = WebhookNotification.load("BLOCK_NAME")
        notifier = notification_block.get_notifier()
        print(notifier.kind)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Webhook Notification"
    _block_type_slug: ClassVar[str] = "nluflow-webhook-notification"
    _description: ClassVar[str] = (
        "A webhook (generic JSON or Slack) told about each nluflow promotion decision."
    )
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#notifications")

    url: SecretStr = Field(
        default=...,
        title="Webhook URL",
        description="URL the notification is posted to; kept secret (Slack webhook URLs are credentials).",
    )
    kind: NotificationKind = Field(
        default="json",
        title="Payload kind",
        description="'json' for the generic decision body, 'slack' for a Slack incoming-webhook message.",
    )
    only_promotions: bool = Field(
        default=False,
        title="Only promotions",
        description="Notify only when a new model became active (e.g. a Slack announcement).",
    )
    timeout_seconds: float = Field(
        default=NOTIFY_TIMEOUT_SECONDS,
        gt=0,
        le=60,
        title="Timeout (seconds)",
        description="Longest wait for the receiver; a slow receiver is given up on, never retried.",
    )

    def get_notifier(self) -> WebhookNotifier:
        """Build the notifier (no caching: a fresh client for each call)."""
        return WebhookNotifier(
            self.url.get_secret_value(),
            self.kind,
            timeout=self.timeout_seconds,
            only_promotions=self.only_promotions,
        )
