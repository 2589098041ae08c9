"""The model store: model versions with sha256 manifests, and an atomic active pointer per project.

Keys come from :mod:`nluflow.store.layout` (``<project>/models/<model_id>/...`` with ``manifest.json`` written
last, ``<project>/active.json``, ``<project>/rejected.json``); the active pointer and the rejected list are
the :class:`~nluflow.store.pointer.ActivePointers` half of the store.

The store talks to storage through the small :class:`~nluflow.store.fs.FileSystem` interface, so the same
code runs on a local folder (:class:`~nluflow.store.local.LocalFileSystem`) and on S3
(:class:`~nluflow.store.s3.S3FileSystem`). Every public :class:`ModelStore` method checks
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
flow serialises promotions with a Prefect concurrency limit per project, and the ``nluflow models`` commands
take the same limit.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, Unpack

from pydantic import ValidationError

from nluflow import __version__
from nluflow.errors import IntegrityError, ModelNotFoundError, StoreError, UnsafePathError
from nluflow.hashing import canonical_json, sha256_bytes, sha256_file
from nluflow.store.fs import FileSystem, LocalPaths, split_key
from nluflow.store.layout import MANIFEST_NAME, check_id, layout
from nluflow.store.local import LocalFileSystem
from nluflow.store.manifest import ActivePointer, Manifest
from nluflow.store.pointer import ActivePointers, iso, utc_now

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- the store


class ModelDetails(TypedDict):
    """What :meth:`ModelStore.add_model` records about a new model (its manifest's fields)."""

    backend: str
    dataset_sha256: str
    test_sha256: str | None
    config: dict[str, Any]
    metrics: dict[str, float]
    training_metrics: NotRequired[dict[str, float] | None]
    backend_model_id: NotRequired[str | None]
    run_id: NotRequired[str | None]
    backend_block: NotRequired[str | None]


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


class ModelStore(ActivePointers):
    """Model versions with sha256 manifests and an atomic active pointer, on a :class:`FileSystem`.

    Example::

        store = ModelStore.local("/srv/nluflow-models", create=True)
        manifest = store.add_model("banking", "m-20250101", Path("out/model"), backend="local",
                                   dataset_sha256=train.sha256(), test_sha256=test.sha256(),
                                   config=cfg.model_dump(mode="json"), metrics={"intent_accuracy": 0.93})
        store.activate("banking", manifest.model_id, run_id=run_id, reason="beats m-20241201 on macro F1")
        folder = store.materialize("banking", store.active("banking").model_id)
    """

    def __init__(self, fs: FileSystem, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.fs = fs
        self._clock = clock

    @classmethod
    def local(cls, root: str | Path, create: bool = False) -> ModelStore:
        return cls(LocalFileSystem(root, create=create))

    def __repr__(self) -> str:
        return f"ModelStore({self.fs!r})"

    # ----------------------------------------------------------------------------------------- models

    def add_model(
        self, project: str, model_id: str, src_dir: Path, **details: Unpack[ModelDetails]
    ) -> Manifest:
        """Store the files of ``src_dir`` as a model and return its manifest; ``details`` describe it
        (:class:`ModelDetails`: backend, data and test hashes, config, metrics, run).

        The files are uploaded first and ``manifest.json`` last, then everything is read back and verified.
        Storing the same id with identical files again returns the stored manifest; the same id with other
        files is refused. If anything fails part-way, the partial model folder is removed.
        """
        check_id(project, "project")
        check_id(model_id, "model id")
        files = self._hash_source(Path(src_dir))
        if self.has_model(project, model_id):
            return self._stored_again(project, model_id, files)
        folder = layout(project).model(model_id)
        if self.fs.exists(folder):  # an incomplete earlier attempt (no manifest): start afresh
            logger.warning("removing the incomplete folder of %s", self._where(project, model_id))
            self.fs.remove_tree(folder)
        manifest = self._describe_new(project, model_id, files, details)
        try:
            stored = self._upload(Path(src_dir), manifest)
        except BaseException:
            try:
                self.fs.remove_tree(folder)
            except Exception:  # keep the original error; the folder has no manifest, so it counts as absent
                logger.exception("could not remove the partial folder of %s", self._where(project, model_id))
            raise
        logger.info("stored %s (%d files)", self._where(project, model_id), len(files))
        return stored

    def _stored_again(self, project: str, model_id: str, files: dict[str, str]) -> Manifest:
        """The stored manifest when the same id is stored with the same files; StoreError otherwise."""
        existing = self.manifest(project, model_id)
        if existing.files != files:
            changed = sorted(set(existing.files.items()) ^ set(files.items()))
            names = sorted({rel for rel, _ in changed})
            raise StoreError(
                f"{self._where(project, model_id)} is already stored with different files "
                f"({', '.join(names[:5])}{' ...' if len(names) > 5 else ''} differ); model ids are never "
                "reused: store the new model under a new id. Nothing was changed"
            )
        logger.info("%s is already stored with the same files; keeping it", self._where(project, model_id))
        return self.verify(project, model_id)

    def _describe_new(
        self, project: str, model_id: str, files: dict[str, str], details: ModelDetails
    ) -> Manifest:
        """The new model's manifest, validated before anything is uploaded."""
        try:
            return Manifest(
                model_id=model_id,
                project=project,
                created_at=iso(self._clock()),
                backend=details["backend"],
                backend_model_id=details.get("backend_model_id"),
                backend_block=details.get("backend_block"),
                files=files,
                dataset_sha256=details["dataset_sha256"],
                test_sha256=details["test_sha256"],
                config=_json_plain(details["config"]),
                metrics=details["metrics"],
                training_metrics=details.get("training_metrics") or {},
                run_id=details.get("run_id"),
                nluflow_version=__version__,
            )
        except (ValidationError, TypeError, ValueError) as exc:
            raise StoreError(
                f"cannot describe {self._where(project, model_id)}: {exc}; nothing was stored"
            ) from None

    def _upload(self, src_dir: Path, manifest: Manifest) -> Manifest:
        """Every file, then ``manifest.json``; read back and verified."""
        project, model_id = manifest.project, manifest.model_id
        keys = layout(project)
        for rel in manifest.files:
            self.fs.put_file(src_dir.joinpath(*rel.split("/")), keys.model_file(model_id, rel))
        self.fs.write_bytes(keys.manifest(model_id), manifest.to_json_bytes())
        stored = self.verify(project, model_id)
        if stored.sha256() != manifest.sha256():
            raise IntegrityError(
                f"{self._where(project, model_id)}: manifest.json reads back differently from what was "
                f"written (sha256 {stored.sha256()} instead of {manifest.sha256()}); the model was "
                "removed"
            )
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
                split_key(rel, allow_root=False)
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
        return self.fs.exists(layout(project).manifest(model_id))

    def manifest(self, project: str, model_id: str) -> Manifest:
        """The model's manifest; :class:`ModelNotFoundError` if the model is not (completely) stored."""
        check_id(project, "project")
        check_id(model_id, "model id")
        key = layout(project).manifest(model_id)
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
                f"no complete model {model_id!r} ({layout(project).manifest(model_id)} is "
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
                f"{layout(project).manifest(manifest.model_id)}: the manifest of the active "
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
                f"{layout(project).model(model_id)}/{problems[0]}{more}; {self._where(project, model_id)} "
                "does not match its manifest and is refused; nothing was changed"
            )

    def verify(self, project: str, model_id: str) -> Manifest:
        """Re-hash every model file; :class:`IntegrityError` naming the file and both hashes on a mismatch."""
        check_id(project, "project")
        check_id(model_id, "model id")
        manifest, pointer = self._usable_manifest(project, model_id)
        folder = layout(project).model(model_id)
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
        folder = layout(project).model(model_id)
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
        folder = layout(project).model(model_id)
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
        for name in self.fs.list_dir(layout(project).models):
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
            if self.fs.exists(layout(name).models) or self.fs.exists(layout(name).pointer):
                projects.append(name)
        return projects
