"""The model store, run over every FileSystem implementation through the ``env`` fixture.

``env`` is parametrised by filesystem: the local folder store, and an in-memory store that stands in for
remote storage (it has no local paths, so ``materialize`` downloads and verifies). A later S3 implementation
is added as one more ``_make_*`` function in ``FILESYSTEMS``. Tests that need real files on disk use
``LocalFileSystem`` directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nluflow.errors import IntegrityError, ModelNotFoundError, StoreError, UnsafePathError
from nluflow.hashing import sha256_bytes, sha256_json
from nluflow.store import (
    ID_PATTERN,
    FileSystem,
    LocalFileSystem,
    Manifest,
    ModelStore,
    check_id,
)
from tests.stores.store_kit import Clock, ModelSource, model_files, tree

# --------------------------------------------------------------------------------------------- fixtures

# The keyword arguments of ``add_model`` that the tests do not care about.
ADD: dict[str, Any] = {
    "backend": "local",
    "dataset_sha256": "d",
    "test_sha256": None,
    "config": {},
    "metrics": {},
}


class MemoryFileSystem:
    """A FileSystem kept in a dict; like a remote store, it has no local paths."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read_bytes(self, key: str) -> bytes:
        if key not in self.files:
            raise ModelNotFoundError(f"memory has no {key!r}")
        return self.files[key]

    def write_bytes(self, key: str, data: bytes) -> None:
        self.files[key] = bytes(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        if key in self.files:
            return False
        self.files[key] = bytes(data)
        return True

    def exists(self, key: str) -> bool:
        return key == "" or key in self.files or any(k.startswith(key + "/") for k in self.files)

    def list_dir(self, key: str) -> list[str]:
        prefix = f"{key}/" if key else ""
        return sorted({k[len(prefix) :].split("/")[0] for k in self.files if k.startswith(prefix)})

    def remove_tree(self, key: str) -> None:
        for k in [k for k in self.files if k == key or k.startswith(key + "/")]:
            del self.files[k]

    def put_file(self, local: Path, key: str) -> None:
        self.files[key] = Path(local).read_bytes()

    def get_file(self, key: str, local: Path) -> None:
        data = self.read_bytes(key)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)

    def describe(self) -> str:
        return "memory store"


@dataclass
class Env(ModelSource):
    store: ModelStore
    fs: FileSystem
    tmp: Path
    snapshot: Callable[[], dict[str, bytes]]  # everything a call could have touched
    config: dict[str, Any] = field(default_factory=lambda: {"seed": 42, "local": {"C": 10.0}})


def _make_local(tmp: Path) -> Env:
    fs = LocalFileSystem(tmp / "store", create=True)
    # A folder beside the store, so an id that escaped the store would have something to damage.
    victim = tmp / "victim"
    (victim / "models" / "m").mkdir(parents=True)
    (victim / "models" / "m" / "manifest.json").write_text("{}")
    (victim / "active.json").write_text("{}")
    return Env(ModelStore(fs, clock=Clock()), fs, tmp, lambda: tree(tmp))


def _make_memory(tmp: Path) -> Env:
    fs = MemoryFileSystem()
    return Env(ModelStore(fs, clock=Clock()), fs, tmp, lambda: {**dict(fs.files), **tree(tmp)})


FILESYSTEMS: dict[str, Callable[[Path], Env]] = {"local": _make_local, "memory": _make_memory}


@pytest.fixture(params=sorted(FILESYSTEMS))
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    yield FILESYSTEMS[request.param](tmp_path)


@pytest.fixture
def local_env(tmp_path: Path) -> Env:
    return _make_local(tmp_path)


# --------------------------------------------------------------------------------------------- check_id


@pytest.mark.parametrize("good", ["a", "banking77", "m-2025.01.01_3", "A" * 128, "0x"])
def test_check_id_accepts_plain_names(good: str) -> None:
    assert check_id(good, "project") == good


