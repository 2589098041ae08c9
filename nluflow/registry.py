"""The model store: model versions with sha256 manifests, and an atomic active pointer per project.

Layout under the store root (keys are '/'-separated, relative to the root)::

    <project>/models/<model_id>/...            the model files, as the backend wrote them
    <project>/models/<model_id>/manifest.json  written last: its presence means the model is complete
    <project>/active.json                      the active pointer, with the previous actives (newest first)
    <project>/rejected.json                    rejected candidates kept for a forced promotion (oldest first)

The store talks to storage through the small :class:`FileSystem` interface, so the same code runs on a
local folder (:class:`LocalFileSystem`) and, later, on S3. Every public :class:`ModelStore` method checks
project and model ids with :func:`check_id` before it touches storage, so an id such as ``../x`` can never
leave the store.

Integrity: ``manifest.json`` lists the sha256 of every model file; ``verify``, ``materialize`` and
``activate`` re-hash the files and refuse a model whose bytes changed
(:class:`~nluflow.errors.IntegrityError`). The active pointer records the manifest's own sha256, so an edited
manifest of the active model is refused too.

Concurrency: every write is atomic (temporary file in the same folder, fsync, ``os.replace``, fsync of the
folder). A reader therefore sees either the old ``active.json`` or the new one, never a torn file, and a crash
at any point leaves the previous pointer intact; a model without ``manifest.json`` is treated as absent and
removed when the same id is stored again. What the rename does *not* give is mutual exclusion: two writers
that read the pointer, change it and write it back at the same time race, and the last rename wins (the
other writer's change, including its history entry, is lost). nluflow does not lock the store: the retrain
flow serialises promotions with a Prefect concurrency limit per project, and manual ``nluflow models``
commands should not be run while a promotion of the same project is in flight.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nluflow import __version__
from nluflow.errors import IntegrityError, ModelNotFoundError, StoreError, UnsafePathError
from nluflow.hashing import canonical_json, sha256_bytes, sha256_file, sha256_json

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
POINTER_NAME = "active.json"
REJECTED_NAME = "rejected.json"
MODELS_DIR = "models"

# For pydantic ``Field(pattern=...)``; check_id also refuses "..", which this pattern alone allows.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN.strip("^$"))
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = ".nluflow-tmp-"
_POINTER_ADVICE = (
    "nothing was changed. Restore it from a backup, or move it aside and reactivate a stored model with "
    "`nluflow models activate`"
)
_CHUNK = 1 << 20


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a safe project or model id, else raise :class:`UnsafePathError`.

    A safe id is 1-128 characters of letters, digits, ``.``, ``_`` and ``-``, starts with a letter or digit
    and contains no ``..``; so it is one path segment that cannot climb out of the store.
    """
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None or ".." in value:
        raise UnsafePathError(
            f"{what} {value!r} would leave the store or is not a valid name: expected 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit and without '..'; nothing was read or written"
        )
    return value


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("store clock must return an aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _split_key(key: str, *, allow_root: bool) -> list[str]:
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


def _check_relative_file(rel: str) -> str:
    _split_key(rel, allow_root=False)
    if rel == MANIFEST_NAME:
        raise ValueError(f"{MANIFEST_NAME!r} is reserved for the manifest itself")
    return rel


# --------------------------------------------------------------------------------------------- filesystems


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


def _fsync_dir(folder: Path) -> None:
    # Makes a rename or a new entry in ``folder`` durable; not every platform can open a folder.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_dirs(folder: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every folder it creates, so the new path survives a crash."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(path.parent)


def _atomic_write(target: Path, chunks: Iterator[bytes]) -> None:
    """Temp file in the target's folder, fsync, ``os.replace``, fsync the folder; no temp file lingers."""
    _make_dirs(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(_CHUNK), b"")


class LocalFileSystem:
    """The store on a local folder. Writes are atomic and durable (fsync of the file and of its folder)."""

    def __init__(self, root: str | Path, create: bool = False) -> None:
        path = Path(root).expanduser()
        if not path.exists():
            if not create:
                raise StoreError(
                    f"model store folder {path} does not exist; nothing was read or written. Create it "
                    "(mkdir -p), or pass create=True to have nluflow create it"
                )
            try:
                _make_dirs(path)
            except OSError as exc:
                raise StoreError(f"cannot create the model store folder {path}: {exc}") from exc
        if not path.is_dir():
            raise StoreError(f"model store root {path} is not a folder; expected a folder to keep models in")
        self.root = path.resolve()

    def __repr__(self) -> str:
        return f"LocalFileSystem({str(self.root)!r})"

    def describe(self) -> str:
        return f"local folder {self.root}"

    def local_path(self, key: str) -> Path:
        """The local path of ``key``; refuses keys that would resolve outside the root (``..``, symlinks)."""
        parts = _split_key(key, allow_root=True)
        path = self.root.joinpath(*parts)
        resolved = path.resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise UnsafePathError(
                f"store key {key!r} resolves to {resolved}, outside the {self.describe()}; nothing was done"
            )
        return path

    def read_bytes(self, key: str) -> bytes:
        path = self.local_path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ModelNotFoundError(f"{self.describe()} has no file {key!r}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key!r} from the {self.describe()}: {exc}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        _split_key(key, allow_root=False)
        target = self.local_path(key)
        try:
            _atomic_write(target, iter((data,)))
        except OSError as exc:
            raise StoreError(
                f"cannot write {key!r} to the {self.describe()}: {exc}; the previous content is unchanged"
            ) from exc

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Temp file beside the target, fsync, then ``os.link`` to the target: a hard link fails if the
        target exists (unlike ``os.replace``), so the file appears whole and only once."""
        _split_key(key, allow_root=False)
        target = self.local_path(key)
        tmp: Path | None = None
        try:
            _make_dirs(target.parent)
            fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=target.parent)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            _fsync_dir(target.parent)
            return True
        except OSError as exc:
            raise StoreError(
                f"cannot create {key!r} in the {self.describe()}: {exc}; nothing was written"
            ) from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def list_dir(self, key: str) -> list[str]:
        path = self.local_path(key)
        try:
            return sorted(child.name for child in path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {key!r} in the {self.describe()}: {exc}") from exc

    def remove_tree(self, key: str) -> None:
        _split_key(key, allow_root=False)  # never the root itself
        path = self.local_path(key)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove {key!r} from the {self.describe()}: {exc}") from exc
        _fsync_dir(path.parent)

    def put_file(self, local: Path, key: str) -> None:
        _split_key(key, allow_root=False)
        target = self.local_path(key)
        try:
            _atomic_write(target, _file_chunks(Path(local)))
        except OSError as exc:
            raise StoreError(f"cannot copy {local} to {key!r} in the {self.describe()}: {exc}") from exc

    def get_file(self, key: str, local: Path) -> None:
        source = self.local_path(key)
        if not source.is_file():
            raise ModelNotFoundError(f"{self.describe()} has no file {key!r}")
        try:
            _atomic_write(Path(local), _file_chunks(source))
        except OSError as exc:
            raise StoreError(f"cannot copy {key!r} from the {self.describe()} to {local}: {exc}") from exc


# --------------------------------------------------------------------------------------------- documents


class Manifest(BaseModel):
    """What a stored model is: its files with their sha256, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    model_id: str = Field(description="The model's id in the store (one path segment).")
    project: str = Field(description="The project the model belongs to.")
    created_at: str = Field(description="When the model was stored (ISO 8601, UTC).")
    backend: str = Field(description="The training backend that produced it.")
    backend_model_id: str | None = Field(default=None, description="The platform's own id, if remote.")
    backend_block: str | None = Field(
        default=None,
        description="The backend block ('<block-type-slug>/<name>') that trained it, if remote: what a "
        "rollback uses to make the platform serve it again.",
    )
    files: dict[str, str] = Field(description="Relative path -> sha256 of every model file.")
    dataset_sha256: str = Field(description="sha256 of the training dataset.")
    test_sha256: str | None = Field(default=None, description="sha256 of the frozen test set.")
    config: dict[str, Any] = Field(default_factory=dict, description="The training config.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Headline metrics on the test set.")
    training_metrics: dict[str, float] = Field(default_factory=dict, description="Metrics from training.")
    run_id: str | None = Field(default=None, description="The retrain run that stored it.")
    nluflow_version: str = Field(description="The nluflow version that stored it.")

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str]) -> dict[str, str]:
        if not files:
            raise ValueError("a model has at least one file")
        for rel, digest in files.items():
            try:
                _check_relative_file(rel)
            except UnsafePathError as exc:
                raise ValueError(str(exc)) from None
            if _SHA256_RE.fullmatch(digest) is None:
                raise ValueError(f"{rel!r}: {digest!r} is not a lowercase hex sha256")
        return files

    @field_validator("created_at")
    @classmethod
    def _utc_timestamp(cls, value: str) -> str:
        moment = datetime.fromisoformat(value)
        if moment.utcoffset() is None:
            raise ValueError("created_at needs a time zone (UTC)")
        return value

    def sha256(self) -> str:
        """The governance hash: sha256 of the canonical JSON of the whole manifest."""
        return sha256_json(self.model_dump(mode="json"))

    def to_json_bytes(self) -> bytes:
        """The bytes of ``manifest.json``: sorted keys, indented for people, the values ``sha256`` hashes."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        return (text + "\n").encode("utf-8")


class PointerEntry(BaseModel):
    """One activation of a model: which one, its manifest hash, when, by which run, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    manifest_sha256: str
    activated_at: str
    run_id: str | None = None
    reason: str = ""


