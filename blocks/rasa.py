"""The Rasa Open Source training backend as a block: server URL, credentials, evaluation server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import httpx
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from nluflow.backends.http import HttpOptions
from nluflow.backends.rasa import IDLE_WAIT, TRAIN_READ_TIMEOUT, RasaBackend, RasaSettings


class RasaBackendBlock(Block):
    """A Rasa Open Source server (``rasa run --enable-api``) that trains, evaluates and serves NLU models.

    Training is synchronous over ``POST /model/train``, sent once per run's training and never resent after
    its answer was lost (Rasa 3.x would train again); with ``server_models_folder`` the archive of such a
    training is found there. Candidates are evaluated without replacing the served model; promotion is
    ``PUT /model``. One Rasa server serves one project: another project's served model is refused. Give
    either a token (``--auth-token``) or a JWT.

    Example:
        Load the block and build the backend client (a context manager: it closes its HTTP clients):
        ```python
        from blocks.rasa import RasaBackendBlock

        rasa_block = RasaBackendBlock.load("BLOCK_NAME")
        with rasa_block.get_client() as backend:
            print(backend.name)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Rasa Backend"
    _block_type_slug: ClassVar[str] = "nluflow-rasa-backend"
    _description: ClassVar[str] = "Train, evaluate and serve nluflow models on a Rasa Open Source server."
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#rasa")

    url: str = Field(
        default=...,
        title="Server URL",
        description="Base URL of the Rasa server started with `rasa run --enable-api`, e.g. http://rasa:5005.",
    )
    token: SecretStr | None = Field(
        default=None,
        title="Auth token",
        description="The server's `--auth-token`, sent as the `token` query parameter.",
    )
    jwt: SecretStr | None = Field(
        default=None,
        title="JWT",
        description="A JWT with role admin, sent as `Authorization: Bearer`; use it instead of the token.",
    )
    evaluation_url: str | None = Field(
        default=None,
        title="Evaluation server URL",
        description=(
            "A second Rasa server sharing the model folder, used to parse test utterances with full "
            "predictions (intents, ranking, entities); without it, evaluation sends the labelled test set "
            "to /model/test/intents, which gives each utterance's top intent and, from its entity "
            "evaluation, its entities (no intent ranking)."
        ),
    )
    models_dir: str = Field(
        default="models",
        title="Models folder on the server",
        description="Where the server saves trained archives, relative to its working folder.",
    )
    server_models_folder: str | None = Field(
        default=None,
        title="Server's models folder, as mounted here",
        description=(
            "The server's models folder as this machine sees it (a shared volume), e.g. /mnt/rasa/models. "
            "When set, a training whose answer was lost (slower than the training timeout, a dropped "
            "connection) is picked up from there instead of trained again, an activation or rollback whose "
            "archive the server no longer has copies it back there from nluflow's store (Rasa's API cannot "
            "upload a model), and another project's served model is recognised. When empty, a lost training "
            "answer fails the run (not retried) and such an activation fails with an error that says which "
            "file to copy where."
        ),
    )
    language: str = Field(
        default="en", title="Language", description="The `language` key of the Rasa config."
    )
    pipeline: list[dict[str, Any]] | None = Field(
        default=None,
        title="Pipeline",
        description="A Rasa NLU pipeline (list of components); empty means nluflow's DIET default.",
    )
    train_timeout_seconds: float = Field(
        default=TRAIN_READ_TIMEOUT,
        gt=0,
        title="Training timeout (s)",
        description=(
            "How long one synchronous training request may take before its answer counts as lost (the "
            "request is never resent: the server may still be training)."
        ),
    )
    idle_wait_seconds: float = Field(
        default=IDLE_WAIT,
        gt=0,
        title="Wait for a running training (s)",
        description=(
            "How long to wait for the server's running training to end: before training, and after a lost "
            "answer (then its archive is looked for in server_models_folder; a retry of the step waits "
            "again)."
        ),
    )

    def get_client(
        self,
        on_progress: Callable[[float, str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        workdir: str | None = None,
    ) -> RasaBackend:
        """Build the backend client (secrets are unwrapped here only; a fresh client for each call)."""
        settings = RasaSettings(
            evaluation_url=self.evaluation_url,
            models_dir=self.models_dir,
            server_models_folder=self.server_models_folder,
            language=self.language,
            pipeline=self.pipeline,
            train_timeout=self.train_timeout_seconds,
            idle_wait=self.idle_wait_seconds,
        )
        return RasaBackend(
            self.url,
            token=self.token.get_secret_value() if self.token else None,
            jwt=self.jwt.get_secret_value() if self.jwt else None,
            settings=settings,
            workdir=workdir,
            http=HttpOptions(transport=transport),
            on_progress=on_progress,
        )