@pytest.mark.parametrize(
    "bad", ["../x", "/abs", "a/b", "a\\b", "", ".", "..", "a..b", ".hidden", "-x", "a\n", "a b", "A" * 129]
)
def test_check_id_refuses_names_that_could_leave_the_store(bad: str) -> None:
    with pytest.raises(UnsafePathError, match="would leave the store"):
        check_id(bad, "model id")


@pytest.mark.parametrize("value", ["a", "m-1.2_3", "../x", "a/b", "", ".x", "A" * 129])
def test_id_pattern_agrees_with_check_id_apart_from_double_dots(value: str) -> None:
    try:
        check_id(value, "project")
        accepted = True
    except UnsafePathError:
        accepted = False
    assert (re.fullmatch(ID_PATTERN, value) is not None) == accepted


# --------------------------------------------------------------------------------------------- models


def test_add_model_hashes_every_file_and_writes_the_manifest(env: Env) -> None:
    manifest = env.add("m1", run_id="run-1", training_metrics={"loss": 0.1}, backend_model_id="remote-9")
    expected = {rel: sha256_bytes(data) for rel, data in model_files("m1").items()}
    assert manifest.files == expected
    assert (manifest.project, manifest.model_id, manifest.run_id) == ("p", "m1", "run-1")
    assert manifest.backend_model_id == "remote-9" and manifest.training_metrics == {"loss": 0.1}
    assert datetime.fromisoformat(manifest.created_at).utcoffset() == timedelta(0)
    assert env.store.has_model("p", "m1")
    assert env.store.manifest("p", "m1") == manifest
    assert env.store.list_models("p") == [manifest]
    assert env.store.list_projects() == ["p"]
    assert env.fs.read_bytes("p/models/m1/entities/crf.bin") == b"crf m1"
    stored = json.loads(env.fs.read_bytes("p/models/m1/manifest.json"))
    assert stored["files"] == expected and "manifest.json" not in stored["files"]


def test_manifest_sha256_covers_every_field(env: Env) -> None:
    manifest = env.add("m1")
    assert manifest.sha256() == sha256_json(manifest.model_dump(mode="json"))
    changed = manifest.model_copy(update={"metrics": {"intent_accuracy": 0.91, "macro_f1": 0.85}})
    assert changed.sha256() != manifest.sha256()


def test_nan_metrics_survive_the_round_trip(env: Env) -> None:
    manifest = env.add("m1", metrics={"entity_f1": float("nan")})
    assert env.store.manifest("p", "m1").sha256() == manifest.sha256()


def test_add_model_refuses_bad_source_folders(env: Env) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        env.store.add_model("p", "m1", env.tmp / "nope", **ADD)
    empty = env.tmp / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="no files"):
        env.store.add_model("p", "m1", empty, **ADD)
    own = env.src("own", {"manifest.json": b"{}", "a.bin": b"a"})
    with pytest.raises(StoreError, match=r"manifest\.json"):
        env.store.add_model("p", "m1", own, **ADD)
    assert not env.store.has_model("p", "m1")
    assert not env.fs.exists("p/models/m1")


def test_add_model_refuses_an_invalid_description_before_uploading(env: Env) -> None:
    src = env.src("m1")
    before = env.snapshot()
    with pytest.raises(StoreError, match="nothing was stored"):
        env.store.add_model("p", "m1", src, **{**ADD, "metrics": {"intent_accuracy": "high"}})
    assert env.snapshot() == before


