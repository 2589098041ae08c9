"""Prefect blocks of nluflow: configuration and credentials that build plain clients from ``nluflow``."""

from blocks.gates import GatePolicyBlock
from blocks.notify import WebhookNotification
from blocks.s3_store import S3ModelStore
from blocks.store import LocalModelStore

__all__ = ["GatePolicyBlock", "LocalModelStore", "S3ModelStore", "WebhookNotification"]
