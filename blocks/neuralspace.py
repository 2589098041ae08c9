"""The NeuralSpace NLU training backend as a block; every endpoint path is configurable."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import httpx
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from nluflow.backends.http import HttpOptions
from nluflow.backends.neuralspace import BASE_URL, NeuralSpaceBackend, NeuralSpacePaths, NeuralSpaceSettings

_PATHS = NeuralSpacePaths()
_GUESS = " Not publicly documented any more: check it against your account."


class NeuralSpaceBackendBlock(Block):
    """A NeuralSpace NLU (AutoNLP) project and language.

    Documented paths are the defaults; the others are guesses that you can override here.

    Example:
        Load the block and build the backend client (a context manager: it closes its HTTP clients):
        ```python
        from blocks.neuralspace import NeuralSpaceBackendBlock

        neuralspace_block = NeuralSpaceBackendBlock.load("BLOCK_NAME")
        with neuralspace_block.get_client() as backend:
            print(backend.name)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow NeuralSpace Backend"
    _block_type_slug: ClassVar[str] = "nluflow-neuralspace-backend"
    _description: ClassVar[str] = "Train and serve nluflow models on NeuralSpace NLU (AutoNLP)."
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#neuralspace")

    url: str = Field(default=BASE_URL, title="API base URL", description="The NLU API base URL.")
    token: SecretStr = Field(
        default=...,
        title="Authorization token",
        description="The raw token sent in the `Authorization` header (no `Bearer` prefix).",
    )
    project_id: str = Field(default=..., title="Project id", description="The NeuralSpace NLU project.")
    language: str = Field(default="en", title="Language", description="The project language code, e.g. en.")
    training_jobs: int = Field(
        default=1,
        ge=1,
        le=5,
        title="Parallel training jobs",
        description="`noOfTrainingJob` of a train request (the platform's default is 5; each uses quota).",
    )
    replicas: int = Field(default=1, ge=1, title="Replicas", description="Replicas asked for on deploy.")
    upload_path: str = Field(
        default=_PATHS.upload, title="Upload path", description="Dataset upload endpoint." + _GUESS
    )
    train_path: str = Field(
        default=_PATHS.train, title="Train path", description="Train queue endpoint (documented)."
    )
    models_path: str = Field(
        default=_PATHS.models,
        title="List path",
        description="Model list endpoint, with {project_id}." + _GUESS,
    )
    model_path: str = Field(
        default=_PATHS.model,
        title="Model path",
        description="Model status endpoint, with {model_id}." + _GUESS,
    )
    delete_path: str = Field(
        default=_PATHS.delete,
        title="Delete path",
        description="Model delete endpoint, with {model_id}." + _GUESS,
    )
    deploy_path: str = Field(
        default=_PATHS.deploy, title="Deploy path", description="Model deploy endpoint." + _GUESS
    )
    undeploy_path: str | None = Field(
        default=_PATHS.undeploy,
        title="Undeploy path",
        description="Model undeploy endpoint: a candidate deployed only to be scored is undeployed after. "
        "Empty keeps scored candidates deployed." + _GUESS,
    )
    parse_path: str = Field(
        default=_PATHS.parse, title="Parse path", description="Parse endpoint (documented)."
    )

    def get_client(
        self,
        on_progress: Callable[[float, str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> NeuralSpaceBackend:
        """Build the backend client (secrets are unwrapped here only; a fresh client for each call)."""
        paths = NeuralSpacePaths(
            upload=self.upload_path,
            train=self.train_path,
            models=self.models_path,
            model=self.model_path,
            delete=self.delete_path,
            deploy=self.deploy_path,
            undeploy=self.undeploy_path or None,
            parse=self.parse_path,
        )
        settings = NeuralSpaceSettings(
            language=self.language,
            paths=paths,
            training_jobs=self.training_jobs,
            replicas=self.replicas,
        )
        return NeuralSpaceBackend(
            self.token.get_secret_value(),
            self.project_id,
            url=self.url,
            settings=settings,
            http=HttpOptions(transport=transport),
            on_progress=on_progress,
        )