class _FailingFS:
    """Wraps a FileSystem and fails (or corrupts) one chosen operation, like a crash or a bad disk."""

    def __init__(self, inner: FileSystem, fail_on: str, after: int = 0) -> None:
        self.inner = inner
        self.fail_on = fail_on
        self.after = after
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _maybe_fail(self, what: str) -> None:
        if what == self.fail_on:
            self.calls += 1
            if self.calls > self.after:
                raise StoreError(f"simulated failure in {what}")

    def put_file(self, local: Path, key: str) -> None:
        if self.fail_on == "corrupt-put" and key.endswith("intent.pkl"):
            self.inner.write_bytes(key, b"bit rot")
            return
        self._maybe_fail("put_file")
        self.inner.put_file(local, key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._maybe_fail("write_bytes")
        self.inner.write_bytes(key, data)


@pytest.mark.parametrize(
    ("fail_on", "after", "error"),
    [("put_file", 1, StoreError), ("write_bytes", 0, StoreError), ("corrupt-put", 0, IntegrityError)],
)
def test_failure_part_way_removes_the_partial_model(
    env: Env, fail_on: str, after: int, error: type[Exception]
) -> None:
    env.add("m0")
    src = env.src("m1")
    before = env.snapshot()
    failing = ModelStore(_FailingFS(env.fs, fail_on, after))  # type: ignore[arg-type]
    with pytest.raises(error):
        failing.add_model("p", "m1", src, **ADD)
    assert not env.store.has_model("p", "m1")
    assert not env.fs.exists("p/models/m1")
    assert env.snapshot() == before
    assert [m.model_id for m in env.store.list_models("p")] == ["m0"]


def test_a_model_folder_linked_out_of_the_store_is_refused_and_hides_no_other_model(local_env: Env) -> None:
    env = local_env
    env.add("m0")
    env.add("m1")
    # A complete model folder outside the store (the victim's), linked in as an inactive model.
    outside = env.tmp / "outside-model"
    shutil.copytree(env.tmp / "store" / "p" / "models" / "m0", outside)
    (env.tmp / "store" / "p" / "models" / "m2").symlink_to(outside, target_is_directory=True)
    # A link that stays inside the store but names another model: its manifest says it is m0, not m3.
    (env.tmp / "store" / "p" / "models" / "m3").symlink_to(
        env.tmp / "store" / "p" / "models" / "m0", target_is_directory=True
    )
    models, problems = env.store.scan_models("p")
    assert [m.model_id for m in models] == ["m1", "m0"]
    assert [model_id for model_id, _ in problems] == ["m2", "m3"]
    assert "outside the local folder" in problems[0][1] and str(outside) in problems[0][1]
    assert "expected 'm3'" in problems[1][1]
    assert [m.model_id for m in env.store.list_models("p")] == ["m1", "m0"]


# --------------------------------------------------------------------------------------------- integrity


def test_manifest_with_an_escaping_file_path_is_refused(env: Env) -> None:
    env.add("m1")
    raw = json.loads(env.fs.read_bytes("p/models/m1/manifest.json"))
    raw["files"]["../../../victim/active.json"] = "0" * 64
    env.fs.write_bytes("p/models/m1/manifest.json", json.dumps(raw).encode())
    with pytest.raises(IntegrityError, match="not valid"):
        env.store.verify("p", "m1")


def test_materialize_gives_a_folder_with_the_verified_files(env: Env) -> None:
    env.add("m1")
    folder = env.store.materialize("p", "m1", env.tmp / "dest")
    for rel, data in model_files("m1").items():
        assert (folder / rel).read_bytes() == data
    assert Manifest.model_validate_json((folder / "manifest.json").read_bytes()) == env.store.manifest(
        "p", "m1"
    )
    if isinstance(env.fs, LocalFileSystem):
        assert folder == env.fs.root / "p" / "models" / "m1"  # no copy on a local store
    else:
        assert folder == env.tmp / "dest"


def test_materialize_to_a_temporary_folder(env: Env) -> None:
    env.add("m1")
    folder = env.store.materialize("p", "m1")
    try:
        assert (folder / "intent.pkl").read_bytes() == model_files("m1")["intent.pkl"]
    finally:
        if not isinstance(env.fs, LocalFileSystem):
            shutil.rmtree(folder)


def test_materialize_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    env = _make_memory(tmp_path)  # a local store never copies, so only a remote one has a destination
    env.add("m1")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="new or empty folder"):
        env.store.materialize("p", "m1", dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_materialize_reuses_an_intact_earlier_download_only(tmp_path: Path) -> None:
    env = _make_memory(tmp_path)
    env.add("m1")
    dest = tmp_path / "dest"
    assert env.store.materialize("p", "m1", dest) == dest
    assert env.store.materialize("p", "m1", dest) == dest  # a retried task finds its own download
    (dest / "intent.pkl").write_bytes(b"changed locally")
    with pytest.raises(StoreError, match="new or empty folder"):
        env.store.materialize("p", "m1", dest)
    assert (dest / "intent.pkl").read_bytes() == b"changed locally"  # not someone else's files to delete


# --------------------------------------------------------------------------------------------- local folder


def test_missing_root_is_refused_unless_created(tmp_path: Path) -> None:
    root = tmp_path / "no" / "such"
    with pytest.raises(StoreError, match=r"does not exist.*create"):
        ModelStore.local(root)
    assert not root.exists()
    store = ModelStore.local(root, create=True)
    assert root.is_dir() and store.describe() == f"local folder {root.resolve()}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        LocalFileSystem(tmp_path / "file")


def test_crash_between_temp_write_and_rename_keeps_the_old_pointer(
    local_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = local_env
    env.add("m1")
    env.add("m2")
    old = env.store.activate("p", "m1")
    pointer_file = env.tmp / "store" / "p" / "active.json"
    old_bytes = pointer_file.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError, match="simulated crash"):
        env.store.activate("p", "m2")
    monkeypatch.undo()

    assert pointer_file.read_bytes() == old_bytes
    assert env.store.active("p") == old
    assert sorted(p.name for p in pointer_file.parent.iterdir()) == ["active.json", "models"]  # no temp file
    assert env.store.activate("p", "m2").model_id == "m2"


def test_leftover_temp_files_from_a_killed_writer_are_ignored(local_env: Env) -> None:
    env = local_env
    env.add("m1")
    pointer = env.store.activate("p", "m1")
    root = env.tmp / "store"
    (root / "p" / ".nluflow-tmp-abc.tmp").write_text('{"half": ')
    (root / "p" / "models" / ".nluflow-tmp-def.tmp").write_text("junk")
    (root / ".nluflow-tmp-ghi.tmp").write_text("junk")
    assert env.store.active("p") == pointer
    assert [m.model_id for m in env.store.list_models("p")] == ["m1"]
    assert env.store.list_projects() == ["p"]


@pytest.mark.parametrize("key", ["../victim/active.json", "/etc/passwd", "a\\b", "a//b", "./a", ""])
def test_local_filesystem_refuses_keys_outside_the_root(local_env: Env, key: str) -> None:
    fs = local_env.fs
    before = local_env.snapshot()
    with pytest.raises(UnsafePathError):
        fs.write_bytes(key, b"x")
    with pytest.raises(UnsafePathError):
        fs.remove_tree(key)
    assert local_env.snapshot() == before


def test_local_filesystem_refuses_a_symlink_out_of_the_root(local_env: Env) -> None:
    root = local_env.tmp / "store"
    (root / "p").mkdir()
    (root / "p" / "link").symlink_to(local_env.tmp / "victim", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        local_env.fs.read_bytes("p/link/active.json")
    with pytest.raises(UnsafePathError, match="outside"):
        local_env.fs.write_bytes("p/link/active.json", b"x")
    assert (local_env.tmp / "victim" / "active.json").read_text() == "{}"


def test_local_filesystem_basic_operations(tmp_path: Path) -> None:
    fs = LocalFileSystem(tmp_path)
    assert isinstance(fs, FileSystem)
    fs.write_bytes("a/b/c.bin", b"abc")
    assert fs.read_bytes("a/b/c.bin") == b"abc" and fs.exists("a/b") and fs.list_dir("a") == ["b"]
    assert fs.list_dir("missing") == []
    with pytest.raises(ModelNotFoundError):
        fs.read_bytes("a/b/none")
    with pytest.raises(ModelNotFoundError):
        fs.get_file("a/b/none", tmp_path / "out")
    fs.get_file("a/b/c.bin", tmp_path / "out" / "c.bin")
    assert (tmp_path / "out" / "c.bin").read_bytes() == b"abc"
    fs.put_file(tmp_path / "out" / "c.bin", "x/y.bin")
    assert fs.read_bytes("x/y.bin") == b"abc"
    fs.remove_tree("a")
    fs.remove_tree("a")  # missing: nothing happens
    assert not fs.exists("a")
