"""Data sources a run pulls itself: Label Studio projects, folders and S3 prefixes where batches accumulate.

See :mod:`nluflow.sources.base` for the reference syntax (``<source-slug>/<block-name>`` in
``RetrainParams.data``) and the provenance record every pull returns.
"""

from nluflow.sources.base import (
    FOLDER_SLUG,
    LABEL_STUDIO_SLUG,
    SOURCE_SLUGS,
    DataSource,
    PulledData,
    SourceProvenance,
    is_source_ref,
    split_data,
)
from nluflow.sources.folder import FolderDataSource, S3PrefixSource
from nluflow.sources.labelstudio import LabelStudioClient, LabelStudioExportSource, TokenKind

__all__ = [
    "FOLDER_SLUG",
    "LABEL_STUDIO_SLUG",
    "SOURCE_SLUGS",
    "DataSource",
    "FolderDataSource",
    "LabelStudioClient",
    "LabelStudioExportSource",
    "PulledData",
    "S3PrefixSource",
    "SourceProvenance",
    "TokenKind",
    "is_source_ref",
    "split_data",
]
