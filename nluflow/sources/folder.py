"""Folders and S3 prefixes where annotated batches accumulate, as data sources.

Every supported file below the folder or prefix is read (recursively, hidden entries skipped, as
:func:`nluflow.data.loaders.load_paths` reads folders), so a batch dropped there joins the next run. A local
folder is read in place; an S3 prefix is mirrored into the run's workspace first: new and changed objects are
downloaded, objects that disappeared are removed from the mirror, so the mirror holds exactly the prefix.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from nluflow.data.loaders import SUPPORTED_SUFFIXES, data_files_sha256
from nluflow.errors import DataError, SourceError, StoreError, TransientSourceError
from nluflow.sources.base import PulledData, SourceProvenance
from nluflow.store.s3 import S3FileSystem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

_NEXT = "nothing was pulled and nothing was trained"
_PERMANENT = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "403",
        "404",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    }
)


def _data_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class FolderDataSource:
    """A local folder where batches accumulate; read in place, every run."""

    def __init__(self, path: str | Path, reference: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.reference = reference

    def describe(self) -> str:
        return f"folder {self.path}"

    def pull(self, dest: Path) -> PulledData:
        if not self.path.is_dir():
            raise DataError(
                f"no such folder; expected the folder where annotated batches accumulate; {_NEXT}; fix the "
                "path in the source block and rerun",
                self.path,
            )
        files = _data_files(self.path)
        if not files:
            raise DataError(
                f"holds no data files ({', '.join(SUPPORTED_SUFFIXES)}); expected at least one batch; "
                f"{_NEXT}",
                self.path,
            )
        provenance = SourceProvenance(
            kind="folder",
            reference=self.reference,
            description=self.describe(),
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            sha256=data_files_sha256([self.path]),
            files=len(files),
        )
        logger.info("pulled %s", provenance.summary())
        return PulledData(paths=[str(self.path.resolve())], provenance=provenance)


class S3PrefixSource:
    """An S3 (or MinIO) prefix where batches accumulate, mirrored into the workspace on every pull."""

    def __init__(self, client: S3Client, bucket: str, prefix: str = "", reference: str | None = None) -> None:
        self.fs = S3FileSystem(client, bucket, prefix)
        self.reference = reference

    def describe(self) -> str:
        return f"s3://{self.fs.bucket}/{self.fs.prefix + '/' if self.fs.prefix else ''}"

    def _objects(self) -> dict[str, str]:
        """Relative key → ETag of every data file below the prefix."""
        base = f"{self.fs.prefix}/" if self.fs.prefix else ""
        found: dict[str, str] = {}
        paginator = self.fs.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.fs.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rel = str(obj["Key"])[len(base) :]
                parts = rel.split("/")
                if (
                    rel
                    and Path(rel).suffix.lower() in SUPPORTED_SUFFIXES
                    and not any(p.startswith(".") or p in ("", "..") for p in parts)
                ):
                    found[rel] = str(obj.get("ETag", ""))
        return found

    def pull(self, dest: Path) -> PulledData:
        where = self.describe()
        mirror = dest / "s3" / hashlib.sha256(where.encode()).hexdigest()[:16]
        try:
            objects = self._objects()
            if not objects:
                raise DataError(
                    f"no data files ({', '.join(SUPPORTED_SUFFIXES)}) below this prefix; expected at least "
                    f"one batch; {_NEXT}",
                    where,
                )
            etags_file = mirror / ".etags"
            known: dict[str, Any] = {}
            if etags_file.exists():
                for line in etags_file.read_text(encoding="utf-8").splitlines():
                    rel, _, etag = line.rpartition("\t")
                    known[rel] = etag
            for rel, etag in sorted(objects.items()):
                local = mirror / rel
                if known.get(rel) != etag or not local.exists():
                    self.fs.get_file(rel, local)
            for local in _data_files(mirror):
                if local.relative_to(mirror).as_posix() not in objects:
                    local.unlink()
            etags_file.write_text(
                "".join(f"{k}\t{v}\n" for k, v in sorted(objects.items())), encoding="utf-8"
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _PERMANENT:
                raise SourceError(
                    f"{where}: S3 refused the listing ({code}); check the bucket and credentials in the "
                    f"source block; {_NEXT}"
                ) from None
            raise TransientSourceError(
                f"{where}: listing failed ({code or type(exc).__name__}); the step is retried; {_NEXT} yet"
            ) from None
        except BotoCoreError as exc:
            raise TransientSourceError(
                f"{where}: S3 could not be reached ({type(exc).__name__}); the step is retried; {_NEXT} yet"
            ) from None
        except StoreError as exc:
            raise SourceError(f"{where}: {exc}; {_NEXT}") from None
        provenance = SourceProvenance(
            kind="s3",
            reference=self.reference,
            description=where,
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            sha256=data_files_sha256([mirror]),
            files=len(objects),
        )
        logger.info("pulled %s", provenance.summary())
        return PulledData(paths=[str(mirror)], provenance=provenance)
