"""The model store on S3 (AWS, MinIO or any S3-compatible server) through a prefect-aws ``S3Bucket`` block."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from prefect.blocks.core import Block
from prefect_aws.credentials import AwsCredentials, MinIOCredentials
from prefect_aws.s3 import S3Bucket
from pydantic import Field, HttpUrl, field_validator

from nluflow.store import ModelStore
from nluflow.store.s3 import S3FileSystem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _s3_client(credentials: AwsCredentials | MinIOCredentials) -> S3Client:
    """A fresh boto3 S3 client, configured the way prefect-aws configures its own (session + client params).

    prefect-aws's ``credentials.get_s3_client()`` returns a client shared through an LRU cache; blocks here
    build a new client on every call instead, so nothing outlives the block that made it.
    """
    params = credentials.aws_client_parameters.get_params_override()
    if credentials.region_name is not None:
        params["region_name"] = credentials.region_name
    return credentials.get_boto3_session().client("s3", **params)


class S3ModelStore(Block):
    """A model store in an S3 bucket (or MinIO), below a key prefix.

    The bucket, its credentials (``AwsCredentials`` or ``MinIOCredentials``) and the endpoint come from a
    prefect-aws ``S3Bucket`` block. The store lives at ``<bucket folder>/<prefix>/`` in that bucket, with the
    same layout, manifests and sha256 checks as the local folder store; the active pointer is one object
    written last.

    Example:
        Load a stored block and open its store:
        ```python
        from blocks.s3_store import S3ModelStore

        store_block = S3ModelStore.load("BLOCK_NAME")
        store = store_block.get_store()
        print(store.list_projects())
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow S3 Model Store"
    _block_type_slug: ClassVar[str] = "nluflow-s3-model-store"
    _description: ClassVar[str] = (
        "An S3 bucket (AWS or MinIO, through a prefect-aws S3 Bucket block) that keeps nluflow models, their "
        "manifests and the active pointer."
    )
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#model-store")

    s3_bucket: S3Bucket = Field(
        default=...,
        title="S3 Bucket",
        description="The prefect-aws S3 Bucket block: bucket name, credentials and optional bucket folder.",
    )
    prefix: str = Field(
        default="nluflow",
        title="Key Prefix",
        description=(
            "Key prefix of the store inside the bucket, below the bucket block's folder; empty for the "
            "bucket folder itself."
        ),
    )

    @field_validator("prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        parts = value.strip("/").split("/") if value.strip("/") else []
        if any(part in ("", ".", "..") for part in parts) or "\\" in value:
            raise ValueError(
                f"prefix {value!r}: expected a '/'-separated key prefix without empty, '.' or '..' parts"
            )
        return "/".join(parts)

    def key_prefix(self) -> str:
        """The store root inside the bucket: the bucket block's folder joined with ``prefix``."""
        folder = self.s3_bucket.bucket_folder.strip("/")
        return "/".join(part for part in (folder, self.prefix) if part)

    def get_store(self) -> ModelStore:
        """Build the store client (no caching: a fresh boto3 client for each call)."""
        client = _s3_client(self.s3_bucket.credentials)
        return ModelStore(S3FileSystem(client, self.s3_bucket.bucket_name, self.key_prefix()))
