"""Prefect blocks of nluflow: configuration and credentials that build plain clients from ``nluflow``."""

from blocks.cognigy import CognigyBackendBlock
from blocks.gates import GatePolicyBlock
from blocks.neuralspace import NeuralSpaceBackendBlock
from blocks.notify import WebhookNotification
from blocks.rasa import RasaBackendBlock
from blocks.s3_store import S3ModelStore
from blocks.service import TrainingServiceBlock
from blocks.sources import FolderSource, LabelStudioSource
from blocks.store import LocalModelStore

__all__ = [
    "CognigyBackendBlock",
    "FolderSource",
    "GatePolicyBlock",
    "LabelStudioSource",
    "LocalModelStore",
    "NeuralSpaceBackendBlock",
    "RasaBackendBlock",
    "S3ModelStore",
    "TrainingServiceBlock",
    "WebhookNotification",
]
