"""The Cognigy.AI training backend as a block: API base, project, flow, locale, endpoint, credentials."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import httpx
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from nluflow.backends.cognigy import TRAIN_WAIT, CognigyBackend, CognigySettings
from nluflow.backends.http import HttpOptions


class CognigyBackendBlock(Block):
    """One Cognigy.AI flow and locale: intents are imported and trained there, scored with NLU scores, and
    promoted by pointing an endpoint at a snapshot.

    Give either an API key or OAuth2 client credentials.

    Example:
        Load the block and build the backend client (a context manager: it closes its HTTP clients):
        ```python
        from blocks.cognigy import CognigyBackendBlock

        cognigy_block = CognigyBackendBlock.load("BLOCK_NAME")
        with cognigy_block.get_client() as backend:
            print(backend.name)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Cognigy Backend"
    _block_type_slug: ClassVar[str] = "nluflow-cognigy-backend"
    _description: ClassVar[str] = "Train, evaluate and promote nluflow models on a Cognigy.AI flow."
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#cognigy")

    url: str = Field(
        default="https://api-trial.cognigy.ai",
        title="API base URL",
        description="The Cognigy.AI API server, without /new/v2.0 (e.g. https://api-app.cognigy.ai).",
    )
    project_id: str = Field(default=..., title="Project id", description="The project's 24-hex `_id`.")
    flow_id: str = Field(default=..., title="Flow id", description="The flow whose intents are trained.")
    locale: Literal["en-US", "de-DE", "fr-FR", "es-ES"] = Field(
        default="en-US",
        title="Locale",
        description="The NLU language; the project must have a locale with this language.",
    )
    endpoint_id: str | None = Field(
        default=None,
        title="Endpoint id",
        description="The endpoint pointed at a snapshot on promotion (and back on rollback).",
    )
    api_key: SecretStr | None = Field(
        default=None, title="API key", description="An API key, sent as the `X-API-Key` header."
    )
    client_id: str | None = Field(
        default=None, title="OAuth2 client id", description="Client id for the client-credentials grant."
    )
    client_secret: SecretStr | None = Field(
        default=None,
        title="OAuth2 client secret",
        description="Client secret for the client-credentials grant.",
    )
    train_mode: Literal["full", "quick"] = Field(
        default="full", title="Train mode", description="Cognigy's intent training mode."
    )
    import_mode: Literal["skip", "overwrite", "merge"] = Field(
        default="overwrite",
        title="Import mode",
        description="How imported intents meet existing ones; overwrite keeps the flow equal to the data.",
    )
    train_wait_seconds: float = Field(
        default=TRAIN_WAIT,
        gt=0,
        title="Longest retraining wait (s)",
        description="How long a retraining needed to score or promote another model may take.",
    )

    def get_client(
        self,
        on_progress: Callable[[float, str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> CognigyBackend:
        """Build the backend client (secrets are unwrapped here only; a fresh client for each call)."""
        settings = CognigySettings(
            project_id=self.project_id,
            flow_id=self.flow_id,
            locale=self.locale,
            endpoint_id=self.endpoint_id,
            train_mode=self.train_mode,
            import_mode=self.import_mode,
            train_wait=self.train_wait_seconds,
        )
        return CognigyBackend(
            self.url,
            settings,
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            client_id=self.client_id,
            client_secret=self.client_secret.get_secret_value() if self.client_secret else None,
            http=HttpOptions(transport=transport),
            on_progress=on_progress,
        )
