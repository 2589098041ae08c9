"""The model store on S3 (or an S3-compatible server such as MinIO): :class:`S3FileSystem`.

``S3FileSystem`` implements the store's :class:`~nluflow.store.FileSystem` on a plain boto3 S3 client
that the caller builds (the ``S3ModelStore`` block builds it from a prefect-aws ``S3Bucket``); this module
knows nothing about Prefect. A store key ``p/models/m1/manifest.json`` is the object
``<prefix>/p/models/m1/manifest.json`` in the bucket. "Folders" are key prefixes: a folder exists while an
object exists under ``<key>/``, and every prefix match ends in ``/``, so the folder ``p/models/m`` never
matches ``p/models/m.bin`` or ``p/models/m-2/...``.

What S3 guarantees, and what the store builds on it:

- **Strong read-after-write consistency** (AWS S3 since December 2020; MinIO always): after a PUT returns,
  every GET, HEAD and LIST sees the new object, and after a DELETE returns nobody sees the old one.
- **A single-object PUT is atomic**: readers see the whole old object or the whole new one, never a part.
  Every write here is one ``PutObject`` (no multipart upload), so ``write_bytes`` and ``put_file`` are atomic
  like the local store's rename. Objects are limited to 5 GiB by this. botocore also sends a CRC32 checksum
  with each PUT and checks it on each GET, and the store re-hashes every file against its manifest.
- **No atomic rename and no multi-object transaction**: a model's files land one by one. The store makes
  this safe by ordering: ``manifest.json`` is written after every model file (a folder without it counts as
  absent) and ``<project>/active.json`` is one object written last, after the model was read back and
  verified. A crash at any point leaves the previous pointer intact. ``remove_tree`` deletes object by
  object, so a crash part-way through it can leave some files of a removed model behind.
- **No locking**: S3 lets the last PUT win. Two promotions of one project that read ``active.json``, change it
  and write it back at the same time would lose one update (and its history entry). The retrain flow's
  per-project Prefect concurrency limit serialises promotions, so there is only ever one writer of a
  project's pointer (the ``nluflow models`` commands take the same limit). Creating a file that must exist
  once (a project's first frozen test set) uses S3's conditional write instead: ``create_exclusive`` is a
  ``PutObject`` with ``If-None-Match: *``, which S3 (and MinIO, and moto) refuse with 412 when the key
  exists, so of two concurrent creators exactly one wins. The audit log is appended with ``replace_if``: a
  ``PutObject`` with ``If-Match`` on the ETag :meth:`S3FileSystem.read_tagged` returned, refused with 412
  when another writer changed the object since (see :mod:`nluflow.store.audit_object`).

Errors: a missing object is :class:`~nluflow.errors.ModelNotFoundError`; everything else S3 or the transport
reports (missing bucket, access denied, connection refused) is :class:`~nluflow.errors.StoreError` naming the
bucket and key, the S3 error code and request id. Messages never carry credentials: they are built from the
bucket, the key, the endpoint's host and S3's error code and message only.

:func:`sync_folder` uploads a run's report, figures and metrics under a key prefix, on any ``FileSystem``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from nluflow.errors import ModelNotFoundError, StoreError, UnsafePathError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

    from nluflow.store.fs import FileSystem

logger = logging.getLogger(__name__)

#: ListObjectsV2 and DeleteObjects handle at most 1000 keys per call.
MAX_KEYS_PER_CALL = 1000
_CHUNK = 1 << 20
_TMP_PREFIX = ".nluflow-tmp-"
_MESSAGE_EXCERPT = 200
# A conditional PutObject racing another one on the same key may get 409 ConditionalRequestConflict.
_CONFLICT_RETRIES = 3
_CONFLICT_DELAY_SECONDS = 0.2
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


def _segments(value: str, what: str) -> list[str]:
    """The '/'-separated segments of a key; refuses anything that could name another place in the bucket."""
    if not isinstance(value, str) or "\\" in value or "\x00" in value or value.startswith("/"):
        raise UnsafePathError(f"{what} {value!r} is not a '/'-separated relative path; nothing was done")
    if value == "":
        return []
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"{what} {value!r} has an empty, '.' or '..' segment; nothing was done")
    return parts


def _endpoint_host(client: S3Client) -> str | None:
    """The endpoint's scheme, host and port for messages, when it is not AWS itself (never userinfo)."""
    url = urlsplit(str(client.meta.endpoint_url))
    host = url.hostname or ""
    if not host or host == "amazonaws.com" or host.endswith(".amazonaws.com"):
        return None
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port else "")


