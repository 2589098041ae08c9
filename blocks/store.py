"""Model store blocks."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl

from nluflow.store import ModelStore


class LocalModelStore(Block):
    """A model store in a local (or network-mounted) folder.

    The folder holds one sub-folder per project with its models, the active pointer and the audit log.

    Example:
        Load a stored block and open its store:
        ```python
        from blocks.store import LocalModelStore

        store_block = LocalModelStore.load("BLOCK_NAME")
        store = store_block.get_store()
        print(store.list_projects())
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Local Model Store"
    _block_type_slug: ClassVar[str] = "nluflow-local-model-store"
    _description: ClassVar[str] = (
        "A folder that keeps nluflow models, their manifests and the active pointer."
    )
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#model-store")

    path: str = Field(
        default=...,
        title="Folder",
        description="Absolute path of the store folder; it is created on the first retrain.",
    )

    def get_store(self, create: bool = False) -> ModelStore:
        """Build the store client (no caching: a fresh client for each call)."""
        return ModelStore.local(self.path, create=create)
