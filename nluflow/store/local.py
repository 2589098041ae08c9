"""The store on a local folder: :class:`LocalFileSystem`, atomic and durable writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nluflow.errors import ModelNotFoundError, StoreError, UnsafePathError
from nluflow.store.fs import TMP_PREFIX, split_key

_CHUNK = 1 << 20


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
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=target.parent)
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
        parts = split_key(key, allow_root=True)
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
        split_key(key, allow_root=False)
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
        split_key(key, allow_root=False)
        target = self.local_path(key)
        tmp: Path | None = None
        try:
            _make_dirs(target.parent)
            fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=target.parent)
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
        split_key(key, allow_root=False)  # never the root itself
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
        split_key(key, allow_root=False)
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
