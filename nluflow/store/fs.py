"""What the store needs from storage: the :class:`FileSystem` protocol and its key rules.

Keys are '/'-separated paths relative to the store root (:mod:`nluflow.store.layout` names them). The same
store code runs on a local folder (:class:`~nluflow.store.local.LocalFileSystem`) and on S3
(:class:`~nluflow.store.s3.S3FileSystem`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from nluflow.errors import UnsafePathError

TMP_PREFIX = ".nluflow-tmp-"


def split_key(key: str, *, allow_root: bool) -> list[str]:
    """The segments of a store key; refuses anything that could point outside the root."""
    if not isinstance(key, str) or "\\" in key or "\x00" in key or key.startswith("/"):
        raise UnsafePathError(f"store key {key!r} is not a '/'-separated relative path; nothing was done")
    if key == "":
        if allow_root:
            return []
        raise UnsafePathError("the empty store key names the store root itself; refusing to change it")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"store key {key!r} has an empty, '.' or '..' segment; nothing was done")
    return parts


@runtime_checkable
class FileSystem(Protocol):
    """What the store needs from storage. Keys are '/'-separated paths relative to the store root."""

    def read_bytes(self, key: str) -> bytes:
        """The file's bytes; :class:`ModelNotFoundError` if it does not exist."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old bytes or the new ones, never a mix."""
        ...

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write a whole new file only if ``key`` does not exist yet, atomically (compare-and-swap on
        absence): True when this call created it, False when it was there already (nothing written).
        Of two callers at the same moment exactly one gets True."""
        ...

    def exists(self, key: str) -> bool: ...

    def list_dir(self, key: str) -> list[str]:
        """Names of the immediate children of a folder, sorted; ``[]`` if it does not exist."""
        ...

    def remove_tree(self, key: str) -> None:
        """Remove a file or a folder with everything in it; nothing happens if it does not exist."""
        ...

    def put_file(self, local: Path, key: str) -> None:
        """Upload a local file (atomically, like ``write_bytes``)."""
        ...

    def get_file(self, key: str, local: Path) -> None:
        """Download a file to a local path; :class:`ModelNotFoundError` if it does not exist."""
        ...

    def describe(self) -> str:
        """Where the store is, for messages, e.g. ``local folder /srv/models``."""
        ...


@runtime_checkable
class LocalPaths(Protocol):
    """A filesystem whose keys are local files already, so models need no download."""

    def local_path(self, key: str) -> Path: ...


@runtime_checkable
class ConditionalWrites(Protocol):
    """A filesystem that can replace a file only if nobody changed it since it was read (compare-and-swap):
    what an append-only log needs on storage without locks (S3: ``PutObject`` with ``If-Match``)."""

    def read_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The file's bytes and a tag of this version (``(b"", None)`` when the file does not exist)."""
        ...

    def replace_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """Write ``data`` only if the file is still the version ``tag`` names (``None``: only if it does not
        exist); True when written, False when another writer got there first (nothing written)."""
        ...