class S3FileSystem:
    """The store's ``FileSystem`` on an S3 bucket, below an optional key prefix.

    ``client`` is a boto3 S3 client (``boto3.client("s3", endpoint_url=...)`` for MinIO or a moto server);
    it is used as given, so its retries, timeouts and credentials are the caller's. ``prefix`` is the
    store root inside the bucket (``""`` for the bucket root; slashes at either end are ignored).
    ``page_size`` is the number of keys per ListObjectsV2 call (at most 1000).

    Example::

        client = boto3.client("s3", endpoint_url="http://127.0.0.1:9000")
        store = ModelStore(S3FileSystem(client, "ml-models", "nluflow"))
    """

    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", *, page_size: int = MAX_KEYS_PER_CALL
    ) -> None:
        if not bucket or "/" in bucket:
            raise StoreError(
                f"S3 bucket name {bucket!r} is not valid: expected a bucket name without '/'; "
                "nothing was read or written"
            )
        if not 1 <= page_size <= MAX_KEYS_PER_CALL:
            raise ValueError(f"page_size must be 1-{MAX_KEYS_PER_CALL}, got {page_size}")
        self.client = client
        self.bucket = bucket
        self.prefix = "/".join(_segments(prefix.strip("/"), "S3 key prefix"))
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"S3FileSystem(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        endpoint = _endpoint_host(self.client)
        return f"S3 store {where}" + (f" at {endpoint}" if endpoint else "")

    # ----------------------------------------------------------------------------------------- keys

    def object_key(self, key: str) -> str:
        """The bucket's object key of a store key; the store root is the prefix itself."""
        parts = _segments(key, "store key")
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _folder_prefix(self, key: str) -> str:
        """The listing prefix of a folder: always ends in '/' (or is empty for a bucket-root store)."""
        full = self.object_key(key)
        return f"{full}/" if full else ""

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key) if key else self._folder_prefix(key)}"

    def _error(self, exc: Exception, action: str, key: str, after: str = "") -> StoreError:
        """A StoreError naming the bucket, key and what S3 said; never the client's credentials."""
        target = f"{key!r} ({self._url(key)})"
        endpoint = _endpoint_host(self.client)
        at = f" at {endpoint}" if endpoint else ""
        tail = f"; {after}" if after else ""
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            code = str(error.get("Code", "?"))
            message = str(error.get("Message", "")).strip()[:_MESSAGE_EXCERPT]
            status = meta.get("HTTPStatusCode", "?")
            request_id = meta.get("RequestId") or meta.get("HTTPHeaders", {}).get("x-amz-request-id")
            evidence = f"HTTP {status} {code}" + (f": {message}" if message else "")
            evidence += f", request id {request_id}" if request_id else ""
            if code == "NoSuchBucket":
                return StoreError(
                    f"cannot {action} {target}: the S3 bucket {self.bucket!r}{at} does not exist "
                    f"({evidence}). Create it, or fix the bucket name of the store{tail}"
                )
            if code in _DENIED:
                return StoreError(
                    f"cannot {action} {target}: S3{at} denied access ({evidence}). Check the credentials "
                    f"and the bucket policy for bucket {self.bucket!r}{tail}"
                )
            return StoreError(f"cannot {action} {target}: S3{at} answered {evidence}{tail}")
        if isinstance(exc, BotoCoreError):
            return StoreError(f"cannot {action} {target}: {type(exc).__name__}: {exc}{tail}")
        return StoreError(f"cannot {action} {target}: {exc}{tail}")

    def _missing(self, key: str) -> ModelNotFoundError:
        return ModelNotFoundError(f"{self.describe()} has no object {key!r} ({self._url(key)})")

    @staticmethod
    def _is_missing(exc: ClientError) -> bool:
        return str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND

    # ----------------------------------------------------------------------------------------- reads

    def read_bytes(self, key: str) -> bytes:
        full = self.object_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()
        except ClientError as exc:
            if self._is_missing(exc):
                raise self._missing(key) from None
            raise self._error(exc, "read", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from None

    def exists(self, key: str) -> bool:
        full = self.object_key(key)
        try:
            if key == "":  # the store root exists as long as the bucket does (S3 has no folders to create)
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._folder_prefix(key), MaxKeys=1)
                return True
            try:
                self.client.head_object(Bucket=self.bucket, Key=full)
                return True
            except ClientError as exc:
                if not self._is_missing(exc):
                    raise
            # A folder: any object below '<key>/' (never '<key>.bin' or '<key>-2/...').
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{full}/", MaxKeys=1)
            return bool(page.get("KeyCount", len(page.get("Contents", []))))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "look up", key) from None

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "PaginationConfig": {"PageSize": self.page_size},
        }
        if delimiter is not None:
            args["Delimiter"] = delimiter
        for page in paginator.paginate(**args):
            yield dict(page)

    def list_dir(self, key: str) -> list[str]:
        prefix = self._folder_prefix(key)
        names: set[str] = set()
        try:
            for page in self._pages(prefix, "/"):
                for common in page.get("CommonPrefixes", []):
                    names.add(str(common["Prefix"])[len(prefix) :].rstrip("/"))
                for obj in page.get("Contents", []):
                    names.add(str(obj["Key"])[len(prefix) :])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", key) from None
        names.discard("")  # a console-made "folder" marker object '<key>/'
        return sorted(names)

    def get_file(self, key: str, local: Path) -> None:
        """Download to ``local`` through a temporary file beside it, so ``local`` is whole or absent."""
        full = self.object_key(key)
        target = Path(local)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if self._is_missing(exc):
                raise self._missing(key) from None
            raise self._error(exc, "download", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "download", key) from None
        tmp: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=target.parent)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as fh:
                for chunk in response["Body"].iter_chunks(_CHUNK):
                    fh.write(chunk)
            os.replace(tmp, target)
            tmp = None
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, f"download to {target}", key) from None
        finally:
            response["Body"].close()
            if tmp is not None:  # no half-written download lingers
                tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------- writes

    def write_bytes(self, key: str, data: bytes) -> None:
        """One PutObject: atomic, readers see the old object or the new one."""
        if key == "":
            raise UnsafePathError("the empty store key names the store root itself; refusing to write it")
        full = self.object_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "write", key, "the previous object is unchanged") from None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """One conditional PutObject (``If-None-Match: *``): S3 stores it only if no object has the key,
        and answers 412 Precondition Failed otherwise (False, nothing written). A 409 (another conditional
        write of the key in flight) is retried, then read as lost to that writer."""
        if key == "":
            raise UnsafePathError("the empty store key names the store root itself; refusing to write it")
        full = self.object_key(key)
        for attempt in range(_CONFLICT_RETRIES + 1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data), IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code == "PreconditionFailed" or status == 412:
                    return False
                if (code == "ConditionalRequestConflict" or status == 409) and attempt < _CONFLICT_RETRIES:
                    time.sleep(_CONFLICT_DELAY_SECONDS * (attempt + 1))
                    continue
                if code == "ConditionalRequestConflict" or status == 409:
                    return False
                raise self._error(exc, "create", key, "nothing was written") from None
            except BotoCoreError as exc:
                raise self._error(exc, "create", key, "nothing was written") from None
        return False  # pragma: no cover - the loop returns

    def read_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The object's bytes and its ETag (``(b"", None)`` when there is no object): the version a
        :meth:`replace_if` compares with."""
        full = self.object_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read(), str(response["ETag"])
        except ClientError as exc:
            if self._is_missing(exc):
                return b"", None
            raise self._error(exc, "read", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from None

    def replace_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """One conditional PutObject: ``If-Match: <tag>`` (the ETag :meth:`read_tagged` returned), or
        ``If-None-Match: *`` when ``tag`` is None. False when the object changed, appeared or went away since
        (412, 409 or 404: nothing written), so the caller reads again and retries."""
        if tag is None:
            return self.create_exclusive(key, data)
        if key == "":
            raise UnsafePathError("the empty store key names the store root itself; refusing to write it")
        full = self.object_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data), IfMatch=tag)
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            if self._is_missing(exc):
                return False
            raise self._error(exc, "write", key, "the previous object is unchanged") from None
        except BotoCoreError as exc:
            raise self._error(exc, "write", key, "the previous object is unchanged") from None

    def put_file(self, local: Path, key: str) -> None:
        """Upload a local file in one PutObject (atomic like ``write_bytes``)."""
        if key == "":
            raise UnsafePathError("the empty store key names the store root itself; refusing to write it")
        full = self.object_key(key)
        try:
            with open(local, "rb") as fh:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=fh)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, f"upload {local} to", key, "the previous object is unchanged") from None

    def remove_tree(self, key: str) -> None:
        """Delete the object ``key`` and every object under ``key/``; nothing happens if there are none."""
        if key == "":
            raise UnsafePathError("the empty store key names the store root itself; refusing to remove it")
        full = self.object_key(key)
        removed = 0
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)  # idempotent: no error when absent
            for page in self._pages(f"{full}/", None):
                keys: list[ObjectIdentifierTypeDef] = [
                    {"Key": str(obj["Key"])} for obj in page.get("Contents", [])
                ]
                if not keys:
                    continue
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StoreError(
                        f"cannot remove {key!r} ({self._url(key)}): S3 refused to delete {len(errors)} of "
                        f"{len(keys)} objects, first {first.get('Key')!r}: {first.get('Code')} "
                        f"{str(first.get('Message', ''))[:_MESSAGE_EXCERPT]}; {removed} objects were "
                        "removed before, the rest is still there"
                    )
                removed += len(keys)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(
                exc, "remove", key, f"{removed} objects under it were removed before, the rest is still there"
            ) from None


# --------------------------------------------------------------------------------------------- sync


def sync_folder(fs: FileSystem, local_dir: Path, key_prefix: str) -> list[str]:
    """Upload every file under ``local_dir`` to ``<key_prefix>/<relative path>`` and return the keys, sorted.

    For a run's report, figures and metrics: each file is one atomic upload; existing objects with the same
    key are replaced and nothing else under the prefix is touched (run prefixes are unique, so nothing goes
    stale). Symbolic links are not followed out of ``local_dir``. Works on any store ``FileSystem``.
    """
    folder = Path(local_dir)
    if not folder.is_dir():
        raise StoreError(f"cannot sync {folder}: it does not exist or is not a folder; nothing was uploaded")
    base = _segments(key_prefix.strip("/"), "key prefix")
    if not base:
        raise UnsafePathError("sync_folder needs a key prefix; refusing to upload into the store root")
    root = folder.resolve()
    uploads: list[tuple[Path, str]] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            logger.warning("%s links outside %s; not uploaded", path, folder)
            continue
        rel = path.relative_to(folder).as_posix()
        try:
            parts = _segments(rel, "file name")
        except UnsafePathError:
            logger.warning("%s: the file name cannot be a store key; not uploaded", path)
            continue
        uploads.append((path, "/".join([*base, *parts])))
    for path, key in uploads:
        fs.put_file(path, key)
    logger.info("synced %d files from %s to %s under %r", len(uploads), folder, fs.describe(), "/".join(base))
    return sorted(key for _, key in uploads)
