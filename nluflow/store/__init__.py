"""The store: a project's models, active pointer, test set, kept data, runs and audit log, on one filesystem.

- :mod:`nluflow.store.layout` names every key of a project (one
  :class:`~nluflow.store.layout.ProjectLayout`);
- :mod:`nluflow.store.fs` is the small :class:`~nluflow.store.fs.FileSystem` protocol, with
  :mod:`nluflow.store.local` (a local folder) and :mod:`nluflow.store.s3` (an S3 bucket, and
  ``sync_folder``);
- :mod:`nluflow.store.manifest` holds the documents (manifest, active pointer, rejected index);
- :mod:`nluflow.store.models` is the :class:`~nluflow.store.models.ModelStore`;
- :mod:`nluflow.store.testsets` keeps the frozen test set and the training data of stored models;
- :mod:`nluflow.store.audit_log` is the hash-chained audit log, on a local file or on any filesystem that
  can write conditionally (S3);
"""

from nluflow.store.fs import FileSystem, LocalPaths
from nluflow.store.layout import (
    ID_PATTERN,
    MANIFEST_NAME,
    MODELS_DIR,
    POINTER_NAME,
    REJECTED_NAME,
    ProjectLayout,
    check_id,
    layout,
)
from nluflow.store.local import LocalFileSystem
from nluflow.store.manifest import ActivePointer, Manifest, PointerEntry, RejectedEntry, RejectedIndex
from nluflow.store.models import ModelDetails, ModelStore

__all__ = [
    "ID_PATTERN",
    "MANIFEST_NAME",
    "MODELS_DIR",
    "POINTER_NAME",
    "REJECTED_NAME",
    "ActivePointer",
    "FileSystem",
    "LocalFileSystem",
    "LocalPaths",
    "Manifest",
    "ModelDetails",
    "ModelStore",
    "PointerEntry",
    "ProjectLayout",
    "RejectedEntry",
    "RejectedIndex",
    "check_id",
    "layout",
]
