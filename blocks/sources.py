"""Data sources as blocks: a Label Studio project, and a folder or S3 prefix where batches accumulate.

``RetrainParams.data`` names them as ``<block-type-slug>/<block-name>`` (e.g.
``nluflow-label-studio-source/bookings``); the run pulls them at run time (see ``nluflow.sources``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import httpx
from prefect.blocks.core import Block
from prefect_aws.s3 import S3Bucket
from pydantic import Field, HttpUrl, SecretStr, model_validator

from blocks.s3_store import _s3_client
from nluflow.backends.http import HttpOptions
from nluflow.sources.base import FOLDER_SLUG, LABEL_STUDIO_SLUG, DataSource
from nluflow.sources.folder import FolderDataSource, S3PrefixSource
from nluflow.sources.labelstudio import EXPORT_READ_TIMEOUT, LabelStudioClient, LabelStudioExportSource


class LabelStudioSource(Block):
    """A Label Studio project whose annotations a retrain exports at run time.

    Works with Label Studio 1.23's two kinds of API token: the legacy token (``Authorization: Token``) and a
    personal access token, a JWT that nluflow exchanges at ``POST /api/token/refresh/`` for short-lived
    bearer tokens. Cancelled (skipped) annotations and tasks without annotations are counted, never trained
    on; a task with several annotations contributes its ground-truth one, else the latest.

    Example:
        Load the block and export the project now:
        ```python
        from pathlib import Path

        from blocks.sources import LabelStudioSource

        source_block = LabelStudioSource.load("BLOCK_NAME")
        pulled = source_block.get_source().pull(Path("exports"))
        print(pulled.provenance.summary())
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Label Studio Source"
    _block_type_slug: ClassVar[str] = LABEL_STUDIO_SLUG
    _description: ClassVar[str] = (
        "A Label Studio project that nluflow retrains export at run time (legacy token or personal access "
        "token)."
    )
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl(
        "https://github.com/nluflow/nluflow#annotation-sources"
    )

    url: str = Field(
        default=...,
        title="Label Studio URL",
        description="Base URL of the Label Studio server, e.g. http://127.0.0.1:8080.",
    )
    project_id: int = Field(
        default=..., ge=1, title="Project id", description="The Label Studio project to export."
    )
    token: SecretStr = Field(
        default=...,
        title="API token",
        description="The legacy API token, or a personal access token (Account & Settings in Label Studio).",
    )
    token_kind: Literal["legacy", "pat"] = Field(
        default="pat",
        title="Token kind",
        description=(
            "'pat' for a personal access token (the default in Label Studio 1.23), 'legacy' for a legacy "
            "API token sent as 'Authorization: Token'."
        ),
    )
    timeout_seconds: float = Field(
        default=EXPORT_READ_TIMEOUT,
        gt=0,
        title="Export timeout (s)",
        description="How long one synchronous export may take before it counts as failed.",
    )

    def get_client(self, transport: httpx.BaseTransport | None = None) -> LabelStudioClient:
        """Build the API client (the token is unwrapped here only; a fresh client for each call)."""
        return LabelStudioClient(
            self.url,
            self.token.get_secret_value(),
            self.token_kind,
            export_timeout=self.timeout_seconds,
            http=HttpOptions(transport=transport),
        )

    def get_source(
        self, reference: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> DataSource:
        """The project as a data source; ``reference`` is recorded in the provenance."""
        return LabelStudioExportSource(self.get_client(transport), self.project_id, reference)


class FolderSource(Block):
    """A local folder, or an S3 (or MinIO) prefix, where annotated batches accumulate.

    Every supported file below it (JSONL, CSV, Rasa YAML, JSON, Label Studio JSON exports) is read on every
    run, so a new batch joins the next retrain. Give ``path`` for a folder, or ``s3_bucket`` (a prefect-aws
    S3 Bucket block) and ``prefix`` for S3.

    Example:
        Load the block and pull the batches now:
        ```python
        from pathlib import Path

        from blocks.sources import FolderSource

        source_block = FolderSource.load("BLOCK_NAME")
        pulled = source_block.get_source().pull(Path("mirror"))
        print(pulled.provenance.files)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Folder Source"
    _block_type_slug: ClassVar[str] = FOLDER_SLUG
    _description: ClassVar[str] = (
        "A folder or S3 prefix where annotated batches accumulate; every nluflow retrain reads all of them."
    )
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl(
        "https://github.com/nluflow/nluflow#annotation-sources"
    )

    path: str | None = Field(
        default=None,
        title="Folder",
        description="A local folder (as the worker sees it) where batches land; leave empty for S3.",
    )
    s3_bucket: S3Bucket | None = Field(
        default=None,
        title="S3 Bucket",
        description="The prefect-aws S3 Bucket block (bucket, credentials, endpoint) for an S3 prefix.",
    )
    prefix: str = Field(
        default="",
        title="S3 key prefix",
        description="Key prefix below the bucket block's folder where batches land, e.g. 'annotations/bot'.",
    )

    @model_validator(mode="after")
    def _one_location(self) -> FolderSource:
        if (self.path is None) == (self.s3_bucket is None):
            raise ValueError("give exactly one of 'path' (a local folder) and 's3_bucket' (an S3 prefix)")
        return self

    def get_source(self, reference: str | None = None) -> DataSource:
        """The folder or prefix as a data source (a fresh S3 client for each call)."""
        if self.s3_bucket is not None:
            folder = self.s3_bucket.bucket_folder.strip("/")
            prefix = "/".join(p for p in (folder, self.prefix.strip("/")) if p)
            client = _s3_client(self.s3_bucket.credentials)
            return S3PrefixSource(client, self.s3_bucket.bucket_name, prefix, reference)
        assert self.path is not None
        return FolderDataSource(self.path, reference)