class ActivePointer(BaseModel):
    """The content of ``<project>/active.json``: the active model and the previous actives, newest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    model_id: str
    manifest_sha256: str
    activated_at: str
    run_id: str | None = None
    reason: str = ""
    history: list[PointerEntry] = Field(default_factory=list)

    def entry(self) -> PointerEntry:
        """The current activation as a history entry."""
        return PointerEntry(
            model_id=self.model_id,
            manifest_sha256=self.manifest_sha256,
            activated_at=self.activated_at,
            run_id=self.run_id,
            reason=self.reason,
        )


class RejectedEntry(BaseModel):
    """A candidate that the gates rejected, kept in the store so a person can still promote it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    stored_at: str
    run_id: str | None = None
    reason: str = ""


class RejectedIndex(BaseModel):
    """The content of ``<project>/rejected.json``: the kept rejected candidates, oldest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    rejected: list[RejectedEntry] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------- the store


def _is_download_of(folder: Path, manifest: Manifest) -> bool:
    """True when ``folder`` holds exactly the files of ``manifest`` (plus its manifest.json), all intact."""
    try:
        local = Manifest.model_validate_json((folder / MANIFEST_NAME).read_bytes())
    except (OSError, ValidationError):
        return False
    if local.sha256() != manifest.sha256():
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    if present != {*manifest.files, MANIFEST_NAME}:
        return False
    return all(
        sha256_file(folder.joinpath(*rel.split("/"))) == digest for rel, digest in manifest.files.items()
    )


def _json_plain(value: Any) -> Any:
    """``value`` as it reads back from JSON, so the in-memory manifest hashes like the stored one."""
    return json.loads(canonical_json(value))


class ModelStore:
    """Model versions with sha256 manifests and an atomic active pointer, on a :class:`FileSystem`.

    Example::

        store = ModelStore.local("/srv/nluflow-models", create=True)
        manifest = store.add_model("banking", "m-20250101", Path("out/model"), backend="local",
                                   dataset_sha256=train.sha256(), test_sha256=test.sha256(),
                                   config=cfg.model_dump(mode="json"), metrics={"intent_accuracy": 0.93})
        store.activate("banking", manifest.model_id, run_id=run_id, reason="beats m-20241201 on macro F1")
        folder = store.materialize("banking", store.active("banking").model_id)
    """

    def __init__(self, fs: FileSystem, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.fs = fs
        self._clock = clock

    @classmethod
    def local(cls, root: str | Path, create: bool = False) -> ModelStore:
        return cls(LocalFileSystem(root, create=create))

    def __repr__(self) -> str:
        return f"ModelStore({self.fs!r})"

    def describe(self) -> str:
        return self.fs.describe()

    # ----------------------------------------------------------------------------------------- keys

    @staticmethod
    def _model_key(project: str, model_id: str) -> str:
        return f"{project}/{MODELS_DIR}/{model_id}"

    @staticmethod
    def _pointer_key(project: str) -> str:
        return f"{project}/{POINTER_NAME}"

    def _where(self, project: str, model_id: str) -> str:
        return f"model {model_id!r} of project {project!r} in the {self.describe()}"

    # ----------------------------------------------------------------------------------------- models

    def add_model(
        self,
        project: str,
        model_id: str,
        src_dir: Path,
        *,
        backend: str,
        dataset_sha256: str,
        test_sha256: str | None,
        config: dict[str, Any],
        metrics: dict[str, float],
        training_metrics: dict[str, float] | None = None,
        backend_model_id: str | None = None,
        run_id: str | None = None,
        backend_block: str | None = None,
    ) -> Manifest:
        """Store the files of ``src_dir`` as a model and return its manifest.

        The files are uploaded first and ``manifest.json`` last, then everything is read back and verified.
        Storing the same id with identical files again returns the stored manifest; the same id with other
        files is refused. If anything fails part-way, the partial model folder is removed.
        """
        check_id(project, "project")
        check_id(model_id, "model id")
        files = self._hash_source(Path(src_dir))

        if self.has_model(project, model_id):
            existing = self.manifest(project, model_id)
            if existing.files != files:
                changed = sorted(set(existing.files.items()) ^ set(files.items()))
                names = sorted({rel for rel, _ in changed})
                raise StoreError(
                    f"{self._where(project, model_id)} is already stored with different files "
                    f"({', '.join(names[:5])}{' ...' if len(names) > 5 else ''} differ); model ids are never "
                    "reused: store the new model under a new id. Nothing was changed"
                )
            logger.info(
                "%s is already stored with the same files; keeping it", self._where(project, model_id)
            )
            return self.verify(project, model_id)

        folder = self._model_key(project, model_id)
        if self.fs.exists(folder):  # an incomplete earlier attempt (no manifest): start afresh
            logger.warning("removing the incomplete folder of %s", self._where(project, model_id))
            self.fs.remove_tree(folder)
        try:  # validate the manifest before anything is uploaded
            manifest = Manifest(
                model_id=model_id,
                project=project,
                created_at=_iso(self._clock()),
                backend=backend,
                backend_model_id=backend_model_id,
                backend_block=backend_block,
                files=files,
                dataset_sha256=dataset_sha256,
                test_sha256=test_sha256,
                config=_json_plain(config),
                metrics=metrics,
                training_metrics=training_metrics or {},
                run_id=run_id,
                nluflow_version=__version__,
            )
        except (ValidationError, TypeError, ValueError) as exc:
            raise StoreError(
                f"cannot describe {self._where(project, model_id)}: {exc}; nothing was stored"
            ) from None
        try:
            for rel in files:
                self.fs.put_file(Path(src_dir).joinpath(*rel.split("/")), f"{folder}/{rel}")
            self.fs.write_bytes(f"{folder}/{MANIFEST_NAME}", manifest.to_json_bytes())
            stored = self.verify(project, model_id)
            if stored.sha256() != manifest.sha256():
                raise IntegrityError(
                    f"{self._where(project, model_id)}: manifest.json reads back differently from what was "
                    f"written (sha256 {stored.sha256()} instead of {manifest.sha256()}); the model was "
                    "removed"
                )
        except BaseException:
            try:
                self.fs.remove_tree(folder)
            except Exception:  # keep the original error; the folder has no manifest, so it counts as absent
                logger.exception("could not remove the partial folder of %s", self._where(project, model_id))
            raise
        logger.info("stored %s (%d files)", self._where(project, model_id), len(files))
        return stored

    def _hash_source(self, src_dir: Path) -> dict[str, str]:
        if not src_dir.is_dir():
            raise StoreError(f"model folder {src_dir} does not exist or is not a folder; nothing was stored")
        files: dict[str, str] = {}
        for path in sorted(src_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(src_dir).as_posix()
            if rel == MANIFEST_NAME:
                raise StoreError(
                    f"{path}: the model folder has its own {MANIFEST_NAME}, a name the store keeps for its "
                    "manifest; rename that file. Nothing was stored"
                )
            try:
                _split_key(rel, allow_root=False)
            except UnsafePathError:
                raise StoreError(
                    f"{path}: file name cannot be stored ({rel!r}); nothing was stored"
                ) from None
            files[rel] = sha256_file(path)
        if not files:
            raise StoreError(f"model folder {src_dir} has no files; nothing was stored")
        return files

    def has_model(self, project: str, model_id: str) -> bool:
        """True when the model is complete (its ``manifest.json`` exists)."""
        check_id(project, "project")
        check_id(model_id, "model id")
        return self.fs.exists(f"{self._model_key(project, model_id)}/{MANIFEST_NAME}")

    def manifest(self, project: str, model_id: str) -> Manifest:
        """The model's manifest; :class:`ModelNotFoundError` if the model is not (completely) stored."""
        check_id(project, "project")
        check_id(model_id, "model id")
        key = f"{self._model_key(project, model_id)}/{MANIFEST_NAME}"
        try:
            raw = self.fs.read_bytes(key)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"{self._where(project, model_id)} does not exist (no complete model with that id); "
                f"`nluflow models list` shows the stored models"
            ) from None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}" for err in exc.errors()
            )
            raise IntegrityError(
                f"{key}: the manifest of {self._where(project, model_id)} is not valid ({problems}); "
                "the model is refused"
            ) from None
        if manifest.project != project or manifest.model_id != model_id:
            raise IntegrityError(
                f"{key}: the manifest describes model {manifest.model_id!r} of project {manifest.project!r}, "
                f"expected {model_id!r} of {project!r} (a copied or moved folder?); the model is refused"
            )
        return manifest

    def _usable_manifest(self, project: str, model_id: str) -> tuple[Manifest, ActivePointer | None]:
        """The manifest, with an actionable message when the active pointer names a model that is gone."""
        pointer = self.active(project)
        try:
            manifest = self.manifest(project, model_id)
        except ModelNotFoundError:
            if pointer is None or pointer.model_id != model_id:
                raise
            raise ModelNotFoundError(
                f"project {project!r} points its active model at {model_id!r}, but the {self.describe()} has "
                f"no complete model {model_id!r} ({self._model_key(project, model_id)}/{MANIFEST_NAME} is "
                f"missing); nothing was loaded. Return to the previous model with `nluflow models rollback`, "
                f"or reactivate a stored model with `nluflow models activate`"
            ) from None
        return manifest, pointer

    def _check_against_pointer(self, project: str, manifest: Manifest, pointer: ActivePointer | None) -> None:
        if pointer is None or pointer.model_id != manifest.model_id:
            return
        digest = manifest.sha256()
        if digest != pointer.manifest_sha256:
            raise IntegrityError(
                f"{self._model_key(project, manifest.model_id)}/{MANIFEST_NAME}: the manifest of the active "
                f"model changed since it was activated (sha256 {digest}, active.json expects "
                f"{pointer.manifest_sha256}); the model is refused. Roll back with `nluflow models rollback`"
            )

    def _compare(
        self, project: str, model_id: str, expected: dict[str, str], found: dict[str, str | None]
    ) -> None:
        problems: list[str] = []
        for rel, want in expected.items():
            got = found.get(rel)
            if got is None:
                problems.append(f"{rel}: missing (manifest sha256 {want})")
            elif got != want:
                problems.append(f"{rel}: sha256 {got}, manifest expects {want}")
        if problems:
            more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
            raise IntegrityError(
                f"{self._model_key(project, model_id)}/{problems[0]}{more}; {self._where(project, model_id)} "
                "does not match its manifest and is refused; nothing was changed"
            )

    def verify(self, project: str, model_id: str) -> Manifest:
        """Re-hash every model file; :class:`IntegrityError` naming the file and both hashes on a mismatch."""
        check_id(project, "project")
        check_id(model_id, "model id")
        manifest, pointer = self._usable_manifest(project, model_id)
        folder = self._model_key(project, model_id)
        found: dict[str, str | None] = {}
        for rel in manifest.files:
            try:
                found[rel] = sha256_bytes(self.fs.read_bytes(f"{folder}/{rel}"))
            except ModelNotFoundError:
                found[rel] = None
        self._compare(project, model_id, manifest.files, found)
        self._check_against_pointer(project, manifest, pointer)
        return manifest

    def materialize(self, project: str, model_id: str, dest: Path | None = None) -> Path:
        """A local folder with the verified model files (and ``manifest.json``).

        On a local store this is the stored folder itself (verified; treat it as read-only) and ``dest`` is
        ignored. Otherwise the files are downloaded into ``dest`` (a new or empty folder; a temporary folder
        when None) and the downloaded bytes are verified; on failure the downloaded files are removed. A
        ``dest`` that already holds an intact download of this very model (a retried task) is reused.
        """
        check_id(project, "project")
        check_id(model_id, "model id")
        folder = self._model_key(project, model_id)
        if isinstance(self.fs, LocalPaths):
            self.verify(project, model_id)
            return self.fs.local_path(folder)

        manifest, pointer = self._usable_manifest(project, model_id)
        created = dest is None
        if dest is None:
            target = Path(tempfile.mkdtemp(prefix=f"nluflow-{project}-{model_id}-"))
        else:
            target = Path(dest)
            if target.is_dir() and any(target.iterdir()) and _is_download_of(target, manifest):
                self._check_against_pointer(project, manifest, pointer)
                return target
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise StoreError(
                    f"cannot download {self._where(project, model_id)} into {target}: expected a new or "
                    "empty folder; nothing was downloaded"
                )
            created = not target.exists()
            target.mkdir(parents=True, exist_ok=True)
        try:
            found: dict[str, str | None] = {}
            for rel in manifest.files:
                local = target.joinpath(*rel.split("/"))
                try:
                    self.fs.get_file(f"{folder}/{rel}", local)
                except ModelNotFoundError:
                    found[rel] = None
                    continue
                found[rel] = sha256_file(local)
            self._compare(project, model_id, manifest.files, found)
            self._check_against_pointer(project, manifest, pointer)
            (target / MANIFEST_NAME).write_bytes(manifest.to_json_bytes())
        except BaseException:
            if created:
                shutil.rmtree(target, ignore_errors=True)
            else:
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
        return target

    def remove_model(self, project: str, model_id: str) -> None:
        """Remove a stored (or partly stored) model; refuses to remove the active model."""
        check_id(project, "project")
        check_id(model_id, "model id")
        pointer = self.active(project)
        if pointer is not None and pointer.model_id == model_id:
            raise StoreError(
                f"{self._where(project, model_id)} is the active model; activate another model or roll back "
                "first (`nluflow models rollback`). Nothing was removed"
            )
        folder = self._model_key(project, model_id)
        if not self.fs.exists(folder):
            raise ModelNotFoundError(f"{self._where(project, model_id)} does not exist; nothing was removed")
        self.fs.remove_tree(folder)
        logger.info("removed %s", self._where(project, model_id))

    def list_models(self, project: str) -> list[Manifest]:
        """The complete models of a project, newest first; incomplete or unreadable folders are skipped
        (logged; :meth:`scan_models` also returns them, with their reasons)."""
        manifests, problems = self.scan_models(project)
        for model_id, reason in problems:
            logger.warning("skipping %s: %s", self._where(project, model_id), reason)
        return manifests

    def scan_models(self, project: str) -> tuple[list[Manifest], list[tuple[str, str]]]:
        """``(models, problems)``: the complete models, newest first, and ``(model_id, reason)`` for each
        folder that was refused (a link that leaves the store, an invalid or foreign manifest, a read error).

        One bad folder never hides the others: each entry is checked on its own. Incomplete folders (no
        manifest yet) and names that are not model ids (temporary files) are not problems and are skipped.
        """
        check_id(project, "project")
        manifests: list[Manifest] = []
        problems: list[tuple[str, str]] = []
        for name in self.fs.list_dir(f"{project}/{MODELS_DIR}"):
            try:
                check_id(name, "model id")
            except UnsafePathError:
                continue  # temporary files and foreign names
            try:
                if not self.has_model(project, name):
                    continue
                manifests.append(self.manifest(project, name))
            except StoreError as exc:  # UnsafePathError (a link out of the store), IntegrityError, reads
                problems.append((name, str(exc)))
        manifests.sort(key=lambda m: (datetime.fromisoformat(m.created_at), m.model_id), reverse=True)
        return manifests, sorted(problems)

    def list_projects(self) -> list[str]:
        """Projects with at least a models folder or an active pointer, sorted."""
        projects: list[str] = []
        for name in self.fs.list_dir(""):
            try:
                check_id(name, "project")
            except UnsafePathError:
                continue
            if self.fs.exists(f"{name}/{MODELS_DIR}") or self.fs.exists(self._pointer_key(name)):
                projects.append(name)
        return projects

    # ----------------------------------------------------------------------------------------- pointer

    def active(self, project: str) -> ActivePointer | None:
        """The project's active pointer, or None when no model was ever activated."""
        check_id(project, "project")
        key = self._pointer_key(project)
        try:
            raw = self.fs.read_bytes(key)
        except ModelNotFoundError:
            return None
        try:
            pointer = ActivePointer.model_validate_json(raw)
        except ValidationError as exc:
            raise IntegrityError(
                f"{key} in the {self.describe()} is not a valid active pointer ({exc.error_count()} "
                f"problems, first: {exc.errors()[0]['msg']}); {_POINTER_ADVICE}"
            ) from None
        if pointer.project != project:
            raise IntegrityError(
                f"{key} names project {pointer.project!r}, expected {project!r}; {_POINTER_ADVICE}"
            )
        return pointer

    def _write_pointer(self, pointer: ActivePointer) -> None:
        text = json.dumps(pointer.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        self.fs.write_bytes(self._pointer_key(pointer.project), (text + "\n").encode("utf-8"))

    def activate(
        self, project: str, model_id: str, *, run_id: str | None = None, reason: str = ""
    ) -> ActivePointer:
        """Make a verified model the active one; the previous active goes on top of the history.

        Activating the active model again changes nothing and returns the current pointer.
        """
        check_id(project, "project")
        check_id(model_id, "model id")
        current = self.active(project)
        manifest = self.verify(project, model_id)
        if current is not None and current.model_id == model_id:
            logger.info("%s is already active; nothing to do", self._where(project, model_id))
            return current
        history = [current.entry(), *current.history] if current is not None else []
        pointer = ActivePointer(
            project=project,
            model_id=model_id,
            manifest_sha256=manifest.sha256(),
            activated_at=_iso(self._clock()),
            run_id=run_id,
            reason=reason,
            history=history,
        )
        self._write_pointer(pointer)
        logger.info(
            "activated %s (previous: %s)",
            self._where(project, model_id),
            current.model_id if current is not None else "none",
        )
        return pointer

    # ----------------------------------------------------------------------------------------- rejected

    def rejected(self, project: str) -> list[RejectedEntry]:
        """The rejected candidates kept in the store, oldest first."""
        check_id(project, "project")
        key = f"{project}/{REJECTED_NAME}"
        try:
            raw = self.fs.read_bytes(key)
        except ModelNotFoundError:
            return []
        try:
            index = RejectedIndex.model_validate_json(raw)
        except ValidationError as exc:
            raise IntegrityError(
                f"{key} in the {self.describe()} is not a valid list of rejected candidates "
                f"({exc.errors()[0]['msg']}); move it aside to start a new list. Nothing was changed"
            ) from None
        return list(index.rejected)

    def _write_rejected(self, project: str, entries: list[RejectedEntry]) -> None:
        index = RejectedIndex(project=project, rejected=entries)
        text = json.dumps(index.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        self.fs.write_bytes(f"{project}/{REJECTED_NAME}", (text + "\n").encode("utf-8"))

    def record_rejected(
        self, project: str, model_id: str, *, run_id: str | None = None, reason: str = ""
    ) -> None:
        """Note that the stored model ``model_id`` is a rejected candidate (kept for a forced promotion)."""
        check_id(model_id, "model id")
        if not self.has_model(project, model_id):
            raise ModelNotFoundError(f"{self._where(project, model_id)} is not stored; nothing was recorded")
        entries = [e for e in self.rejected(project) if e.model_id != model_id]
        entries.append(
            RejectedEntry(model_id=model_id, stored_at=_iso(self._clock()), run_id=run_id, reason=reason)
        )
        self._write_rejected(project, entries)

    def forget_rejected(self, project: str, model_id: str) -> None:
        """Take ``model_id`` off the rejected list (e.g. after a forced promotion); no-op if not on it."""
        entries = self.rejected(project)
        kept = [e for e in entries if e.model_id != model_id]
        if len(kept) != len(entries):
            self._write_rejected(project, kept)

    def prune_rejected(self, project: str, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` rejected candidates; return the ids removed.

        Never removes the active model or a model in the pointer's history (a rollback target): those stay
        stored and listed, whatever their age.
        """
        if keep < 0:
            raise StoreError(f"keep must be 0 or more, got {keep}; nothing was removed")
        entries = self.rejected(project)
        excess = len(entries) - keep
        if excess <= 0:
            return []
        pointer = self.active(project)
        protected = (
            {pointer.model_id, *(e.model_id for e in pointer.history)} if pointer is not None else set()
        )
        kept = [e for i, e in enumerate(entries) if i >= excess or e.model_id in protected]
        removed = [e.model_id for e in entries if e not in kept]
        # The list first: a crash part-way leaves an unlisted folder behind, never a listed missing model.
        self._write_rejected(project, kept)
        for model_id in removed:
            if self.fs.exists(self._model_key(project, model_id)):
                self.fs.remove_tree(self._model_key(project, model_id))
        if removed:
            logger.info("pruned %d rejected candidates of %r: %s", len(removed), project, ", ".join(removed))
        return removed

    def rollback(self, project: str, *, to: str | None = None, run_id: str | None = None) -> ActivePointer:
        """Return to the previous active model (or to ``to``), verifying it first.

        Rolling back undoes activations: the target and everything newer leave the history, so two
        rollbacks step back two models instead of toggling between the last two. ``to`` may also name a
        stored model that is not in the history; it is then activated like ``activate`` (the current model
        goes on the history).
        A model that is in the history must still have the manifest it was activated with.
        """
        check_id(project, "project")
        if to is not None:
            check_id(to, "model id")
        current = self.active(project)
        if current is None:
            raise StoreError(
                f"project {project!r} has no active model in the {self.describe()}; nothing to roll back"
            )
        if to == current.model_id:
            self.verify(project, to)
            return current

        index: int | None = None
        for i, entry in enumerate(current.history):
            if entry.model_id == current.model_id:
                continue
            if to is None or entry.model_id == to:
                index = i
                break
        if index is None and to is None:
            raise StoreError(
                f"project {project!r} has no previous model to roll back to (its history is empty); "
                f"{current.model_id!r} stays active"
            )

        if index is not None:
            target_id = current.history[index].model_id
        elif to is not None:
            target_id = to
        else:  # unreachable: handled above; keeps the type checker certain
            raise StoreError(f"project {project!r} has no previous model to roll back to")
        manifest = self.verify(project, target_id)
        if index is not None:
            recorded = current.history[index].manifest_sha256
            if manifest.sha256() != recorded:
                raise IntegrityError(
                    f"{self._model_key(project, target_id)}/{MANIFEST_NAME}: the manifest changed since the "
                    f"model was active (sha256 {manifest.sha256()}, history records {recorded}); "
                    f"{current.model_id!r} stays active"
                )
            history = current.history[index + 1 :]
        else:
            history = [current.entry(), *current.history]
        pointer = ActivePointer(
            project=project,
            model_id=target_id,
            manifest_sha256=manifest.sha256(),
            activated_at=_iso(self._clock()),
            run_id=run_id,
            reason=f"rollback from {current.model_id}",
            history=history,
        )
        self._write_pointer(pointer)
        logger.info("rolled project %r back from %r to %r", project, current.model_id, target_id)
        return pointer
